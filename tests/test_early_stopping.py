"""Early stopping: the rules on their own, and hopeless trials stopped by the engine on real Ray and both stores."""

from __future__ import annotations

import math
import statistics

import pytest
import ray
from fastapi.testclient import TestClient
from pydantic import ValidationError

import tests.trial_fns as trial_fns
from hpo_service.api.app import create_app
from hpo_service.early_stopping import judged_steps, predicted_final, should_stop
from hpo_service.engine.commands import Commands
from hpo_service.spec import EarlyStoppingSection, SearchSpec
from hpo_service.store.database import database_url, open_database, session_factory, upgrade
from tests.controller import Controller
from tests.test_engine import EXECUTORS, engine_on, finished, run_until, told_in_first_generation, trials_of

ray.cloudpickle.register_pickle_by_value(trial_fns)  # Ray workers cannot import the tests package

MEDIAN = EarlyStoppingSection(rule="median", min_trials=2, min_fraction=0.25)
HALVING = EarlyStoppingSection(rule="successive_halving", reduction_factor=3, min_fraction=0.1, min_trials=2)


# -- the rules --------------------------------------------------------------------------------------------------------


def test_the_median_rule_judges_every_evaluation_from_its_first_fraction_but_the_last():
    assert judged_steps(MEDIAN, steps=40, eval_every=4) == [12, 16, 20, 24, 28, 32, 36]


def test_successive_halving_judges_at_its_rungs_each_the_first_evaluation_at_or_after_it():
    assert judged_steps(HALVING, steps=100, eval_every=10) == [10, 30, 90]
    assert judged_steps(HALVING, steps=100, eval_every=7) == [14, 35, 91]
    assert judged_steps(HALVING, steps=100, eval_every=30) == [30, 90]  # rungs 10 and 30 meet at step 30
    assert judged_steps(EarlyStoppingSection(), steps=100, eval_every=10) == []


@pytest.mark.parametrize(
    ("loss", "others", "stops"),
    [(3.0, [1.0, 2.0, 3.0, 4.0], True), (2.5, [1.0, 2.0, 3.0, 4.0], False), (9.0, [1.0], False),
     (math.nan, [1.0, 2.0], False)],
)  # fmt: skip
def test_the_median_rule_stops_a_loss_above_the_others_median_given_enough_others(loss, others, stops):
    assert should_stop(MEDIAN, loss, others) is stops


def test_successive_halving_keeps_the_best_third_of_those_at_the_rung_itself_included():
    others = [1.0, 2.0, 3.0, 4.0, 5.0]  # with itself, 6 at the rung: the best 2 go on
    assert not should_stop(HALVING, 0.5, others)
    assert not should_stop(HALVING, 1.5, others)
    assert should_stop(HALVING, 2.5, others)


def test_the_percentile_rule_interpolates_between_the_others_losses():
    quartile = MEDIAN.model_copy(update={"percentile": 25.0})
    others = [5.0, 1.0, 4.0, 2.0, 3.0]  # the 25th percentile: 2.0
    assert should_stop(quartile, 2.1, others) and not should_stop(quartile, 1.9, others)
    four = [4.0, 1.0, 3.0, 2.0]  # the median: 2.5
    assert should_stop(MEDIAN, 2.6, four) and not should_stop(MEDIAN, 2.4, four)


def test_a_stopped_trial_is_predicted_to_fall_by_the_median_drop_of_those_that_finished():
    assert predicted_final(3.0, [-0.5, -0.7, -0.6]) == pytest.approx(2.4)
    assert predicted_final(3.0, []) == 3.0


@pytest.mark.parametrize(
    ("section", "field"),
    [({"rule": "hyperband"}, "rule"), ({"rule": "median", "percentile": 100}, "percentile"),
     ({"rule": "successive_halving", "reduction_factor": 1}, "reduction_factor"),
     ({"rule": "median", "min_fraction": 0}, "min_fraction"), ({"rule": "median", "grace": 3}, "grace")],
)  # fmt: skip
def test_a_bad_rule_or_parameter_is_refused_naming_the_field(section, field):
    with pytest.raises(ValidationError) as refused:
        SearchSpec.model_validate({"name": "x", "early_stopping": section})
    assert refused.value.errors()[0]["loc"] == ("early_stopping", field)


def test_the_api_refuses_a_bad_rule_with_a_422_naming_it_and_stores_nothing(db_url):
    with TestClient(create_app(db_url, run_engine=False, allowed_hosts=["testserver"])) as client:
        answer = client.post("/api/searches", json={"name": "x", "early_stopping": {"rule": "asha"}})
        assert answer.status_code == 422
        assert answer.json()["detail"][0]["loc"][-2:] == ["early_stopping", "rule"]
        assert client.get("/api/searches").json()["searches"] == []


# -- the engine ------------------------------------------------------------------------------------------------------

STEPS = 40


@pytest.fixture
def engine_ray(local_ray):
    yield
    while EXECUTORS:
        EXECUTORS.pop().close()


def curve_spec(early_stopping: dict | None) -> SearchSpec:
    sections = {
        "name": "early-stopping",
        "training": {"batch_size": 4, "steps": STEPS, "warmup_steps": 2, "eval_every": 4, "device": "cpu"},
        "search_space": {"modules": ["attn_q", "mlp_up"], "hps": ["lr"], "log2_bounds": [-2.0, 2.0]},
        "optimizer": {"name": "random", "population": 6, "generations": 2, "seed": 0},
        "execution": {"parallel": 2, "timeout_s": 60},
    }
    if early_stopping is not None:
        sections["early_stopping"] = early_stopping
    return SearchSpec.model_validate(sections)


@pytest.mark.usefixtures("engine_ray")
def test_hopeless_trials_are_stopped_early_and_told_their_predicted_final_loss(sessions, db_url):
    search = Commands(sessions).create(curve_spec({"rule": "median", "min_trials": 2, "min_fraction": 0.25}))
    run_until(engine_on(sessions, trial_fns.curve), sessions, search.id, finished)

    trials = trials_of(sessions, search.id)
    stopped = [t for t in trials if t.status == "stopped"]
    succeeded = [t for t in trials if t.status == "succeeded"]
    assert len(stopped) + len(succeeded) == len(trials) == 12 and stopped
    best = min(trials, key=lambda t: trial_fns.bowl_loss(t.multipliers))
    assert best.status == "succeeded" and best.steps == STEPS  # the good one trained to its end
    assert all(12 <= t.steps < STEPS and t.loss is None for t in stopped)  # judged from step 12, stopped early
    assert statistics.fmean(trial_fns.bowl_loss(t.multipliers) for t in stopped) > statistics.fmean(
        trial_fns.bowl_loss(t.multipliers) for t in succeeded
    )
    # the curves are linear, so the median drop of the finished trials predicts a stopped one's final loss exactly
    generation0 = [t for t in trials if t.generation == 0]
    assert any(t.status == "stopped" for t in generation0)
    told = told_in_first_generation(sessions, search.id)
    assert told == pytest.approx(sorted(trial_fns.bowl_loss(t.multipliers) for t in generation0))

    with TestClient(create_app(db_url, run_engine=False, allowed_hosts=["testserver"])) as client:
        listed = client.get(f"/api/searches/{search.id}/trials", params={"status": "stopped"}).json()
        generations = client.get(f"/api/searches/{search.id}/generations").json()
        detail = client.get(f"/api/searches/{search.id}/trials/{stopped[0].id}").json()
    assert sorted(t["id"] for t in listed["trials"]) == sorted(t.id for t in stopped)
    assert [t["steps_trained"] for t in listed["trials"]] == [t.steps for t in sorted(stopped, key=lambda t: t.id)]
    assert sum(g["stopped"] for g in generations) == len(stopped)
    assert detail["curve"][-1]["step"] == stopped[0].steps  # its curve ends where it stopped


@pytest.mark.usefixtures("engine_ray")
def test_without_a_rule_every_trial_trains_to_its_end(sessions):
    search = Commands(sessions).create(curve_spec(None))
    run_until(engine_on(sessions, trial_fns.curve), sessions, search.id, finished)
    assert {(t.status, t.steps) for t in trials_of(sessions, search.id)} == {("succeeded", STEPS)}


# -- a controller killed while it stops trials ---------------------------------------------------------------------


def run_curve_search(sessions, spec: SearchSpec) -> int:
    """``spec`` run to its end by an engine in this process, every trial ``trial_fns.curve``; its search id."""
    search = Commands(sessions).create(spec)
    try:
        run_until(engine_on(sessions, trial_fns.curve), sessions, search.id, finished)
    finally:
        while EXECUTORS:
            EXECUTORS.pop().close()
    return search.id


FAULT_SPEC = {
    "name": "early-stopping-faults",
    "training": {"batch_size": 4, "steps": STEPS, "warmup_steps": 2, "eval_every": 4, "device": "cpu"},
    "search_space": {"modules": ["attn_q", "mlp_up"], "hps": ["lr"], "log2_bounds": [-2.0, 2.0]},
    "optimizer": {"name": "cma", "population": 6, "generations": 2, "seed": 5},
    "early_stopping": {"rule": "median", "min_trials": 2, "min_fraction": 0.25},
    "execution": {"parallel": 2, "max_retries": 0, "timeout_s": 60},
}


@pytest.fixture(scope="module")
def uninterrupted(local_ray, tmp_path_factory) -> dict[tuple[int, int], list[float]]:
    """(generation, index) -> vector of FAULT_SPEC run in one go, in this process."""
    url = database_url(str(tmp_path_factory.mktemp("uninterrupted") / "hpo.db"))
    upgrade(url)
    sessions = session_factory(open_database(url))
    search_id = run_curve_search(sessions, SearchSpec.model_validate(FAULT_SPEC))
    return {(t.generation, t.index): t.vector for t in trials_of(sessions, search_id)}


def test_a_controller_killed_while_stopping_trials_resumes_with_every_candidate_once(db_url, uninterrupted, tmp_path):
    """Which trials stop depends on timing, but not what the optimizer is told (the curves are linear, so a
    stopped trial's predicted final loss is its true one): after SIGKILLs of the controller, each while a trial
    has just been stopped and others train, the search asks exactly the uninterrupted search's candidates."""
    spec = {**FAULT_SPEC, "execution": {**FAULT_SPEC["execution"], "trial": "tests.trial_fns:curve"}}
    env = {"HPO_ALLOWED_TRIALS": "tests.trial_fns:*", "HPO_LEASE_TTL_S": "3"}  # a restart waits out the lease
    controller = Controller(db_url, tmp_path / "controller.log", env=env)
    controller.start()
    try:
        search_id = controller.post("/api/searches", spec).json()["id"]
        for generation in range(2):

            def stopping(search: dict, trials: list[dict], generation: int = generation) -> bool:
                mine = [t for t in trials if t["generation"] == generation]
                return any(t["status"] == "stopped" for t in mine) and any(t["status"] == "running" for t in mine)

            controller.wait_for(search_id, stopping, interval_s=0.05)
            controller.kill()
            controller.start()
        final = controller.wait_for(search_id, lambda s, trials: s["status"] in ("completed", "failed"))
        trials = controller.get(f"/api/searches/{search_id}/trials", limit=100)["trials"]
        first_stopped = next(t["id"] for t in trials if t["status"] == "stopped")
        stopped = controller.get(f"/api/searches/{search_id}/trials/{first_stopped}")
    finally:
        controller.stop()

    assert final["status"] == "completed", final
    keys = [(t["generation"], t["index"]) for t in trials]
    assert sorted(keys) == sorted(uninterrupted)  # every candidate exactly once
    assert {t["status"] for t in trials} == {"succeeded", "stopped"}
    for t in trials:  # the optimizer, restored after each kill, asked what the uninterrupted one asked
        assert t["vector"] == pytest.approx(uninterrupted[(t["generation"], t["index"])], abs=1e-12)
    assert stopped["curve"][-1]["step"] == stopped["steps_trained"] < STEPS
    sessions = session_factory(open_database(db_url))
    told = told_in_first_generation(sessions, search_id)  # a stopped trial told its true final loss, as it should
    assert told == pytest.approx(sorted(trial_fns.bowl_loss(t["multipliers"]) for t in trials if t["generation"] == 0))
