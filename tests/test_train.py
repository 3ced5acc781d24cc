"""The training loop: reproducibility, divergence, failure, progress reports and the schedule."""

import itertools
import math

import pytest
import torch

from trainer import GPT, Multipliers, TrainConfig, run_trial
from trainer import train as train_module
from trainer.export import Recipe, TunedHPs, export_document, load_export
from trainer.model import ModelConfig
from trainer.schedule import Schedule
from trainer.train import THROUGHPUT_WARMUP_STEPS, _Run, objective
from trainer.transfer import apply_export


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
    assert torch.get_float32_matmul_precision() == "highest"  # TF32 is for CUDA runs only


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


class SteppedClock:
    """A ``perf_counter`` for the training loop whose every reading is a millisecond after the last, and which a
    slow step moves on by a minute: the rates it yields depend on the loop's arithmetic, not on the machine."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        self.now += 1e-3
        return self.now


def test_throughput_leaves_out_the_warm_up_steps(monkeypatch):
    """A slow first step (as compiling makes it) is not in tokens/s; a slow step after the warm-up is. A run no
    longer than the warm-up is timed over all its steps."""

    def tokens_per_s(slow_step: int, steps: int = 20) -> float:
        clock = SteppedClock()
        monkeypatch.setattr(train_module, "time", clock)
        run = _Run(tiny(steps=steps, warmup_steps=0), Multipliers(), None)
        counter = itertools.count(1)

        def slow(*_) -> None:
            if next(counter) == slow_step:
                clock.now += 60.0

        run.optimizer.register_step_pre_hook(slow)
        return run.train().tokens_per_s

    tokens = 20 * 8 * 32  # tiny() logs (a host sync) every step: its first THROUGHPUT_WARMUP_STEPS are left out
    assert tokens_per_s(slow_step=1) > tokens / 1.0  # the timed steps took milliseconds: the minute is not in it
    assert tokens_per_s(slow_step=THROUGHPUT_WARMUP_STEPS + 1) < tokens / 60.0
    assert 0 < tokens_per_s(slow_step=1, steps=THROUGHPUT_WARMUP_STEPS) < THROUGHPUT_WARMUP_STEPS * 8 * 32 / 60.0


@pytest.mark.parametrize("bf16", [False, True])
@pytest.mark.filterwarnings("ignore:Mismatch dtype between input and weight")  # CPU rms_norm under bf16 autocast
def test_the_objective_compiles_to_one_graph_giving_the_eager_loss_and_gradients(bf16):
    """Logits, cross-entropy and z-loss trace as one graph (no break to leave the loss eager), with autocast
    inside; AOTAutograd's trace (Inductor's C++ build is too slow for a test on the CPU) agrees with eager."""
    torch.manual_seed(0)
    model = GPT(ModelConfig(width=32, depth=1, head_dim=16, seq_len=16))
    x, y = torch.randint(0, 256, (2, 16)), torch.randint(0, 256, (2, 16))
    torch._dynamo.reset()
    compiled = torch.compile(objective, fullgraph=True, backend="aot_eager")
    results = []
    for fn in (objective, compiled):
        ce, total = fn(model, x, y, 1e-2, bf16)
        results.append((ce, total, torch.autograd.grad(total, list(model.parameters()))))
    (ce, total, grads), (ce_c, total_c, grads_c) = results
    assert total > ce and total.dtype == torch.float32
    torch.testing.assert_close((ce_c, total_c), (ce, total))
    torch.testing.assert_close(grads_c, grads)


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
    schedule = Schedule(steps=100, warmup_steps=10, lr_floor=0.1)
    factors = [schedule.lr_factor(s) for s in range(100)]
    assert factors[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert factors[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(factors[10:]))
    assert factors[-1] == pytest.approx(0.1, abs=1e-3)
    assert schedule.lr_factor(100) == schedule.lr_factor(145) == pytest.approx(0.1)  # the floor, past the end
    assert schedule.lr_at(55, 0.02) == 0.02 * factors[55]
    with pytest.raises(ValueError, match="step must be 0 or more"):
        schedule.lr_factor(-1)
    with pytest.raises(ValueError, match="warmup_steps"):
        Schedule(steps=10, warmup_steps=11)


def test_a_stretched_schedule_keeps_its_warm_up_fraction_and_floor():
    schedule = Schedule(steps=60, warmup_steps=6, lr_floor=0.2)
    assert schedule.stretched(600) == Schedule(steps=600, warmup_steps=60, lr_floor=0.2)
    assert schedule.stretched(5) == Schedule(steps=5, warmup_steps=1, lr_floor=0.2)  # a warm-up keeps a step
    assert Schedule(steps=60).stretched(600).warmup_steps == 0


def test_the_exports_schedule_gives_exactly_the_lrs_the_training_loop_applies():
    """The export of a real run offers its schedule; with the export's peak LRs it gives, step by step and group
    by group, the LR the loop set in the optimiser, as does LambdaLR, the way the schedule module suggests."""
    config = tiny(warmup_steps=3, lr_floor=0.2)
    multipliers = Multipliers(module={"mlp_up": {"lr": 1.0}, "unembedding": {"lr": -0.5}})
    run = _Run(config, multipliers, None)
    applied: list[list[float]] = []
    run.optimizer.register_step_pre_hook(lambda opt, args, kwargs: applied.append([g["lr"] for g in opt.param_groups]))
    assert run.train().status == "succeeded"

    document = export_document(
        TunedHPs.found_with(config, multipliers),
        config.shape(),
        recipe=Recipe.of(config.training),
        losses=[3.0],
        provenance={},
    )
    schedule = load_export(document).schedule
    assert schedule == Schedule(steps=20, warmup_steps=3, lr_floor=0.2)
    optimizer = torch.optim.AdamW(apply_export(GPT(config.model), document))
    peaks = [group["lr"] for group in optimizer.param_groups]
    assert len(applied) == 20 and len(peaks) == len(applied[0]) > 3
    assert applied == [[schedule.lr_at(step, peak) for peak in peaks] for step in range(20)]

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule.lr_factor)
    stepped = []
    for _ in range(20):
        stepped.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    assert stepped == applied


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
