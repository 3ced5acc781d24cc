"""`hpo train`: one run from a YAML config, overrides that transfer, and one-line errors."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hpo_service.cli import CLIError, load_train_config

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
