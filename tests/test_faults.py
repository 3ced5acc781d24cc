"""Faults a long search meets on a shared cluster, against a real controller, real Ray and a real store.

The reference is the same search run without interruption. On the CPU a trial is bitwise reproducible and
the optimizer is seeded, so a search that survived a fault with its optimizer state intact proposes *exactly*
the reference's candidates in every generation, and each of them is in the store exactly once. A fresh
optimizer would start again from generation 0's proposals; a lost result would leave a hole or a duplicate.

What was trained is read from the workers' own log of executions (``tests.trial_fns.logged``), not from the
store: a result lost and trained again looks, in the store, exactly like one trained once.
"""

from __future__ import annotations

import errno
import itertools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from hpo_service.engine.commands import Commands
from hpo_service.engine.engine import Engine
from hpo_service.engine.executor import RayExecutor
from hpo_service.spec import SearchSpec
from hpo_service.statuses import FINAL_SEARCH, SearchStatus, TrialStatus
from hpo_service.store.database import database_url, open_database, session_factory, upgrade
from hpo_service.store.models import Generation, Search, Trial
from tests.controller import ROOT, Controller, free_port
from tests.trial_fns import EXECUTION_LOG, PACE_S, Execution, candidate_key, read_executions

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
Runs = dict[int, list[Execution]]  # trial id -> its candidate's executions, in the order they started


# SPEC trained by the built-in trainer after a pause, each execution logged: the reference's results, with time
# to strike while a trial is inside its trial function.
PACED_SPEC = {**SPEC, "execution": {**SPEC["execution"], "trial": "tests.trial_fns:paced_real"}}


def logged_controller(db_url: str, tmp_path: Path) -> tuple[Controller, Path]:
    """A controller whose Ray workers (which inherit its environment) log every execution to the returned file."""
    log = tmp_path / "executions.jsonl"
    env = {**ALLOW_TEST_TRIALS, EXECUTION_LOG: str(log), "HPO_LEASE_TTL_S": "3"}  # a restart waits out the lease
    return Controller(db_url, tmp_path / "controller.log", env=env), log


def run_in_one_go(spec: dict, folder: Path) -> list[Trial]:
    """The trials of ``spec`` run to completion in this process, on a store of its own in ``folder``."""
    url = database_url(str(folder / "hpo.db"))
    upgrade(url)
    sessions = session_factory(open_database(url))
    search = Commands(sessions).create(SearchSpec.model_validate(spec))
    engine = Engine(sessions)
    engine.executor = RayExecutor()
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            engine.turn()
            with sessions() as session:
                ended = session.get(Search, search.id)
                if ended.status in FINAL_SEARCH:
                    assert ended.status == SearchStatus.COMPLETED, ended.error
                    return list(session.scalars(select(Trial).where(Trial.search_id == search.id)))
        pytest.fail("the reference search did not complete")
    finally:
        engine.executor.close()


@pytest.fixture(scope="module")
def reference(tmp_path_factory, local_ray) -> Reference:
    """(generation, index) -> (vector, loss) of the search run in one go."""
    trials = run_in_one_go(SPEC, tmp_path_factory.mktemp("reference"))
    return {(t.generation, t.index): (t.vector, t.loss) for t in trials}


def assert_matches_reference(trials: list[dict], reference: Reference) -> None:
    population, generations = SPEC["optimizer"]["population"], SPEC["optimizer"]["generations"]
    keys = [(t["generation"], t["index"]) for t in trials]
    assert len(keys) == len(set(keys)) == population * generations  # every candidate exactly once
    assert all(t["status"] == TrialStatus.SUCCEEDED for t in trials), [(t["status"], t["error"]) for t in trials]
    for t in trials:  # the same candidates and losses as the uninterrupted search: the optimizer state survived
        vector, loss = reference[(t["generation"], t["index"])]
        assert t["vector"] == pytest.approx(vector, abs=1e-12)
        assert t["loss"] == pytest.approx(loss, rel=1e-9)


def finished(search, trials) -> bool:
    return search["status"] in FINAL_SEARCH


def run_to_the_end(controller: Controller, search_id: int) -> list[dict]:
    final = controller.wait_for(search_id, finished)
    assert final["status"] == SearchStatus.COMPLETED, final
    return controller.get(f"/api/searches/{search_id}/trials", limit=1000)["trials"]


def training_in(generation: int, log: Path) -> Callable[[dict, list[dict]], bool]:
    """A trial of ``generation`` is inside its trial function (started on a worker and not yet returned)."""

    def condition(search: dict, trials: list[dict]) -> bool:
        executions = read_executions(log)
        return any(
            run.finished is None
            for t in trials
            if t["generation"] == generation
            for run in executions.get(candidate_key(t["multipliers"], t["seed"]), [])
        )

    return condition


def early_in_its_pause(run: Execution) -> bool:
    """Too early for the run to return before a blow struck now lands."""
    return run.finished is None and time.time() - run.started < PACE_S - 0.5


def halfway_through(generation: int, log: Path) -> Callable[[dict, list[dict]], bool]:
    """A trial of ``generation`` has succeeded (a result to keep) and another trains (a run to cut short)."""

    def condition(search: dict, trials: list[dict]) -> bool:
        succeeded = any(t["generation"] == generation and t["status"] == TrialStatus.SUCCEEDED for t in trials)
        return succeeded and training_in(generation, log)(search, trials)

    return condition


def succeeded_trials(db_url: str) -> set[int]:
    """The trials the store holds as succeeded (read with the controller down, so as it left them)."""
    engine = open_database(db_url)
    try:
        with session_factory(engine)() as session:
            return set(session.scalars(select(Trial.id).where(Trial.status == TrialStatus.SUCCEEDED)))
    finally:
        engine.dispose()


def a_trial_to_strike(trials: list[dict], log: Path) -> dict | None:
    """After a trial has succeeded, a running one whose worker (as the API names it) is early in its pause."""
    if not any(t["status"] == TrialStatus.SUCCEEDED for t in trials):
        return None
    executions = read_executions(log)
    for t in trials:
        if t["status"] == TrialStatus.RUNNING and t["worker"]:
            pid = int(t["worker"].rpartition(":")[2])
            runs = executions.get(candidate_key(t["multipliers"], t["seed"]), [])
            if any(run.pid == pid and early_in_its_pause(run) for run in runs):
                return t
    return None


def wait_for_a_return_after(log: Path, since: float, timeout_s: float = 120.0) -> None:
    """Until some trial function returns after ``since`` (a time.time())."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if any(run.finished and run.finished > since for runs in read_executions(log).values() for run in runs):
            return
        time.sleep(0.1)
    raise AssertionError(f"no trial returned within {timeout_s} s")


def runs_by_trial(trials: list[dict], log: Path) -> Runs:
    """Each trial's executions, as the workers logged them; every logged execution belongs to a stored trial."""
    executions = read_executions(log)
    runs = {t["id"]: executions.pop(candidate_key(t["multipliers"], t["seed"]), []) for t in trials}
    assert not executions, f"executions of candidates the store does not hold: {executions}"
    return runs


def assert_returned_once(trials: list[dict], runs: Runs) -> None:
    """Each candidate's trial function returned exactly once, in its last execution (so nothing that had
    returned was trained again), and the store holds the loss that execution returned."""
    for t in trials:
        returned = [run for run in runs[t["id"]] if run.finished is not None]
        assert len(returned) == 1 and runs[t["id"]][-1] == returned[0], (t["generation"], t["index"], runs[t["id"]])
        assert returned[0].loss == t["loss"]


def assert_reruns_cut_short_by(kills: list[tuple[float, set[int]]], trials: list[dict], runs: Runs) -> None:
    """Each trial trained once, plus once for each time a kill (when it landed, and the trials stored as
    succeeded then) cut its training short; its last run returned the loss the store holds."""
    for t in trials:
        mine = runs[t["id"]]
        assert mine and mine[-1].finished is not None and mine[-1].loss == t["loss"], mine
        for run, rerun in itertools.pairwise(mine):  # a run before the last was cut short by a kill:
            assert any(  # killed mid-run, or returned a result the store had not taken when the kill landed
                run.started < kill < rerun.started and (run.finished is None or t["id"] not in stored)
                for kill, stored in kills
            ), mine
        for kill, stored in kills:  # a trial the store held as trained is never trained again
            assert t["id"] not in stored or all(run.started < kill for run in mine), mine
        assert t["attempts"] == 1  # the interruptions are not held against the trial's retries


def assert_each_trained_once(trials: list[dict], runs: Runs) -> None:
    assert_returned_once(trials, runs)
    assert all(len(runs[t["id"]]) == 1 for t in trials), {(t["generation"], t["index"]): runs[t["id"]] for t in trials}


def epoch(timestamp: str) -> float:
    """An API timestamp as time.time() would give it (SQLite returns them without a zone: UTC)."""
    moment = datetime.fromisoformat(timestamp)
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def assert_held_through(trials: list[dict], runs: Runs, outage: tuple[float, float]) -> None:
    """A trial returned while the store refused writes, and its result was written once the store took them."""
    held = [t for t in trials if outage[0] < runs[t["id"]][-1].finished < outage[1]]
    assert held, f"no trial returned during the outage {outage}"
    assert any(epoch(t["finished_at"]) > outage[1] for t in held), [t["finished_at"] for t in held]


def test_a_controller_killed_three_times_resumes_the_search_exactly(db_url, reference, tmp_path):
    controller, log = logged_controller(db_url, tmp_path)
    controller.start()
    kills: list[tuple[float, set[int]]] = []  # when each kill had landed, and the trials stored as succeeded then
    try:
        search_id = controller.post("/api/searches", PACED_SPEC).json()["id"]
        for generation in range(3):  # SIGKILL (Ray included) with each generation half done
            controller.wait_for(search_id, halfway_through(generation, log))
            controller.kill()  # every process of the controller's session, workers included, is gone after it
            kills.append((time.time(), succeeded_trials(db_url)))
            controller.start()
        trials = run_to_the_end(controller, search_id)
    finally:
        controller.stop()

    assert_matches_reference(trials, reference)
    runs = runs_by_trial(trials, log)
    assert_reruns_cut_short_by(kills, trials, runs)
    for since, (kill, stored) in zip([0.0, *(k for k, _ in kills)], kills, strict=False):
        assert stored  # each kill came with results to keep ...
        assert any(run.finished is None and since < run.started < kill for rs in runs.values() for run in rs)


def test_a_worker_killed_mid_trial_is_rerun_and_the_search_is_unchanged(db_url, reference, tmp_path):
    controller, log = logged_controller(db_url, tmp_path)
    controller.start()
    try:
        spec = {**PACED_SPEC, "execution": {**PACED_SPEC["execution"], "max_retries": 1}}
        search_id = controller.post("/api/searches", spec).json()["id"]
        deadline = time.monotonic() + 300
        while (victim := a_trial_to_strike(controller.get(f"/api/searches/{search_id}/trials")["trials"], log)) is None:
            assert time.monotonic() < deadline, "no trial to strike"
            time.sleep(0.1)
        pid = int(victim["worker"].rpartition(":")[2])
        os.kill(pid, signal.SIGKILL)  # the Ray worker process itself, inside the trial function
        trials = run_to_the_end(controller, search_id)
    finally:
        controller.stop()

    assert_matches_reference(trials, reference)
    runs = runs_by_trial(trials, log)
    assert_returned_once(trials, runs)
    killed, rerun = runs.pop(victim["id"])
    assert killed.pid == pid and killed.finished is None and rerun.finished is not None
    assert all(len(r) == 1 for r in runs.values()), runs  # every other candidate trained once
    attempts = {t["id"]: t["attempts"] for t in trials}
    assert attempts.pop(victim["id"]) == 2 and set(attempts.values()) == {1}


# -- a staged search killed in each of its phases ---------------------------------------------------------------

STAGED_SPEC = {
    "name": "staged-faults",
    "model": SPEC["model"],
    "training": {"batch_size": 4, "steps": 20, "warmup_steps": 2, "device": "cpu"},
    "stages": [
        {"name": "global", "search_space": {"tied": True, "hps": ["lr", "init_std"]},
         "optimizer": {"name": "cma", "population": 2, "generations": 1, "seed": 7}},
        {"name": "per-module", "search_space": {"modules": SPEC["search_space"]["modules"], "hps": ["lr"]},
         "optimizer": {"name": "cma", "population": 2, "generations": 1, "seed": 7}},
    ],
    "selection": {"top": 2, "seeds": 1},
    "validate": {"targets": [{"depth": 2}], "seeds": 1},
    "execution": {"parallel": 2, "max_retries": 0, "timeout_s": 120},
}  # fmt: skip
PACED_STAGED_SPEC = {**STAGED_SPEC, "execution": {**STAGED_SPEC["execution"], "trial": "tests.trial_fns:paced_real"}}
STAGED_PHASES = [
    ("search", "global"), ("reevaluation", "global"), ("search", "per-module"), ("reevaluation", "per-module"),
    ("validation", None),
]  # fmt: skip
STAGED_TRIALS = 2 + 2 + 2 + 2 + 3  # populations, top × seeds, and arms (per-module, global, base) × targets × seeds
EXACT = ("kind", "stage", "seed", "target", "arm")  # the rest (vector, multipliers, origin's loss, loss) numerically


@pytest.fixture(scope="module")
def staged_reference(tmp_path_factory, local_ray) -> dict[tuple[int, int, int], Trial]:
    """(generation, index, replicate) -> the trial, of STAGED_SPEC run in one go."""
    trials = run_in_one_go(STAGED_SPEC, tmp_path_factory.mktemp("staged-reference"))
    return {(t.generation, t.index, t.replicate): t for t in trials}


def training_in_phase(
    kind: str, stage: str | None, sessions, log: Path, *, with_a_result: bool = False
) -> Callable[[dict, list[dict]], bool]:
    """A trial of ``kind`` and ``stage`` (as the store says) is inside its trial function; with
    ``with_a_result``, another of them has succeeded too (a result to keep)."""

    def condition(search: dict, trials: list[dict]) -> bool:
        assert search["status"] not in FINAL_SEARCH, search  # it ended before the phase: no point waiting
        with sessions() as session:
            query = select(Trial.id).where(Trial.search_id == search["id"], Trial.kind == kind, Trial.stage == stage)
            ids = set(session.scalars(query))
        mine = [t for t in trials if t["id"] in ids]
        if with_a_result and not any(t["status"] == TrialStatus.SUCCEEDED for t in mine):
            return False
        executions = read_executions(log)
        keys = [candidate_key(t["multipliers"], t["seed"]) for t in mine]
        return any(run.finished is None for key in keys for run in executions.get(key, []))

    return condition


def stored_trials(sessions, search_id: int) -> list[Trial]:
    with sessions() as session:
        query = select(Trial).where(Trial.search_id == search_id)
        return list(session.scalars(query.order_by(Trial.generation, Trial.index, Trial.replicate)))


def leaves(value: object, path: tuple = ()) -> list[tuple[tuple, object]]:
    """(path, leaf) of each leaf of a JSON value, in a fixed order: to compare two values numerically."""
    if isinstance(value, dict):
        return [leaf for key in sorted(value) for leaf in leaves(value[key], (*path, key))]
    if isinstance(value, list):
        return [leaf for i, item in enumerate(value) for leaf in leaves(item, (*path, i))]
    return [(path, value)]


def assert_matches_staged_reference(trials: list[Trial], reference: dict[tuple[int, int, int], Trial]) -> None:
    assert sorted((t.generation, t.index, t.replicate) for t in trials) == sorted(reference)
    for t in trials:
        expected = reference[(t.generation, t.index, t.replicate)]
        assert {c: getattr(t, c) for c in EXACT} == {c: getattr(expected, c) for c in EXACT}
        for column in ("vector", "multipliers", "origin", "loss"):
            ours, theirs = leaves(getattr(t, column)), leaves(getattr(expected, column))
            assert [p for p, _ in ours] == [p for p, _ in theirs], column
            close = [pytest.approx(v, rel=1e-9, abs=1e-12) if isinstance(v, float) else v for _, v in theirs]
            assert [v for _, v in ours] == close, column


def test_a_staged_search_killed_in_each_phase_trains_every_trial_to_completion_once(db_url, staged_reference, tmp_path):
    controller, log = logged_controller(db_url, tmp_path)
    store = open_database(db_url)
    sessions = session_factory(store)
    kills: list[tuple[float, set[int]]] = []  # when each kill had landed, and the trials stored as succeeded then
    # the global stage's selection, the per-module search (which must resume from the global choice) and the
    # transfer check (once it has a result to keep): SIGKILL, Ray included, while a trial of each trains
    moments = [("reevaluation", "global", False), ("search", "per-module", False), ("validation", None, True)]
    controller.start()
    try:
        search_id = controller.post("/api/searches", PACED_STAGED_SPEC).json()["id"]
        for kind, stage, with_a_result in moments:
            controller.wait_for(search_id, training_in_phase(kind, stage, sessions, log, with_a_result=with_a_result))
            controller.kill()
            kills.append((time.time(), succeeded_trials(db_url)))
            controller.start()
        trials = run_to_the_end(controller, search_id)
        stored = stored_trials(sessions, search_id)
        with sessions() as session:
            query = select(Generation).where(Generation.search_id == search_id).order_by(Generation.number)
            phases = [(g.kind, g.stage) for g in session.scalars(query)]
    finally:
        controller.stop()
        store.dispose()

    assert phases == STAGED_PHASES
    assert len(trials) == len({(t["generation"], t["index"], t["replicate"]) for t in trials}) == STAGED_TRIALS
    assert len({candidate_key(t["multipliers"], t["seed"]) for t in trials}) == STAGED_TRIALS  # the log tells apart
    assert all(t["status"] == TrialStatus.SUCCEEDED for t in trials), [(t["status"], t["error"]) for t in trials]
    assert_matches_staged_reference(stored, staged_reference)  # the plan, optimizers and choices survived
    runs = runs_by_trial(trials, log)
    assert_reruns_cut_short_by(kills, trials, runs)
    phase_of = {t.id: (t.kind, t.stage) for t in stored}
    for (kind, stage, _), (kill, _) in zip(moments, kills, strict=True):  # each kill cut short a run of its phase
        assert any(
            phase_of[trial_id] == (kind, stage) and run.started < kill and run.finished is None
            for trial_id, mine in runs.items()
            for run in mine
        ), kind
    assert kills[-1][1] & {t.id for t in stored if t.kind == "validation"}  # a validation result was kept


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
    controller, log = logged_controller(url, tmp_path)
    controller.start()
    try:
        search_id = controller.post("/api/searches", PACED_SPEC).json()["id"]
        controller.wait_for(search_id, training_in(1, log))
        pg_ctl("stop")
        down_since = time.time()
        down = httpx.get(f"{controller.url}/api/searches/{search_id}", timeout=30)
        assert down.status_code == 503 and "retry later" in down.json()["detail"]  # not a 500, and says why
        assert httpx.get(f"{controller.url}/api/health", timeout=30).status_code == 503
        wait_for_a_return_after(log, down_since)  # a result the controller must hold until it can write it
        down_until = time.time()
        pg_ctl("start")
        trials = run_to_the_end(controller, search_id)
        assert httpx.get(f"{controller.url}/api/health", timeout=30).json()["status"] == "ok"
    finally:
        controller.stop()

    assert_matches_reference(trials, reference)
    runs = runs_by_trial(trials, log)
    assert_each_trained_once(trials, runs)  # no result was lost, so nothing was trained twice
    assert_held_through(trials, runs, (down_since, down_until))


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
    controller, log = logged_controller(url, tmp_path)
    controller.start()
    try:
        search_id = controller.post("/api/searches", PACED_SPEC).json()["id"]
        controller.wait_for(search_id, training_in(0, log))
        ballast = fill(small_disk)
        full_since = time.time()
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
        wait_for_a_return_after(log, full_since)
        full_until = time.time()
        ballast.unlink()  # space again: the held results are written and the search goes on
        trials = run_to_the_end(controller, search_id)
    finally:
        controller.stop()

    assert_matches_reference(trials, reference)
    runs = runs_by_trial(trials, log)
    assert_each_trained_once(trials, runs)
    assert_held_through(trials, runs, (full_since, full_until))


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
