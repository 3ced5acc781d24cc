"""The export and `trainer.apply_export`: the Complete(d)P rules applied at any shape, checked against values
worked out by hand from Table 1 of arXiv 2512.22382 (shared/reference/completed-p.md), not against the code."""

from __future__ import annotations

import json

import jsonschema
import pytest
import torch

from trainer import GPT, ModelConfig
from trainer.export import EXPORT_FORMAT, EXPORT_SCHEMA, Recipe, TunedHPs, export_document, load_export
from trainer.hparams import BaseHPs, Multipliers
from trainer.parameterisation import Parameterisation, Shape
from trainer.schedule import Schedule
from trainer.transfer import apply_export

BASE_SHAPE = Shape(width=64, depth=2, batch_size=16, tokens=61_440)
TARGET = Shape(width=256, depth=4, batch_size=32, tokens=10_000_000)
MULTIPLIERS = Multipliers(module={"mlp_down": {"lr": 1.0}, "attn_q": {"init_std": -0.5}}, residual={"attn": -1.0})
PARAMETERISATIONS = {
    "the paper's": Parameterisation("completed", alpha=1.0, duration_exponent=0.5),
    "depth-muP, shorter duration exponent, decayed norm gains": Parameterisation(
        "completed", alpha=0.5, duration_exponent=0.3, decay_norm_gains=True
    ),
}
RECIPE = Recipe(  # the proxy's: 60 steps (BASE_SHAPE's tokens in batches of 16 sequences of 64)
    schedule=Schedule(steps=60, warmup_steps=6, lr_floor=0.2),
    grad_clip=1.0,
    z_loss=1e-4,
    data="tokens:/data/openwebtext",
    val_fraction=0.05,
)
PROVENANCE = {"search_id": 1, "search_name": "t", "spec_hash": "0" * 64, "generation": 0, "index": 0, "trial_ids": [1]}


def tuned(parameterisation: Parameterisation = PARAMETERISATIONS["the paper's"]) -> TunedHPs:
    return TunedHPs(
        parameterisation=parameterisation,
        base_shape=BASE_SHAPE,
        base_hps=BaseHPs(lr=0.01, init_std=0.02, weight_decay=0.1, beta1=0.9, beta2=0.95, eps=1e-8),
        seq_len=64,
        vocab_size=256,
        multipliers=MULTIPLIERS,
    )


def export_for(target: Shape, parameterisation: Parameterisation = PARAMETERISATIONS["the paper's"]) -> dict:
    return export_document(tuned(parameterisation), target, recipe=RECIPE, losses=[2.9], provenance=PROVENANCE)


def by_hand(module_type: str, target: Shape, p: Parameterisation) -> dict[str, float]:
    """Table 1 of the paper, row by row, for the base HPs above times MULTIPLIERS (log2: mlp_down LR +1, attn_q
    init std -0.5). ``s`` is sqrt(m_B / m_D) in the paper; ``duration_exponent`` generalises the square root of
    1 / m_D, batch keeps its own. Norm gains (``q_norm`` here) are decayed only with ``decay_norm_gains``."""
    m_n = target.width / BASE_SHAPE.width
    m_l = target.depth / BASE_SHAPE.depth
    m_b = target.batch_size / BASE_SHAPE.batch_size
    m_d = target.tokens / BASE_SHAPE.tokens
    s, a = m_b**0.5 * m_d**-p.duration_exponent, p.alpha
    betas = {"beta1": 1 - 0.1 * m_b / m_d, "beta2": 1 - 0.05 * m_b / m_d}  # (1 - β) scales by m_B / m_D
    rows = {
        "embedding": {"init_std": 0.02, "lr": 0.01 * s, "eps": 1e-8 / m_n / s, "weight_decay": 0.1 * s},
        "attn_q": {  # a hidden weight, with its init std multiplied by 2^-0.5
            "init_std": 0.02 * 2**-0.5 * m_n**-0.5,
            "lr": 0.01 / m_n * m_l ** (a - 1) * s,
            "eps": 1e-8 / m_n * m_l**-a / s,
            "weight_decay": 0.1 * m_n * s,
        },
        "mlp_down": {  # a hidden weight, with its LR multiplied by 2
            "init_std": 0.02 * m_n**-0.5,
            "lr": 2 * 0.01 / m_n * m_l ** (a - 1) * s,
            "eps": 1e-8 / m_n * m_l**-a / s,
            "weight_decay": 0.1 * m_n * s,
        },
        "q_norm": {
            "init_std": 0.02,
            "lr": 0.01 * m_l ** (a - 1) * s,
            "eps": 1e-8 * m_l**-a / s,
            "weight_decay": 0.1 * s if p.decay_norm_gains else 0.0,
        },
        "unembedding": {"init_std": 0.02 / m_n, "lr": 0.01 / m_n * s, "eps": 1e-8 / s, "weight_decay": 0.1 * m_n * s},
    }
    return rows[module_type] | betas


HAND_CHECKED = [("embedding", None), ("attn_q", 0), ("mlp_down", 3), ("q_norm", 2), ("unembedding", None)]


@pytest.mark.parametrize("parameterisation", PARAMETERISATIONS.values(), ids=PARAMETERISATIONS.keys())
def test_the_target_section_holds_every_group_by_the_rules(parameterisation):
    section = export_for(TARGET, parameterisation)["target"]
    groups = {(g["module_type"], g["layer"]): g for g in section["groups"]}
    assert len(groups) == 3 + 10 * TARGET.depth  # three outside the blocks, ten in each block
    for module_type, layer in HAND_CHECKED:
        expected = by_hand(module_type, TARGET, parameterisation)
        assert {hp: groups[module_type, layer][hp] for hp in expected} == pytest.approx(expected, rel=1e-12)
    m_l = TARGET.depth / BASE_SHAPE.depth
    residual = {"attn": 2**-1 * m_l**-parameterisation.alpha, "mlp": m_l**-parameterisation.alpha}
    assert section["residual_multipliers"] == pytest.approx(residual, rel=1e-12)
    assert section["logit_multiplier"] == 1.0  # Complete(d)P folds the logit multiplier into the unembedding
    assert section["steps"] == round(10_000_000 / (32 * 64))


def test_an_export_validates_against_the_shipped_schema():
    schema = json.loads(EXPORT_SCHEMA.read_text())
    jsonschema.validate(export_for(TARGET), schema)
    broken = export_for(BASE_SHAPE)
    broken["target"]["groups"][0]["lr"] = -1.0
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)
    broken = export_for(BASE_SHAPE)
    broken["target"]["recipe"]["schedule"]["kind"] = "step"
    with pytest.raises(jsonschema.ValidationError, match="'linear_warmup_cosine' was expected"):
        jsonschema.validate(broken, schema)


def test_the_export_carries_the_proxys_recipe_and_its_schedule_at_the_target():
    """The target trains for the proxy's steps × m_D / m_B, warms up for the same fraction of them, and keeps
    the proxy's floor, clip, z-loss and data."""
    export = export_for(TARGET)
    assert Recipe.model_validate(export["recipe"]) == RECIPE
    steps = round(60 * tuned().materialise(TARGET).steps_multiplier)
    assert steps == round(60 * (10_000_000 / 61_440) / (32 / 16)) == 4883
    assert export["target"]["steps"] == steps
    assert export["target"]["recipe"] == {
        "schedule": {"kind": "linear_warmup_cosine", "steps": steps, "warmup_steps": 488, "lr_floor": 0.2},
        "grad_clip": 1.0,
        "z_loss": 1e-4,
        "data": "tokens:/data/openwebtext",
        "val_fraction": 0.05,
    }
    loaded = load_export(json.loads(json.dumps(export)))
    assert loaded.recipe == RECIPE
    assert loaded.schedule == Schedule(steps=steps, warmup_steps=488, lr_floor=0.2)
    assert load_export(export_for(BASE_SHAPE)).schedule == RECIPE.schedule  # at the proxy's shape: its own


def test_an_export_written_before_the_recipe_reads_without_one():
    export = export_for(TARGET)
    del export["recipe"], export["target"]["recipe"]
    jsonschema.validate(export, json.loads(EXPORT_SCHEMA.read_text()))
    loaded = load_export(export)
    assert loaded.tuned == tuned() and loaded.recipe is None
    with pytest.raises(ValueError, match="holds no recipe"):
        loaded.schedule  # noqa: B018


def test_the_base_section_reads_back_as_what_was_written():
    for parameterisation in PARAMETERISATIONS.values():
        written = json.loads(json.dumps(export_for(TARGET, parameterisation)))
        assert load_export(written).tuned == tuned(parameterisation)
        assert load_export(written).target_shape == TARGET


def test_a_parameterisation_without_exponents_reads_as_it_meant_when_written():
    export = export_for(TARGET)
    export["base"]["parameterisation"] = {"name": "completed", "decay_norm_gains": False}
    # alpha's default never changed; the duration exponent was the paper's 1/2 before it was a choice
    assert load_export(export).tuned.parameterisation == Parameterisation("completed", 1.0, 0.5)
    assert Parameterisation().duration_exponent == 0.3  # what a new spec or export without it gets


def test_the_export_records_whether_norm_gains_are_decayed():
    for parameterisation in PARAMETERISATIONS.values():
        written = export_for(TARGET, parameterisation)["base"]["parameterisation"]
        assert written["decay_norm_gains"] is parameterisation.decay_norm_gains


def test_an_export_written_before_decay_norm_gains_existed_still_decays_its_norm_gains():
    export = export_for(TARGET)
    del export["base"]["parameterisation"]["decay_norm_gains"]
    assert load_export(export).tuned.parameterisation.decay_norm_gains is True
    model = GPT(ModelConfig(width=256, depth=4, head_dim=16, seq_len=64))
    by_module = {key: group for group in apply_export(model, export) for key in group["modules"]}
    assert by_module["q_norm", 2]["weight_decay"] == pytest.approx(0.1 * (2 / 10_000_000 * 61_440) ** 0.5)


def test_the_target_section_warns_of_every_capped_beta_once_per_module_type():
    """Batch ×64 on a quarter of the tokens: 1 - β ×256 puts every β below 0."""
    capped = Shape(BASE_SHAPE.width, BASE_SHAPE.depth, BASE_SHAPE.batch_size * 64, BASE_SHAPE.tokens // 4)
    export = export_for(capped)
    jsonschema.validate(export, json.loads(EXPORT_SCHEMA.read_text()))
    warnings = export["target"]["warnings"]
    assert "attn_q.beta1 (2 of 2 layers): 1-β scaled ×256 gives β=-24.6, capped at 0" in warnings
    assert len(warnings) == 2 * 13  # β1 and β2 of the 13 module types
    assert export_for(TARGET)["target"]["warnings"] == []


@pytest.mark.parametrize("parameterisation", PARAMETERISATIONS.values(), ids=PARAMETERISATIONS.keys())
def test_apply_export_sets_every_group_of_a_model_at_the_target_shape(tmp_path, parameterisation):
    path = tmp_path / "best.json"
    path.write_text(json.dumps(export_for(TARGET, parameterisation)))
    model = GPT(ModelConfig(width=256, depth=4, head_dim=16, seq_len=64))
    groups = apply_export(model, path)
    by_module = {key: group for group in groups for key in group["modules"]}
    for module_type, layer in HAND_CHECKED:
        expected = by_hand(module_type, TARGET, parameterisation)
        group = by_module[module_type, layer]
        applied = {"lr": group["lr"], "eps": group["eps"], "weight_decay": group["weight_decay"]}
        assert applied == pytest.approx({hp: expected[hp] for hp in applied}, rel=1e-12)
        assert group["betas"] == pytest.approx((expected["beta1"], expected["beta2"]), rel=1e-12)
    m_l = TARGET.depth / BASE_SHAPE.depth
    assert model.blocks[0].residual_attn == pytest.approx(2**-1 * m_l**-parameterisation.alpha, rel=1e-12)
    assert model.unembedding.weight.std().item() == pytest.approx(
        by_hand("unembedding", TARGET, parameterisation)["init_std"], rel=0.05
    )
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    torch.optim.AdamW(groups)  # a valid optimiser


def test_apply_export_re_materialises_for_the_models_own_width_and_depth():
    model = GPT(ModelConfig(width=128, depth=3, head_dim=16, seq_len=64))
    groups = apply_export(model, export_for(TARGET), batch_size=16, tokens=1_000_000)
    by_module = {key: group for group in groups for key in group["modules"]}
    expected = by_hand("mlp_down", Shape(128, 3, 16, 1_000_000), PARAMETERISATIONS["the paper's"])
    assert by_module["mlp_down", 1]["lr"] == pytest.approx(expected["lr"], rel=1e-12)
    assert by_module["mlp_down", 1]["eps"] == pytest.approx(expected["eps"], rel=1e-12)


def test_something_that_is_not_an_export_is_refused():
    with pytest.raises(ValueError, match="not a completedp-hpo"):
        load_export({"format": "other"})
    assert export_for(BASE_SHAPE)["format"] == EXPORT_FORMAT
    broken = export_for(BASE_SHAPE)
    del broken["base"]["multipliers"]
    with pytest.raises(ValueError, match="multipliers"):
        load_export(broken)
    broken = export_for(BASE_SHAPE)
    broken["base"]["parameterisation"]["alpha"] = 2.0
    with pytest.raises(ValueError, match="alpha"):
        load_export(broken)
