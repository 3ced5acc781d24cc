"""The export's target section and `trainer.apply_export`: the Complete(d)P rules applied at any shape."""

from __future__ import annotations

import json

import jsonschema
import pytest
import torch

from trainer import GPT, ModelConfig
from trainer.hparams import BaseHPs, Multipliers, materialise
from trainer.parameterisation import Parameterisation, Shape
from trainer.transfer import EXPORT_FORMAT, EXPORT_SCHEMA, apply_export, load_export, target_section

BASE_SHAPE = Shape(width=64, depth=2, batch_size=16, tokens=61_440)
MULTIPLIERS = {
    "module": {"mlp_down": {"lr": 1.0}, "attn_q": {"init_std": -0.5}},
    "depth": {},
    "residual": {"attn": -1.0},
}


def export_for(target: Shape) -> dict:
    base = {
        "parameterisation": {"name": "completed", "alpha": 1.0, "duration_exponent": 0.5},
        "base_shape": vars(BASE_SHAPE),
        "base_hps": vars(BaseHPs()),
        "seq_len": 64,
        "vocab_size": 256,
        "multipliers": MULTIPLIERS,
        "multipliers_linear": MULTIPLIERS,
    }
    return {
        "format": EXPORT_FORMAT,
        "provenance": {
            "search_id": 1,
            "search_name": "t",
            "spec_hash": "0" * 64,
            "package_version": "0.1.0",
            "created": "2026-11-23T00:00:00+00:00",
            "trial_ids": [1],
        },
        "base": base,
        "loss": {"mean": 2.9, "std": None, "replicates": 1, "values": [2.9]},
        "target": target_section(base, target, seq_len=64),
    }


def expected(target: Shape):
    return materialise(BaseHPs(), Multipliers.from_dict(MULTIPLIERS), Parameterisation("completed"), BASE_SHAPE, target)


def test_the_target_section_holds_every_group_by_the_rules():
    target = Shape(width=256, depth=4, batch_size=32, tokens=10_000_000)
    section = export_for(target)["target"]
    hps = expected(target)
    assert len(section["groups"]) == len(hps.groups)
    down = next(g for g in section["groups"] if g["module_type"] == "mlp_down" and g["layer"] == 3)
    assert down["lr"] == pytest.approx(hps.group("mlp_down", 3).lr)
    assert section["residual_multipliers"]["attn"] == pytest.approx(hps.residual_attn)
    assert section["steps"] == round(10_000_000 / (32 * 64))


def test_an_export_validates_against_the_shipped_schema():
    schema = json.loads(EXPORT_SCHEMA.read_text())
    jsonschema.validate(export_for(Shape(256, 4, 32, 10_000_000)), schema)
    broken = export_for(BASE_SHAPE)
    broken["target"]["groups"][0]["lr"] = -1.0
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


def test_apply_export_sets_every_group_of_a_model_at_another_shape(tmp_path):
    path = tmp_path / "best.json"
    path.write_text(json.dumps(export_for(Shape(256, 4, 32, 10_000_000))))
    model = GPT(ModelConfig(width=256, depth=4, head_dim=16, seq_len=64))
    groups = apply_export(model, path)
    hps = expected(Shape(256, 4, 32, 10_000_000))
    by_module = {key: group for group in groups for key in group["modules"]}
    assert by_module[("mlp_down", 2)]["lr"] == pytest.approx(hps.group("mlp_down", 2).lr)
    assert by_module[("embedding", None)]["eps"] == pytest.approx(hps.group("embedding").eps)
    assert model.blocks[0].residual_attn == pytest.approx(hps.residual_attn)
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    torch.optim.AdamW(groups)  # a valid optimiser


def test_apply_export_re_materialises_for_the_models_own_width_and_depth():
    export = export_for(Shape(256, 4, 32, 10_000_000))
    model = GPT(ModelConfig(width=128, depth=3, head_dim=16, seq_len=64))
    groups = apply_export(model, export, batch_size=16, tokens=1_000_000)
    hps = expected(Shape(128, 3, 16, 1_000_000))
    by_module = {key: group for group in groups for key in group["modules"]}
    assert by_module[("attn_q", 1)]["lr"] == pytest.approx(hps.group("attn_q", 1).lr)


def test_something_that_is_not_an_export_is_refused():
    with pytest.raises(ValueError, match="not a completedp-hpo"):
        load_export({"format": "other"})
    broken = export_for(BASE_SHAPE)
    del broken["base"]["multipliers"]
    with pytest.raises(ValueError, match="lacks"):
        load_export(broken)
