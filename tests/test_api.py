"""The minimal API: a spec in, a search out; bad specs refused naming the field, with nothing stored."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from hpo_service.api.app import create_app
from hpo_service.store.models import Search, Trial

TINY = yaml.safe_load((Path(__file__).resolve().parents[1] / "examples" / "tiny.yaml").read_text())


@pytest.fixture
def client(db_url):
    with TestClient(create_app(db_url, run_engine=False)) as client:
        yield client


def count_searches(client) -> int:
    with client.app.state.sessions() as session:
        return session.scalar(select(func.count()).select_from(Search))


def test_health_reports_the_database(client):
    body = client.get("/api/health").json()
    assert body["database"] == "ok" and body["engine"] == "off"


def test_a_submitted_search_is_queued_with_an_id(client):
    response = client.post("/api/searches", json=TINY)
    assert response.status_code == 201
    created = response.json()
    search = client.get(f"/api/searches/{created['id']}").json()
    assert search["status"] == "queued" and search["best_loss"] is None
    assert search["budget"] == 18 and search["trials"]["pending"] == 0


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"search_space": {**TINY["search_space"], "modules": ["attn_q", "nope"]}}, "search_space.modules"),
        ({"search_space": {**TINY["search_space"], "log2_bounds": [2, -2]}}, "search_space.log2_bounds"),
        ({"optimizer": {**TINY["optimizer"], "population": 0}}, "optimizer.population"),
        ({"training": {**TINY["training"], "steps": "many"}}, "training.steps"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_a_bad_spec_is_a_422_naming_the_field_and_stores_nothing(client, change, field):
    response = client.post("/api/searches", json={**TINY, **change})
    assert response.status_code == 422
    assert field in {".".join(str(p) for p in e["loc"][1:]) for e in response.json()["detail"]}
    assert count_searches(client) == 0


def test_unknown_searches_are_404(client):
    assert client.get("/api/searches/999").status_code == 404
    assert client.get("/api/searches/999/trials").status_code == 404
    assert client.post("/api/searches/999/pause").status_code == 404


def test_trials_page_through_in_asked_order(client):
    search_id = client.post("/api/searches", json=TINY).json()["id"]
    with client.app.state.sessions() as session, session.begin():
        session.add_all(
            Trial(search_id=search_id, generation=g, index=i, seed=0, vector=[0.0], multipliers={}, hps={})
            for g in range(3)
            for i in range(500)
        )
    page = client.get(f"/api/searches/{search_id}/trials", params={"limit": 1000, "offset": 400}).json()
    assert page["total"] == 1500 and len(page["trials"]) == 1000
    assert (page["trials"][0]["generation"], page["trials"][0]["index"]) == (0, 400)
    assert client.get(f"/api/searches/{search_id}/trials", params={"limit": 0}).status_code == 422


def test_commands_follow_the_search_status(client):
    search_id = client.post("/api/searches", json=TINY).json()["id"]
    assert client.post(f"/api/searches/{search_id}/resume").status_code == 409  # queued, not paused
    assert client.post(f"/api/searches/{search_id}/pause").json()["status"] == "paused"
    assert client.post(f"/api/searches/{search_id}/resume").json()["status"] == "running"
    assert client.post(f"/api/searches/{search_id}/cancel").json()["status"] == "cancelled"
    assert client.post(f"/api/searches/{search_id}/pause").status_code == 409
