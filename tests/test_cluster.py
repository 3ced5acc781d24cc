"""A real two-node Ray cluster on this machine, with token auth, driven by a controller on PostgreSQL.

The nodes advertise loopback aliases (127.0.0.2 for the head, 127.0.0.3 for the worker): Ray 2.60 rewrites
127.0.0.1 to the machine's routable address, but leaves other loopback addresses alone. Ray's own servers
still bind every interface (it has no option against that); all traffic goes over loopback.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from tests.controller import Controller, free_port, stop_session

RAY = str(Path(sys.executable).with_name("ray"))
SPEC = {
    "name": "cluster",
    "model": {"width": 32, "depth": 1, "head_dim": 16, "seq_len": 32},
    "training": {"batch_size": 4, "steps": 80, "warmup_steps": 5, "device": "cpu"},
    "search_space": {"modules": ["attn_q", "mlp_up", "mlp_down", "unembedding"], "hps": ["lr"]},
    "optimizer": {"name": "cma", "population": 4, "generations": 2, "seed": 3},
    "execution": {"parallel": 2, "cpus_per_trial": 1, "max_retries": 2, "timeout_s": 300},
}


class RayCluster:
    """``ray start --head`` plus one ``ray start --address`` node, each in a session of its own."""

    def __init__(self, log_dir: Path) -> None:
        self.port = free_port()
        self.address = f"127.0.0.2:{self.port}"
        self.env = {
            **os.environ,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": secrets.token_hex(32),
            "RAY_health_check_period_ms": "2000",  # notice a dead node within ~10 s, not ~30 s
            "RAY_health_check_failure_threshold": "5",
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1",  # undo the tests' local-Ray setting: this is a cluster
        }
        self.env.pop("RAY_ADDRESS", None)
        self.log_dir = log_dir
        self.sessions: dict[str, int] = {}

    def start_node(self, name: str, *args: str) -> None:
        with (self.log_dir / f"{name}.log").open("w") as log:
            process = subprocess.Popen(
                [RAY, "start", "--num-cpus=1", "--disable-usage-stats", *args],
                env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
            assert process.wait(timeout=120) == 0, (self.log_dir / f"{name}.log").read_text()[-2000:]
        self.sessions[name] = process.pid

    def nodes(self) -> dict[str, str]:
        """Node id -> the address the node advertises, as the cluster sees it."""
        script = "import json, ray; ray.init(); print(json.dumps({n['NodeID']: n['NodeManagerAddress'] "
        script += "for n in ray.nodes() if n['Alive']}))"
        out = subprocess.run(
            [sys.executable, "-c", script], env={**self.env, "RAY_ADDRESS": self.address},
            capture_output=True, text=True, timeout=120, check=True,
        )  # fmt: skip
        return json.loads(out.stdout.strip().splitlines()[-1])

    def stop_node(self, name: str) -> None:
        stop_session(self.sessions.pop(name))

    def stop(self) -> None:
        for name in list(self.sessions):
            self.stop_node(name)


@pytest.fixture
def cluster(tmp_path):
    ray_cluster = RayCluster(tmp_path)
    try:
        ray_cluster.start_node(
            "head", "--head", "--node-ip-address=127.0.0.2", f"--port={ray_cluster.port}", "--include-dashboard=false"
        )
        ray_cluster.start_node("worker", f"--address={ray_cluster.address}", "--node-ip-address=127.0.0.3")
        yield ray_cluster
    finally:
        ray_cluster.stop()


@pytest.mark.backends("postgresql")
def test_trials_run_on_both_nodes_and_survive_losing_one(db_url, cluster, tmp_path):
    nodes = cluster.nodes()
    assert sorted(nodes.values()) == ["127.0.0.2", "127.0.0.3"]
    worker_node = next(node for node, address in nodes.items() if address == "127.0.0.3")
    keys = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")
    env = {"RAY_ADDRESS": cluster.address, **{key: cluster.env[key] for key in keys}}
    controller = Controller(db_url, tmp_path / "controller.log", env=env).start()
    try:
        first = controller.post("/api/searches", SPEC).json()["id"]
        done = controller.wait_for(first, lambda s, trials: s["status"] != "running" and s["status"] != "queued")
        assert done["status"] == "completed"
        first_trials = controller.get(f"/api/searches/{first}/trials")["trials"]
        assert {t["node"] for t in first_trials} == set(nodes)  # both nodes ran trials, and the store says which

        slower = {**SPEC, "name": "cluster-loses-a-node", "training": {**SPEC["training"], "steps": 1500}}
        second = controller.post("/api/searches", slower).json()["id"]
        controller.wait_for(
            second,
            lambda s, trials: any(t["status"] == "running" and t["node"] == worker_node for t in trials),
            interval_s=0.2,
        )
        cluster.stop_node("worker")  # SIGKILL the second node's raylet and its workers mid-trial
        final = controller.wait_for(second, lambda s, trials: s["status"] not in ("running", "queued"))
        trials = controller.get(f"/api/searches/{second}/trials")["trials"]
    finally:
        controller.stop()

    assert final["status"] == "completed", final
    keys = [(t["generation"], t["index"]) for t in trials]
    assert len(keys) == len(set(keys)) == 4 * 2  # every candidate exactly once
    assert all(t["status"] == "succeeded" for t in trials)
    retried = [t for t in trials if t["attempts"] > 1]
    assert retried, "the trial that was running on the lost node was retried"
    assert all(t["node"] != worker_node for t in retried)
