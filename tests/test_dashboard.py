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
from hpo_service.dashboard import outcomes as dashboard_outcomes
from hpo_service.dashboard.curves import MAX_STOPPED
from hpo_service.dashboard.sampling import envelope, evenly
from hpo_service.store.models import Generation, ProgressPoint, Trial

# Five coordinates: attn_q lr and init std, norm_attn lr (a norm gain has no init std), two residual branches.
SPEC = {
    "name": "dash",
    "search_space": {"modules": ["attn_q", "norm_attn"], "hps": ["lr", "init_std"], "residual": True},
    "optimizer": {"name": "random", "population": 4, "generations": 3},
}
START = datetime(2026, 1, 1, tzinfo=UTC)
# Two stages over attn_q and norm_attn LRs (tied: one coordinate, then one per module), top-2 selection on two
# fresh seeds, and a transfer check at width 128: arms per-module, global (the tied stage's choice) and base.
STAGED = {
    "name": "staged",
    "stages": [
        {
            "name": "global",
            "search_space": {"modules": ["attn_q", "norm_attn"], "hps": ["lr"], "tied": True},
            "optimizer": {"name": "random", "population": 2, "generations": 1},
        },
        {
            "name": "per-module",
            "search_space": {"modules": ["attn_q", "norm_attn"], "hps": ["lr"]},
            "optimizer": {"name": "random", "population": 2, "generations": 1},
        },
    ],
    "selection": {"top": 2, "seeds": 2},
    "validate": {"targets": [{"width": 128}], "seeds": 2},
}


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
                "stage": trial.get("stage"),
                "kind": trial.get("kind", "search"),
                "origin": trial.get("origin"),
                "target": trial.get("target"),
                "arm": trial.get("arm"),
                "status": status,
                "vector": trial.get("vector", [0.0] * 5),
                "multipliers": {},
                "hps": {},
                "loss": trial.get("loss"),
                "steps": trial.get("steps"),
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
    for panel in ("outcomes", "multipliers", "curves", "selection", "transfer"):
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
        "stopped": [0, 0],
    }
    assert not outcomes["sampled"]


def test_stopped_trials_are_marks_of_their_own_counted_as_evaluations_never_in_the_population_nor_best(client):
    search_id = new_search(client)
    ids = add_trials(
        client,
        search_id,
        {"status": "stopped", "steps": 20},  # the first to end: a best-so-far that counted it would start here
        {"loss": 3.0},
        {"status": "stopped", "steps": 40},
        {"status": "diverged"},
        {"loss": 2.9, "generation": 1},
        {"status": "stopped", "generation": 1, "steps": 20},
    )
    outcomes = get(client, f"/api/searches/{search_id}/dashboard/outcomes")
    assert outcomes["evaluations"] == 6
    assert outcomes["best_so_far"] == {"x": [2, 5], "loss": [3.0, 2.9], "trial_id": [ids[1], ids[4]]}
    assert outcomes["evaluated"]["trial_id"] == [ids[1], ids[4]]
    assert outcomes["population"]["trial_id"] == [ids[1], ids[4]]
    assert outcomes["stopped"] == {"generation": [0, 0, 1], "trial_id": [ids[0], ids[2], ids[5]], "count": 3}
    assert outcomes["diverged"] == {"generation": [0], "trial_id": [ids[3]], "count": 1}
    assert outcomes["failed"]["count"] == 0
    generations = outcomes["generations"]
    assert (generations["succeeded"], generations["diverged"], generations["stopped"]) == ([1, 1], [1, 0], [2, 1])
    assert (generations["best"], generations["median"]) == ([3.0, 2.9], [3.0, 2.9])
    assert not outcomes["sampled"]


def test_stopped_marks_keep_the_populations_bound_and_say_they_are_a_sample(client, monkeypatch):
    monkeypatch.setattr(dashboard_outcomes, "MAX_POPULATION", 4)
    search_id = new_search(client)
    add_trials(client, search_id, {"loss": 3.0}, *({"status": "stopped"} for _ in range(10)))
    outcomes = get(client, f"/api/searches/{search_id}/dashboard/outcomes")
    stopped = outcomes["stopped"]
    assert stopped["count"] == 10 and len(stopped["trial_id"]) == len(stopped["generation"]) == 4
    assert outcomes["sampled"] and outcomes["evaluations"] == 11


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


def test_the_curves_of_the_last_stopped_trials_end_where_they_stopped_and_are_never_among_the_best(client):
    search_id = new_search(client)
    stopped = MAX_STOPPED + 2
    ids = add_trials(
        client,
        search_id,
        {"loss": 2.5},
        *({"status": "stopped", "steps": 10 * (i + 1), "ended": 10 + i} for i in range(stopped)),
    )
    trained = range(10, 10 * stopped + 1, 10)  # the last to stop reported each step up to where it stopped
    points = [{"trial_id": ids[0], "step": s, "train_loss": 3.0, "val_loss": 2.5} for s in (10, 20, 30, 40)]
    points += [{"trial_id": ids[-1], "step": s, "train_loss": 4.0, "val_loss": 4.5} for s in trained]
    with settings_of(client.app).sessions() as session, session.begin():
        session.execute(insert(ProgressPoint), points)
    curves = get(client, f"/api/searches/{search_id}/dashboard/curves")["curves"]
    assert [(c["trial_id"], c["role"]) for c in curves] == [(ids[0], "best")] + [
        (trial_id, "stopped") for trial_id in reversed(ids[-MAX_STOPPED:])
    ]  # the last to stop first; the first to stop is left out
    curve = curves[1]
    assert (curve["stopped_at"], curve["loss"], curve["kind"]) == (10 * stopped, None, "search")
    assert curve["val_step"][-1] == curve["step"][-1] == 10 * stopped
    assert curves[0]["stopped_at"] is None and curves[2]["stopped_at"] == 10 * (stopped - 1)


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


def add_phase(client, search_id: int, number: int, stage: str | None, kind: str, trials: list[dict]) -> list[int]:
    """Generation ``number`` of ``stage`` and ``kind`` with its trials, which end after every earlier phase's."""
    with settings_of(client.app).sessions() as session, session.begin():
        session.add(Generation(search_id=search_id, number=number, stage=stage, kind=kind, status="completed"))
    phase = {"generation": number, "stage": stage, "kind": kind}
    return add_trials(client, search_id, *(phase | {"ended": 10 * number + i} | t for i, t in enumerate(trials)))


def fresh_runs(index: int, origin: dict, losses: list[float], vector: list[float]) -> list[dict]:
    """A re-trained candidate's runs, one per fresh seed."""
    return [
        {"index": index, "replicate": r, "origin": origin, "loss": loss, "vector": vector}
        for r, loss in enumerate(losses)
    ]


def arm_runs(index: int, arm: str, losses: list[float], status: str = "succeeded") -> list[dict]:
    target = {"index": 0, "width": 128}
    return [
        {"index": index, "replicate": r, "arm": arm, "target": target, "loss": loss, "status": status, "vector": []}
        for r, loss in enumerate(losses)
    ]


# Validation curves: the validation loss at steps 1-3 of each arm; its last point is the run's final loss.
ARM_CURVES = {"per-module": [4.0, 3.0, 2.4], "global": [4.0, 3.3, 2.8], "base": [4.0, 3.6, 3.0]}
STAGED_PHASES = [
    ("global", "search", [{"loss": 3.0, "vector": [0.5]}, {"loss": 2.9, "vector": [1.0]}]),
    ("global", "reevaluation", [
        *fresh_runs(0, {"generation": 0, "index": 1, "loss": 2.9}, [2.6, 2.7], [1.0]),
        *fresh_runs(1, {"generation": 0, "index": 0, "loss": 3.0}, [2.65, 2.75], [0.5]),
    ]),
    ("per-module", "search", [{"loss": 2.95, "vector": [0.0, 0.0]}, {"loss": 2.8, "vector": [0.5, -0.5]}]),
    ("per-module", "reevaluation", [
        *fresh_runs(0, {"generation": 2, "index": 1, "loss": 2.8}, [2.5, 2.52], [0.5, -0.5]),
        *fresh_runs(1, {"generation": 2, "index": 0, "loss": 2.95}, [2.6, 2.6], [0.0, 0.0]),
    ]),
    (None, "validation", [
        *arm_runs(0, "per-module", [2.0, 2.02]), *arm_runs(1, "global", [2.3, 2.32]), *arm_runs(2, "base", [2.6, 2.61])
    ]),
]  # fmt: skip


def staged_search(client, phases: int = len(STAGED_PHASES)) -> tuple[int, list[list[int]]]:
    """A search of ``STAGED`` with its first ``phases`` phases stored, each phase's trial ids. Fresh-seed and
    validation losses are all below the search-time ones: a chart that took them for candidates would show them
    as the best."""
    search_id = new_search(client, STAGED)
    ids = [add_phase(client, search_id, n, *STAGED_PHASES[n]) for n in range(phases)]
    if phases == len(STAGED_PHASES):
        add_curves(client, ids[-1], [t for _, _, trials in STAGED_PHASES[-1:] for t in trials])
    return search_id, ids


def add_curves(client, trial_ids: list[int], trials: list[dict]) -> None:
    """Each validation trial's curve: its arm's first points, then its final loss at step 4."""
    points = [
        {"trial_id": trial_id, "step": step, "train_loss": None, "val_loss": loss}
        for trial_id, trial in zip(trial_ids, trials, strict=True)
        for step, loss in enumerate([*ARM_CURVES[trial["arm"]], trial["loss"]], start=1)
    ]
    with settings_of(client.app).sessions() as session, session.begin():
        session.execute(insert(ProgressPoint), points)


def test_a_staged_searchs_charts_plot_search_trials_only_and_mark_where_each_phase_lies(client):
    search_id, ids = staged_search(client)
    search_ids = ids[0] + ids[2]
    outcomes = get(client, f"/api/searches/{search_id}/dashboard/outcomes")
    assert outcomes["evaluations"] == 4
    assert outcomes["best_so_far"]["x"] == [1, 2, 4] and outcomes["best_so_far"]["loss"] == [3.0, 2.9, 2.8]
    assert sorted(outcomes["population"]["trial_id"]) == search_ids
    assert outcomes["generations"]["number"] == [0, 2]
    assert outcomes["reevaluated"]["x"] == [1] * 4 + [3] * 4
    assert sorted(outcomes["reevaluated"]["trial_id"]) == ids[1] + ids[3]
    assert outcomes["phases"] == [
        {"kind": "search", "stage": "global", "first": 0, "last": 0, "first_evaluation": 1},
        {"kind": "reevaluation", "stage": "global", "first": 1, "last": 1, "first_evaluation": None},
        {"kind": "search", "stage": "per-module", "first": 2, "last": 2, "first_evaluation": 3},
        {"kind": "reevaluation", "stage": "per-module", "first": 3, "last": 3, "first_evaluation": None},
        {"kind": "validation", "stage": None, "first": 4, "last": 4, "first_evaluation": None},
    ]
    curves = get(client, f"/api/searches/{search_id}/dashboard/curves")["curves"]
    assert {c["trial_id"] for c in curves} == set(search_ids) and {c["kind"] for c in curves} == {"search"}


def test_a_staged_searchs_multipliers_are_those_of_its_latest_stage_in_that_stages_coordinates(client):
    search_id, _ = staged_search(client, phases=2)
    m = get(client, f"/api/searches/{search_id}/dashboard/multipliers")
    assert m["stage"] == "global" and m["heatmap"]["rows"] == ["all modules"] and m["heatmap"]["best"] == [[1.0]]
    add_phase(client, search_id, 2, *STAGED_PHASES[2])
    m = get(client, f"/api/searches/{search_id}/dashboard/multipliers")
    h, p = m["heatmap"], m["parallel"]
    assert m["stage"] == "per-module" and (h["rows"], h["columns"]) == (["attn_q", "norm_attn"], ["lr"])
    assert h["best"] == [[0.5], [-0.5]] and (h["best_candidate"]["generation"], h["best_candidate"]["loss"]) == (2, 2.8)
    assert p["axes"] == ["attn_q lr", "norm_attn lr"] and p["loss"] == [2.8, 2.95] and p["total"] == 2
    assert get(client, f"/api/searches/{new_search(client)}/dashboard/multipliers")["stage"] is None


def test_the_selection_panel_states_each_stages_choice_and_gap(client):
    search_id, _ = staged_search(client)
    panel = get(client, f"/api/searches/{search_id}/dashboard/selection")
    assert (panel["enabled"], panel["top"], panel["seeds"]) == (True, 2, 2)
    first, second = panel["stages"]
    assert (first["stage"], first["state"], second["stage"], second["state"]) == (
        "global",
        "chosen",
        "per-module",
        "chosen",
    )
    assert first["summary"] == "chose g0.1: search-time 2.9000, fresh 2.6500 ± 0.0707: gap +0.2500"
    assert second["summary"] == "chose g2.1: search-time 2.8000, fresh 2.5100 ± 0.0141: gap +0.2900"
    assert [(c["generation"], c["index"], c["chosen"]) for c in second["candidates"]] == [(2, 1, True), (2, 0, False)]
    assert second["candidates"][0]["losses"] == [2.5, 2.52] and second["gap"] == pytest.approx(0.29)


def test_the_selection_panel_is_pending_until_a_stage_re_trains_and_off_without_selection(client):
    search_id, _ = staged_search(client, phases=3)
    stages = get(client, f"/api/searches/{search_id}/dashboard/selection")["stages"]
    assert [s["state"] for s in stages] == ["chosen", "pending"]
    assert stages[1]["summary"] == (
        "pending: after its last generation, its top 2 candidates are re-trained on 2 fresh seeds"
    )
    assert client.post(f"/api/searches/{search_id}/cancel").status_code == 200
    stages = get(client, f"/api/searches/{search_id}/dashboard/selection")["stages"]
    assert [s["state"] for s in stages] == ["chosen", "not run"]
    plain = get(client, f"/api/searches/{new_search(client)}/dashboard/selection")
    assert plain == {"enabled": False, "top": 0, "seeds": 2, "stages": []}


def test_the_transfer_panel_gives_each_arms_curve_and_loss_the_speed_up_and_the_recommendation(client):
    search_id, _ = staged_search(client)
    panel = get(client, f"/api/searches/{search_id}/dashboard/transfer")
    assert (panel["enabled"], panel["state"]) == (True, "done")
    assert panel["recommendation"] == {
        "arm": "per-module",
        "reason": "per-module beat global beyond noise at every target",
    }
    assert (
        panel["summary"] == "Recommendation: use per-module, since per-module beat global beyond noise at every target."
    )
    [target] = panel["targets"]
    assert (target["label"], target["speedup_over"], target["verdict"]) == ("width=128", "global", "better")
    assert target["speedup"] == pytest.approx(4 / (3 + 0.09 / 0.39))
    assert target["summary"] == "speed-up of per-module over global: 1.24× (sd 0.01 over 2 seed pairs); verdict: better"
    arms = {arm["name"]: arm for arm in target["arms"]}
    assert list(arms) == ["per-module", "global", "base"]
    assert arms["per-module"]["tokens"] == [1024.0, 2048.0, 3072.0, 4096.0]  # steps × 16 sequences × 64 tokens
    assert arms["per-module"]["loss"] == pytest.approx([4.0, 3.0, 2.4, 2.01])
    assert arms["base"]["summary"] == "base: 2.6050 ± 0.0071 over 2 seeds"


def test_the_transfer_panel_is_pending_while_its_arms_train_and_off_without_a_validate_section(client):
    search_id, _ = staged_search(client, phases=4)
    panel = get(client, f"/api/searches/{search_id}/dashboard/transfer")
    assert (panel["state"], panel["recommendation"]) == ("pending", None)
    assert panel["summary"] == (
        "pending: after the last stage's selection, each arm is trained at each target on 2 fresh seeds"
    )
    assert [(t["label"], t["arms"], t["summary"]) for t in panel["targets"]] == [("width=128", [], "pending")]
    runs = [*arm_runs(0, "per-module", [None, None], "running"), *arm_runs(1, "base", [2.6, 2.61])]
    ids = add_phase(client, search_id, 4, None, "validation", runs)
    panel = get(client, f"/api/searches/{search_id}/dashboard/transfer")
    assert (panel["state"], panel["summary"]) == ("running", "pending: 2 of 4 runs still training")
    [target] = panel["targets"]
    assert target["verdict"] == "pending" and target["arms"][0]["summary"] == "per-module: 2 of 2 runs training"
    running = get(client, f"/api/searches/{search_id}/dashboard/curves")["curves"]
    assert [(c["trial_id"], c["kind"], c["arm"]) for c in running if c["role"] == "running"] == [
        (ids[0], "validation", "per-module"),
        (ids[1], "validation", "per-module"),
    ]
    plain = get(client, f"/api/searches/{new_search(client)}/dashboard/transfer")
    assert (plain["enabled"], plain["state"], plain["targets"]) == (False, "off", [])
