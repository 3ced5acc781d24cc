"""The controller's own Ray (no ``RAY_ADDRESS``): reachable from this machine only, and gone when the server stops.

Each test runs a real `hpo serve` with a real search whose two trials are training, then looks at the processes
of the server's session (the server, its Ray, Ray's workers) through /proc.
"""

from __future__ import annotations

import ipaddress
import signal
import time
from collections.abc import Iterator

import pytest

from hpo_service.store.database import database_url
from tests.controller import Controller, listening_sockets, live_session_members, process_tree

SPEC = {  # trials that train long enough to be running while the test looks
    "name": "local-ray",
    "model": {"width": 32, "depth": 1, "head_dim": 16, "seq_len": 32},
    "training": {"batch_size": 4, "steps": 50_000, "warmup_steps": 2, "device": "cpu"},
    "search_space": {"modules": ["mlp_up"], "hps": ["lr"]},
    "optimizer": {"name": "random", "population": 2, "generations": 1, "seed": 0},
    "execution": {"parallel": 2, "max_retries": 0, "timeout_s": 600},
}
RAY_SERVICES = {"gcs_server", "raylet", "ray::RuntimeEnv", "ray::DashboardA"}  # as /proc names them (15 chars)
STOP_WITHIN_S = 15.0  # Ray's own processes go in about 2 s; the rest is the server's interpreter shutting down
TRACE_MARKERS = (
    "*** SIGTERM received",
    "*** SIGINT received",
    "logging.cc",
    "Fatal Python error",
    "Stack (most recent call first)",
    "Traceback (most recent call last)",
)


@pytest.fixture
def serving(tmp_path) -> Iterator[Controller]:
    """A server whose search has both trials training, each on a Ray worker that reported through the inbox."""
    controller = Controller(database_url(str(tmp_path / "hpo.db")), tmp_path / "controller.log").start()
    try:
        created = controller.post("/api/searches", SPEC)
        assert created.status_code == 201, created.text
        controller.wait_for(
            created.json()["id"],
            lambda _search, trials: len(trials) == 2 and all(t["status"] == "running" and t["worker"] for t in trials),
            timeout_s=240,
        )
        yield controller
    finally:
        controller.kill()


def test_every_socket_of_the_server_and_its_ray_is_bound_to_loopback(serving):
    sockets = listening_sockets(process_tree(serving.process.pid))

    commands = " ".join(s.command for s in sockets)
    for process in ("hpo_service.cli serve", "gcs_server", "raylet", "ray::_run_on_worker", "ray::ProgressInbox"):
        assert process in commands, f"no listening socket of {process} was found: {sockets}"
    exposed = [s for s in sockets if not ipaddress.ip_address(s.address).is_loopback]
    assert exposed == [], "bound beyond loopback:\n" + "\n".join(map(str, exposed))


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stopping_the_server_stops_its_whole_ray_within_seconds_and_quietly(serving, stop_signal):
    session = serving.process.pid
    assert {name for _, name in live_session_members(session)} >= RAY_SERVICES

    serving.process.send_signal(stop_signal)
    deadline = time.monotonic() + STOP_WITHIN_S
    while (left := live_session_members(session)) and time.monotonic() < deadline:
        time.sleep(0.2)

    assert left == [], f"still running {STOP_WITHIN_S} s after {stop_signal.name}: {left}"
    traces = [line for line in serving.log_path.read_text().splitlines() if any(m in line for m in TRACE_MARKERS)]
    assert traces == [], "\n".join(traces)
