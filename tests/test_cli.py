"""`hpo train`: one run from a YAML config, overrides that transfer, and one-line errors; every command and
argument of `hpo` says what it is for; `hpo delete` against a real controller."""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from hpo_service.cli import CLIError, build_parser, load_train_config, main
from hpo_service.engine.commands import Commands
from hpo_service.spec import SearchSpec
from hpo_service.store import writes
from hpo_service.store.database import transaction
from tests.controller import Controller

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "examples" / "tiny.yaml"


def hpo(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hpo_service.cli", *args], capture_output=True, text=True, cwd=ROOT, timeout=300
    )


def test_train_prints_the_result_as_json():
    run = hpo("train", str(TINY), "--set", "training.steps=8", "--set", "model.width=32", "--json")
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["status"] == "succeeded"
    assert result["steps"] == 8
    assert 0 < result["final_val_loss"] < 6


def test_overrides_change_the_trained_shape_but_not_the_base_shape():
    config = load_train_config(TINY, ["model.width=128", "model.depth=4", "training.batch_size=32"])
    assert (config.model.width, config.model.depth, config.training.batch_size) == (128, 4, 32)
    base = config.base_shape()
    assert (base.width, base.depth, base.batch_size) == (64, 2, 16)  # as written in the file
    assert base.tokens == 60 * 16 * 64


def test_a_search_spec_is_a_valid_training_config():
    config = load_train_config(TINY)
    assert config.parameterisation.name == "completed"
    assert config.base_hps.lr == 0.01


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "model.width=0"], "model.width"),
        (["--set", "training.stepz=3"], "training.stepz"),
        (["--set", "nonsense"], "KEY=VALUE"),
    ],
)
def test_bad_input_is_one_clear_line_without_a_traceback(args, message):
    run = hpo("train", str(TINY), *args)
    assert run.returncode == 2
    assert message in run.stderr
    assert "Traceback" not in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1


def test_unreadable_and_malformed_files_are_reported(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {width: [")
    with pytest.raises(CLIError, match="not valid YAML"):
        load_train_config(bad)
    with pytest.raises(CLIError, match="cannot read"):
        load_train_config(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(CLIError, match="mapping"):
        load_train_config(tmp_path / "list.yaml")


def test_per_module_multipliers_from_a_file_are_applied(tmp_path):
    multipliers = tmp_path / "multipliers.yaml"
    multipliers.write_text("module: {unembedding: {lr: 20.0}}\n")
    run = hpo("train", str(TINY), "--set", "training.steps=8", "--multipliers", str(multipliers), "--json")
    assert json.loads(run.stdout)["status"] == "diverged"
    multipliers.write_text("module: {attn_z: {lr: 1.0}}\n")
    run = hpo("train", str(TINY), "--multipliers", str(multipliers))
    assert run.returncode == 2 and "unknown module type 'attn_z'" in run.stderr


def test_setting_inside_a_value_is_refused():
    with pytest.raises(CLIError, match="'width' is not a section"):
        load_train_config(TINY, ["model.width.x=1"])


def parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """``parser`` and, depth first, every subcommand's parser under it."""
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                found += parsers(child)
    return found


def undocumented(parser: argparse.ArgumentParser) -> list[str]:
    """What ``parser`` and its subcommands leave without a description or help text."""
    missing = []
    for command in parsers(parser):
        if not command.description:
            missing.append(f"{command.prog}: description")
        for action in command._actions:
            if not action.help:
                missing.append(f"{command.prog} {'/'.join(action.option_strings) or action.dest}: help")
            if isinstance(action, argparse._SubParsersAction):
                missing += [
                    f"{command.prog} {choice.dest}: help" for choice in action._choices_actions if not choice.help
                ]
    return missing


def test_every_command_and_every_argument_says_what_it_is_for():
    parser = build_parser()
    assert undocumented(parser) == []
    assert "hpo submit" in parser.epilog  # an example
    parser.add_argument("--new")  # a helpless option is found
    assert undocumented(parser) == ["hpo --new: help"]


def test_exports_target_shape_defaults_to_the_proxys():
    [export] = [command for command in parsers(build_parser()) if command.prog == "hpo export"]
    helps = {option: action.help for action in export._actions for option in action.option_strings}
    for option in ("--width", "--depth", "--batch-size", "--tokens"):
        assert "(default: the proxy's" in helps[option], option


# -- `hpo delete`, against a real controller and its engine ---------------------------------------------------------

QUICK = {  # trials of a second or less
    "name": "quick",
    "model": {"width": 32, "depth": 1, "head_dim": 16, "seq_len": 32},
    "training": {"batch_size": 4, "steps": 5, "warmup_steps": 1, "device": "cpu"},
    "search_space": {"modules": ["attn_q"], "hps": ["lr"]},
    "optimizer": {"name": "random", "population": 2, "generations": 1},
}
LONG = {**QUICK, "name": "long", "training": {**QUICK["training"], "steps": 100_000}}  # minutes a trial


def hpo_here(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    """`hpo ARGS` in this process: its exit status, standard output and standard error."""
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_hpo_delete_removes_an_ended_search_and_the_engine_carries_on(db_url, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("HPO_API_TOKEN", raising=False)
    controller = Controller(db_url, tmp_path / "controller.log").start()
    try:
        server = ("--server", controller.url)
        (tmp_path / "long.json").write_text(json.dumps(LONG))
        code, out, _ = hpo_here(capsys, "submit", str(tmp_path / "long.json"), *server)
        long_id = int(out.split()[-1])
        controller.wait_for(long_id, lambda search, trials: any(t["status"] == "running" for t in trials))
        code, out, err = hpo_here(capsys, "delete", str(long_id), *server)
        assert (code, out) == (2, "")
        refusal = "HTTP 409: cannot delete a search that is running: cancel it first"
        assert err.strip() == f"hpo: error: DELETE /api/searches/{long_id}: {refusal}"
        assert hpo_here(capsys, "cancel", str(long_id), *server)[0] == 0
        deadline = time.monotonic() + 60  # until the engine has stopped its trials
        while (answer := hpo_here(capsys, "delete", str(long_id), *server))[0] != 0 and time.monotonic() < deadline:
            assert "its trials are still being stopped; try again shortly" in answer[2], answer
            time.sleep(0.2)
        assert answer == (0, f"search {long_id}: deleted\n", "")
        assert httpx.get(f"{controller.url}/api/searches/{long_id}").status_code == 404

        (tmp_path / "quick.json").write_text(json.dumps(QUICK))
        quick_id = int(hpo_here(capsys, "submit", str(tmp_path / "quick.json"), *server)[1].split()[-1])
        controller.wait_for(quick_id, lambda search, trials: search["status"] == "completed", timeout_s=120)
        assert controller.get("/api/health")["engine"] == "running"
        assert hpo_here(capsys, "delete", str(quick_id), *server) == (0, f"search {quick_id}: deleted\n", "")
        assert controller.get("/api/searches")["total"] == 0
        code, _, err = hpo_here(capsys, "delete", str(quick_id), *server)
        assert (code, err.strip()) == (
            2,
            f"hpo: error: DELETE /api/searches/{quick_id}: HTTP 404: no search with id {quick_id}",
        )
    finally:
        controller.stop()
    assert "Traceback" not in (tmp_path / "controller.log").read_text()


# -- `hpo status` and `hpo watch` count the trials stopped early ----------------------------------------------------

EARLY_STOPPING = {
    **QUICK,
    "name": "stopping",
    "optimizer": {**QUICK["optimizer"], "population": 5},
    "early_stopping": {"rule": "median", "min_trials": 2},
}
# (status, loss, steps trained) of its one generation's trials
OUTCOMES = [("succeeded", 2.0, 5), ("stopped", None, 2), ("failed", None, None), ("succeeded", 3.0, 5),
            ("stopped", None, 3)]  # fmt: skip


def stopped_early(sessions) -> int:
    """A completed search of ``EARLY_STOPPING`` whose trials ended as ``OUTCOMES`` say, written as the engine
    writes a generation, its results and its summary."""
    search = Commands(sessions).create(SearchSpec.model_validate(EARLY_STOPPING))
    multipliers = {"module": {"attn_q": {"lr": 0.5}}, "depth": {}, "residual": {}}
    trials = [{"index": i, "replicate": 0, "seed": 0, "vector": [0.5], "multipliers": multipliers, "hps": {}}
              for i in range(len(OUTCOMES))]  # fmt: skip
    with transaction(sessions) as session:
        writes.start_search(session, search.id)
        writes.add_generation(session, search.id, 0, trials, "random", b"", stage="search")
        claimed = [trial.id for trial in writes.claim_pending(session, search.id, 0, len(OUTCOMES))]
    results = [
        writes.FinishedTrial(trial_id, status, loss, loss, steps, None, None, 1.0, None, None, None)
        for trial_id, (status, loss, steps) in zip(claimed, OUTCOMES, strict=True)
    ]
    with transaction(sessions) as session:
        writes.record_results(session, results, [], [])
        summary = writes.GenerationSummary(best_loss=2.0, median_loss=2.5, diverged=0, failed=1, stopped=2)
        writes.end_generation(session, search.id, 0, summary)
        writes.complete_search(session, search.id)
    return search.id


def test_hpo_status_and_watch_count_the_trials_stopped_early(sessions, db_url, tmp_path, capsys):
    search_id = stopped_early(sessions)
    controller = Controller(db_url, tmp_path / "controller.log", args=("--no-engine",)).start()
    try:
        server = ("--server", controller.url)
        code, out, _ = hpo_here(capsys, "status", str(search_id), *server)
        assert code == 0 and "; trials: 2 succeeded, 1 failed, 2 stopped\n" in out
        code, out, _ = hpo_here(capsys, "watch", str(search_id), *server)
        assert code == 0
        line = "generation   0 (stage search): best 2.0000  median 2.5000  diverged 0  failed 1  stopped 2  of 5\n"
        assert out.startswith(line)
    finally:
        controller.stop()
