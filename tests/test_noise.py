"""A diverged or NaN trial is never the best, wherever the best is shown: the API, the dashboard, the export.

The trials go through the engine's own path: the runner asks a generation and persists it, the results are
recorded from executor events as they would arrive from workers, and the runner closes the generation.
"""

from __future__ import annotations

import math

import pytest
from fastapi.testclient import TestClient

from hpo_service.api.app import create_app
from hpo_service.api.settings import settings_of
from hpo_service.engine.commands import Commands
from hpo_service.engine.executor import Finished
from hpo_service.engine.records import record_all
from hpo_service.engine.runner import SearchRunner
from hpo_service.spec import SearchSpec
from hpo_service.store.database import transaction
from hpo_service.store.models import Search

NAN, INF = math.nan, math.inf


def spec(population: int, replicates: int = 1) -> SearchSpec:
    return SearchSpec.model_validate(
        {
            "name": "noise",
            "model": {"width": 32, "depth": 1, "head_dim": 16, "seq_len": 32},
            "training": {"batch_size": 4, "steps": 5, "warmup_steps": 1, "device": "cpu"},
            "search_space": {"modules": ["attn_q", "mlp_up"], "hps": ["lr"]},
            "optimizer": {"name": "random", "population": population, "generations": 1, "replicates": replicates},
        }
    )


def result(status: str, val: float | None, train: float = 3.0) -> dict:
    """What a worker returns, its curve ending at the losses it reports."""
    return {
        "status": status,
        "final_val_loss": val,
        "final_train_loss": train,
        "steps": 5,
        "train_curve": [[1, 4.0], [5, train]],
        "eval_curve": [[5, val]] if val is not None else [],
    }


def run_generation(client: TestClient, search_spec: SearchSpec, results: list[dict]) -> tuple[int, list[int]]:
    """A search whose one generation ended with ``results`` (in asked order); its id and its trial ids."""
    sessions = settings_of(client.app).sessions
    search_id = Commands(sessions).create(search_spec).id
    with transaction(sessions) as session:
        runner = SearchRunner.load(session, session.get(Search, search_id))
        dispatched = runner.pending(session, len(results))
    trial_ids = [d.trial_id for d in dispatched]
    assert len(trial_ids) == len(results)
    with transaction(sessions) as session:
        record_all(session, [Finished(t, r) for t, r in zip(trial_ids, results, strict=True)])
    with transaction(sessions) as session:
        assert runner.advance(session)
    return search_id, trial_ids


def get(client: TestClient, path: str, **params) -> dict | list:
    response = client.get(path, params=params)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture
def client(db_url):
    with TestClient(create_app(db_url, run_engine=False)) as client:
        yield client


def test_nan_infinite_and_diverged_trials_are_never_the_best(client):
    """Trials that claim success with a NaN or infinite loss are stored as diverged with no loss; a diverged
    or failed trial's tiny losses are ignored. Every view's best is the honest 2.9."""
    search_id, ids = run_generation(
        client,
        spec(population=7),
        [
            result("succeeded", NAN, train=0.01),
            result("succeeded", INF),
            result("succeeded", -INF),
            result("diverged", 1e-4, train=1e-6),
            result("failed", 0.0),
            result("succeeded", 3.2),
            result("succeeded", 2.9),
        ],
    )
    noise, honest, best = ids[:5], ids[5:], ids[6]
    api = f"/api/searches/{search_id}"

    summary = get(client, api)
    assert summary["best_loss"] == 2.9 and summary["status"] == "completed"
    assert [summary["trials"][k] for k in ("succeeded", "diverged", "failed")] == [2, 4, 1]
    trials = get(client, f"{api}/trials", sort="loss")["trials"]
    assert [t["id"] for t in trials[:2]] == [best, honest[0]]
    assert all(t["loss"] is None for t in trials if t["id"] in noise)
    assert [next(t["status"] for t in trials if t["id"] == i) for i in noise] == ["diverged"] * 4 + ["failed"]
    assert "no finite validation loss" in next(t for t in trials if t["id"] == noise[0])["error"]
    [generation] = get(client, f"{api}/generations")
    assert (generation["best_loss"], generation["median_loss"]) == (2.9, pytest.approx(3.05))
    assert (generation["diverged"], generation["failed"]) == (4, 1)

    outcomes = get(client, f"{api}/dashboard/outcomes")
    assert outcomes["best_so_far"]["loss"][-1] == 2.9 and min(outcomes["best_so_far"]["loss"]) == 2.9
    assert set(outcomes["best_so_far"]["trial_id"]) <= set(honest)
    assert sorted(outcomes["evaluated"]["loss"]) == [2.9, 3.2] and outcomes["generations"]["best"] == [2.9]
    assert (outcomes["diverged"]["count"], outcomes["failed"]["count"]) == (4, 1)
    multipliers = get(client, f"{api}/dashboard/multipliers")
    assert multipliers["heatmap"]["best_candidate"] == {"generation": 0, "index": 6, "loss": 2.9, "trial_id": best}
    assert multipliers["parallel"]["total"] == 2 and set(multipliers["parallel"]["trial_id"]) == set(honest)
    assert min(multipliers["parallel"]["loss"]) == 2.9
    curves = get(client, f"{api}/dashboard/curves")["curves"]
    assert [c["trial_id"] for c in curves if c["role"] == "best"] == [best, honest[0]]

    export = get(client, f"{api}/export")
    assert export["loss"]["mean"] == 2.9 and export["provenance"]["trial_ids"] == [best]


def test_a_candidate_with_a_diverged_replicate_is_not_exported_even_with_the_lowest_single_loss(client):
    """Candidate 0's first seed has the lowest loss of all, but its second diverged: the best candidate is
    the one whose seeds all succeeded with the lowest mean."""
    search_id, ids = run_generation(
        client,
        spec(population=3, replicates=2),
        [
            result("succeeded", 1.0),
            result("succeeded", NAN),
            result("succeeded", 2.0),
            result("succeeded", 2.2),
            result("succeeded", 2.5),
            result("succeeded", 2.7),
        ],
    )
    api = f"/api/searches/{search_id}"
    export = get(client, f"{api}/export")
    assert export["provenance"]["trial_ids"] == ids[2:4] and export["provenance"]["index"] == 1
    assert export["loss"]["values"] == [2.0, 2.2] and export["loss"]["mean"] == pytest.approx(2.1)
    best_candidate = get(client, f"{api}/dashboard/multipliers")["heatmap"]["best_candidate"]
    assert (best_candidate["index"], best_candidate["trial_id"]) == (1, ids[2])
    assert best_candidate["loss"] == pytest.approx(2.1)
    assert get(client, api)["best_loss"] == pytest.approx(2.1)  # the search's headline agrees with the export
    (generation,) = get(client, f"{api}/generations")
    assert generation["best_loss"] == pytest.approx(2.1)
