"""The training loop: reproducibility, divergence, failure, progress reports and the schedule."""

import itertools
import math

import pytest

from trainer import Multipliers, TrainConfig, run_trial
from trainer.train import lr_factor


def tiny(**training) -> TrainConfig:
    return TrainConfig.model_validate(
        {
            "model": {"width": 32, "depth": 2, "head_dim": 16, "seq_len": 32},
            "training": {"batch_size": 8, "steps": 20, "warmup_steps": 2, "eval_batches": 2, **training},
        }
    )


def test_same_seed_gives_bitwise_identical_losses_on_cpu():
    a, b = run_trial(tiny(seed=3)), run_trial(tiny(seed=3))
    assert a.status == "succeeded"
    assert a.train_curve == b.train_curve and a.eval_curve == b.eval_curve
    assert a.final_val_loss == b.final_val_loss
    assert run_trial(tiny(seed=4)).train_curve != a.train_curve


def test_a_successful_run_reports_its_curves_and_throughput():
    reports = []
    result = run_trial(tiny(), report=lambda step, metrics: reports.append((step, metrics)))
    assert result.status == "succeeded" and result.reason is None
    assert result.steps == 20 and result.tokens == 20 * 8 * 32
    assert result.final_val_loss < math.log(256)  # it learnt something about Python source
    assert result.train_curve[-1][0] == 20 and len(result.eval_curve) == 10
    assert result.tokens_per_s > 0 and result.wall_time_s > 0
    assert [step for step, _ in reports] == list(range(1, 21))
    assert reports[-1][1]["val_loss"] == result.final_val_loss


def test_an_absurd_learning_rate_diverges_within_a_few_steps_without_raising():
    config = tiny().model_copy(update={"base_hps": tiny().base_hps.model_copy(update={"lr": 1e4})})
    result = run_trial(config)
    assert result.status == "diverged"
    assert result.steps <= 5
    assert "loss" in result.reason
    assert result.final_val_loss is None


def test_one_module_with_an_absurd_lr_is_enough_to_diverge():
    result = run_trial(tiny(), Multipliers(module={"unembedding": {"lr": 20.0}}))
    assert result.status == "diverged"


def test_a_broken_data_source_fails_the_trial_with_its_reason():
    result = run_trial(tiny(data="text:/nonexistent/corpus.txt"))
    assert result.status == "failed"
    assert "does not exist" in result.reason


def test_z_loss_and_gradient_clipping_train_normally():
    result = run_trial(tiny(z_loss=1e-4, grad_clip=1.0))
    assert result.status == "succeeded"
    assert result.final_val_loss < math.log(256)


def test_schedule_warms_up_linearly_then_decays_to_the_floor():
    factors = [lr_factor(s, steps=100, warmup=10, floor=0.1) for s in range(100)]
    assert factors[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert factors[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(factors[10:]))
    assert factors[-1] == pytest.approx(0.1, abs=1e-3)


@pytest.mark.parametrize(
    ("section", "values", "field"),
    [
        ("model", {"width": 40, "head_dim": 16}, "multiple of model.head_dim"),
        ("training", {"steps": 0}, "steps"),
        ("training", {"warmup_steps": 30, "steps": 20}, "warmup_steps"),
        ("training", {"learning_rate": 1}, "learning_rate"),
        ("training", {"device": "tpu"}, "device"),
        ("parameterisation", {"alpha": 2}, "alpha"),
        ("base_hps", {"beta2": 1.0}, "beta2"),
    ],
)
def test_impossible_configs_are_rejected_naming_the_field(section, values, field):
    with pytest.raises(ValueError, match=field):
        TrainConfig.model_validate({section: values})
