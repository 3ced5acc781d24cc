"""Faults a long search meets on a shared cluster, against a real controller, real Ray and a real store.

The reference is the same search run without interruption. On the CPU a trial is bitwise reproducible and
the optimizer is seeded, so a search that survived a fault with its optimizer state intact proposes *exactly*
the reference's candidates in every generation, and each of them is in the store exactly once. A fresh
optimizer would start again from generation 0's proposals; a lost result would leave a hole or a duplicate.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from hpo_service.engine.commands import Commands
from hpo_service.engine.engine import Engine
from hpo_service.engine.executor import RayExecutor
from hpo_service.spec import SearchSpec
from hpo_service.store.database import database_url, make_engine, session_factory, upgrade
from hpo_service.store.models import Search, Trial
from tests.controller import ROOT, Controller, free_port

SPEC = {
    "name": "faults",
    "model": {"width": 32, "depth": 1, "head_dim": 16, "seq_len": 32},
    "training": {"batch_size": 4, "steps": 60, "warmup_steps": 5, "device": "cpu"},
    "search_space": {"modules": ["attn_q", "attn_out", "mlp_up", "mlp_down", "unembedding"], "hps": ["lr"]},
    "optimizer": {"name": "cma", "population": 4, "generations": 3, "seed": 7},
    "execution": {"parallel": 2, "max_retries": 0, "timeout_s": 120},
}
ALLOW_TEST_TRIALS = {"HPO_ALLOWED_TRIALS": "tests.trial_fns:*"}
Reference = dict[tuple[int, int], tuple[list[float], float]]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, local_ray) -> Reference:
    """(generation, index) -> (vector, loss) of the search run in one go."""
    url = database_url(str(tmp_path_factory.mktemp("reference") / "hpo.db"))
    upgrade(url)
    sessions = session_factory(make_engine(url))
    search = Commands(sessions).create(SearchSpec.model_validate(SPEC))
    engine = Engine(sessions)
    engine.executor = RayExecutor()
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            engine.turn()
            with sessions() as session:
                if session.get(Search, search.id).status == "completed":
                    trials = session.scalars(select(Trial).where(Trial.search_id == search.id)).all()
                    return {(t.generation, t.index): (t.vector, t.loss) for t in trials}
        pytest.fail("the reference search did not complete")
    finally:
        engine.executor.close()


def assert_matches_reference(trials: list[dict], reference: Reference) -> None:
    population, generations = SPEC["optimizer"]["population"], SPEC["optimizer"]["generations"]
    keys = [(t["generation"], t["index"]) for t in trials]
    assert len(keys) == len(set(keys)) == population * generations  # every candidate exactly once
    assert all(t["status"] == "succeeded" for t in trials), [(t["status"], t["error"]) for t in trials]
    for t in trials:  # the same candidates and losses as the uninterrupted search: the optimizer state survived
        vector, loss = reference[(t["generation"], t["index"])]
        assert t["vector"] == pytest.approx(vector, abs=1e-12)
        assert t["loss"] == pytest.approx(loss, rel=1e-9)


def running_in(generation: int):
    return lambda search, trials: any(t["generation"] == generation and t["status"] == "running" for t in trials)


def finished(search, trials) -> bool:
    return search["status"] in ("completed", "failed", "cancelled")


def run_to_the_end(controller: Controller, search_id: int) -> list[dict]:
    final = controller.wait_for(search_id, finished)
    assert final["status"] == "completed", final
    return controller.get(f"/api/searches/{search_id}/trials", limit=1000)["trials"]


def running_trials(db_url: str) -> set[int]:
    engine = make_engine(db_url)
    try:
        with session_factory(engine)() as session:
            return set(session.scalars(select(Trial.id).where(Trial.status == "running")))
    finally:
        engine.dispose()


def test_a_controller_killed_three_times_resumes_the_search_exactly(db_url, reference, tmp_path):
    controller = Controller(db_url, tmp_path / "controller.log").start()
    interrupted: set[int] = set()
    try:
        search_id = controller.post("/api/searches", SPEC).json()["id"]
        for generation in range(3):  # SIGKILL (Ray included) while each generation trains
            controller.wait_for(search_id, running_in(generation))
            controller.kill()
            assert controller.process.poll() is not None
            interrupted |= running_trials(db_url)
            controller.start()
        trials = run_to_the_end(controller, search_id)
    finally:
        controller.stop()

    assert_matches_reference(trials, reference)
    rerun = [t for t in trials if t["id"] in interrupted]
    assert len(rerun) >= 3  # re-run, and the interruptions are not held against the trials' retries
    assert all(t["attempts"] == 1 for t in rerun)


def test_a_worker_killed_mid_trial_is_rerun_and_the_search_is_unchanged(db_url, reference, tmp_path):
    spec = {**SPEC, "execution": {**SPEC["execution"], "max_retries": 1, "trial": "tests.trial_fns:paced_real"}}
    controller = Controller(db_url, tmp_path / "controller.log", env=ALLOW_TEST_TRIALS).start()
    try:
        search_id = controller.post("/api/searches", spec).json()["id"]
        controller.wait_for(search_id, lambda s, trials: any(t["status"] == "running" and t["worker"] for t in trials))
        victim = next(t for t in controller.get(f"/api/searches/{search_id}/trials")["trials"] if t["worker"])
        os.kill(int(victim["worker"].rpartition(":")[2]), signal.SIGKILL)  # the Ray worker process itself
        trials = run_to_the_end(controller, search_id)
    finally:
        controller.stop()

    assert_matches_reference(trials, reference)
    attempts = {t["id"]: t["attempts"] for t in trials}
    assert attempts.pop(victim["id"]) == 2 and set(attempts.values()) == {1}


# -- PostgreSQL restarted under the controller -----------------------------------------------------------------


@pytest.fixture
def private_postgres() -> Iterator[tuple[str, Path]]:
    """A PostgreSQL server of this test's own (so restarting it disturbs nothing else): (URL, data folder)."""
    bindir = next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)), None)
    if bindir is None or not (bindir / "initdb").exists():
        _unavailable("no PostgreSQL server binaries under /usr/lib/postgresql")
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    folder = Path(tempfile.mkdtemp(prefix="hpo-pg-"))
    if as_postgres:
        shutil.chown(folder, "postgres")
    port, data = free_port(), folder / "data"
    options = f"-p {port} -c listen_addresses=127.0.0.1 -k {folder} -c fsync=off"
    pg_ctl = [*as_postgres, str(bindir / "pg_ctl"), "-D", str(data), "-w", "-l", str(folder / "log")]
    try:
        subprocess.run([*as_postgres, str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust",
                        "--no-sync"], check=True, capture_output=True)  # fmt: skip
        subprocess.run([*pg_ctl, "-o", options, "start"], check=True, capture_output=True)
        subprocess.run([*as_postgres, str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
                        "hpo"], check=True, capture_output=True)  # fmt: skip
        url = database_url(f"postgresql://postgres@127.0.0.1:{port}/hpo")
        yield url, lambda action: subprocess.run([*pg_ctl, "-m", "fast", "-o", options, action], check=True)
    finally:
        subprocess.run([*pg_ctl, "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


def _unavailable(reason: str) -> None:
    if os.environ.get("HPO_REQUIRE_FAULT_INJECTION") == "1":
        pytest.fail(f"fault injection is required (HPO_REQUIRE_FAULT_INJECTION=1) but {reason}")
    pytest.skip(reason)


@pytest.mark.backends("postgresql")
def test_postgresql_restarted_mid_search_the_controller_reconnects_and_loses_nothing(
    fresh_database, private_postgres, reference, tmp_path
):
    url, pg_ctl = private_postgres
    upgrade(url)
    controller = Controller(url, tmp_path / "controller.log").start()
    try:
        search_id = controller.post("/api/searches", SPEC).json()["id"]
        controller.wait_for(search_id, running_in(1))
        pg_ctl("stop")
        down = httpx.get(f"{controller.url}/api/searches/{search_id}", timeout=30)
        assert down.status_code == 503 and "retry later" in down.json()["detail"]  # not a 500, and says why
        assert httpx.get(f"{controller.url}/api/health", timeout=30).status_code == 503
        time.sleep(3)  # trials finish meanwhile: their results wait in the controller
        pg_ctl("start")
        trials = run_to_the_end(controller, search_id)
        assert httpx.get(f"{controller.url}/api/health", timeout=30).json()["status"] == "ok"
    finally:
        controller.stop()

    assert_matches_reference(trials, reference)
    assert all(t["attempts"] == 1 for t in trials)  # no result was lost, so nothing was trained twice


# -- SQLite on a full or read-only disk --------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path) -> Iterator[Path]:
    """A 16 MiB tmpfs of the test's own: a disk that can really fill up or be mounted read-only."""
    mountpoint = tmp_path / "disk"
    mountpoint.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mountpoint)], capture_output=True)
    if mounted.returncode != 0:
        _unavailable(f"cannot mount a tmpfs: {mounted.stderr.decode().strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True)


def fill(disk: Path) -> Path:
    """Write a ballast file until the disk says it is full."""
    ballast = disk / "ballast"
    try:
        with ballast.open("wb") as out:
            while True:
                out.write(b"\0" * 65536)
                out.flush()
    except OSError as exc:
        assert exc.errno == errno.ENOSPC, exc
    return ballast


@pytest.mark.backends("sqlite")
def test_a_full_disk_holds_the_search_says_why_and_loses_nothing(fresh_database, small_disk, reference, tmp_path):
    url = database_url(str(small_disk / "hpo.db"))
    upgrade(url)
    controller = Controller(url, tmp_path / "controller.log").start()
    try:
        search_id = controller.post("/api/searches", SPEC).json()["id"]
        controller.wait_for(search_id, running_in(0))
        ballast = fill(small_disk)
        deadline, health = time.monotonic() + 120, {}
        while time.monotonic() < deadline:  # the engine meets the full disk when the next results arrive
            health = httpx.get(f"{controller.url}/api/health", timeout=30).json()
            if health["status"] == "degraded":
                break
            time.sleep(0.2)
        assert "database or disk is full" in health["engine"], health
        submitted = controller.post("/api/searches", {**SPEC, "name": "while-full"})
        assert submitted.status_code in (201, 503), submitted.text  # never a 500
        if submitted.status_code == 503:
            assert "full" in submitted.json()["detail"]
        ballast.unlink()  # space again: the held results are written and the search goes on
        trials = run_to_the_end(controller, search_id)
    finally:
        controller.stop()

    assert_matches_reference(trials, reference)
    assert all(t["attempts"] == 1 for t in trials)


@pytest.mark.backends("sqlite")
def test_a_database_on_a_read_only_disk_is_refused_at_start_with_one_clear_line(fresh_database, small_disk):
    url = database_url(str(small_disk / "hpo.db"))
    upgrade(url)
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    for command in (["serve", "--port", str(free_port())], ["db", "upgrade"]):
        result = subprocess.run([sys.executable, "-m", "hpo_service.cli", *command, "--db", url], cwd=ROOT,
                                capture_output=True, text=True, timeout=120)  # fmt: skip
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr
        assert "read-only" in result.stderr and str(small_disk / "hpo.db") in result.stderr, result.stderr
