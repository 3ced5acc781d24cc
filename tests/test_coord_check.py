"""Coordinate check across an 8x width range (32 -> 256).

Tolerance: under `completed` the activation and update RMS of every module type stay within a factor of
1.5 of each other between the narrowest and the widest model (measured: 0.77-1.05). Under `sp` the hidden
and output updates grow by more than 4x (measured: 4.5-44x).
"""

from dataclasses import replace

import pytest

from trainer.config import TrainConfig
from trainer.coord_check import coord_check, growth, plot_coord_check
from trainer.model import MODULE_TYPES
from trainer.parameterisation import Parameterisation

WIDTHS = (32, 64, 128, 256)
FLAT = (1 / 1.5, 1.5)
HIDDEN = ("attn_q", "attn_v", "attn_out", "mlp_up", "mlp_down", "unembedding")


def config(name: str) -> TrainConfig:
    return TrainConfig.model_validate(
        {
            "model": {"width": 32, "depth": 2, "head_dim": 16, "seq_len": 32},
            "training": {"batch_size": 8},
            "parameterisation": {"name": name},
        }
    )


class HiddenLRUnscaled(Parameterisation):
    """Complete(d)P with the classic bug: the hidden weights' LR does not shrink with the width."""

    def scaling(self, base, target):
        scaling = super().scaling(base, target)
        hidden = scaling.groups["hidden_weight"]
        return replace(scaling, groups={**scaling.groups, "hidden_weight": replace(hidden, lr=1.0)})


def is_flat(records, module_type: str) -> bool:
    return all(FLAT[0] < growth(records, module_type, metric) < FLAT[1] for metric in ("activation", "update"))


def test_completed_keeps_activation_and_update_sizes_flat_across_width(tmp_path):
    records = coord_check(config("completed"), WIDTHS)
    assert {r.module_type for r in records} == set(MODULE_TYPES)
    for module_type in MODULE_TYPES:
        assert is_flat(records, module_type), (module_type, growth(records, module_type))
    plot_coord_check(records, tmp_path / "coord.png", "completed")
    assert (tmp_path / "coord.png").stat().st_size > 10_000


def test_sp_updates_grow_with_width():
    records = coord_check(config("sp"), WIDTHS)
    for module_type in HIDDEN:
        assert growth(records, module_type) > 4, module_type


def test_the_check_catches_a_hidden_lr_that_is_not_scaled():
    broken = HiddenLRUnscaled("completed")
    records = coord_check(config("completed"), WIDTHS, parameterisation=broken)
    assert not all(is_flat(records, m) for m in HIDDEN)
    assert growth(records, "mlp_down") > 2


@pytest.mark.parametrize("name", ["mup", "completep"])
def test_other_transferring_parameterisations_are_flat_in_width(name):
    records = coord_check(config(name), WIDTHS, steps=2)
    assert all(is_flat(records, m) for m in MODULE_TYPES)
