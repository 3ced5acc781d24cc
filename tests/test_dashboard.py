"""The dashboard's pages and data endpoints, on stored trials: what each chart is given, and what it never is."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event, insert, update

from hpo_service.api.app import create_app
from hpo_service.api.settings import settings_of
from hpo_service.dashboard.sampling import envelope, evenly
from hpo_service.store.models import ProgressPoint, Trial

# Five coordinates: attn_q lr and init std, norm_attn lr (a norm gain has no init std), two residual branches.
SPEC = {
    "name": "dash",
    "search_space": {"modules": ["attn_q", "norm_attn"], "hps": ["lr", "init_std"], "residual": True},
    "optimizer": {"name": "random", "population": 4, "generations": 3},
}
START = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
def client(db_url):
    with TestClient(create_app(db_url, run_engine=False)) as client:
        yield client


def new_search(client, spec: dict = SPEC) -> int:
    return client.post("/api/searches", json=spec).json()["id"]


def add_trials(client, search_id: int, *trials: dict) -> list[int]:
    """Trials in the given order; each ends a second after the one before unless it says otherwise."""
    rows = []
    for i, trial in enumerate(trials):
        status = trial.get("status", "succeeded")
        rows.append(
            {
                "search_id": search_id,
                "generation": trial.get("generation", 0),
                "index": trial.get("index", i),
                "replicate": trial.get("replicate", 0),
                "seed": 0,
                "status": status,
                "vector": trial.get("vector", [0.0] * 5),
                "multipliers": {},
                "hps": {},
                "loss": trial.get("loss"),
                "finished_at": START + timedelta(seconds=trial.get("ended", i)) if status != "running" else None,
            }
        )
    with settings_of(client.app).sessions() as session, session.begin():
        return list(session.scalars(insert(Trial).returning(Trial.id), rows))


def get(client, path: str) -> dict:
    response = client.get(path)
    assert response.status_code == 200, response.text
    return response.json()


def test_the_overview_is_the_root_page_and_its_scripts_are_served_offline(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<h1>Searches</h1>" in page.text and "/static/overview.js" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # no CDN
    plotly = client.get("/static/plotly.min.js")
    assert plotly.status_code == 200 and "javascript" in plotly.headers["content-type"]
    assert plotly.text.startswith("/**\n* plotly.js v")
    for script in ("common.js", "overview.js", "search.js", "charts.js", "dashboard.css"):
        assert client.get(f"/static/{script}").status_code == 200


def test_a_search_page_names_its_search_escaped(client):
    search_id = new_search(client, {**SPEC, "name": "<script>alert(1)</script>"})
    page = client.get(f"/searches/{search_id}")
    assert page.status_code == 200
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text and "<script>alert" not in page.text
    assert f'data-search-id="{search_id}"' in page.text and "/static/search.js" in page.text


def not_found_page(client, path: str) -> str:
    """The dashboard's 404 page at ``path``: HTML in the dashboard's style, its message in #not-found-message."""
    page = client.get(path)
    assert page.status_code == 404 and page.headers["content-type"].startswith("text/html"), (path, page.text)
    assert "/static/dashboard.css" in page.text and '<a class="brand" href="/">' in page.text
    return page.text.partition('<p id="not-found-message">')[2].partition("</p>")[0]


def test_a_page_that_does_not_exist_is_the_dashboards_404_page_and_the_api_keeps_json(client):
    assert not_found_page(client, "/searches/999") == "There is no search #999."
    for search_id in ("0", "abc", "99999999999", "%C2%B2"):  # not ids, beyond the column, a unicode digit
        assert "There is no search #" in not_found_page(client, f"/searches/{search_id}")
    assert not_found_page(client, "/searches/%3Cb%3Ex") == "There is no search #&lt;b&gt;x."
    assert not_found_page(client, "/nothing/here") == "There is no page at /nothing/here."
    for path in ("/api/searches/999", "/api/nothing", "/api/searches/999/dashboard/outcomes", "/static/nothing.js"):
        answer = client.get(path)
        assert answer.status_code == 404 and answer.headers["content-type"] == "application/json", path
    assert client.get("/api/searches/999").json() == {"detail": "no search with id 999"}
    for panel in ("outcomes", "multipliers", "curves"):
        assert client.get(f"/api/searches/999/dashboard/{panel}").status_code == 404


def test_the_best_loss_so_far_follows_the_order_in_which_trials_ended(client):
    search_id = new_search(client)
    add_trials(
        client,
        search_id,
        {"loss": 3.0, "ended": 5},
        {"loss": 2.5, "ended": 1},
        {"loss": 2.8, "ended": 2},
        {"loss": 2.4, "ended": 9},
    )
    best = get(client, f"/api/searches/{search_id}/dashboard/outcomes")["best_so_far"]
    assert best["x"] == [1, 4] and best["loss"] == [2.5, 2.4]


@contextmanager
def statements(client) -> Iterator[list[str]]:
    """The SQL statements the app sends its database meanwhile."""
    with settings_of(client.app).sessions() as session:
        engine = session.get_bind()
    sent: list[str] = []

    def record(connection, cursor, statement, parameters, context, executemany) -> None:
        sent.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        event.remove(engine, "before_cursor_execute", record)


def test_kept_answers_are_reused_between_polls_and_recomputed_as_soon_as_a_trial_ends(client):
    """A poll that finds the search's trials unchanged asks the database for their counts only; a trial that
    ends makes the next poll compute the answer again."""
    search_id = new_search(client)
    add_trials(client, search_id, {"loss": 3.0, "index": 0}, {"status": "running", "index": 1})
    computed: dict[str, list[str]] = {}
    for panel in ("outcomes", "multipliers"):
        path = f"/api/searches/{search_id}/dashboard/{panel}"
        with statements(client) as computed[panel]:
            first = get(client, path)
        with statements(client) as kept:
            assert get(client, path) == first
        assert len(kept) < len(computed[panel]) and set(kept) < set(computed[panel]), panel
    with settings_of(client.app).sessions() as session, session.begin():
        session.execute(
            update(Trial)
            .where(Trial.search_id == search_id, Trial.status == "running")
            .values(status="succeeded", loss=2.0, finished_at=START + timedelta(seconds=5))
        )
    with statements(client) as recomputed:
        best = get(client, f"/api/searches/{search_id}/dashboard/outcomes")["best_so_far"]
    assert best["loss"] == [3.0, 2.0] and recomputed == computed["outcomes"]
    heatmap = get(client, f"/api/searches/{search_id}/dashboard/multipliers")["heatmap"]
    assert heatmap["best_candidate"]["loss"] == 2.0


def test_diverged_and_failed_trials_are_marked_apart_never_at_a_loss_and_never_best(client):
    search_id = new_search(client)
    ids = add_trials(
        client,
        search_id,
        {"loss": 3.0},
        {"status": "diverged"},
        {"status": "failed"},
        {"loss": 2.9, "generation": 1},
        {"status": "diverged", "generation": 1},
        {"status": "running", "generation": 1},
        {"status": "cancelled", "generation": 1},
    )
    outcomes = get(client, f"/api/searches/{search_id}/dashboard/outcomes")
    assert outcomes["evaluations"] == 5  # running and cancelled trials were not evaluated
    assert outcomes["best_so_far"]["loss"] == [3.0, 2.9]
    assert outcomes["population"]["trial_id"] == [ids[0], ids[3]]
    assert outcomes["diverged"] == {"generation": [0, 1], "trial_id": [ids[1], ids[4]], "count": 2}
    assert outcomes["failed"] == {"generation": [0], "trial_id": [ids[2]], "count": 1}
    assert outcomes["generations"] == {
        "number": [0, 1],
        "best": [3.0, 2.9],
        "median": [3.0, 2.9],
        "succeeded": [1, 1],
        "diverged": [1, 1],
        "failed": [1, 0],
    }
    assert not outcomes["sampled"]


def test_the_heatmap_shows_the_candidate_the_export_would_export_on_a_module_by_hp_grid(client):
    search_id = new_search(client, {**SPEC, "optimizer": {**SPEC["optimizer"], "replicates": 2}})
    best, second, lone = [0.5, -1.0, 2.0, 0.25, -0.25], [1.0, 1.0, 1.0, 1.0, 1.0], [-3.0] * 5
    add_trials(
        client,
        search_id,
        {"index": 0, "replicate": 0, "loss": 2.0, "vector": second},
        {"index": 0, "replicate": 1, "loss": 3.0, "vector": second},  # mean 2.5
        {"index": 1, "replicate": 0, "loss": 2.2, "vector": best},
        {"index": 1, "replicate": 1, "loss": 2.4, "vector": best},  # mean 2.3: the best candidate
        {"index": 2, "replicate": 0, "loss": 1.0, "vector": lone},
        {"index": 2, "replicate": 1, "status": "diverged", "vector": lone},  # not every replicate succeeded
    )
    m = get(client, f"/api/searches/{search_id}/dashboard/multipliers")
    h = m["heatmap"]
    assert h["rows"] == ["attn_q", "norm_attn", "residual attn", "residual mlp"]
    assert h["columns"] == ["lr", "init_std", "branch scale"]
    assert h["best"] == [[0.5, -1.0, None], [2.0, None, None], [None, None, 0.25], [None, None, -0.25]]
    assert h["top_k"] == 2 and h["mean"][0][0] == pytest.approx(0.75) and h["spread"][0][0] == pytest.approx(0.25)
    candidate = h["best_candidate"]
    assert (candidate["generation"], candidate["index"], candidate["loss"]) == (0, 1, pytest.approx(2.3))
    export = get(client, f"/api/searches/{search_id}/export")["provenance"]
    assert (export["generation"], export["index"]) == (candidate["generation"], candidate["index"])
    assert m["bounds"] == [-3.0, 3.0]


def test_a_tied_search_is_one_row_of_global_multipliers(client):
    tied = {**SPEC, "search_space": {"modules": ["attn_q", "norm_attn"], "hps": ["lr", "init_std"], "tied": True}}
    search_id = new_search(client, tied)
    add_trials(client, search_id, {"loss": 2.0, "vector": [1.0, -0.5]})
    heatmap = get(client, f"/api/searches/{search_id}/dashboard/multipliers")["heatmap"]
    assert (heatmap["rows"], heatmap["columns"], heatmap["best"]) == (
        ["all modules"],
        ["lr", "init_std"],
        [[1.0, -0.5]],
    )


def test_parallel_coordinates_draw_successful_trials_coloured_by_loss(client):
    search_id = new_search(client)
    add_trials(
        client,
        search_id,
        {"loss": 2.5, "vector": [1.0, 0.0, 0.0, 0.0, 0.0]},
        {"status": "diverged", "vector": [3.0, 3.0, 3.0, 3.0, 3.0]},
        {"loss": 2.0, "vector": [-1.0, 0.5, 0.0, 0.0, 0.0]},
    )
    p = get(client, f"/api/searches/{search_id}/dashboard/multipliers")["parallel"]
    assert p["axes"] == ["attn_q lr", "attn_q init_std", "norm_attn lr", "residual attn", "residual mlp"]
    assert p["loss"] == [2.0, 2.5] and p["total"] == 2  # best first; the diverged trial has no line
    assert p["values"][0] == [-1.0, 1.0] and p["values"][1] == [0.5, 0.0]
    assert p["colour_range"] == [2.0, pytest.approx(2.45)]  # the lowest loss to the 90th percentile


@pytest.mark.parametrize("losses", [[2.0], [2.0, 2.0], [2.0, 2.0001], [30.0, 30.01, 30.02]])
def test_the_colour_scale_spans_a_sensible_range_when_the_losses_are_few_or_nearly_equal(client, losses):
    """Losses closer than the minimum span sit mid-scale, in neighbouring colours, not at its two ends."""
    search_id = new_search(client)
    add_trials(client, search_id, *({"loss": loss} for loss in losses))
    low, high = get(client, f"/api/searches/{search_id}/dashboard/multipliers")["parallel"]["colour_range"]
    assert high - low == pytest.approx(max(0.01, 0.005 * min(losses)))
    assert low < min(losses) and max(losses) < high
    assert (low + high) / 2 == pytest.approx((min(losses) + max(losses)) / 2, abs=0.01)


def test_parallel_coordinates_keep_the_axes_most_correlated_with_the_loss(client):
    wide = {**SPEC, "search_space": {"modules": "all", "hps": ["lr", "init_std", "weight_decay", "beta1"]}}
    search_id = new_search(client, wide)
    dimension = get(client, f"/api/searches/{search_id}/dashboard/multipliers")["parallel"]["axes_total"]
    assert dimension > 40
    rows = []
    for i in range(20):
        vector = [((i * 7 + j * 3) % 11) / 5 - 1 for j in range(dimension)]
        vector[-1] = i / 10  # the last coordinate explains the loss
        rows.append({"index": i, "loss": 2.0 + i / 10, "vector": vector})
    add_trials(client, search_id, *rows)
    p = get(client, f"/api/searches/{search_id}/dashboard/multipliers")["parallel"]
    assert len(p["axes"]) == len(p["values"]) == 40 and p["axes_total"] == dimension
    assert p["axes"][-1] == "unembedding beta1"


def test_curves_are_those_of_the_running_trials_and_of_the_best_ones(client):
    search_id = new_search(client)
    ids = add_trials(
        client,
        search_id,
        *({"loss": 2.0 + i / 10} for i in range(7)),
        {"status": "running"},
        {"status": "diverged"},
    )
    points = [{"trial_id": ids[7], "step": s, "train_loss": 5.0 - s / 10, "val_loss": None} for s in range(1, 4)]
    points += [{"trial_id": ids[0], "step": 10, "train_loss": 2.1, "val_loss": 2.0}]
    with settings_of(client.app).sessions() as session, session.begin():
        session.execute(insert(ProgressPoint), points)
    curves = get(client, f"/api/searches/{search_id}/dashboard/curves")["curves"]
    assert [(c["trial_id"], c["role"]) for c in curves] == [(ids[7], "running")] + [(i, "best") for i in ids[:5]]
    assert curves[0]["step"] == [1, 2, 3] and curves[0]["val_step"] == [] and curves[0]["loss"] is None
    assert curves[1]["val_step"] == [10] and curves[1]["val_loss"] == [2.0] and curves[1]["loss"] == 2.0


def test_a_search_with_no_trials_yet_has_empty_charts(client):
    search_id = new_search(client)
    outcomes = get(client, f"/api/searches/{search_id}/dashboard/outcomes")
    assert outcomes["evaluations"] == 0 and outcomes["best_so_far"]["x"] == []
    m = get(client, f"/api/searches/{search_id}/dashboard/multipliers")
    assert m["heatmap"]["best_candidate"] is None and m["heatmap"]["best"][0] == [None, None, None]
    assert m["parallel"]["total"] == 0 and m["parallel"]["colour_range"] is None
    assert get(client, f"/api/searches/{search_id}/dashboard/curves")["curves"] == []


def test_evenly_keeps_the_ends_and_at_most_k():
    assert evenly(5, 10) == [0, 1, 2, 3, 4]
    assert evenly(101, 5) == [0, 25, 50, 75, 100]
    assert evenly(10, 1) == [0] and evenly(10, 0) == []


def test_envelope_keeps_each_runs_extremes():
    values = [5.0, 1.0, 3.0, 9.0, 2.0, 4.0, 8.0, 0.0]
    assert envelope(values, 2) == [1, 3, 6, 7]
    assert envelope(values, 4) == list(range(8))
