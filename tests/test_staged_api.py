"""A staged search through the API and the CLI: each trial's stage and kind, the trial filters, the selection and
validation reports, the summary's plan-wide budget and stage, `hpo status` and `hpo watch`, and a start_from
export file inlined by `hpo submit`. One staged search per store is run to its end and read by every test."""

from __future__ import annotations

import dataclasses
import json
import statistics
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import ray
import yaml
from fastapi.testclient import TestClient
from sqlalchemy.engine import make_url

import tests.trial_fns as trial_fns
from hpo_service.api.app import create_app
from hpo_service.api.settings import settings_of
from hpo_service.cli import main
from hpo_service.client import phase_line
from hpo_service.engine.commands import Commands
from hpo_service.engine.engine import Engine
from hpo_service.engine.executor import RayExecutor
from hpo_service.spec import SearchSpec
from hpo_service.store import writes
from hpo_service.store.database import database_url, open_database, session_factory, transaction, upgrade
from hpo_service.store.models import Search
from tests.conftest import BACKENDS, POSTGRES, _admin
from tests.controller import ROOT, Controller
from trainer.export import Recipe, TunedHPs, export_document


def noisy_synthetic(payload: dict, report) -> dict:
    """``trial_fns.synthetic``'s bowl plus up to 0.01 of noise that the seed decides, and a two-point curve: fresh
    seeds give other losses than the search's, as a real trainer's do."""
    result = trial_fns.synthetic(payload, report)
    training = payload["config"]["training"]
    loss = result["final_val_loss"] + training["seed"] * 7919 % 101 / 10_000
    curve = [(1, loss + 1.0), (training["steps"], loss)]
    return result | {"final_val_loss": loss, "final_train_loss": loss, "steps": training["steps"],
                     "train_curve": curve, "eval_curve": curve}  # fmt: skip


for module in (trial_fns, sys.modules[__name__]):  # Ray workers cannot import the tests package
    ray.cloudpickle.register_pickle_by_value(module)

BOUNDED = {"log2_bounds": [-1.0, 1.0]}  # below trial_fns.synthetic's divergence cliff
STAGED = {
    "name": "staged",
    "model": {"width": 32, "depth": 1, "head_dim": 16, "seq_len": 32},
    "training": {"batch_size": 4, "steps": 4, "warmup_steps": 1, "device": "cpu"},
    "stages": [
        {
            "name": "global",
            "search_space": {"tied": True, "hps": ["lr"], **BOUNDED},
            "optimizer": {"name": "random", "population": 2, "generations": 1},
        },
        {
            "name": "per-module",
            "search_space": {"modules": ["attn_q", "mlp_up"], "hps": ["lr"], **BOUNDED},
            "optimizer": {"name": "trust_region", "population": 2, "generations": 2, "sigma": 0.5},
        },
    ],
    "selection": {"top": 3, "seeds": 2},
    "validate": {"targets": [{"width": 64}, {"depth": 2, "tokens_multiplier": 2}], "seeds": 2},
    "execution": {"parallel": 2, "timeout_s": 60},
}
# Counted by hand: global searches 2 candidates, re-trains both (top 3 of 2) on 2 seeds; per-module searches
# 2 × 2 and re-trains its top 3 on 2 seeds; 3 arms (per-module, global, base) × 2 targets × 2 seeds.
STAGED_TRIALS = {"search": 2 + 4, "reevaluation": 2 * 2 + 3 * 2, "validation": 3 * 2 * 2}
STAGED_GENERATIONS = [("global", "search"), ("global", "reevaluation"), ("per-module", "search"),
                      ("per-module", "search"), ("per-module", "reevaluation"), (None, "validation")]  # fmt: skip
PROXY_TOKENS = 4 * 4 * 32  # steps × batch size × sequence length


@dataclass(frozen=True)
class Finished:
    url: str
    search_id: int


@pytest.fixture(scope="module", params=BACKENDS)
def database(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A migrated database on each backend, shared by the module's tests."""
    if request.param == "sqlite":
        url = database_url(str(tmp_path_factory.mktemp("staged") / "hpo.db"))
        upgrade(url)
        yield url
        return
    name = f"hpo_test_{uuid.uuid4().hex[:12]}"
    with _admin() as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        url = database_url(make_url(POSTGRES).set(database=name).render_as_string(hide_password=False))
        upgrade(url)
        yield url
    finally:
        with _admin() as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def staged(database: str, local_ray: None) -> Finished:
    """STAGED run to its end by the engine on real Ray, with ``noisy_synthetic`` as the trial."""
    engine_db = open_database(database)
    sessions = session_factory(engine_db)
    search = Commands(sessions).create(SearchSpec.model_validate(STAGED))
    engine = Engine(sessions)
    engine.executor = RayExecutor(trial_fn=noisy_synthetic)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            engine.turn()
            with sessions() as session:
                status = session.get(Search, search.id).status
            if status in ("completed", "failed", "cancelled"):
                break
        assert status == "completed"
    finally:
        engine.executor.close()
        engine_db.dispose()
    return Finished(database, search.id)


@pytest.fixture(scope="module")
def api(staged: Finished) -> Iterator[TestClient]:
    app = create_app(staged.url, run_engine=False, allowed_hosts=["testserver"])  # set before the autouse fixture
    with TestClient(app) as client:
        yield client


def trials(api: TestClient, search_id: int, **filters: str) -> dict:
    response = api.get(f"/api/searches/{search_id}/trials", params={"limit": 5000, **filters})
    assert response.status_code == 200, response.text
    return response.json()


# -- trials and generations ------------------------------------------------------------------------------------------


def test_every_trial_says_its_stage_and_kind_and_a_validation_its_target_and_arm(api, staged):
    page = trials(api, staged.search_id)["trials"]
    kinds = [t["kind"] for t in page]
    assert {kind: kinds.count(kind) for kind in STAGED_TRIALS} == STAGED_TRIALS and len(page) == sum(
        kinds.count(k) for k in STAGED_TRIALS
    )
    for t in page:
        if t["kind"] == "search":
            assert t["stage"] in ("global", "per-module") and t["arm"] is t["target"] is t["origin"] is None
        elif t["kind"] == "reevaluation":
            assert t["stage"] in ("global", "per-module") and t["arm"] is t["target"] is None
            assert set(t["origin"]) == {"generation", "index", "loss"}
        else:
            assert t["stage"] is None and t["origin"] is None and t["arm"] in ("per-module", "global", "base")
            fields = STAGED["validate"]["targets"][t["target"]["index"]]
            assert t["target"] == {"index": t["target"]["index"], **fields}


def test_trials_filter_by_kind_and_stage(api, staged):
    def total(**filters: str) -> int:
        return trials(api, staged.search_id, **filters)["total"]

    assert total(kind="validation") == STAGED_TRIALS["validation"]
    assert total(kind="reevaluation") == STAGED_TRIALS["reevaluation"]
    assert total(stage="global") == 2 + 2 * 2  # its search and its re-evaluation
    assert total(kind="search", stage="per-module") == 4
    assert total(stage="validation") == 0  # validation trials belong to no stage
    page = trials(api, staged.search_id, kind="search", stage="global")["trials"]
    assert {(t["kind"], t["stage"]) for t in page} == {("search", "global")}


@pytest.mark.parametrize(
    ("name", "value"), [("kind", "searching"), ("kind", ""), ("stage", "no spaces"), ("stage", "x" * 65)]
)
def test_a_bad_kind_or_stage_filter_is_a_422_naming_it(api, staged, name, value):
    response = api.get(f"/api/searches/{staged.search_id}/trials", params={name: value})
    assert response.status_code == 422, response.text
    assert [e["loc"] for e in response.json()["detail"]] == [["query", name]]


def test_generations_carry_their_stage_and_kind(api, staged):
    generations = api.get(f"/api/searches/{staged.search_id}/generations").json()
    assert [(g["stage"], g["kind"]) for g in generations] == STAGED_GENERATIONS
    assert [g["trials"] for g in generations] == [2, 4, 2, 2, 6, 12]


# -- the selection and validation reports ----------------------------------------------------------------------------


def test_the_selection_ranks_each_stages_top_candidates_by_their_fresh_seed_mean(api, staged):
    selection = api.get(f"/api/searches/{staged.search_id}/selection").json()
    by_id = {t["id"]: t for t in trials(api, staged.search_id)["trials"]}
    assert [s["stage"] for s in selection] == ["global", "per-module"]
    assert [len(s["candidates"]) for s in selection] == [2, 3]  # top 3 of the 2 global candidates is both
    for stage in selection:
        for candidate in stage["candidates"]:
            assert set(candidate) == {"generation", "index", "search_loss", "losses", "mean", "sd", "trial_ids"}
            fresh = [by_id[i] for i in candidate["trial_ids"]]
            assert {(t["kind"], t["stage"]) for t in fresh} == {("reevaluation", stage["stage"])}
            assert candidate["losses"] == [t["loss"] for t in fresh]
            assert candidate["mean"] == pytest.approx(statistics.fmean(candidate["losses"]))
            searched = [t["loss"] for t in by_id.values() if t["kind"] == "search"
                        and (t["generation"], t["index"]) == (candidate["generation"], candidate["index"])]  # fmt: skip
            assert candidate["search_loss"] == pytest.approx(statistics.fmean(searched))
        means = [c["mean"] for c in stage["candidates"]]
        assert means == sorted(means) and stage["chosen"] == stage["candidates"][0]
        assert stage["gap"] == pytest.approx(stage["chosen"]["search_loss"] - stage["chosen"]["mean"])


def test_the_validation_reports_each_target_with_its_arms_and_the_speedup(api, staged):
    validation = api.get(f"/api/searches/{staged.search_id}/validation").json()
    assert [entry["target"] for entry in validation] == [
        {"index": 0, "label": "width=64", "width": 64, "depth": 1, "batch_size": 4, "tokens": PROXY_TOKENS},
        {"index": 1, "label": "depth=2 tokens_multiplier=2", "width": 32, "depth": 2, "batch_size": 4,
         "tokens": 2 * PROXY_TOKENS},
    ]  # fmt: skip
    runs = {(t["target"]["index"], t["arm"]): t for t in trials(api, staged.search_id, kind="validation")["trials"]}
    for entry in validation:
        assert [arm["name"] for arm in entry["arms"]] == ["per-module", "global", "base"]
        for arm in entry["arms"]:
            assert set(arm) == {"name", "mean", "sd", "losses", "runs", "unfinished", "curve"}
            assert (arm["runs"], arm["unfinished"], len(arm["losses"])) == (2, 0, 2)
            assert arm["mean"] == pytest.approx(statistics.fmean(arm["losses"]))
            assert arm["curve"][-1][1] == pytest.approx(arm["mean"])  # [tokens, loss], the last at the final loss
            assert runs[(entry["target"]["index"], arm["name"])]["loss"] in arm["losses"]
        assert entry["speedup_over"] == "global" and len(entry["speedups"]) == 2
        assert entry["speedup"] is not None and entry["verdict"] in ("better", "worse", "within noise")


def test_a_search_without_validation_or_selection_reports_empty_lists(client):
    search_id = client.post("/api/searches", json={**STAGED, "validate": None, "selection": {"top": 0}}).json()["id"]
    for report in ("selection", "validation"):
        response = client.get(f"/api/searches/{search_id}/{report}")
        assert (response.status_code, response.json()) == (200, []), report


def test_the_reports_of_an_unknown_search_are_404(client):
    for report in ("selection", "validation"):
        response = client.get(f"/api/searches/999/{report}")
        assert (response.status_code, response.json()) == (404, {"detail": "no search with id 999"}), report


# -- the summary ------------------------------------------------------------------------------------------------------


def test_the_summary_of_a_finished_staged_search(api, staged):
    summary = api.get(f"/api/searches/{staged.search_id}").json()
    assert summary["budget"] == sum(STAGED_TRIALS.values()) == summary["ended"] == summary["trials"]["succeeded"]
    assert summary["generations"] == len(STAGED_GENERATIONS) == summary["generations_completed"]
    assert summary["optimizer"] == "random → trust_region"
    assert (summary["stage"], summary["kind"], summary["stages"]) == (
        "validation",
        "validation",
        ["global", "per-module"],
    )
    selection = api.get(f"/api/searches/{staged.search_id}/selection").json()
    assert summary["selection_gap"] == selection[-1]["gap"]
    export = api.get(f"/api/searches/{staged.search_id}/export").json()
    assert summary["recommendation"] == export["validation"]["recommendation"] != None  # noqa: E711
    searched = trials(api, staged.search_id, kind="search")["trials"]  # one replicate each: a trial is a candidate
    assert summary["best_loss"] == pytest.approx(min(t["loss"] for t in searched))
    (listed,) = [s for s in api.get("/api/searches").json()["searches"] if s["id"] == staged.search_id]
    assert listed == summary


BRIEF_EXAMPLE = {
    "stages": [
        {"name": "global", "search_space": {"tied": True, "hps": ["lr", "init_std"]},
         "optimizer": {"name": "cma", "population": 4, "generations": 2}},
        {"name": "per-module", "search_space": {"modules": "all", "hps": ["lr", "init_std"]},
         "optimizer": {"name": "trust_region", "population": 4, "generations": 2, "sigma": 0.5}},
    ],
    "validate": {"targets": [{"width": 128}, {"depth": 4}, {"width": 128, "depth": 4, "tokens_multiplier": 2}],
                 "seeds": 2},
}  # fmt: skip
TIED_LAST = {
    "stages": [
        {"name": "a", "search_space": {"tied": True},
         "optimizer": {"population": 4, "generations": 2, "replicates": 2}},
        {"name": "b", "search_space": {"tied": True},
         "optimizer": {"name": "random", "population": 3, "generations": 1}},
    ],
    "selection": {"top": 0},
    "validate": {"targets": [{"width": 64}], "seeds": 3},
}  # fmt: skip


@pytest.mark.parametrize(
    ("sections", "budget", "generations", "optimizer"),
    [
        # 4 × 2 per stage; top 3 × 2 fresh seeds per stage; 3 targets × 3 arms × 2 seeds. Generations: 2 + 2
        # searched, one re-evaluation per stage, one validation.
        (BRIEF_EXAMPLE, 8 + 8 + 6 + 6 + 18, 7, "cma → trust_region"),
        # 4 × 2 × 2 replicates, 3 × 1; no selection; 1 target × 2 arms (the last stage is tied) × 3 seeds
        (TIED_LAST, 16 + 3 + 6, 4, "cma → random"),
        # without stages: population × generations × replicates, as before
        ({"optimizer": {"name": "de", "population": 5, "generations": 3, "replicates": 2}}, 30, 3, "de"),
    ],
)
def test_the_budget_counts_every_planned_trial(client, sections, budget, generations, optimizer):
    spec = {key: value for key, value in STAGED.items() if key not in ("stages", "selection", "validate")}
    created = client.post("/api/searches", json={**spec, **sections})
    assert created.status_code == 201, created.text
    summary = client.get(f"/api/searches/{created.json()['id']}").json()
    assert (summary["budget"], summary["generations"], summary["optimizer"]) == (budget, generations, optimizer)
    assert (summary["stage"], summary["kind"], summary["selection_gap"], summary["recommendation"]) == (None,) * 4


def test_the_summarys_stage_is_the_current_generations(client):
    search_id = client.post("/api/searches", json=STAGED).json()["id"]
    sessions = settings_of(client.app).sessions
    trial = {"index": 0, "replicate": 0, "seed": 1, "vector": [0.0], "multipliers": {}, "hps": {}}
    what = {"reevaluation": {"origin": {"generation": 0, "index": 0, "loss": 2.0}},
            "validation": {"target": {"index": 0, "width": 64}, "arm": "per-module"}}  # fmt: skip
    for number, (stage, kind) in enumerate(STAGED_GENERATIONS):
        rows = [trial | what.get(kind, {})]
        with transaction(sessions) as session:
            writes.add_generation(session, search_id, number, rows, "random", b"", stage=stage, kind=kind)
        summary = client.get(f"/api/searches/{search_id}").json()
        assert (summary["stage"], summary["kind"]) == (stage or "validation", kind)


@pytest.fixture
def client(db_url: str) -> Iterator[TestClient]:
    with TestClient(create_app(db_url, run_engine=False)) as client:
        yield client


# -- the CLI ----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def controller(staged: Finished, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Controller]:
    """`hpo serve --no-engine` on the finished search's store."""
    log = tmp_path_factory.mktemp("controller") / "controller.log"
    controller = Controller(staged.url, log, args=("--no-engine",)).start()
    yield controller
    controller.stop()
    assert "Traceback" not in log.read_text()


def hpo(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    """`hpo ARGS` in this process: its exit status, standard output and standard error."""
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_hpo_status_shows_the_stage_the_selection_gaps_and_the_validation_table(controller, staged, capsys):
    code, out, _ = hpo(capsys, "status", str(staged.search_id), "--server", controller.url)
    assert code == 0
    assert "  validation at the targets, generation 6 of 6\n" in out
    selection = controller.get(f"/api/searches/{staged.search_id}/selection")
    gaps = ", ".join(f"{s['stage']} {s['gap']:+.4f}" for s in selection)
    assert f"  selection gap (search-time minus fresh-seed loss): {gaps}\n" in out
    assert_validation_table(controller, staged, out)


def test_hpo_watch_names_each_generations_stage_and_ends_with_the_validation_table(controller, staged, capsys):
    code, out, _ = hpo(capsys, "watch", str(staged.search_id), "--server", controller.url)
    assert code == 0
    lines = [line for line in out.splitlines() if line.startswith("generation")]
    assert [line.split(":")[0] for line in lines] == [
        "generation   0 (stage global)", "generation   1 (global re-evaluation)", "generation   2 (stage per-module)",
        "generation   3 (stage per-module)", "generation   4 (per-module re-evaluation)", "generation   5 (validation)",
    ]  # fmt: skip
    assert "chose generation " in lines[1] and "gap " in lines[4]
    assert out.splitlines()[len(lines)] == "validation at the targets, generation 6 of 6"  # the phase it is at
    assert_validation_table(controller, staged, out)
    assert f"export: hpo export {staged.search_id}" in out.splitlines()[-1]


def assert_validation_table(controller: Controller, staged: Finished, out: str) -> None:
    """Per target: a row of mean ± sd per arm, the speed-up and verdict; then the recommendation."""
    rows = [line.split() for line in out.splitlines()]
    for entry in controller.get(f"/api/searches/{staged.search_id}/validation"):
        assert f"  validation at {entry['target']['label']}:\n" in out
        for arm in entry["arms"]:
            assert [arm["name"], f"{arm['mean']:.4f}", "±", f"{arm['sd']:.4f}"] in rows
        assert f"speed-up of per-module over global: {entry['speedup']:.2f}x ± " in out
        assert f", {entry['verdict']}\n" in out
    advice = controller.get(f"/api/searches/{staged.search_id}")["recommendation"]
    assert f"  recommendation: {advice['arm']} ({advice['reason']})\n" in out


@pytest.mark.parametrize(
    ("kind", "stage", "line"),
    [
        ("search", "per-module", "stage per-module, generation 4 of 7"),
        ("reevaluation", "global", "stage global: re-evaluating its top candidates on fresh seeds, generation 4 of 7"),
        ("validation", None, "validation at the targets, generation 4 of 7"),
    ],
)
def test_the_phase_line_names_the_stage_and_the_kind_of_work(kind, stage, line):
    assert phase_line({"number": 3, "kind": kind, "stage": stage}, 7) == line


def test_hpo_export_carries_the_selection_and_the_validation(controller, staged, capsys, tmp_path):
    code, _, err = hpo(capsys, "export", str(staged.search_id), "-o", str(tmp_path / "best.json"),
                       "--server", controller.url)  # fmt: skip
    assert code == 0, err
    document = json.loads((tmp_path / "best.json").read_text())
    assert [s["stage"] for s in document["selection"]] == ["global", "per-module"]
    assert len(document["validation"]["targets"]) == 2 and document["provenance"]["measured_on"] == "fresh seeds"


def test_hpo_submit_inlines_what_the_server_reads_of_a_start_from_export_file(controller, staged, capsys, tmp_path):
    """Its format, base HPs and provenance: a whole export may hold more values than a body may (next test)."""
    export = controller.get(f"/api/searches/{staged.search_id}/export")
    (tmp_path / "exports").mkdir()
    (tmp_path / "exports" / "global.json").write_text(json.dumps(export))
    spec = {**STAGED, "name": "from-export", "start_from": {"export": "exports/global.json"}}  # relative to the spec
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    code, out, err = hpo(capsys, "submit", str(tmp_path / "spec.json"), "--server", controller.url)
    assert code == 0, err
    sessions = session_factory(open_database(staged.url))
    with sessions() as session:
        stored = session.get(Search, int(out.split()[-1])).spec_json["start_from"]
    assert stored == {"search": None, "export": {key: export[key] for key in ("format", "base", "provenance")}}


def test_hpo_submit_starts_a_paper_sized_proxy_from_its_export_for_a_deeper_model(controller, capsys, tmp_path):
    """That export materialises 32 blocks' parameter groups: more values than a body may hold (3,000 of 2,000)."""
    spec = yaml.safe_load((ROOT / "examples" / "proxy-50m.yaml").read_text())
    parsed = SearchSpec.model_validate(spec)
    config, tuned = parsed.train_config(), parsed.multipliers([0.5] * parsed.dimension())
    target = dataclasses.replace(config.base_shape(), depth=32)
    recipe = Recipe.of(config.training)
    export = export_document(TunedHPs.found_with(config, tuned), target, recipe=recipe, losses=[3.0], provenance={})
    (tmp_path / "export.json").write_text(json.dumps(export))
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump({**spec, "start_from": {"export": "export.json"}}))
    code, _, err = hpo(capsys, "submit", str(tmp_path / "spec.yaml"), "--server", controller.url)
    assert code == 0, err


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "start_from.export: cannot read {path}: No such file or directory"),
        ("{not json", "start_from.export: {path} is not a JSON export: "),
        ("[1, 2]", "start_from.export: {path} must hold an export document (a JSON object)"),
    ],
)
def test_hpo_submit_says_in_one_line_why_a_start_from_export_file_is_unusable(capsys, tmp_path, content, message):
    path = tmp_path / "export.json"
    if content is not None:
        path.write_text(content)
    (tmp_path / "spec.yaml").write_text(json.dumps({**STAGED, "start_from": {"export": "export.json"}}))
    code, out, err = hpo(capsys, "submit", str(tmp_path / "spec.yaml"), "--server", "http://127.0.0.1:9")
    assert (code, out) == (2, "")
    assert err.startswith(f"hpo: error: {message.format(path=path)}") and len(err.splitlines()) == 1
    assert "Traceback" not in err
