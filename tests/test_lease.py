"""The engine lease: of the servers sharing a store, one drives the searches; another takes over when it dies.

First the migration that adds it, then the lease in the store (exclusive, expiring, renewed only by its
holder, fenced) and an API-only server's health, then a candidate's engine in this process (it stops before
its lease can be taken), then real ``hpo serve`` processes on one database: the holder SIGKILLed or paused
mid-search, and the search completing with every candidate once.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from hpo_service.api.app import create_app
from hpo_service.engine.lease import LEASE, EngineCandidate, LeaseTiming, ServerRole, fenced
from hpo_service.statuses import TrialStatus
from hpo_service.store import queries, writes
from hpo_service.store.database import open_database, transaction, upgrade
from hpo_service.store.models import EngineLease, Search
from tests.controller import Controller, process_tree
from tests.test_faults import (
    ALLOW_TEST_TRIALS,
    PACED_SPEC,
    SPEC,
    assert_returned_once,
    epoch,
    halfway_through,
    run_to_the_end,
    runs_by_trial,
)
from tests.trial_fns import EXECUTION_LOG

Sessions = sessionmaker[Session]


def take(sessions: Sessions, holder: str, ttl_s: float = 60.0) -> bool:
    with transaction(sessions) as session:
        return writes.acquire_lease(session, LEASE, holder, "host", 1, ttl_s)


def renew(sessions: Sessions, holder: str, ttl_s: float = 60.0) -> bool:
    with transaction(sessions) as session:
        return writes.renew_lease(session, LEASE, holder, ttl_s)


def holds(sessions: Sessions, holder: str) -> bool:
    with transaction(sessions) as session:
        return queries.holds_lease(session, LEASE, holder)


def lease_row(sessions: Sessions) -> queries.LeaseState:
    with sessions() as session:
        state = queries.lease(session, LEASE)
    assert state is not None
    return state


# -- the migration that adds the lease ------------------------------------------------------------------------


STORE_IN_USE = (  # a search, a trial and its curve, in schema 0001
    "INSERT INTO searches (id, name, status, spec, spec_hash, created_at) "
    "VALUES (1, 'in use', 'running', '{}', 'h', '2026-01-01')",
    'INSERT INTO trials (id, search_id, generation, "index", replicate, seed, status, attempts, vector, multipliers, '
    "hps, tokens, created_at) VALUES (1, 1, 0, 0, 0, 7, 'running', 1, '[]', '{}', '{}', 7680, '2026-01-01')",
    "INSERT INTO progress_points (trial_id, step, train_loss) VALUES (1, 1, 3.0), (1, 2, 2.5)",
)


def test_the_lease_migration_keeps_every_row_and_widens_seeds_and_token_counts_to_64_bits(fresh_database):
    upgrade(fresh_database, "0001")
    engine = open_database(fresh_database)
    try:
        with engine.begin() as connection:
            for statement in STORE_IN_USE:
                connection.execute(text(statement))
        upgrade(fresh_database)  # SQLite rebuilds trials for it: its curve must survive
        with engine.begin() as connection:
            curve = connection.execute(text("SELECT trial_id, step FROM progress_points ORDER BY step")).all()
            assert curve == [(1, 1), (1, 2)]
            wide = {"seed": 2**62, "tokens": 10**10}  # a 10B-token trial overflows PostgreSQL's integer
            connection.execute(text("UPDATE trials SET seed = :seed, tokens = :tokens"), wide)
            assert connection.execute(text("SELECT seed, tokens FROM trials")).one() == (2**62, 10**10)
    finally:
        engine.dispose()


# -- the lease in the store -----------------------------------------------------------------------------------


def test_one_server_holds_the_lease_and_only_it_can_renew_it(sessions):
    assert take(sessions, "a")
    assert not take(sessions, "b")
    assert renew(sessions, "a")
    assert not renew(sessions, "b")  # renewing is not a way to take it
    assert holds(sessions, "a") and not holds(sessions, "b")
    assert lease_row(sessions).holder == "a"


def test_an_expired_lease_goes_to_the_next_server_and_is_lost_to_its_old_holder(sessions):
    assert take(sessions, "a", ttl_s=0.3)
    assert not take(sessions, "b")
    time.sleep(0.5)
    assert lease_row(sessions).expires_in_s < 0
    assert not holds(sessions, "a")  # expired: a's engine may write nothing
    assert take(sessions, "b")
    assert not take(sessions, "a") and not renew(sessions, "a")
    assert lease_row(sessions).holder == "b" and lease_row(sessions).expires_in_s > 50


def test_a_lease_that_expired_untaken_is_renewed_by_its_holder(sessions):
    assert take(sessions, "a", ttl_s=0.3)
    time.sleep(0.5)
    assert not holds(sessions, "a")
    assert not renew(sessions, "b")  # renewing is not a way to take it, expired or not
    assert renew(sessions, "a") and holds(sessions, "a")  # no one else can have driven meanwhile


def test_a_released_lease_is_taken_at_once(sessions):
    assert take(sessions, "a")
    with transaction(sessions) as session:
        writes.release_lease(session, LEASE, "b")  # not b's to release
    assert not take(sessions, "b")
    with transaction(sessions) as session:
        writes.release_lease(session, LEASE, "a")
    assert take(sessions, "b")


@pytest.mark.parametrize("state", ["never taken", "expired"])
def test_of_servers_racing_for_a_free_lease_exactly_one_wins(sessions, state):
    if state == "expired":
        assert take(sessions, "old", ttl_s=0.2)
        time.sleep(0.4)
    racers = 6
    start = threading.Barrier(racers)

    def race(name: str) -> bool:
        with sessions() as session:  # a connection opened before the start, so that the racers start together
            session.execute(text("SELECT 1"))
        start.wait()
        return take(sessions, name)

    names = [f"racer-{i}" for i in range(racers)]
    with ThreadPoolExecutor(racers) as pool:
        answers = dict(zip(names, pool.map(race, names), strict=True))  # a loser is told no, not an error
    won = [name for name, took in answers.items() if took]
    assert len(won) == 1, won
    assert lease_row(sessions).holder == won[0]


def test_an_engine_whose_server_lost_the_lease_writes_nothing(sessions):
    engine_sessions = fenced(sessions, lambda session: queries.holds_lease(session, LEASE, "a"), stall_limit_s=5)
    assert take(sessions, "a", ttl_s=0.5)
    with transaction(engine_sessions) as session:
        writes.create_search(session, "while held", {}, "0" * 64)
    time.sleep(0.7)
    assert take(sessions, "b")
    with pytest.raises(OperationalError, match="no longer holds the engine lease"), transaction(engine_sessions) as s:
        writes.create_search(s, "after the takeover", {}, "0" * 64)
    with sessions() as session:
        assert session.scalars(select(Search.name)).all() == ["while held"]


def test_an_api_only_server_is_healthy_and_names_the_lease_holder(db_url, sessions):
    with TestClient(create_app(db_url, run_engine=False)) as client:
        assert client.get("/api/health").json()["lease"] is None  # no server ever took it
        assert take(sessions, "elsewhere")
        answer = client.get("/api/health")
    assert answer.status_code == 200
    body = answer.json()
    assert (body["status"], body["role"], body["engine"]) == ("ok", "api-only", "off")
    assert body["lease"]["host"] == "host" and not body["lease"]["this_server"] and body["lease"]["expires_in_s"] > 50


# -- a candidate in this process, with a real engine ----------------------------------------------------------

FAST = LeaseTiming(ttl_s=4.0, renew_every_s=0.3)


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> float:
    """Poll ``condition``; the time.monotonic() at which it first held."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout_s} s: {what}"
        time.sleep(0.02)
    return time.monotonic()


@contextlib.contextmanager
def lease_writes_blocked(db_url: str, sessions: Sessions) -> Iterator[None]:
    """Another connection stalls every write of the lease row (its renewal) but not the engine's reads: the
    store stops answering the holder, as when it is cut off or paused."""
    url = make_url(db_url)
    if url.get_backend_name() == "sqlite":  # the database's one write lock
        blocker = sqlite3.connect(url.database, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        return
    with sessions() as session, session.begin():  # a share lock on the lease's row: updates wait, reads do not
        session.scalar(select(EngineLease.name).where(EngineLease.name == LEASE).with_for_update(read=True))
        yield


def test_a_holder_whose_store_stops_answering_keeps_its_engine_and_renews_once_it_answers(db_url, sessions, local_ray):
    candidate = EngineCandidate(sessions, FAST)
    candidate.start()
    try:
        engine = candidate.engine
        assert candidate.role == ServerRole.HOLDER and engine is not None and engine.alive
        with lease_writes_blocked(db_url, sessions):  # an outage: its running trials are not thrown away
            wait_until(lambda: lease_row(sessions).expires_in_s < 0, FAST.ttl_s + 5, "the lease expires")
            time.sleep(2 * FAST.renew_every_s)
            assert candidate.engine is engine and engine.alive
        wait_until(lambda: lease_row(sessions).expires_in_s > 0, 10, "the store answers: the lease is renewed")
        assert lease_row(sessions).holder == candidate.holder
        assert candidate.engine is engine and engine.alive
    finally:
        candidate.stop()


def test_a_holder_whose_lease_another_server_took_stops_its_engine(sessions, local_ray):
    candidate = EngineCandidate(sessions, FAST)
    candidate.start()
    try:
        engine = candidate.engine
        assert engine is not None and engine.alive
        with transaction(sessions) as session:  # as after an expiry the holder did not see: another took it
            session.execute(update(EngineLease).values(holder="another server"))
        wait_until(lambda: not engine.alive, 10, "the engine stops")
        assert candidate.role == ServerRole.STANDBY and lease_row(sessions).holder == "another server"
    finally:
        candidate.stop()


def test_a_stopped_holder_hands_the_engine_to_a_standby_at_once(sessions, local_ray):
    timing = LeaseTiming(ttl_s=30.0, renew_every_s=0.3)  # expiry would take 30 s
    first, second = EngineCandidate(sessions, timing), EngineCandidate(sessions, timing)
    first.start()
    second.start()
    try:
        assert (first.role, second.role) == (ServerRole.HOLDER, ServerRole.STANDBY)
        time.sleep(2 * timing.renew_every_s)
        assert second.engine is None  # a live holder keeps it
        stopping = time.monotonic()
        first.stop()
        taken = wait_until(lambda: second.engine is not None, 5, "the standby takes the lease")
        assert taken - stopping < 5 < timing.ttl_s
        assert lease_row(sessions).holder == second.holder
    finally:
        first.stop()
        second.stop()


# -- real servers on one database -----------------------------------------------------------------------------

TTL_S = 6.0  # HPO_LEASE_TTL_S of the servers below: they renew every 1 s


def two_servers(db_url: str, tmp_path: Path) -> tuple[Controller, Controller, Path]:
    """A holder and a standby on one database, their Ray workers logging every execution to the returned file."""
    log = tmp_path / "executions.jsonl"
    env = {**ALLOW_TEST_TRIALS, EXECUTION_LOG: str(log), "HPO_LEASE_TTL_S": str(TTL_S)}
    first = Controller(db_url, tmp_path / "first.log", env=env).start()  # the lease is free: it takes it
    second = Controller(db_url, tmp_path / "second.log", env=env).start()
    return first, second, log


def health(controller: Controller) -> dict:
    return controller.get("/api/health")


def wait_for_role(controller: Controller, role: ServerRole, timeout_s: float = 30.0) -> float:
    """Until ``controller`` says it has ``role``; the time.time() at which it first did."""
    deadline = time.monotonic() + timeout_s
    while (now := time.time()) and health(controller)["role"] != role:
        assert time.monotonic() < deadline, f"{controller.url} never became {role}: {health(controller)}"
        time.sleep(0.1)
    return now


def assert_each_candidate_stored_once(trials: list[dict]) -> None:
    population, generations = SPEC["optimizer"]["population"], SPEC["optimizer"]["generations"]
    keys = [(t["generation"], t["index"]) for t in trials]
    assert len(keys) == len(set(keys)) == population * generations
    assert all(t["status"] == TrialStatus.SUCCEEDED for t in trials), [(t["status"], t["error"]) for t in trials]


def test_the_holder_killed_mid_search_a_standby_takes_over_and_every_candidate_runs_once(db_url, tmp_path):
    first, second, log = two_servers(db_url, tmp_path)
    try:
        assert health(first)["role"] == ServerRole.HOLDER
        standby = health(second)
        assert standby["status"] == "ok" and standby["role"] == ServerRole.STANDBY  # healthy: 200
        assert standby["lease"]["pid"] == first.process.pid and not standby["lease"]["this_server"]
        search_id = second.post("/api/searches", PACED_SPEC).json()["id"]  # a standby takes submissions
        second.wait_for(search_id, halfway_through(0, log))
        killed = time.time()
        first.kill()  # the holder's whole session, its Ray workers included
        took_over = wait_for_role(second, ServerRole.HOLDER)
        trials = run_to_the_end(second, search_id)
        assert health(second)["lease"]["this_server"]
    finally:
        first.stop()
        second.stop()

    assert took_over - killed < TTL_S + 3, f"taken over {took_over - killed:.1f} s after the kill"
    assert_each_candidate_stored_once(trials)
    runs = runs_by_trial(trials, log)
    assert_returned_once(trials, runs)  # no result was lost, none trained again once returned
    repeated = [run for mine in runs.values() for run in mine[:-1]]
    assert repeated, "the kill cut no trial short"
    assert all(run.finished is None and run.started < killed for run in repeated), repeated  # only those


def test_a_paused_holder_loses_the_lease_and_writes_nothing_once_it_wakes(db_url, tmp_path):
    first, second, log = two_servers(db_url, tmp_path)
    try:
        search_id = first.post("/api/searches", PACED_SPEC).json()["id"]
        second.wait_for(search_id, halfway_through(0, log))
        os.kill(first.process.pid, signal.SIGSTOP)  # the server alone: its workers finish their trials meanwhile
        took_over = wait_for_role(second, ServerRole.HOLDER)
        time.sleep(3)  # the paused server's workers have returned: results it holds, for a search it lost
        workers = set(process_tree(first.process.pid)) - {first.process.pid}  # its Ray's processes
        os.kill(first.process.pid, signal.SIGCONT)
        wait_for_role(first, ServerRole.STANDBY, timeout_s=10)
        trials = run_to_the_end(second, search_id)
        assert health(first)["status"] == "ok"
    finally:
        os.kill(first.process.pid, signal.SIGCONT)
        first.stop()
        second.stop()

    assert_each_candidate_stored_once(trials)
    late = [
        (t["generation"], t["index"], t["worker"], t["finished_at"])
        for t in trials
        if int(t["worker"].rpartition(":")[2]) in workers and epoch(t["finished_at"]) > took_over
    ]
    assert not late, f"the paused server wrote results after it lost the lease: {late}"


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"HPO_LEASE_TTL_S": "soon"}, "HPO_LEASE_TTL_S must be a number of seconds, got 'soon'"),
        ({"HPO_LEASE_TTL_S": "5", "HPO_LEASE_RENEW_S": "9"}, "needs 0 < HPO_LEASE_RENEW_S < HPO_LEASE_TTL_S"),
    ],
)
def test_a_bad_lease_setting_stops_hpo_serve_with_one_line(tmp_path, variables, message):
    result = subprocess.run(
        [sys.executable, "-m", "hpo_service.cli", "serve", "--db", str(tmp_path / "hpo.db")],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **variables},
    )
    assert result.returncode == 2 and message in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
