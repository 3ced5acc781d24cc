"""The optimizers: every one stays in the box, survives a pickle mid-search, and the penalty ranks last."""

import math
import pickle
import warnings

import numpy as np
import pytest

from hpo_service.engine.optimizers import TrustRegionSearch, build_optimizer, penalty
from hpo_service.spec import SearchSpec

NAMES = ["cma", "diagonal_cma", "de", "oneplusone", "ngopt", "random", "trust_region"]


def make_spec(name: str, population: int = 4) -> SearchSpec:
    return SearchSpec.model_validate(
        {
            "name": "opt",
            "search_space": {
                "modules": ["attn_q", "mlp_up", "mlp_down", "unembedding"],
                "hps": ["lr"],
                "log2_bounds": [-2, 3],
            },
            "optimizer": {"name": name, "population": population, "generations": 6, "seed": 3},
        }
    )


def bowl(x: np.ndarray) -> float:
    return float(np.sum((x - 1.0) ** 2))


def run_generations(optimizer, generations: int) -> list[list[float]]:
    asked = []
    for _ in range(generations):
        candidates = [optimizer.ask() for _ in range(optimizer.num_workers)]
        for candidate in candidates:
            optimizer.tell(candidate, bowl(candidate.value))
        asked.append([list(c.value) for c in candidates])
    return asked


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@pytest.mark.parametrize("name", NAMES)
def test_every_candidate_lies_in_the_bounds(name):
    for generation in run_generations(build_optimizer(make_spec(name)), 5):
        for vector in generation:
            assert all(-2 <= v <= 3 for v in vector)


@pytest.mark.parametrize("name", NAMES)
def test_a_search_resumed_from_the_snapshot_asks_what_the_uninterrupted_one_asks(name):
    uninterrupted = build_optimizer(make_spec(name))
    expected = run_generations(uninterrupted, 4)

    optimizer = build_optimizer(make_spec(name))
    run_generations(optimizer, 2)
    candidates = [optimizer.ask() for _ in range(optimizer.num_workers)]
    optimizer, candidates = pickle.loads(pickle.dumps((optimizer, candidates)))  # the controller died here
    for candidate in candidates:
        optimizer.tell(candidate, bowl(candidate.value))
    assert [list(c.value) for c in candidates] == expected[2]
    assert run_generations(optimizer, 1) == [expected[3]]


def test_the_same_seed_proposes_the_same_candidates():
    assert run_generations(build_optimizer(make_spec("cma")), 2) == run_generations(
        build_optimizer(make_spec("cma")), 2
    )


@pytest.mark.parametrize("name", ["cma", "diagonal_cma"])
@pytest.mark.parametrize(("hps", "sigma"), [(["lr"], 1.0), (["lr", "init_std"], 0.5)])  # 13 and 21 dimensions
def test_cmas_first_step_is_sigma_octaves(name, hps, sigma):
    spec = SearchSpec.model_validate(
        {
            "name": "opt",
            "search_space": {"modules": "all", "hps": hps, "log2_bounds": [-8, 8]},
            "optimizer": {"name": name, "population": 400, "generations": 1, "seed": 0, "sigma": sigma},
        }
    )
    optimizer = build_optimizer(spec)
    first = np.array([optimizer.ask().value for _ in range(400)])
    assert first.std(axis=0).mean() == pytest.approx(sigma, rel=0.1)


def test_trust_region_starts_at_the_base_hps_and_adapts_its_radius():
    optimizer = build_optimizer(make_spec("trust_region"))
    assert isinstance(optimizer, TrustRegionSearch)
    first = [optimizer.ask() for _ in range(4)]
    assert list(first[0].value) == [0.0] * 4
    for candidate in first:
        optimizer.tell(candidate, bowl(candidate.value))
    assert optimizer.radius == 2.0  # the first generation improves on nothing: success, the box doubles
    second = [optimizer.ask() for _ in range(4)]
    for candidate in second:
        optimizer.tell(candidate, optimizer.centre_loss + 1.0)  # no improvement: the box halves
    assert optimizer.radius == 1.0


def test_trust_region_approaches_the_optimum_of_a_bowl():
    optimizer = build_optimizer(make_spec("trust_region", population=8))
    start = bowl(np.zeros(4))
    run_generations(optimizer, 6)
    assert optimizer.centre_loss < start / 4


def test_the_penalty_is_worse_than_every_loss_seen_and_than_a_uniform_predictor():
    assert penalty(None, 256) == pytest.approx(math.log(256) + 1)
    assert penalty(2.0, 256) == pytest.approx(math.log(256) + 1)
    assert penalty(9.0, 256) == 10.0
