"""The minimal API: a spec in, a search out; bad specs refused naming the field, with nothing stored."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

from hpo_service.api.app import create_app
from hpo_service.api.settings import settings_of
from hpo_service.statuses import SearchStatus, TrialStatus
from hpo_service.store import queries, writes
from hpo_service.store.database import transaction
from hpo_service.store.models import Generation, OptimizerState, ProgressPoint, Search, Trial

TINY = yaml.safe_load((Path(__file__).resolve().parents[1] / "examples" / "tiny.yaml").read_text())


@pytest.fixture
def client(db_url):
    with TestClient(create_app(db_url, run_engine=False)) as client:
        yield client


def count_searches(client) -> int:
    with settings_of(client.app).sessions() as session:
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


def test_unknown_searches_are_404_on_every_route_that_names_one(client):
    for path in ("", "/generations", "/trials", "/trials/1", "/export", "/dashboard/outcomes"):
        response = client.get(f"/api/searches/999{path}")
        assert (response.status_code, response.json()) == (404, {"detail": "no search with id 999"}), path
    assert client.post("/api/searches/999/pause").status_code == 404


def test_trials_page_through_in_asked_order(client):
    search_id = client.post("/api/searches", json=TINY).json()["id"]
    with settings_of(client.app).sessions() as session, session.begin():
        session.add_all(
            Trial(search_id=search_id, generation=g, index=i, seed=0, vector=[0.0], multipliers={}, hps={})
            for g in range(3)
            for i in range(500)
        )
    page = client.get(f"/api/searches/{search_id}/trials", params={"limit": 1000, "offset": 400}).json()
    assert page["total"] == 1500 and len(page["trials"]) == 1000
    assert (page["trials"][0]["generation"], page["trials"][0]["index"]) == (0, 400)
    assert client.get(f"/api/searches/{search_id}/trials", params={"limit": 0}).status_code == 422


def test_commands_follow_the_search_status_and_the_summary_says_which_apply(client):
    search_id = client.post("/api/searches", json=TINY).json()["id"]

    def allowed() -> list[str]:
        return client.get(f"/api/searches/{search_id}").json()["commands"]

    assert allowed() == ["pause", "cancel"]
    assert client.post(f"/api/searches/{search_id}/resume").status_code == 409  # queued, not paused
    assert client.post(f"/api/searches/{search_id}/pause").json()["status"] == "paused"
    assert allowed() == ["resume", "cancel"]
    assert client.post(f"/api/searches/{search_id}/resume").json()["status"] == "running"
    assert allowed() == ["pause", "cancel"]
    assert client.post(f"/api/searches/{search_id}/cancel").json()["status"] == "cancelled"
    assert allowed() == []
    assert client.post(f"/api/searches/{search_id}/pause").status_code == 409


def test_a_summary_counts_the_trials_by_status_and_those_that_ended(client):
    search_id = client.post("/api/searches", json=TINY).json()["id"]
    statuses = ["pending", "running", "succeeded", "succeeded", "diverged", "stopped", "failed", "cancelled"]
    with settings_of(client.app).sessions() as session, session.begin():
        session.add_all(
            Trial(search_id=search_id, generation=0, index=i, seed=0, vector=[0.0], multipliers={}, hps={}, status=s)
            for i, s in enumerate(statuses)
        )
    summary = client.get(f"/api/searches/{search_id}").json()
    assert summary["trials"] == {"pending": 1, "running": 1, "succeeded": 2, "failed": 1, "diverged": 1, "stopped": 1,
                                 "cancelled": 1}  # fmt: skip
    assert summary["ended"] == 6
    (listed,) = client.get("/api/searches").json()["searches"]
    assert listed["ended"] == 6 and listed["commands"] == ["pause", "cancel"]


def test_meta_lists_the_statuses_searches_and_trials_may_be_in(client):
    meta = client.get("/api/meta").json()
    assert meta == {"search_statuses": list(SearchStatus), "trial_statuses": list(TrialStatus)}


def test_a_yaml_body_is_accepted_as_the_spec(client):
    body = (Path(__file__).resolve().parents[1] / "examples" / "tiny.yaml").read_bytes()
    response = client.post("/api/searches", content=body, headers={"Content-Type": "application/yaml"})
    assert response.status_code == 201


@pytest.mark.parametrize(
    ("body", "content_type", "message"),
    [
        (b'{"name": "x", ', "application/json", "malformed JSON"),
        (b"name: [unclosed", "application/yaml", "malformed YAML"),
        (b"[1, 2]", "application/json", "must be an object"),
    ],
)
def test_malformed_bodies_are_a_422_saying_why(client, body, content_type, message):
    response = client.post("/api/searches", content=body, headers={"Content-Type": content_type})
    assert response.status_code == 422
    assert message in response.json()["detail"][0]["msg"]
    assert count_searches(client) == 0


def test_a_10_mb_body_is_refused_unread(client):
    huge = b'{"name": "' + b"x" * 10_000_000 + b'"}'
    response = client.post("/api/searches", content=huge, headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    assert count_searches(client) == 0


def test_an_absurd_budget_is_a_422(client):
    response = client.post("/api/searches", json={**TINY, "optimizer": {"population": 10_000, "generations": 100_000}})
    assert response.status_code == 422 and "above the limit" in response.text
    assert count_searches(client) == 0


def test_the_model_family_lists_what_a_spec_may_name(client):
    (family,) = client.get("/api/model-families").json()
    assert "mlp_down" in family["module_types"] and "trust_region" in family["optimizers"]


@pytest.fixture
def guarded(db_url):
    with TestClient(create_app(db_url, run_engine=False, api_token="s3cret-token")) as client:
        yield client


def test_with_a_token_set_mutations_need_it(guarded):
    assert guarded.post("/api/searches", json=TINY).status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    assert guarded.post("/api/searches", json=TINY, headers=wrong).status_code == 401
    right = {"Authorization": "Bearer s3cret-token"}
    created = guarded.post("/api/searches", json=TINY, headers=right)
    assert created.status_code == 201
    search_id = created.json()["id"]
    assert guarded.post(f"/api/searches/{search_id}/pause").status_code == 401
    assert guarded.post(f"/api/searches/{search_id}/pause", headers=right).status_code == 200
    assert count_searches(guarded) == 1


def test_with_a_token_set_reads_stay_open(guarded):
    assert guarded.get("/api/searches").status_code == 200
    assert guarded.get("/api/health").status_code == 200
    assert guarded.get("/api/model-families").status_code == 200


@pytest.fixture
def rooted(db_url, tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    (root / "corpus.txt").write_text("hello " * 1000)
    (tmp_path / "secret.txt").write_text("not for the workers")
    (root / "escape.txt").symlink_to(tmp_path / "secret.txt")
    with TestClient(create_app(db_url, run_engine=False, data_roots=[str(root)])) as client:
        yield client, root


def with_data(source: str) -> dict:
    return {**TINY, "training": {**TINY["training"], "data": source}}


def test_specs_may_read_files_under_the_data_roots_and_are_stored_absolute(rooted):
    client, root = rooted
    response = client.post("/api/searches", json=with_data(f"text:{root}/./corpus.txt"))
    assert response.status_code == 201
    with settings_of(client.app).sessions() as session:
        assert session.get(Search, response.json()["id"]).spec.training.data == f"text:{root / 'corpus.txt'}"


def test_a_token_files_type_is_kept_when_its_path_is_stored_absolute(rooted):
    client, root = rooted
    (root / "ids.bin").write_bytes(bytes(40960))  # each split longer than a sequence
    response = client.post("/api/searches", json=with_data(f"tokens:{root}/./ids.bin:uint32"))
    assert response.status_code == 201, response.text
    with settings_of(client.app).sessions() as session:
        assert session.get(Search, response.json()["id"]).spec.training.data == f"tokens:{root / 'ids.bin'}:uint32"


@pytest.mark.parametrize("source", ["text:/etc/passwd", "tokens:/etc/hostname:uint16", "text:{root}/../secret.txt",
                                    "text:{root}/escape.txt"])  # fmt: skip
def test_specs_may_not_read_files_outside_the_data_roots(rooted, source):
    client, root = rooted
    response = client.post("/api/searches", json=with_data(source.format(root=root)))
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body", "training", "data"] and "outside the server's data roots" in error["msg"]
    assert count_searches(client) == 0


def test_an_unknown_data_source_is_refused_at_submission(client):
    response = client.post("/api/searches", json=with_data("http://example.com/corpus"))
    assert response.status_code == 422 and "unknown data source" in response.text


def with_trial(name: str) -> dict:
    return {**TINY, "execution": {**TINY.get("execution", {}), "trial": name}}


@pytest.mark.parametrize(
    ("allowed", "name", "message"),
    [
        (None, "tests.trial_fns:synthetic", "this server imports none"),
        (["mylab.trials:*"], "tests.trial_fns:synthetic", "not among the trial functions this server allows"),
        (["tests.*"], "tests.no_such_module:trial", "cannot import"),
        (["tests.*"], "tests.trial_fns:no_such_function", "cannot import"),
        (["*"], "os:system; rm -rf /", "is not of the form 'package.module:function'"),
    ],
)
def test_a_spec_naming_code_to_import_is_refused_unless_the_server_allows_it(db_url, allowed, name, message):
    with TestClient(create_app(db_url, run_engine=False, allowed_trials=allowed)) as client:
        response = client.post("/api/searches", json=with_trial(name))
        assert response.status_code == 422, response.text
        (error,) = response.json()["detail"]
        assert error["loc"][-2:] == ["execution", "trial"] and message in error["msg"]
        assert count_searches(client) == 0


def test_an_allowed_trial_function_is_accepted_and_stored(db_url):
    with TestClient(create_app(db_url, run_engine=False, allowed_trials=["tests.trial_fns:*"])) as client:
        response = client.post("/api/searches", json=with_trial("tests.trial_fns:synthetic"))
        assert response.status_code == 201
        with settings_of(client.app).sessions() as session:
            assert session.get(Search, response.json()["id"]).spec.execution.trial == "tests.trial_fns:synthetic"


def test_an_import_error_names_no_file_of_the_server_and_a_broken_module_is_a_422(db_url, tmp_path, monkeypatch):
    """Importing runs the module: an ImportError names the file it looked in, and a module may fail to compile."""
    (tmp_path / "lab_missing_name.py").write_text("from json import no_such_name\n")
    (tmp_path / "lab_bad_syntax.py").write_text("def f(:\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with TestClient(create_app(db_url, run_engine=False, allowed_trials=["lab_*"])) as client:
        for name, reason in [("lab_missing_name:f", "cannot import name 'no_such_name' from 'json'"),
                             ("lab_bad_syntax:f", "SyntaxError")]:  # fmt: skip
            response = client.post("/api/searches", json=with_trial(name))
            assert response.status_code == 422, response.text
            (error,) = response.json()["detail"]
            assert error["loc"][-2:] == ["execution", "trial"] and reason in error["msg"]
            assert str(tmp_path) not in response.text and json.__file__ not in response.text
        assert count_searches(client) == 0


def test_a_missing_token_and_a_wrong_one_are_told_apart_and_never_echoed(guarded):
    missing = guarded.post("/api/searches", json=TINY)
    assert missing.status_code == 401 and missing.json()["detail"].startswith("this server needs a token")
    wrong = guarded.post("/api/searches", json=TINY, headers={"Authorization": "Bearer not-the-s3cret"})
    assert wrong.status_code == 401 and wrong.json()["detail"] == "the token does not match the server's HPO_API_TOKEN"
    assert "not-the-s3cret" not in wrong.text and "s3cret-token" not in wrong.text + missing.text
    basic = guarded.post("/api/searches", json=TINY, headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert basic.json()["detail"] == missing.json()["detail"]  # no bearer token at all: missing
    assert count_searches(guarded) == 0


# -- the documentation page works offline ------------------------------------------------------------------------


@pytest.mark.backends("sqlite")
def test_the_documentation_page_loads_everything_from_this_server(client):
    response = client.get("/docs")
    assert response.status_code == 200 and "text/html" in response.headers["content-type"]
    assert not re.findall(r"(?:https?:)?//[\w.-]+", response.text)  # no other host: no CDN, no fonts
    assets = re.findall(r'(?:src|href)="([^"]+)"', response.text)
    assert any(asset.endswith(".js") for asset in assets)
    for asset in assets:
        assert asset.startswith("/"), asset
        served = client.get(asset)
        assert served.status_code == 200 and len(served.content) > 1000, asset
    assert client.get("/openapi.json").json()["info"]["title"] == "completedp-hpo"
    assert client.get("/redoc").status_code == 404  # ReDoc would load its logo from a CDN


# -- deleting a search ----------------------------------------------------------------------------------------------


def a_search_with_rows(sessions, status: SearchStatus, trial_status: TrialStatus = TrialStatus.SUCCEEDED) -> int:
    """A search in ``status`` with one generation of two trials in ``trial_status``, their curves and the
    optimizer's state: a row in every table that hangs off a search."""
    with transaction(sessions) as session:
        search = writes.create_search(session, "with-rows", TINY, "hash")
        trial = {"seed": 1, "vector": [0.0], "multipliers": {}, "hps": {}}
        rows = [{"index": index, "replicate": 0, **trial} for index in range(2)]
        writes.add_generation(session, search.id, 0, rows, "cma", b"state")
        session.flush()
        trial_ids = [t.id for t in queries.generation_trials(session, search.id, 0)]
        writes.record_progress(session, [(t, step, {"train_loss": 3.0}) for t in trial_ids for step in (1, 2)])
        session.execute(update(Trial).where(Trial.search_id == search.id).values(status=trial_status))
        session.execute(update(Search).where(Search.id == search.id).values(status=status))
        return search.id


def rows_of(sessions, search_id: int) -> dict[str, int]:
    """How many rows of each table belong to the search."""
    trial_ids = select(Trial.id).where(Trial.search_id == search_id)
    owned = {
        Search: Search.id == search_id,
        Generation: Generation.search_id == search_id,
        Trial: Trial.search_id == search_id,
        ProgressPoint: ProgressPoint.trial_id.in_(trial_ids),
        OptimizerState: OptimizerState.search_id == search_id,
    }
    with sessions() as session:
        count = select(func.count())
        return {
            model.__tablename__: session.scalar(count.select_from(model).where(where)) for model, where in owned.items()
        }


def test_deleting_an_ended_search_removes_it_and_everything_of_it_and_nothing_else(client, sessions):
    kept, deleted = (a_search_with_rows(sessions, status) for status in (SearchStatus.COMPLETED, SearchStatus.FAILED))
    before = rows_of(sessions, kept)
    everything = {"searches": 1, "generations": 1, "trials": 2, "progress_points": 4, "optimizer_states": 1}
    assert rows_of(sessions, deleted) == before == everything
    response = client.delete(f"/api/searches/{deleted}")
    assert response.status_code == 204 and response.content == b""
    assert set(rows_of(sessions, deleted).values()) == {0}
    assert rows_of(sessions, kept) == before
    assert client.get(f"/api/searches/{deleted}").status_code == 404
    assert [s["id"] for s in client.get("/api/searches").json()["searches"]] == [kept]
    again = client.delete(f"/api/searches/{deleted}")
    assert again.status_code == 404 and again.json()["detail"] == f"no search with id {deleted}"


def test_a_deleted_search_and_its_trials_never_lend_their_ids_to_new_ones(client, sessions):
    deleted = a_search_with_rows(sessions, SearchStatus.COMPLETED)  # the newest search and trials
    with sessions() as session:
        deleted_trials = set(session.scalars(select(Trial.id).where(Trial.search_id == deleted)))
    assert client.delete(f"/api/searches/{deleted}").status_code == 204
    new = a_search_with_rows(sessions, SearchStatus.COMPLETED)
    with sessions() as session:
        new_trials = set(session.scalars(select(Trial.id).where(Trial.search_id == new)))
    assert new > deleted and min(new_trials) > max(deleted_trials)


@pytest.mark.parametrize("status", [SearchStatus.QUEUED, SearchStatus.RUNNING, SearchStatus.PAUSED])
def test_an_active_search_is_not_deleted(client, sessions, status):
    """Not even between two generations, when none of its trials is running."""
    search_id = a_search_with_rows(sessions, status, TrialStatus.SUCCEEDED)
    before = rows_of(sessions, search_id)
    response = client.delete(f"/api/searches/{search_id}")
    assert response.status_code == 409
    assert response.json()["detail"] == f"cannot delete a search that is {status}: cancel it first"
    assert rows_of(sessions, search_id) == before


@pytest.mark.parametrize("trial_status", [TrialStatus.PENDING, TrialStatus.RUNNING])
def test_a_cancelled_search_whose_trials_the_engine_has_not_stopped_yet_is_not_deleted(client, sessions, trial_status):
    """The engine may still write for those trials: their rows must outlive it."""
    search_id = a_search_with_rows(sessions, SearchStatus.CANCELLED, trial_status)
    response = client.delete(f"/api/searches/{search_id}")
    assert response.status_code == 409 and "its trials are still being stopped" in response.json()["detail"]
    assert rows_of(sessions, search_id)["trials"] == 2
    with transaction(sessions) as session:
        writes.cancel_unfinished(session, search_id)  # what the engine does once it has stopped them
    assert client.delete(f"/api/searches/{search_id}").status_code == 204
    assert set(rows_of(sessions, search_id).values()) == {0}


# -- the name filter ------------------------------------------------------------------------------------------------


def test_the_name_filter_matches_its_text_literally_ignoring_case(client):
    names = ["100%", "a_b", "axb", "a/b", "a\\b", "plain"]
    for name in names:
        assert client.post("/api/searches", json={**TINY, "name": name}).status_code == 201
    for text, found in [("%", ["100%"]), ("_", ["a_b"]), ("a_b", ["a_b"]), ("/", ["a/b"]), ("\\", ["a\\b"]),
                        ("A", ["plain", "a\\b", "a/b", "axb", "a_b"]), ("", names[::-1])]:  # fmt: skip
        page = client.get("/api/searches", params={"name": text}).json()
        assert [s["name"] for s in page["searches"]] == found, text
        assert page["total"] == len(found)


@pytest.mark.parametrize("text", ["\x00", "a\x00", "%\x00%"])
def test_a_nul_in_the_name_filter_is_a_422_naming_it(client, text):
    client.post("/api/searches", json=TINY)
    response = client.get("/api/searches", params={"name": text})
    assert response.status_code == 422, response.text
    (error,) = response.json()["detail"]
    assert error["loc"] == ["query", "name"] and "NUL" in error["msg"]
