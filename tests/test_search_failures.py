"""A search's failures are its own, and say why: on real Ray and both stores.

- A write the store refuses for one search's data fails that search with the database's reason; other searches,
  even those whose results were in the same transaction, go on, and the engine never waits for the store.
- A search whose trials all fail ends ``failed`` with the commonest error, shown by the API and the CLI.
- A final status never changes again, even when a cancel lands between the engine's read and its write.
"""

from __future__ import annotations

import functools
import subprocess
import sys
import time

import pytest
import ray
from sqlalchemy import event, select

import tests.trial_fns as trial_fns
from hpo_service.engine.commands import Commands
from hpo_service.engine.engine import Engine
from hpo_service.engine.executor import RayExecutor
from hpo_service.store import queries, writes
from hpo_service.store.database import session_factory, transaction
from hpo_service.store.models import Generation, Search
from tests.controller import ROOT, Controller
from tests.test_engine import BELOW_THE_CLIFF, finished, run_until, tiny_spec, trials_of

ray.cloudpickle.register_pickle_by_value(trial_fns)  # Ray workers cannot import the tests package
ON_RAY = pytest.mark.usefixtures("local_ray")
BAD_SEED = 13  # the seed whose results ``trial_fns.overflows_a_column_for_seed`` makes unstorable
ONE_TRIAL = {"name": "random", "population": 1, "generations": 1}
REFUSED = ("out of range", "too large")  # PostgreSQL's words for the value, and SQLite's driver's


@pytest.fixture
def engines():
    """Engines to stop (their executors closed) after the test."""
    started: list[Engine] = []
    yield started
    for engine in started:
        if engine.alive:
            engine.stop()
        elif engine.executor is not None:
            engine.executor.close()


def engine_on(engines: list[Engine], sessions, trial_fn) -> Engine:
    """An engine driven by hand (``turn``), its trials run by ``trial_fn``."""
    engine = Engine(sessions)
    engine.executor = RayExecutor(trial_fn=trial_fn)
    engines.append(engine)
    return engine


def create_raw(sessions, spec_json: dict) -> int:
    """A search stored as given, as if it had been admitted by a server with laxer checks."""
    with transaction(sessions) as session:
        return writes.create_search(session, spec_json["name"], spec_json, "0" * 64).id


def stored(sessions, search_id: int) -> Search:
    with sessions() as session:
        return session.get(Search, search_id)


# -- (a) a write the store cannot take fails its search, not the engine ------------------------------------------


@ON_RAY
def test_results_the_store_cannot_hold_fail_their_search_while_those_written_with_them_are_kept(sessions, engines):
    overflowing = functools.partial(trial_fns.overflows_a_column_for_seed, BAD_SEED)
    engine = engine_on(engines, sessions, overflowing)
    commands = Commands(sessions)
    bad = commands.create(tiny_spec(name="bad", training={"seed": BAD_SEED}, optimizer=ONE_TRIAL)).id
    good_optimizer = {**ONE_TRIAL, "generations": 2}
    good = commands.create(tiny_spec(name="good", optimizer=good_optimizer, search_space=BELOW_THE_CLIFF)).id
    deadline = time.monotonic() + 60
    while len(engine.executor.in_flight) < 2:  # both searches' first trials dispatched
        assert time.monotonic() < deadline, "the two trials were never in flight together"
        engine.turn()
    ray.wait([flight.ref for flight in engine.executor.in_flight.values()], num_returns=2, timeout=60)

    engine.turn()  # both results arrive in one poll: one transaction, which the bad one makes the store refuse

    bad_search, good_search = stored(sessions, bad), stored(sessions, good)
    assert bad_search.status == "failed"
    assert bad_search.error.startswith("the store refused its trials' results: ")
    assert any(word in bad_search.error for word in REFUSED), bad_search.error
    assert [t.status for t in trials_of(sessions, bad)] == ["cancelled"]  # its result was never written
    first = trials_of(sessions, good)[0]  # written in the same turn, and its next generation asked
    assert (first.generation, first.status, first.attempts) == (0, "succeeded", 1)
    assert good_search.status == "running" and not engine.unrecorded and bad not in engine.runners
    assert run_until(engine, sessions, good, finished).status == "completed"
    assert [(t.status, t.attempts) for t in trials_of(sessions, good)] == [("succeeded", 1)] * 2


@ON_RAY
def test_searches_the_store_cannot_write_fail_while_the_engine_stays_healthy_and_the_others_complete(sessions, engines):
    overflowing = functools.partial(trial_fns.overflows_a_column_for_seed, BAD_SEED)
    engine = Engine(sessions, executor_factory=lambda: RayExecutor(trial_fn=overflowing))
    engines.append(engine)
    commands = Commands(sessions)
    unwritable_result = commands.create(tiny_spec(name="result", training={"seed": BAD_SEED}, optimizer=ONE_TRIAL))
    # a seed beyond any integer column, stored before specs bounded it: the search cannot start
    spec_json = tiny_spec(name="seed").model_dump(mode="json")
    unloadable = create_raw(sessions, {**spec_json, "training": {**spec_json["training"], "seed": 2**63}})
    good_optimizer = {"name": "cma", "population": 2, "generations": 2}
    good = commands.create(tiny_spec(name="good", optimizer=good_optimizer, search_space=BELOW_THE_CLIFF)).id

    engine.start()
    deadline = time.monotonic() + 120
    while not all(stored(sessions, s).status in ("completed", "failed") for s in (unloadable, good)):
        assert engine.alive and engine.store_error is None, engine.store_error  # /api/health's engine: running
        assert time.monotonic() < deadline, "the searches did not end"
        time.sleep(0.1)
    engine.wake()
    while stored(sessions, unwritable_result.id).status != "failed":
        assert engine.store_error is None and time.monotonic() < deadline
        time.sleep(0.1)

    assert stored(sessions, good).status == "completed"
    assert all((t.status, t.attempts) == ("succeeded", 1) for t in trials_of(sessions, good))
    unloaded = stored(sessions, unloadable)
    assert unloaded.status == "failed" and unloaded.error.startswith("cannot start the search: ")
    assert "\n" not in unloaded.error, unloaded.error  # one line: the reason, not a traceback
    assert trials_of(sessions, unloadable) == []
    result_search = stored(sessions, unwritable_result.id)
    assert result_search.error.startswith("the store refused its trials' results: ")
    assert engine.store_error is None and engine.error is None


@ON_RAY
def test_a_trial_error_the_store_could_not_hold_as_text_is_stored_escaped(sessions, engines):
    search = Commands(sessions).create(tiny_spec(optimizer=ONE_TRIAL))
    engine = engine_on(engines, sessions, trial_fns.fails_with_unstorable_text)
    ended = run_until(engine, sessions, search.id, finished)
    (trial,) = trials_of(sessions, search.id)
    assert (trial.status, trial.error) == ("failed", "bad\\x00byte \\udcff")
    assert ended.status == "failed" and trial.error in ended.error


# -- (b) a search whose trials all fail ends failed, and says why ------------------------------------------------


@ON_RAY
def test_a_generation_whose_every_trial_failed_fails_the_search_with_the_commonest_error(sessions, engines):
    spec = tiny_spec(optimizer={"name": "random", "population": 1, "generations": 3, "replicates": 4})
    search = Commands(sessions).create(spec)
    engine = engine_on(engines, sessions, trial_fns.missing_file_but_seed_3)
    ended = run_until(engine, sessions, search.id, finished)
    assert ended.status == "failed"
    assert ended.error == (
        "all 4 trials of generation 0 failed: "
        "FileNotFoundError: [Errno 2] No such file or directory: 'corpus.txt' (3 of 4)"
    )
    assert ended.finished_at is not None
    # no budget is spent on the next generations: they would fail alike
    assert {t.generation for t in trials_of(sessions, search.id)} == {0}
    with sessions() as session:
        assert session.scalars(select(Generation.status).where(Generation.search_id == search.id)).all() == [
            "completed"
        ]


@ON_RAY
def test_a_search_that_ends_with_no_trial_succeeded_fails_with_the_commonest_outcome(sessions, engines):
    spec = tiny_spec(optimizer={"name": "random", "population": 1, "generations": 2, "replicates": 3})
    search = Commands(sessions).create(spec)
    engine = engine_on(engines, sessions, trial_fns.diverges_or_raises)  # seeds 0, 1, 2: diverged, failed, diverged
    ended = run_until(engine, sessions, search.id, finished)
    assert [t.generation for t in trials_of(sessions, search.id)] == [0, 0, 0, 1, 1, 1]  # no generation all failed
    assert (ended.status, ended.error) == ("failed", "no trial succeeded: diverged: synthetic cliff (4 of 6)")


def hpo(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "hpo_service.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_the_api_hpo_status_and_hpo_watch_say_why_a_search_failed(db_url, tmp_path):
    spec = tiny_spec(
        name="missing-data",
        optimizer={"name": "random", "population": 1, "generations": 2, "replicates": 4},
        execution={"trial": "tests.trial_fns:missing_file_but_seed_3"},
    ).model_dump(mode="json")
    reason = (
        "all 4 trials of generation 0 failed: "
        "FileNotFoundError: [Errno 2] No such file or directory: 'corpus.txt' (3 of 4)"
    )
    controller = Controller(db_url, tmp_path / "controller.log", env={"HPO_ALLOWED_TRIALS": "tests.trial_fns:*"})
    controller.start()
    try:
        created = controller.post("/api/searches", spec)
        assert created.status_code == 201, created.text
        search_id = created.json()["id"]
        summary = controller.wait_for(search_id, lambda search, _: search["status"] == "failed", timeout_s=120)
        assert summary["error"] == reason
        assert summary["trials"]["failed"] == 4 and summary["commands"] == []
        listed = controller.get("/api/searches")["searches"]
        assert [(s["status"], s["error"]) for s in listed if s["id"] == search_id] == [("failed", reason)]

        status = hpo("status", str(search_id), "--server", controller.url)
        assert status.returncode == 0, status.stderr
        assert f"search {search_id} (missing-data): failed" in status.stdout
        assert f"error: {reason}" in status.stdout
        watch = hpo("watch", str(search_id), "--server", controller.url)
        assert watch.returncode == 1  # the search did not complete
        assert f"search {search_id} (missing-data): failed" in watch.stdout
        assert f"error: {reason}" in watch.stdout
    finally:
        controller.stop()


# -- (c) a final status never changes again ------------------------------------------------------------------------


def test_no_status_write_changes_a_final_status(sessions):
    spec = tiny_spec().model_dump(mode="json")
    for final in ("cancelled", "completed", "failed"):
        search_id = create_raw(sessions, spec)
        with transaction(sessions) as session:
            if final == "cancelled":
                writes.apply_command(session, search_id, "cancel")
            elif final == "completed":
                assert writes.complete_search(session, search_id)
            else:
                assert writes.fail_search(session, search_id, "a reason")
        before = stored(sessions, search_id)
        with transaction(sessions) as session:
            assert not writes.start_search(session, search_id)
            assert not writes.complete_search(session, search_id)
            assert not writes.fail_search(session, search_id, "too late")
            for command in ("pause", "resume", "cancel"):
                if command != "cancel" or final != "cancelled":
                    with pytest.raises(writes.CommandError):
                        writes.apply_command(session, search_id, command)
        after = stored(sessions, search_id)
        assert (after.status, after.error, after.finished_at) == (before.status, before.error, before.finished_at)
        assert after.started_at is None


@ON_RAY
def test_a_cancel_after_the_engine_failed_to_load_the_search_stays_cancelled(sessions, engines):
    """The cancel commits after the engine's load of the search was rolled back and before it writes the
    failure: the engine's reason is not written over the user's cancel."""
    spec_json = tiny_spec(name="unloadable").model_dump(mode="json")
    search_id = create_raw(sessions, {**spec_json, "training": {**spec_json["training"], "seed": 2**63}})
    engine_sessions = session_factory(sessions.kw["bind"])  # the engine's own: the hook sees its rollbacks only
    event.listen(engine_sessions, "after_rollback", lambda _: Commands(sessions).apply(search_id, "cancel"), once=True)
    engine = engine_on(engines, engine_sessions, trial_fns.synthetic)

    engine.turn()  # the search cannot be loaded (its seed); rolled back; the cancel lands; the engine fails it

    search = stored(sessions, search_id)
    assert (search.status, search.error) == ("cancelled", None)
    assert search_id not in engine.runners and engine.unrecorded == []


@ON_RAY
def test_a_cancel_while_the_engine_ends_the_last_generation_stays_cancelled(sessions, engines, monkeypatch):
    """The cancel commits after the engine read the last generation's trials, all ended, and before it writes
    the search's completion."""
    search = Commands(sessions).create(tiny_spec(optimizer=ONE_TRIAL, search_space=BELOW_THE_CLIFF))
    engine = engine_on(engines, sessions, trial_fns.synthetic)
    read_losses = queries.candidate_losses  # read once the generation's trials have all ended, before any write

    def cancel_then_read(session, search_id, generation):
        Commands(sessions).apply(search_id, "cancel")
        return read_losses(session, search_id, generation)

    monkeypatch.setattr(queries, "candidate_losses", cancel_then_read)
    assert run_until(engine, sessions, search.id, finished).status == "cancelled"
    engine.turn()
    assert stored(sessions, search.id).status == "cancelled" and search.id not in engine.runners
    assert [t.status for t in trials_of(sessions, search.id)] == ["succeeded"]
