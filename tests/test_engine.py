"""The engine on real Ray and a real database (SQLite and PostgreSQL): generations, retries, control."""

from __future__ import annotations

import functools
import math
import time

import numpy as np
import pytest
import ray
from sqlalchemy import delete, select

import tests.trial_fns as trial_fns
from hpo_service.engine.commands import Commands
from hpo_service.engine.engine import Engine
from hpo_service.engine.executor import RayExecutor
from hpo_service.engine.plan import SearchPlan
from hpo_service.spec import SearchSpec
from hpo_service.store import queries
from hpo_service.store.models import Generation, ProgressPoint, Search, Trial

ray.cloudpickle.register_pickle_by_value(trial_fns)  # Ray workers cannot import the tests package
pytestmark = pytest.mark.usefixtures("local_ray")


def tiny_spec(**overrides) -> SearchSpec:
    sections = {
        "name": "engine-test",
        "model": {"width": 32, "depth": 1, "head_dim": 16, "seq_len": 32},
        "training": {"batch_size": 4, "steps": 12, "warmup_steps": 2, "device": "cpu"},
        "search_space": {"modules": ["attn_q", "mlp_up", "mlp_down", "unembedding"], "hps": ["lr", "init_std"]},
        "optimizer": {"name": "cma", "population": 4, "generations": 2, "seed": 0},
        "execution": {"parallel": 2, "max_retries": 1, "timeout_s": 60},
    }
    for section, values in overrides.items():
        sections[section] = {**sections.get(section, {}), **values} if isinstance(values, dict) else values
    return SearchSpec.model_validate(sections)


BELOW_THE_CLIFF = {"log2_bounds": [-1.0, 1.0]}  # trial_fns.synthetic diverges above +1.5 octaves of LR
EXECUTORS: list[RayExecutor] = []


@pytest.fixture(autouse=True)
def _close_executors():
    yield
    while EXECUTORS:
        EXECUTORS.pop().close()


def engine_on(sessions, trial_fn=None) -> Engine:
    engine = Engine(sessions)
    engine.executor = RayExecutor(trial_fn=trial_fn) if trial_fn else RayExecutor()
    EXECUTORS.append(engine.executor)
    return engine


def run_until(engine: Engine, sessions, search_id: int, done, timeout_s: float = 120.0) -> Search:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        engine.turn()
        with sessions() as session:
            search = session.get(Search, search_id)
            if done(session, search):
                return search
    pytest.fail(f"search {search_id} did not get there in {timeout_s} s")


def finished(session, search) -> bool:
    return search.status in ("completed", "cancelled", "failed")


def trials_of(sessions, search_id: int) -> list[Trial]:
    with sessions() as session:
        return list(
            session.scalars(select(Trial).where(Trial.search_id == search_id).order_by(Trial.generation, Trial.index))
        )


def told_in_first_generation(sessions, search_id: int) -> list[float]:
    """What the optimizer was told for generation 0's candidates, sorted: read from Nevergrad's own archive in
    the plan's last snapshot (written with every tell), each candidate looked up by its vector."""
    with sessions() as session:
        plan = SearchPlan.loads(queries.policy_snapshot(session, search_id))
        vectors = {t.index: t.vector for t in queries.generation_trials(session, search_id, 0)}
    optimizer = plan.policy.optimizer
    space = optimizer.parametrization
    keys = [space.spawn_child(new_value=np.asarray(v)).get_standardized_data(reference=space) for v in vectors.values()]
    return sorted(optimizer.archive[key].mean for key in keys)


def test_a_search_trains_every_candidate_of_every_generation_once(sessions):
    search = Commands(sessions).create(tiny_spec())
    engine = engine_on(sessions)
    assert run_until(engine, sessions, search.id, finished).status == "completed"

    trials = trials_of(sessions, search.id)
    assert [(t.generation, t.index) for t in trials] == [(g, i) for g in range(2) for i in range(4)]
    assert all(t.status == "succeeded" and t.attempts == 1 and 2.0 < t.loss < 6.0 for t in trials)
    assert all(t.node and t.worker and t.wall_time_s > 0 for t in trials)
    assert len({tuple(t.vector) for t in trials}) == 8
    with sessions() as session:
        for t in trials:
            curve = session.scalars(select(ProgressPoint).where(ProgressPoint.trial_id == t.id)).all()
            assert [p.step for p in curve] == list(range(1, 13))
            assert curve[-1].val_loss == pytest.approx(t.loss)
        generations = session.scalars(select(Generation).where(Generation.search_id == search.id)).all()
        assert [g.status for g in generations] == ["completed", "completed"]
        assert generations[0].best_loss == min(t.loss for t in trials if t.generation == 0)
    # the materialised values are the base HPs times the multipliers, at the proxy's own shape
    first = trials[0]
    expected_lr = 0.01 * 2 ** first.multipliers["module"]["attn_q"]["lr"]
    assert first.hps["attn_q"]["lr"] == pytest.approx(expected_lr)


def test_diverged_candidates_are_told_a_penalty_and_never_ranked_best(sessions):
    # vocabulary 2: ln V = 0.69 lies below the synthetic losses (≥ 2), so the penalty follows the worst loss
    spec = tiny_spec(
        model={"vocab_size": 2}, optimizer={"name": "random", "population": 8, "generations": 2, "seed": 1}
    )
    search = Commands(sessions).create(spec)
    engine = engine_on(sessions, trial_fns.synthetic)
    run_until(engine, sessions, search.id, finished)
    trials = trials_of(sessions, search.id)
    diverged = [t for t in trials if t.status == "diverged"]
    assert diverged, "the synthetic cliff should make some random candidates diverge"
    assert all(t.loss is None for t in diverged)
    with sessions() as session:
        generation = session.scalars(select(Generation).where(Generation.search_id == search.id)).first()
    assert generation.diverged == sum(1 for t in diverged if t.generation == 0)
    first = [t for t in trials if t.generation == 0]
    succeeded = [t.loss for t in first if t.status == "succeeded"]
    assert generation.best_loss == min(succeeded)
    assert any(t.status == "diverged" for t in first), "generation 0 should have a diverged candidate"
    # the optimizer was told each loss, and for each diverged candidate worse than the worst loss seen
    worst = max(*succeeded, math.log(2))  # the documented penalty: worse than anything seen, and than uniform
    expected = [t.loss if t.status == "succeeded" else worst + 1 for t in first]
    assert told_in_first_generation(sessions, search.id) == pytest.approx(sorted(expected))


def test_a_dead_worker_is_retried_with_the_same_candidate(sessions, tmp_path):
    spec = tiny_spec(optimizer={"population": 2, "generations": 1}, search_space=BELOW_THE_CLIFF)
    search = Commands(sessions).create(spec)
    engine = engine_on(sessions, functools.partial(trial_fns.crash_once, str(tmp_path)))
    run_until(engine, sessions, search.id, finished)
    trials = trials_of(sessions, search.id)
    assert [(t.status, t.attempts) for t in trials] == [("succeeded", 2), ("succeeded", 2)]


def test_a_worker_that_keeps_dying_fails_its_trial_after_the_retries(sessions):
    spec = tiny_spec(optimizer={"name": "random", "population": 1, "generations": 1}, execution={"max_retries": 1})
    search = Commands(sessions).create(spec)
    engine = engine_on(sessions, trial_fns.always_crash)
    ended = run_until(engine, sessions, search.id, finished)
    (trial,) = trials_of(sessions, search.id)
    assert (trial.status, trial.attempts) == ("failed", 2)
    assert trial.error.startswith("worker lost: ")
    assert (ended.status, ended.error) == ("failed", f"all 1 trials of generation 0 failed: {trial.error} (1 of 1)")


def test_a_trial_past_its_timeout_is_stopped_and_failed(sessions):
    spec = tiny_spec(optimizer={"name": "random", "population": 1, "generations": 1}, execution={"timeout_s": 2})
    search = Commands(sessions).create(spec)
    engine = engine_on(sessions, trial_fns.hang)
    started = time.monotonic()
    run_until(engine, sessions, search.id, finished, timeout_s=60)
    assert time.monotonic() - started < 30
    (trial,) = trials_of(sessions, search.id)
    assert trial.status == "failed" and "timed out after 2 s" in trial.error


def test_a_trial_that_raises_fails_once_is_told_a_penalty_and_the_search_goes_on(sessions):
    optimizer = {"name": "cma", "population": 2, "generations": 2, "replicates": 2}
    search = Commands(sessions).create(tiny_spec(optimizer=optimizer, search_space=BELOW_THE_CLIFF))
    engine = engine_on(sessions, trial_fns.raises_on_odd_seeds)
    assert run_until(engine, sessions, search.id, finished).status == "completed"
    trials = trials_of(sessions, search.id)
    assert [(t.generation, t.index) for t in trials] == [(g, i) for g in range(2) for i in range(2) for _ in range(2)]
    failed = [t for t in trials if t.seed % 2]
    assert all(t.status == "failed" and t.attempts == 1 for t in failed)  # deterministic: no retry
    assert all(t.error == "ValueError: a bug in the trial code" for t in failed)
    assert all(t.status == "succeeded" for t in trials if t not in failed)
    # each candidate has a failed replicate, so each was told the penalty: the uniform predictor's loss plus one
    assert told_in_first_generation(sessions, search.id) == pytest.approx([math.log(256) + 1] * 2)


def test_a_trial_out_of_memory_fails_with_the_allocators_message(sessions):
    spec = tiny_spec(optimizer={"name": "random", "population": 1, "generations": 1})
    search = Commands(sessions).create(spec)
    engine = engine_on(sessions, trial_fns.out_of_memory)
    ended = run_until(engine, sessions, search.id, finished)
    (trial,) = trials_of(sessions, search.id)
    assert (trial.status, trial.attempts) == ("failed", 1)
    assert "can't allocate memory" in trial.error
    assert ended.status == "failed" and "can't allocate memory" in ended.error


def test_a_worker_killed_by_the_oom_killer_is_retried_with_the_same_candidate(sessions, tmp_path):
    spec = tiny_spec(optimizer={"population": 2, "generations": 2}, search_space=BELOW_THE_CLIFF)
    search = Commands(sessions).create(spec)
    engine = engine_on(sessions, functools.partial(trial_fns.oom_killed_once, str(tmp_path)))
    assert run_until(engine, sessions, search.id, finished).status == "completed"
    trials = trials_of(sessions, search.id)
    assert [(t.generation, t.index) for t in trials] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert all((t.status, t.attempts) == ("succeeded", 2) for t in trials)


def test_pause_holds_new_trials_and_resume_finishes_the_search(sessions):
    search = Commands(sessions).create(tiny_spec())
    commands = Commands(sessions)
    engine = engine_on(sessions, trial_fns.slow_real)
    run_until(engine, sessions, search.id, lambda s, x: s.scalar(select(Trial).where(Trial.status == "running")))
    commands.apply(search.id, "pause")
    # the running trials finish, and nothing new starts while paused
    run_until(engine, sessions, search.id, lambda s, x: not s.scalar(select(Trial).where(Trial.status == "running")))
    for _ in range(20):
        engine.turn()
    statuses = [t.status for t in trials_of(sessions, search.id)]
    assert statuses.count("running") == 0 and statuses.count("pending") >= 1
    commands.apply(search.id, "resume")
    assert run_until(engine, sessions, search.id, finished).status == "completed"


def test_cancel_stops_running_trials_and_marks_the_rest_cancelled(sessions):
    search = Commands(sessions).create(tiny_spec())
    engine = engine_on(sessions, trial_fns.hang)
    run_until(engine, sessions, search.id, lambda s, x: s.scalar(select(Trial).where(Trial.status == "running")))
    Commands(sessions).apply(search.id, "cancel")
    engine.wake()
    engine.turn()
    assert not engine.executor.in_flight
    assert {t.status for t in trials_of(sessions, search.id)} == {"cancelled"}


def test_a_search_deleted_before_the_engine_saw_it_end_is_dropped_and_its_trials_stopped(sessions):
    search = Commands(sessions).create(tiny_spec())
    engine = engine_on(sessions, trial_fns.hang)
    run_until(engine, sessions, search.id, lambda s, x: s.scalar(select(Trial).where(Trial.status == "running")))
    with sessions() as session, session.begin():  # as a cancel and a delete between two of the engine's syncs
        session.execute(delete(Search).where(Search.id == search.id))
    engine.wake()
    engine.turn()
    assert search.id not in engine.runners and not engine.executor.in_flight


def test_the_local_ray_stays_on_loopback():
    assert {node["NodeManagerAddress"] for node in ray.nodes()} == {"127.0.0.1"}


def test_progress_streams_back_while_a_trial_trains(sessions):
    spec = tiny_spec(optimizer={"name": "trust_region", "population": 1, "generations": 1})  # the base HPs
    search = Commands(sessions).create(spec)
    engine = engine_on(sessions, trial_fns.reporting)

    def running_with_points(session, _search) -> bool:
        trial = session.scalar(select(Trial).where(Trial.search_id == search.id))
        points = session.scalars(select(ProgressPoint).where(ProgressPoint.trial_id == trial.id)).all()
        return trial.status == "running" and len(points) >= 2

    run_until(engine, sessions, search.id, running_with_points, timeout_s=60)
    run_until(engine, sessions, search.id, finished)
    with sessions() as session:
        steps = session.scalars(select(ProgressPoint.step).order_by(ProgressPoint.step)).all()
    assert steps == [1]  # the final curve replaces the streamed one


def test_replicates_train_each_candidate_with_several_seeds(sessions):
    spec = tiny_spec(
        training={"seed": 5}, optimizer={"name": "random", "population": 3, "generations": 1, "replicates": 2}
    )
    search = Commands(sessions).create(spec)
    run_until(engine_on(sessions, trial_fns.synthetic), sessions, search.id, finished)
    trials = trials_of(sessions, search.id)
    assert [(t.index, t.replicate, t.seed) for t in sorted(trials, key=lambda t: (t.index, t.replicate))] == [
        (i, r, 5 + r) for i in range(3) for r in range(2)
    ]
    for index in range(3):
        pair = [t for t in trials if t.index == index]
        assert pair[0].vector == pair[1].vector
