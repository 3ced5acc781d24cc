"""Asynchronous generations: the next generation is asked while the last one's trials finish, so that no worker
waits for the slowest; and every candidate is still trained and told exactly once, after kills too."""

from __future__ import annotations

import pytest
import ray

import tests.trial_fns as trial_fns
from hpo_service.engine.plan import SearchPlan
from hpo_service.engine.policy import Outcome, PolicyError
from hpo_service.spec import SearchSpec
from hpo_service.statuses import TrialStatus
from hpo_service.store import queries
from hpo_service.store.database import open_database, session_factory
from tests.controller import Controller
from tests.test_early_stopping import STEPS, run_curve_search
from tests.test_engine import trials_of

ray.cloudpickle.register_pickle_by_value(trial_fns)  # Ray workers cannot import the tests package

SPEC = {
    "name": "asynchronous",
    "training": {"batch_size": 4, "steps": STEPS, "warmup_steps": 2, "eval_every": 4, "device": "cpu"},
    "search_space": {"modules": ["attn_q", "mlp_up"], "hps": ["lr"], "log2_bounds": [-2.0, 2.0]},
    "optimizer": {"name": "cma", "population": 4, "generations": 3, "seed": 3, "asynchronous": True},
    "early_stopping": {"rule": "median", "min_trials": 2, "min_fraction": 0.25},
    "execution": {"parallel": 2, "max_retries": 0, "timeout_s": 60},
}


def told(plan: SearchPlan, generation: int) -> None:
    plan.tell([[Outcome(TrialStatus.SUCCEEDED, 3.0 + sum(c.vector))] for c in plan.untold[generation].candidates])


def test_an_asynchronous_stage_asks_one_generation_ahead_and_tells_them_in_order():
    plan = SearchPlan(SearchSpec.model_validate(SPEC))
    plan.ask()
    assert plan.can_ask_ahead
    plan.ask()  # generation 1, before generation 0 is told
    assert (plan.outstanding, plan.can_ask_ahead) == (2, False)
    with pytest.raises(PolicyError):
        plan.ask()
    told(plan, 0)
    restored = SearchPlan.loads(plan.dumps())
    for p in (plan, restored):
        assert (p.told_generations, p.outstanding, p.can_ask_ahead) == (1, 1, True)  # generation 2 is left
        p.ask()
        told(p, 1)
        told(p, 2)
    assert [c.vector for c in restored.phase.candidates] == [c.vector for c in plan.phase.candidates]
    assert plan.choices and plan.done  # the stage ended with its last tell, as a synchronous one does


def test_a_synchronous_stage_never_asks_ahead():
    plan = SearchPlan(SearchSpec.model_validate({**SPEC, "optimizer": {**SPEC["optimizer"], "asynchronous": False}}))
    plan.ask()
    assert not plan.can_ask_ahead
    with pytest.raises(PolicyError):
        plan.ask()


def told_once(sessions, search_id: int) -> list[float]:
    """What the optimizer was told, sorted, from Nevergrad's archive in the snapshot written with the last tell;
    each vector told exactly once."""
    with sessions() as session:
        plan = SearchPlan.loads(queries.policy_snapshot(session, search_id))
    values = [value for _, value in plan.policy.optimizer.archive.items_as_arrays()]
    assert [value.count for value in values] == [1] * len(values)
    return sorted(value.mean for value in values)


@pytest.mark.usefixtures("local_ray")
def test_free_workers_train_the_next_generation_while_the_last_one_finishes(sessions):
    search_id = run_curve_search(sessions, SearchSpec.model_validate(SPEC))

    trials = trials_of(sessions, search_id)
    assert sorted((t.generation, t.index) for t in trials) == [(g, i) for g in range(3) for i in range(4)]
    assert {t.status for t in trials} == {"succeeded", "stopped"}
    overlapped = [
        g
        for g in range(2)
        if min(t.started_at for t in trials if t.generation == g + 1)
        < max(t.finished_at for t in trials if t.generation == g)
    ]
    assert overlapped, "no generation started before the one before it had ended"
    # each candidate told once, its true final loss (a stopped one's prediction is exact on these linear curves)
    assert told_once(sessions, search_id) == pytest.approx(sorted(trial_fns.bowl_loss(t.multipliers) for t in trials))


def test_a_controller_killed_while_a_generation_is_asked_ahead_tells_every_candidate_once(db_url, tmp_path):
    spec = {**SPEC, "execution": {**SPEC["execution"], "trial": "tests.trial_fns:curve"}}
    env = {"HPO_ALLOWED_TRIALS": "tests.trial_fns:*", "HPO_LEASE_TTL_S": "3"}  # a restart waits out the lease
    controller = Controller(db_url, tmp_path / "controller.log", env=env)
    controller.start()

    def asked_ahead(search: dict, trials: list[dict]) -> bool:
        running = {t["generation"] for t in trials if t["status"] == "running"}
        return len(running) == 2  # trials of two generations train at once

    try:
        search_id = controller.post("/api/searches", spec).json()["id"]
        controller.wait_for(search_id, asked_ahead, interval_s=0.05)
        controller.kill()
        controller.start()
        final = controller.wait_for(search_id, lambda s, trials: s["status"] in ("completed", "failed"))
        trials = controller.get(f"/api/searches/{search_id}/trials", limit=100)["trials"]
    finally:
        controller.stop()

    assert final["status"] == "completed", final
    assert sorted((t["generation"], t["index"]) for t in trials) == [(g, i) for g in range(3) for i in range(4)]
    assert {t["status"] for t in trials} <= {"succeeded", "stopped"}
    sessions = session_factory(open_database(db_url))
    assert told_once(sessions, search_id) == pytest.approx(
        sorted(trial_fns.bowl_loss(t["multipliers"]) for t in trials)
    )
