"""Staged searches on the engine, real Ray and both stores: stages centred on the last one's choice, fresh-seed
selection between them, the transfer check after the last, and where the first stage starts.

Trials train ``shaped_bowl``: a loss that is a known function of exactly what the payload asks (multipliers,
seed, width, depth, steps), so each stored loss proves what its trial trained. What the plan should have done is
computed here from the stored trials, independently of ``engine.plan``.
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator

import pytest
import ray
from sqlalchemy import select

from hpo_service.engine.commands import Commands
from hpo_service.engine.engine import Engine
from hpo_service.engine.executor import RayExecutor
from hpo_service.engine.plan import compose
from hpo_service.export import StartError, build_export, starting_point
from hpo_service.spec import SearchSpace, SearchSpec
from hpo_service.store.models import Generation, Search, Trial
from hpo_service.validation import speedup, tokens_to_reach, verdict
from trainer.hparams import INIT_STD_MODULE_TYPES, Multipliers
from trainer.model import MODULE_TYPES

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import the tests package

MODEL = {"width": 32, "depth": 1, "head_dim": 16, "seq_len": 32}
TRAINING = {"batch_size": 4, "steps": 12, "warmup_steps": 2, "device": "cpu"}
PROXY_TOKENS = 12 * 4 * 32  # steps × batch_size × seq_len
GLOBAL = {"name": "global", "search_space": {"tied": True, "hps": ["lr", "init_std"], "log2_bounds": [-1.0, 1.0]},
          "optimizer": {"name": "cma", "population": 4, "generations": 2}}  # fmt: skip
PER_MODULE = {"name": "per-module", "search_space": {"modules": "all", "hps": ["lr", "init_std"]},
              "optimizer": {"name": "trust_region", "population": 4, "generations": 2, "sigma": 0.5}}  # fmt: skip
TARGETS = [{"width": 64}, {"depth": 2}, {"width": 64, "depth": 2, "tokens_multiplier": 2}]
CONTRACT = {
    "name": "staged",
    "model": MODEL,
    "training": {**TRAINING, "seed": 2},  # its noise lets fresh seeds overturn a search-time best
    "stages": [GLOBAL, PER_MODULE],
    "validate": {"targets": TARGETS, "seeds": 2},
    "execution": {"parallel": 2, "timeout_s": 60},
}
UNSTAGED = {
    "name": "unstaged",
    "model": MODEL,
    "training": TRAINING,
    "search_space": {"modules": ["attn_q", "mlp_up"], "hps": ["lr"]},
    "optimizer": {"name": "cma", "population": 4, "generations": 2},
    "execution": {"parallel": 2, "timeout_s": 60},
}


def shaped_bowl_loss(multipliers: dict, seed: int, width: int, depth: int, steps: int) -> float:
    """A bowl in the log2 multipliers around +0.5, lower for larger models and longer runs, plus noise that
    depends on the candidate and the seed, large enough that fresh seeds reorder the candidates."""
    values = [v for hps in multipliers["module"].values() for v in hps.values()]
    key = json.dumps([multipliers, seed], sort_keys=True).encode()
    noise = int(hashlib.sha256(key).hexdigest()[:8], 16) / 2**32 * 0.2
    return (
        2.0 + sum((v - 0.5) ** 2 for v in values) / 10 - 0.1 * math.log2(width / 32) - 0.05 * depth + 1 / steps + noise
    )


def shaped_bowl(payload: dict, report) -> dict:
    """A trial function whose final loss is ``shaped_bowl_loss`` of its payload, reached by a validation curve
    falling as 1/step, and which reports the steps and tokens its configuration asks for."""
    model, training = payload["config"]["model"], payload["config"]["training"]
    steps = training["steps"]
    loss = shaped_bowl_loss(payload["multipliers"], training["seed"], model["width"], model["depth"], steps)
    curve = [(step, loss + 0.5 * (steps / step - 1) / steps) for step in range(1, steps + 1)]
    tokens = steps * training["batch_size"] * model["seq_len"]
    return {"status": "succeeded", "final_val_loss": loss, "final_train_loss": loss, "steps": steps,
            "tokens": tokens, "train_curve": curve, "eval_curve": curve}  # fmt: skip


# -- driving the engine in this process ------------------------------------------------------------------------


@pytest.fixture
def engine(sessions, local_ray) -> Iterator[Engine]:
    engine = Engine(sessions)
    engine.executor = RayExecutor(trial_fn=shaped_bowl)
    yield engine
    engine.executor.close()


def run_to_completion(engine: Engine, sessions, spec: dict, timeout_s: float = 180.0) -> int:
    search_id = Commands(sessions).create(SearchSpec.model_validate(spec)).id
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        engine.turn()
        with sessions() as session:
            search = session.get(Search, search_id)
            if search.status in ("completed", "failed", "cancelled"):
                assert search.status == "completed", search.error
                return search_id
    pytest.fail(f"search {search_id} did not complete in {timeout_s} s")


def structure(sessions, search_id: int) -> list[tuple[str, str | None]]:
    """(kind, stage) of each generation, in order."""
    with sessions() as session:
        query = select(Generation).where(Generation.search_id == search_id).order_by(Generation.number)
        return [(g.kind, g.stage) for g in session.scalars(query)]


def trials_of(sessions, search_id: int) -> list[Trial]:
    with sessions() as session:
        query = select(Trial).where(Trial.search_id == search_id)
        return list(session.scalars(query.order_by(Trial.generation, Trial.index, Trial.replicate)))


def candidates(trials: list[Trial]) -> dict[tuple[int, int], list[Trial]]:
    """Trials per candidate (generation, index)."""
    grouped: dict[tuple[int, int], list[Trial]] = {}
    for t in trials:
        grouped.setdefault((t.generation, t.index), []).append(t)
    return grouped


def best(trials: list[Trial]) -> list[Trial]:
    """The runs of the candidate with the lowest mean loss (ties: the earliest asked)."""
    ranked = sorted(candidates(trials).items(), key=lambda item: (statistics.fmean(t.loss for t in item[1]), item[0]))
    return ranked[0][1]


def of(trials: list[Trial], kind: str, stage: str | None = None) -> list[Trial]:
    return [t for t in trials if t.kind == kind and (stage is None or t.stage == stage)]


def assert_centred_on(trials: list[Trial], centre: dict, space: dict) -> None:
    """Each trial's multipliers are ``centre``'s plus its vector, entry by entry: ``module.<type>.<hp>``, or
    ``global.<hp>`` on every module type (those with an init std, for ``init_std``)."""
    coordinates = SearchSpace.model_validate(space).coordinates(MODEL["depth"])
    for t in trials:
        for name, value in zip(coordinates, t.vector, strict=True):
            kind, *rest = name.split(".")
            hp = rest[-1]
            module_types = (
                [rest[0]] if kind == "module" else INIT_STD_MODULE_TYPES if hp == "init_std" else MODULE_TYPES
            )
            for m in module_types:
                expected = centre.get("module", {}).get(m, {}).get(hp, 0.0) + value
                assert t.multipliers["module"][m][hp] == pytest.approx(expected, abs=1e-12), (t.generation, name, m)


# -- the contract ----------------------------------------------------------------------------------------------


def test_a_staged_search_selects_on_fresh_seeds_centres_each_stage_and_validates_at_the_targets(engine, sessions):
    search_id = run_to_completion(engine, sessions, CONTRACT)
    trials = trials_of(sessions, search_id)

    search, reevaluation, validation = ("search", "reevaluation", "validation")
    assert structure(sessions, search_id) == [
        (search, "global"), (search, "global"), (reevaluation, "global"),
        (search, "per-module"), (search, "per-module"), (reevaluation, "per-module"),
        (validation, None),
    ]  # fmt: skip
    top, fresh_seeds, arms = 3, 2, 3  # selection's defaults with stages; per-module, global and base
    assert Counter(t.generation for t in trials) == {0: 4, 1: 4, 2: top * fresh_seeds, 3: 4, 4: 4,
                                                     5: top * fresh_seeds, 6: len(TARGETS) * arms * 2}  # fmt: skip
    assert all(t.status == "succeeded" and t.attempts == 1 for t in trials)

    # each stage re-trains its three best search-time candidates on fresh seeds and hands on the best fresh mean
    choices, overturned = {}, []
    for stage in ("global", "per-module"):
        searched = candidates(of(trials, search, stage))
        ranked = sorted(searched, key=lambda c: (searched[c][0].loss, c))
        retrained = candidates(of(trials, reevaluation, stage))
        assert [(runs[0].origin["generation"], runs[0].origin["index"]) for runs in retrained.values()] == ranked[:top]
        for (generation, index), runs in zip(ranked[:top], retrained.values(), strict=True):
            assert all(t.multipliers == searched[(generation, index)][0].multipliers for t in runs)
        chosen = best(of(trials, reevaluation, stage))[0]
        choices[stage] = chosen.multipliers
        overturned.append((chosen.origin["generation"], chosen.origin["index"]) != ranked[0])
    assert any(overturned), "fresh seeds should overturn a lucky search-time best in some stage"
    assert choices["per-module"] != choices["global"], "the per-module stage should move off its centre"

    # the global stage is centred on the base HPs, the per-module one on the global choice, which it tries first
    assert_centred_on(of(trials, search, "global"), {}, GLOBAL["search_space"])
    assert_centred_on(of(trials, search, "per-module"), choices["global"], PER_MODULE["search_space"])
    assert of(trials, search, "per-module")[0].multipliers == choices["global"]

    # fresh seeds: new for each phase, never a search seed
    seeds = [{t.seed for t in trials if t.generation in phase} for phase in ({0, 1, 3, 4}, {2}, {5}, {6})]
    assert seeds[0] == {2} and [len(s) for s in seeds[1:]] == [fresh_seeds] * 3
    assert len(set().union(*seeds)) == sum(len(s) for s in seeds)

    # each arm at each target, trained at the target's shape and tokens with the arm's multipliers
    expected_arms = {"per-module": choices["per-module"], "global": choices["global"], "base": Multipliers().to_dict()}
    for t in of(trials, validation):
        target = TARGETS[t.target["index"]]
        width, depth = target.get("width", MODEL["width"]), target.get("depth", MODEL["depth"])
        steps = TRAINING["steps"] * target.get("tokens_multiplier", 1)
        assert t.multipliers == expected_arms[t.arm]
        assert (t.steps, t.tokens) == (steps, PROXY_TOKENS * target.get("tokens_multiplier", 1))
        assert t.loss == pytest.approx(shaped_bowl_loss(t.multipliers, t.seed, width, depth, steps), rel=1e-12)
    assert Counter((t.target["index"], t.arm) for t in of(trials, validation)) == {
        (i, arm): 2 for i in range(len(TARGETS)) for arm in expected_arms
    }

    # the export: the per-module choice, its loss the mean of its fresh runs
    chosen = best(of(trials, reevaluation, "per-module"))
    with sessions() as session:
        export = build_export(session, session.get(Search, search_id))
    assert export["base"]["multipliers"] == Multipliers.from_dict(choices["per-module"]).to_dict()
    assert export["loss"]["values"] == [t.loss for t in chosen]
    assert export["loss"]["mean"] == pytest.approx(statistics.fmean(t.loss for t in chosen))
    assert export["provenance"]["measured_on"] == "fresh seeds"
    assert [entry["target"]["index"] for entry in export["validation"]["targets"]] == [0, 1, 2]


# -- without stages, and without selection ---------------------------------------------------------------------


def test_a_search_without_stages_searches_as_before_with_no_reevaluation(engine, sessions):
    search_id = run_to_completion(engine, sessions, UNSTAGED)
    trials = trials_of(sessions, search_id)
    assert structure(sessions, search_id) == [("search", "search")] * 2
    assert {t.kind for t in trials} == {"search"} and len(trials) == 8 and {t.seed for t in trials} == {0}
    with sessions() as session:
        export = build_export(session, session.get(Search, search_id))
    assert export["loss"]["values"] == [t.loss for t in best(trials)]
    assert export["provenance"]["measured_on"] == "search seeds"


def test_a_search_without_stages_reevaluates_its_top_candidates_when_selection_is_given(engine, sessions):
    search_id = run_to_completion(engine, sessions, {**UNSTAGED, "selection": {"top": 2, "seeds": 3}})
    trials = trials_of(sessions, search_id)
    assert structure(sessions, search_id) == [("search", "search")] * 2 + [("reevaluation", "search")]
    retrained = of(trials, "reevaluation")
    fresh_seeds = {t.seed for t in retrained}
    assert (
        len(retrained) == 2 * 3
        and len(fresh_seeds) == 3
        and not fresh_seeds & {t.seed for t in trials if t.kind == "search"}
    )
    with sessions() as session:
        export = build_export(session, session.get(Search, search_id))
    assert export["loss"]["values"] == [t.loss for t in best(retrained)]
    assert export["provenance"]["measured_on"] == "fresh seeds"


def test_stages_without_selection_hand_on_the_best_search_time_candidate(engine, sessions):
    spec = {**CONTRACT, "selection": {"top": 0}, "validate": {"targets": [{"depth": 2}], "seeds": 1}}
    search_id = run_to_completion(engine, sessions, spec)
    trials = trials_of(sessions, search_id)
    assert [kind for kind, _ in structure(sessions, search_id)] == ["search"] * 4 + ["validation"]
    global_choice = best(of(trials, "search", "global"))[0].multipliers
    per_module = of(trials, "search", "per-module")
    assert per_module[0].multipliers == global_choice
    assert_centred_on(per_module, global_choice, PER_MODULE["search_space"])
    arms = {t.arm: t.multipliers for t in of(trials, "validation")}
    assert arms == {
        "per-module": best(per_module)[0].multipliers,
        "global": global_choice,
        "base": Multipliers().to_dict(),
    }
    with sessions() as session:
        export = build_export(session, session.get(Search, search_id))
    assert export["base"]["multipliers"] == Multipliers.from_dict(arms["per-module"]).to_dict()
    assert export["provenance"]["measured_on"] == "search seeds"


# -- where the first stage starts ------------------------------------------------------------------------------


def test_start_from_a_search_centres_the_first_stage_on_its_result_and_refuses_an_incompatible_one(engine, sessions):
    source = run_to_completion(engine, sessions, UNSTAGED)
    with sessions() as session:
        result = build_export(session, session.get(Search, source))
    first = {**PER_MODULE, "optimizer": {**PER_MODULE["optimizer"], "generations": 1}}
    spec = {**CONTRACT, "stages": [first], "selection": {"top": 0}, "start_from": {"search": source}}
    spec.pop("validate")
    search_id = run_to_completion(engine, sessions, spec)
    trials = trials_of(sessions, search_id)
    assert trials[0].vector == [0.0] * len(trials[0].vector)  # trust_region tries its centre first
    assert_centred_on(trials, result["base"]["multipliers"], PER_MODULE["search_space"])

    with sessions() as session:  # an export document is a starting point too, the same one
        from_export = SearchSpec.model_validate({**spec, "start_from": {"export": result}})
        assert starting_point(session, from_export).to_dict() == result["base"]["multipliers"]
        for change, says in [
            ({"model": {**MODEL, "vocab_size": 512}}, "vocab_size 256, this spec has 512"),
            ({"parameterisation": {"name": "mup"}}, "parameterisation 'completed', this spec has 'mup'"),
            ({"parameterisation": {"alpha": 0.5}}, "parameterisation alpha 1.0, this spec has alpha 0.5"),
            ({"base_hps": {"lr": 0.02}}, "base_hps"),
        ]:
            for start in ({"search": source}, {"export": result}):
                other = SearchSpec.model_validate({**spec, **change, "start_from": start})
                with pytest.raises(StartError, match=says):
                    starting_point(session, other)


# -- the plan's and the report's arithmetic --------------------------------------------------------------------


def test_compose_adds_log2_multipliers_per_module_layer_and_branch():
    centre = Multipliers(module={"attn_q": {"lr": 1.0}}, depth={"lr": (0.5, -0.5)}, residual={"attn": 1.0})
    step = Multipliers(
        module={"attn_q": {"lr": 0.25, "init_std": -1.0}, "mlp_up": {"lr": 2.0}},
        depth={"lr": (0.25, 0.25), "init_std": (1.0, 0.0)},
        residual={"mlp": -1.0},
    )
    assert compose(centre, step) == Multipliers(
        module={"attn_q": {"lr": 1.25, "init_std": -1.0}, "mlp_up": {"lr": 2.0}},
        depth={"lr": (0.75, -0.25), "init_std": (1.0, 0.0)},
        residual={"attn": 1.0, "mlp": -1.0},
    )
    assert compose(Multipliers(), step) == step and compose(centre, Multipliers()) == centre


def test_compose_reads_a_centre_tuned_at_another_depth_at_the_steps_depth():
    """A start from a per-depth search of a shallower proxy: its per-layer values, interpolated in ℓ/L as the
    trainer reads them, plus the step's."""
    centre = Multipliers(depth={"lr": (0.0, 1.0)})  # tuned at 2 blocks: layer centres at 1/4 and 3/4
    step = Multipliers(depth={"lr": (0.0, 0.0, 0.0, 0.0)})
    assert compose(centre, step).depth["lr"] == pytest.approx((0.0, 0.25, 0.75, 1.0))


def curve(losses: Callable[[float], float], tokens: range) -> list[tuple[float, float]]:
    return [(float(t), losses(t)) for t in tokens]


def test_identical_curves_are_a_speedup_of_one():
    reference = curve(lambda t: 10 / t, range(1, 9))
    assert speedup(reference, list(reference)) == 1.0


def test_a_curve_twice_as_fast_in_tokens_is_a_speedup_of_two_and_its_mirror_a_half():
    reference, twice_as_fast = curve(lambda t: 10 / t, range(1, 9)), curve(lambda t: 10 / (2 * t), range(1, 9))
    assert speedup(twice_as_fast, reference) == pytest.approx(2.0)
    assert speedup(reference, twice_as_fast) == pytest.approx(0.5)


def test_tokens_to_reach_a_level_is_the_last_crossing_interpolated_between_points():
    noisy = [(1.0, 3.0), (2.0, 1.0), (3.0, 2.5), (4.0, 1.5), (5.0, 1.0)]  # dips below 2 early, then back above
    assert tokens_to_reach(noisy, 2.0) == pytest.approx(3.5)
    assert tokens_to_reach(noisy, 0.5) is None  # never gets there
    assert tokens_to_reach(noisy, 3.0) == 1.0  # there from the start


def arm(losses: list[float]) -> dict:
    return {
        "losses": losses,
        "mean": statistics.fmean(losses),
        "sd": statistics.stdev(losses) if len(losses) > 1 else None,
    }


@pytest.mark.parametrize(
    ("result", "reference", "expected"),
    [
        ([1.00, 1.01, 0.99], [1.10, 1.11, 1.09], "better"),
        ([1.10, 1.11, 1.09], [1.00, 1.01, 0.99], "worse"),
        ([1.00, 1.05, 0.95], [1.01, 1.06, 0.96], "within noise"),
        ([1.00], [1.10], "undetermined"),
    ],
)
def test_the_verdict_compares_mean_final_losses_against_twice_the_standard_error(result, reference, expected):
    assert verdict(arm(result), arm(reference)) == expected
