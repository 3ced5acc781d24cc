"""Per-module multipliers materialised into AdamW groups and init stds."""

import math

import pytest
import torch

from trainer.config import ParameterisationSection, TrainConfig
from trainer.hparams import (
    NORM_GAIN_MODULE_TYPES,
    BaseHPs,
    Multipliers,
    apply_to_model,
    interpolate_depth,
    materialise,
)
from trainer.model import BLOCK_MODULE_TYPES, GPT, MODULE_TYPES, ModelConfig
from trainer.parameterisation import Parameterisation, Shape

BASE_HPS = BaseHPs(lr=0.01, init_std=0.02, weight_decay=0.1, beta1=0.9, beta2=0.95, eps=1e-8)
BASE = Shape(width=64, depth=2, batch_size=16, tokens=100_000)


def test_global_hps_at_the_base_shape_are_the_base_values():
    hps = materialise(BASE_HPS, Multipliers(), Parameterisation("completed", decay_norm_gains=True), BASE, BASE)
    assert len(hps.groups) == 3 + len(BLOCK_MODULE_TYPES) * BASE.depth
    for g in hps.groups:
        assert (g.lr, g.init_std, g.weight_decay, g.beta1, g.beta2, g.eps) == pytest.approx(
            (0.01, 0.02, 0.1, 0.9, 0.95, 1e-8)
        )
    assert (hps.residual_attn, hps.residual_mlp, hps.logit, hps.steps_multiplier) == (1.0, 1.0, 1.0, 1.0)


def test_module_multipliers_compose_with_the_scaling_rules():
    mult = Multipliers(
        module={"mlp_down": {"lr": 1.0, "beta2": 1.0}, "unembedding": {"init_std": -2.0}},
        residual={"attn": -1.0},
    )
    target = Shape(width=256, depth=4, batch_size=16, tokens=100_000)  # m_N = 4, m_L = 2
    hps = materialise(BASE_HPS, mult, Parameterisation("completed"), BASE, target)
    down = hps.group("mlp_down", 3)
    assert down.lr == pytest.approx(0.01 * 2 / 4)  # ×2 multiplier, ×1/m_N, m_L^0 at α = 1
    assert down.beta2 == pytest.approx(1 - 0.05 * 2)  # multiplier acts on 1 - β
    assert hps.group("mlp_up", 3).lr == pytest.approx(0.01 / 4)
    assert hps.group("unembedding").init_std == pytest.approx(0.02 / 4 / 4)  # ×2^-2, ×1/m_N
    assert hps.residual_attn == pytest.approx(0.5 * 0.5)  # r = 2^-1 times m_L^-1
    assert hps.residual_mlp == pytest.approx(0.5)


def test_betas_stay_below_one_and_above_zero():
    hps = materialise(
        BASE_HPS,
        Multipliers(module={"attn_q": {"beta1": 5.0, "beta2": -40.0}}),
        Parameterisation("completed"),
        BASE,
        BASE,
    )
    q = hps.group("attn_q", 0)
    assert q.beta1 == 0.0
    assert 0.999 < q.beta2 < 1.0
    assert hps.capped == (
        "attn_q.beta1 (2 of 2 layers): 1-β scaled ×32 gives β=-2.2, capped at 0",
        "attn_q.beta2 (2 of 2 layers): 1-β scaled ×9.09e-13 gives β=1, capped at 0.999999",
    )


def test_betas_capped_by_the_batch_and_duration_rule_are_named_once_per_module_type():
    """Batch ×64 on a quarter of the tokens multiplies 1 - β by 256: every β falls below 0 and is capped."""
    target = Shape(BASE.width, BASE.depth, BASE.batch_size * 64, BASE.tokens // 4)
    hps = materialise(BASE_HPS, Multipliers(), Parameterisation("completed"), BASE, target)
    assert hps.group("attn_q", 1).beta1 == 0.0
    assert "attn_q.beta1 (2 of 2 layers): 1-β scaled ×256 gives β=-24.6, capped at 0" in hps.capped
    assert "embedding.beta2: 1-β scaled ×256 gives β=-11.8, capped at 0" in hps.capped
    assert len(hps.capped) == 2 * len(MODULE_TYPES)  # one line per module type and β, not one per layer


def test_a_capped_beta_quotes_its_most_extreme_layer():
    # 1 - β1 ×16 in layer 0 and ×32 in layer 1; 1 - β2 ×1 in layer 0 (in range) and ×32 in layer 1
    mult = Multipliers(depth={"beta1": (4.0, 5.0), "beta2": (0.0, 5.0)})
    hps = materialise(BASE_HPS, mult, Parameterisation("completed"), BASE, BASE)
    assert hps.group("mlp_up", 0).beta2 == pytest.approx(0.95)
    assert "mlp_up.beta1 (2 of 2 layers): 1-β scaled ×32 gives β=-2.2, capped at 0" in hps.capped
    assert "mlp_up.beta2 (1 of 2 layers): 1-β scaled ×32 gives β=-0.6, capped at 0" in hps.capped


def test_betas_the_rules_keep_in_range_are_not_reported():
    target = Shape(BASE.width * 4, BASE.depth * 2, BASE.batch_size * 4, BASE.tokens * 4)
    assert materialise(BASE_HPS, Multipliers(), Parameterisation("completed"), BASE, target).capped == ()


def test_norm_gains_get_no_weight_decay_by_default():
    hps = TrainConfig(base_hps=BASE_HPS).materialise(Multipliers(module={"norm_attn": {"weight_decay": 1.0}}))
    assert NORM_GAIN_MODULE_TYPES == ("norm_attn", "norm_mlp", "q_norm", "k_norm", "final_norm")
    for g in hps.groups:
        expected = 0.0 if g.module_type in NORM_GAIN_MODULE_TYPES else 0.1
        assert g.weight_decay == pytest.approx(expected), g


def test_norm_gains_are_decayed_when_the_parameterisation_says_so():
    config = TrainConfig(base_hps=BASE_HPS, parameterisation=ParameterisationSection(decay_norm_gains=True))
    hps = config.materialise(Multipliers(module={"norm_attn": {"weight_decay": 1.0}}))
    assert hps.group("norm_attn", 0).weight_decay == pytest.approx(0.2)
    others = [hps.group(m, 1) for m in ("norm_mlp", "q_norm", "k_norm")] + [hps.group("final_norm")]
    assert [g.weight_decay for g in others] == pytest.approx([0.1] * 4)


def test_per_depth_multipliers_are_interpolated_in_relative_depth():
    assert interpolate_depth([0.0, 2.0], layer=0, depth=2) == 0.0
    assert interpolate_depth([0.0, 2.0], layer=1, depth=2) == 2.0
    # At 4 blocks the centres 1/8, 3/8, 5/8, 7/8 lie between or beyond the tuned centres 1/4 and 3/4.
    assert [interpolate_depth([0.0, 2.0], layer, 4) for layer in range(4)] == pytest.approx([0.0, 0.5, 1.5, 2.0])
    mult = Multipliers(depth={"lr": (0.0, 2.0)})
    hps = materialise(BASE_HPS, mult, Parameterisation("sp"), BASE, Shape(64, 4, 16, 100_000))
    assert [hps.group("attn_v", layer).lr for layer in range(4)] == pytest.approx(
        [0.01 * 2**e for e in (0.0, 0.5, 1.5, 2.0)]
    )
    assert hps.group("embedding").lr == pytest.approx(0.01)  # no per-layer factor outside the blocks


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"module": {"attn_z": {"lr": 1}}}, "unknown module type 'attn_z'"),
        ({"module": {"attn_q": {"momentum": 1}}}, "unknown hyperparameter 'momentum'"),
        ({"residual": {"ffn": 1}}, "unknown residual branch"),
        ({"layers": {}}, "unknown multiplier sections"),
    ],
)
def test_bad_multipliers_name_the_problem(data, message):
    with pytest.raises(ValueError, match=message):
        Multipliers.from_dict(data)


def test_multipliers_round_trip_through_dicts():
    mult = Multipliers(module={"attn_q": {"lr": 1.5}}, depth={"eps": (0.0, -1.0)}, residual={"mlp": 0.5})
    assert Multipliers.from_dict(mult.to_dict()) == mult


def test_apply_to_model_covers_every_parameter_once_and_initialises_by_group():
    model = GPT(ModelConfig(width=64, depth=2, head_dim=16))
    target = Shape(width=64, depth=2, batch_size=16, tokens=100_000)
    mult = Multipliers(module={"attn_out": {"init_std": 3.0}})
    hps = materialise(BaseHPs(init_std=0.05), mult, Parameterisation("completed"), BASE, target)
    torch.manual_seed(0)
    groups = apply_to_model(model, hps)
    grouped = [id(p) for g in groups for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters())
    assert {module_type for g in groups for module_type, _ in g["modules"]} == set(MODULE_TYPES)
    assert len(groups) == 2  # at the base shape, init aside: the decayed weights and the undecayed norm gains
    out_std = model.blocks[0].attn.out.weight.std().item()
    assert out_std == pytest.approx(0.05 * 8, rel=0.05)
    assert model.blocks[1].mlp.up.weight.std().item() == pytest.approx(0.05, rel=0.05)
    assert torch.equal(model.final_norm.weight, torch.ones(64))
    optimizer = torch.optim.AdamW(groups)
    assert math.isclose(optimizer.param_groups[0]["lr"], groups[0]["lr"])


def test_materialised_hps_for_another_depth_are_refused():
    hps = materialise(BASE_HPS, Multipliers(), Parameterisation("completed"), BASE, BASE)
    for depth in (1, 3):
        with pytest.raises(ValueError, match=f"materialised for depth 2, the model has depth {depth}"):
            apply_to_model(GPT(ModelConfig(width=64, depth=depth)), hps)


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_base_hps_refuse_non_finite_values_whoever_builds_them(value):
    with pytest.raises(ValueError, match="lr"):
        BaseHPs(lr=value)
