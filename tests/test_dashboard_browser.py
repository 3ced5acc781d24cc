"""The dashboard in a real browser: Debian's Chromium, driven by Playwright, against a real controller (``hpo
serve``, its engine and local Ray) running a small search. Screenshots are saved in ``test-artifacts/``.

Without Chromium (or Playwright) these tests are skipped, unless ``HPO_REQUIRE_BROWSER=1`` (as in CI), which
makes that a failure.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import jsonschema
import pytest

from hpo_service.statuses import SearchStatus, TrialStatus
from hpo_service.store.database import database_url
from tests.controller import ROOT, Controller
from trainer.export import EXPORT_SCHEMA

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = ROOT / "test-artifacts"
TOKEN = "dashboard-test-token"
CHARTS = ("progress", "population", "heatmap", "spread", "parallel", "curves")
SPEC = {
    "name": "browser-demo",
    "model": {"width": 32, "depth": 1, "head_dim": 16, "seq_len": 32},
    "training": {"batch_size": 4, "steps": 2000, "device": "cpu"},  # 4-10 s a trial: its curve can be watched
    "search_space": {"modules": "all", "hps": ["lr", "init_std", "weight_decay"]},
    "optimizer": {"name": "cma", "population": 4, "generations": 2, "seed": 0},
    "execution": {"parallel": 2, "timeout_s": 300},
}
TRIALS = 8
QUICK = {  # two trials of a test trial function: they end within seconds
    "model": SPEC["model"],
    "training": {"batch_size": 4, "steps": 10, "device": "cpu"},
    "optimizer": {"name": "random", "population": 2, "generations": 1, "seed": 0},
}
# Two trials whose losses differ by under 1e-4 nats (if at all): the synthetic bowl over a space 0.002 octaves wide.
TWIN_LOSSES_SPEC = {
    **QUICK,
    "name": "twin-losses",
    "search_space": {"modules": ["attn_q"], "hps": ["lr"], "log2_bounds": [-0.001, 0.001]},
    "execution": {"parallel": 2, "timeout_s": 60, "trial": "tests.trial_fns:synthetic"},
}
# Every trial raises.
ALL_FAIL_SPEC = {
    **QUICK,
    "name": "all-fail",
    "search_space": {"modules": ["attn_q"], "hps": ["lr"]},
    "execution": {"parallel": 2, "timeout_s": 60, "max_retries": 0, "trial": "tests.trial_fns:raises"},
}
# A falling synthetic curve (``trial_fns.curve``, 2 s a trial): the median rule stops the hopeless trials early.
EARLY_STOPPING_SPEC = {
    **QUICK,
    "name": "early-stopping",
    "training": {"batch_size": 4, "steps": 40, "warmup_steps": 2, "eval_every": 4, "device": "cpu"},
    "search_space": {"modules": ["attn_q", "mlp_up"], "hps": ["lr"], "log2_bounds": [-2.0, 2.0]},
    "optimizer": {"name": "random", "population": 6, "generations": 2, "seed": 0},
    "early_stopping": {"rule": "median", "min_trials": 2, "min_fraction": 0.25},
    "execution": {"parallel": 2, "timeout_s": 60, "trial": "tests.trial_fns:curve"},
}

# Two stages (global HPs, then two modules' LRs around them), each's top 2 re-trained on 2 fresh seeds, then the
# transfer check at width 64: the real trainer, 12 steps a trial, 18 trials.
STAGED_SPEC = {
    "name": "staged-demo",
    "model": SPEC["model"],
    "training": {"batch_size": 4, "steps": 12, "device": "cpu"},
    "stages": [
        {
            "name": "global",
            "search_space": {"hps": ["lr", "init_std"], "tied": True, "log2_bounds": [-1, 1]},
            "optimizer": {"name": "random", "population": 2, "generations": 1, "seed": 0},
        },
        {
            "name": "per-module",
            "search_space": {"modules": ["attn_q", "mlp_up"], "hps": ["lr"], "log2_bounds": [-1, 1]},
            "optimizer": {"name": "random", "population": 2, "generations": 1, "seed": 0},
        },
    ],
    "selection": {"top": 2, "seeds": 2},
    "validate": {"targets": [{"width": 64}], "seeds": 2},
    "execution": {"parallel": 2, "timeout_s": 120},
}
ARMS = ["per-module", "global", "base"]

# In the page: trials drawn in the population chart (successful points, diverged and failed marks).
POPULATION_POINTS = (
    "(document.getElementById('chart-population').data || [])"
    ".filter(t => t.name === 'succeeded' || t.yaxis === 'y2').reduce((n, t) => n + t.x.length, 0)"
)
CURVES = "(document.getElementById('chart-curves').data || [])"
# In the page: the [cmin, cmax] of the parallel coordinates' colour bar, as Plotly was given it.
COLOUR_BAR = (
    "(document.getElementById('chart-parallel').data || [])"
    ".filter(t => t.marker && t.marker.showscale).map(t => [t.marker.cmin, t.marker.cmax])"
)
ENDED = "document.getElementById('control-message').textContent.startsWith('Ended')"
LIVE = "document.getElementById('updated').textContent.startsWith('live')"  # a whole refresh has been drawn


@pytest.fixture(scope="module")
def browser() -> Iterator:
    why = None if CHROMIUM.is_file() else f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        why = "Playwright is not installed (pip install -e '.[dev]')"
    if why:
        if os.environ.get("HPO_REQUIRE_BROWSER") == "1":
            pytest.fail(f"the browser tests are required (HPO_REQUIRE_BROWSER=1): {why}")
        pytest.skip(why)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def controller(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Controller]:
    """A controller whose commands need a bearer token, as a shared deployment would set."""
    folder = tmp_path_factory.mktemp("dashboard")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HPO_API_TOKEN", TOKEN)
        env = {"HPO_ALLOWED_TRIALS": "tests.trial_fns:*"}  # the quick searches' trial functions
        running = Controller(database_url(str(folder / "hpo.db")), folder / "controller.log", env=env).start()
    try:
        yield running
    finally:
        running.stop()


def submit(controller: Controller, spec: dict = SPEC) -> int:
    response = httpx.post(
        f"{controller.url}/api/searches", json=spec, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30
    )
    response.raise_for_status()
    return response.json()["id"]


def options(page, select: str) -> list[str]:
    """The options of a select, once the page has added the statuses it asked the server for."""
    page.wait_for_function(f"document.querySelector('{select}').options.length > 1")
    return page.eval_on_selector_all(f"{select} option", "options => options.map(o => o.textContent)")


def screenshot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / f"{name}.png", full_page=True)


def test_watch_a_search_live_pause_it_resume_it_and_download_its_export(browser, controller, tmp_path):
    search_id = submit(controller)
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    page = context.new_page()
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))

    # the overview lists the search with its progress, and links to its page
    page.goto(controller.url)
    row = page.locator(f'#searches tr[data-search-id="{search_id}"]')
    row.wait_for()
    assert "browser-demo" in row.inner_text() and f"/ {TRIALS}" in row.inner_text()
    assert options(page, "#status-filter") == ["all", *SearchStatus]  # as the server names them
    screenshot(page, "dashboard-overview")
    row.get_by_role("link", name="browser-demo").click()
    page.wait_for_url(f"**/searches/{search_id}")

    # every chart is drawn, before the first trial has ended
    for chart in CHARTS:
        page.locator(f"#chart-{chart} .main-svg").first.wait_for()
    seen = page.evaluate(POPULATION_POINTS)
    assert options(page, "#trial-status") == ["all", *TrialStatus]

    # without the token the buttons say what is missing; with it, pause and resume change the status
    page.click("#pause")
    page.wait_for_function("document.getElementById('control-message').textContent.includes('HPO_API_TOKEN')")
    page.fill("#token", TOKEN)
    page.click("#pause")
    page.wait_for_function("document.getElementById('status').textContent === 'paused'")
    assert controller.get(f"/api/searches/{search_id}")["status"] == "paused"
    assert page.is_enabled("#resume") and page.is_disabled("#pause")
    screenshot(page, "dashboard-search-paused")
    page.click("#resume")
    page.wait_for_function("document.getElementById('status').textContent === 'running'")

    # the running trials' curves stream in while they train
    page.wait_for_function(f"{CURVES}.some(t => t.name.startsWith('running') && t.x.length >= 20)", timeout=60_000)
    screenshot(page, "dashboard-search-running")

    # the search runs to its end on the page, updated in place: every trial plotted, the best curves drawn
    page.wait_for_function("document.getElementById('status').textContent === 'completed'", timeout=120_000)
    page.wait_for_function(f"{POPULATION_POINTS} === {TRIALS}")

    # the controls say that it ended and how, not what the last command did; none is offered any more
    page.wait_for_function(ENDED)
    message = page.inner_text("#control-message")
    assert f": completed, {TRIALS} of {TRIALS} trials ended." in message and "running" not in message, message
    assert not any(page.is_visible(f"#{command}") for command in ("pause", "resume", "cancel"))
    assert seen < TRIALS
    page.wait_for_function(f"{CURVES}.filter(t => t.name.startsWith('best') && t.mode === 'lines').length === 5")
    assert page.locator("#trials tbody tr").count() == TRIALS
    assert page.inner_text("#progress-text").startswith(f"{TRIALS} / {TRIALS}")
    screenshot(page, "dashboard-search-completed")

    # the export form downloads the best candidate, materialised for a 4x wider model
    page.fill("#export input[name=width]", "128")
    page.fill("#export input[name=depth]", "2")
    with page.expect_download() as download:
        page.click("#export button[type=submit]")
    path = tmp_path / "export.json"
    download.value.save_as(path)
    export = json.loads(path.read_text())
    jsonschema.validate(export, json.loads(EXPORT_SCHEMA.read_text()))
    assert export["provenance"]["search_id"] == search_id
    assert export["target"]["shape"]["width"] == 128 and export["target"]["shape"]["depth"] == 2
    assert export["loss"]["mean"] == controller.get(f"/api/searches/{search_id}")["best_loss"]

    # offline: nothing but the controller was asked for anything
    assert errors == []
    assert all(url.startswith((controller.url, "blob:", "data:")) for url in requested), requested
    context.close()


def finished_page(browser, controller: Controller, spec: dict):
    """A page on a search of ``spec``, once the page shows that the search has ended."""
    search_id = submit(controller, spec)
    controller.wait_for(search_id, lambda search, trials: search["finished_at"] is not None, timeout_s=120)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"{controller.url}/searches/{search_id}")
    page.wait_for_function(ENDED)
    return page, controller.get(f"/api/searches/{search_id}"), errors


def test_a_search_whose_every_trial_failed_says_so_in_place_of_empty_loss_charts(browser, controller):
    page, search, errors = finished_page(browser, controller, ALL_FAIL_SPEC)
    assert search["trials"]["succeeded"] == 0 and search["trials"]["failed"] == 2
    notice = page.locator("#no-success")
    notice.wait_for()
    reason = search["error"] or "2 trials ended, none with a loss"  # a failed search's reason, when it has one
    assert notice.inner_text().startswith("No trial succeeded: ") and reason in notice.inner_text()
    for chart in CHARTS:  # no chart is shown: none would have a loss to draw
        assert not page.is_visible(f"#chart-{chart}"), chart
    assert page.locator(".main-svg").count() == 0  # nor was any drawn
    page.wait_for_selector("#trials tbody tr")
    assert page.locator("#trials tbody tr").count() == 2
    screenshot(page, "dashboard-search-all-failed")
    assert errors == []
    page.close()


def test_the_colour_bar_of_two_nearly_equal_losses_spans_a_readable_range(browser, controller):
    page, search, errors = finished_page(browser, controller, TWIN_LOSSES_SPEC)
    assert search["status"] == "completed"
    assert ": completed, 2 of 2 trials ended. Nothing is left" in page.inner_text("#control-message")
    assert not any(page.is_visible(f"#{command}") for command in ("pause", "resume", "cancel"))
    losses = [t["loss"] for t in controller.get(f"/api/searches/{search['id']}/trials")["trials"]]
    assert len(losses) == 2 and abs(losses[0] - losses[1]) < 1e-4
    page.wait_for_function(f"{COLOUR_BAR}.length === 1")
    [[cmin, cmax]] = page.evaluate(COLOUR_BAR)
    assert cmax - cmin >= 0.01 and cmin < min(losses) and max(losses) < cmax
    assert errors == []
    page.close()


def test_a_search_that_does_not_exist_is_a_page_saying_so(browser, controller):
    page = browser.new_page()
    response = page.goto(f"{controller.url}/searches/999")
    assert response.status == 404 and response.headers["content-type"].startswith("text/html")
    assert page.title() == "Not found · completedp-hpo"
    assert page.inner_text("#not-found-message") == "There is no search #999."
    screenshot(page, "dashboard-not-found")
    page.get_by_role("link", name="All searches").click()
    page.wait_for_url(f"{controller.url}/")
    page.close()


def chart_texts(page, chart: str) -> list[str]:
    """The annotations Plotly drew on a chart (the stage names and the phase bands among them), as shown."""
    return page.eval_on_selector_all(f"#chart-{chart} .annotation-text", "nodes => nodes.map(n => n.textContent)")


def test_a_staged_search_marks_its_stages_and_shows_its_selection_and_transfer_check(browser, controller):
    page, search, errors = finished_page(browser, controller, STAGED_SPEC)
    assert search["status"] == "completed", search["error"]
    api = f"/api/searches/{search['id']}/dashboard"
    page.wait_for_function(LIVE)

    # where each stage starts, and the re-evaluation and validation generations, on the generation and
    # evaluation axes
    population = chart_texts(page, "population")
    assert [t for t in population if t != "no loss:"] == [
        "global",
        "fresh seeds",
        "per-module",
        "fresh seeds",
        "validation",
    ]
    assert chart_texts(page, "progress") == ["global", "per-module"]
    traces = page.evaluate("document.getElementById('chart-population').data.map(t => [t.name, t.x.length])")
    assert ["re-evaluation (fresh seeds)", 8] in traces and ["succeeded", 4] in traces  # 4 search trials plotted

    # the selection: per stage, its sentence as the server words it, and its chart with the choice starred
    selection = controller.get(f"{api}/selection")
    for i, stage in enumerate(selection["stages"]):
        card = page.locator(f"#selection-{i}")
        card.locator(".main-svg").first.wait_for()
        assert card.locator(".check-name").inner_text() == stage["stage"]
        assert card.locator(".check-text").inner_text() == stage["summary"]
        assert re.fullmatch(
            r"chose g\d\.\d: search-time \d\.\d{4}, fresh \d\.\d{4} ± \d\.\d{4}: gap [+-]\d\.\d{4}", stage["summary"]
        )
        symbols = page.evaluate(f"document.getElementById('chart-selection-{i}').data[2].marker.symbol")
        assert symbols.count("star") == 1 and symbols[0] == "star"  # the best fresh mean, listed first

    # the transfer check: each arm's curve over tokens and final loss, the speed-up, the recommendation
    transfer = controller.get(f"{api}/transfer")
    assert page.inner_text("#transfer-summary") == transfer["summary"]
    assert transfer["summary"].startswith("Recommendation: use ")
    card = page.locator("#transfer-0")
    card.locator(".main-svg").first.wait_for()
    assert card.locator(".check-name").inner_text() == "width=64"
    lines = card.locator(".check-text p").all_inner_texts()
    assert [line.split(":")[0] for line in lines[:3]] == ARMS and lines[3].startswith(
        "speed-up of per-module over global"
    )
    curves = page.evaluate("document.getElementById('chart-transfer-0').data.map(t => [t.name, t.x.length])")
    assert [name for name, _ in curves] == ARMS and all(points > 2 for _, points in curves)
    screenshot(page, "dashboard-staged-search")

    # a stage's name is text to Plotly, never markup
    marks = page.evaluate(
        "import('/static/charts.js').then(c => c.phaseMarks([{kind: 'search', stage: '<i>s</i>', first: 0, last: 0},"
        " {kind: 'validation', stage: null, first: 1, last: 1}]).annotations.map(a => a.text))"
    )
    assert marks == ["<b>&lt;i&gt;s&lt;/i&gt;</b>", "validation"]
    assert errors == []
    page.close()


def test_a_search_without_stages_or_checks_hides_both_panels_and_draws_no_stage_marks(browser, controller):
    page, _, errors = finished_page(browser, controller, TWIN_LOSSES_SPEC)
    page.wait_for_function(LIVE)
    assert not page.is_visible("#selection") and not page.is_visible("#transfer")
    assert chart_texts(page, "population") == ["no loss:"] and chart_texts(page, "progress") == []
    assert errors == []
    page.close()


def test_trials_stopped_early_are_marked_apart_and_their_curves_end_where_they_stopped(browser, controller):
    page, search, errors = finished_page(browser, controller, EARLY_STOPPING_SPEC)
    stopped = search["trials"]["stopped"]
    assert search["status"] == "completed" and stopped > 0
    page.wait_for_function(LIVE)

    # the population chart: a row of its own in the band of trials with no loss, counted in the legend
    traces = page.evaluate(
        "document.getElementById('chart-population').data.map(t => [t.name, t.x.length, t.marker?.symbol ?? null])"
    )
    assert [f"stopped ({stopped})", stopped, "square"] in traces
    assert ["succeeded", search["trials"]["succeeded"], None] in traces

    # the learning curves: the last stopped, each ending in a mark that says where it stopped
    trials = controller.get(f"/api/searches/{search['id']}/trials", status="stopped", limit=100)["trials"]
    where = {f"#{t['id']} stopped at step {t['steps_trained']}" for t in trials}
    ends = page.evaluate(f"{CURVES}.filter(t => t.name.endsWith('(end)')).map(t => t.hovertemplate.split('<br>')[0])")
    assert ends and set(ends) <= where
    assert "stopped at step " in page.inner_text("#trials tbody")  # in place of a loss
    screenshot(page, "dashboard-early-stopping")

    # the overview counts them
    page.goto(controller.url)
    row = page.locator(f'#searches tr[data-search-id="{search["id"]}"]')
    row.wait_for()
    headers = page.eval_on_selector_all("#searches th", "cells => cells.map(c => c.textContent)")
    assert row.locator("td").nth(headers.index("stopped")).inner_text() == str(stopped)
    assert errors == []
    page.close()
