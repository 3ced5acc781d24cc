"""Per-module multipliers materialised into AdamW groups and init stds."""

import math

import pytest
import torch

from trainer.hparams import BaseHPs, Multipliers, apply_to_model, interpolate_depth, materialise
from trainer.model import BLOCK_MODULE_TYPES, GPT, MODULE_TYPES, ModelConfig
from trainer.parameterisation import Parameterisation, Shape

BASE_HPS = BaseHPs(lr=0.01, init_std=0.02, weight_decay=0.1, beta1=0.9, beta2=0.95, eps=1e-8)
BASE = Shape(width=64, depth=2, batch_size=16, tokens=100_000)


def test_global_hps_at_the_base_shape_are_the_base_values():
    hps = materialise(BASE_HPS, Multipliers(), Parameterisation("completed"), BASE, BASE)
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
    assert len(groups) == 1  # at the base shape, init aside, every group has the same settings: one group
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
