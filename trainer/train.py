"""The training loop: one configuration and one set of per-module multipliers in, one ``TrialResult`` out.

AdamW with per-group settings, the LR schedule of ``trainer.schedule`` (linear warm-up, then cosine decay to a
floor), optional z-loss and gradient clipping. On CUDA: bf16 autocast, ``torch.compile`` of the model together
with its loss (``objective``), TF32 for float32 matmuls, and batches copied from pinned host memory without
blocking the host. Divergence (a non-finite loss, or a loss above ``divergence_factor`` times the first one)
ends the run early with status ``diverged``; any other error ends it with status ``failed``. Neither raises. A
``report`` callback that answers True (an early-stopping rule judged the run hopeless) ends it with status
``stopped``, its curves up to there. On the CPU a run is bitwise-reproducible for a seed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F

from trainer.config import TrainConfig
from trainer.data import Corpus, eval_batches, load_corpus, sample_batch
from trainer.hparams import Multipliers, apply_to_model
from trainer.model import GPT

Status = Literal["succeeded", "diverged", "stopped", "failed"]
Report = Callable[[int, dict[str, float]], bool | None]  # True: stop the run here
CURVE_POINTS = 200  # at most about this many train-loss points per run
THROUGHPUT_WARMUP_STEPS = 3  # steps (with compiling) left out of ``TrialResult.tokens_per_s``; see there


@dataclass
class TrialResult:
    """What a run did. ``tokens_per_s`` is the training throughput after warm-up: the tokens of the steps after
    the first log point (a host sync) at or after step ``THROUGHPUT_WARMUP_STEPS``, over the time those steps
    took, evaluations and ``report`` calls not counted. Compiling (the first step, and on CUDA the first few
    steps' allocations) is thereby left out. A run that ended at or before that log point is timed over all its
    steps instead. ``wall_time_s`` is the whole run, loading and evaluations included."""

    status: Status
    final_val_loss: float | None = None
    final_train_loss: float | None = None
    train_curve: list[tuple[int, float]] = field(default_factory=list)
    eval_curve: list[tuple[int, float]] = field(default_factory=list)
    steps: int = 0
    tokens: int = 0
    wall_time_s: float = 0.0
    tokens_per_s: float = 0.0
    reason: str | None = None  # why a run diverged, stopped or failed
    device: str = "cpu"
    corpus: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def objective(
    model: GPT, x: torch.Tensor, y: torch.Tensor, z_loss: float, bf16: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of ``model`` on inputs ``x`` against targets ``y``, and the objective to differentiate
    (cross-entropy plus ``z_loss`` times the mean squared log-partition). The model runs under bf16 autocast when
    ``bf16``, the loss in float32. One function, so that ``torch.compile`` fuses the logits' cast with the loss
    and its backward instead of writing float32 logits (batch × seq × vocab) out; the backward runs outside
    autocast, as compiled here and as AMP recommends."""
    with torch.autocast(x.device.type, dtype=torch.bfloat16) if bf16 else nullcontext():
        logits = model(x)
    logits = logits.float().view(-1, logits.size(-1))
    ce = F.cross_entropy(logits, y.view(-1))
    if z_loss:
        return ce, ce + z_loss * torch.logsumexp(logits, dim=-1).pow(2).mean()
    return ce, ce


def run_trial(config: TrainConfig, hps: Multipliers | None = None, report: Report | None = None) -> TrialResult:
    """Train ``config``'s model with ``hps`` and return the outcome; ``report(step, metrics)`` streams progress."""
    start = time.perf_counter()
    try:
        result = _Run(config, hps or Multipliers(), report).train()
    except Exception as exc:  # a trial's failure is a result, not a crash of its caller
        result = TrialResult(status="failed", reason=f"{type(exc).__name__}: {exc}")
    result.wall_time_s = time.perf_counter() - start
    return result


class _Run:
    def __init__(self, config: TrainConfig, hps: Multipliers, report: Report | None) -> None:
        self.cfg, self.t = config, config.training
        self.report = report or (lambda step, metrics: None)
        self.device = resolve_device(self.t.device)
        self.corpus: Corpus = load_corpus(
            self.t.data, vocab_size=config.model.vocab_size, val_fraction=self.t.val_fraction
        )
        torch.manual_seed(self.t.seed)
        self.model = GPT(config.model)
        groups = apply_to_model(
            self.model, config.materialise(hps)
        )  # initialised on the CPU: the same weights everywhere
        self.model.to(self.device)
        self.cuda = self.device.type == "cuda"
        if self.cuda:  # process-wide; under bf16 autocast only float32 matmuls outside it are affected
            torch.set_float32_matmul_precision("high")
        self.optimizer = torch.optim.AdamW(groups, fused=self.cuda)
        for group in self.optimizer.param_groups:
            group["peak_lr"] = group["lr"]
        use_compile = self.t.compile == "on" or (self.t.compile == "auto" and self.cuda)
        self.objective = torch.compile(objective) if use_compile else objective
        self.eval_set = eval_batches(self.corpus, self.t.batch_size, config.model.seq_len, self.t.eval_batches)

    def to_device(self, batch: torch.Tensor) -> torch.Tensor:
        """A host batch on the run's device; on CUDA through pinned memory, so the copy does not block the host."""
        if self.cuda:
            batch = batch.pin_memory()
        return batch.to(self.device, non_blocking=True)

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-entropy, and the objective (cross-entropy plus z-loss) to differentiate."""
        return self.objective(self.model, self.to_device(x), self.to_device(y), self.t.z_loss, self.cuda)

    @torch.no_grad()
    def evaluate(self) -> float:
        return sum(self.loss(x, y)[0].item() for x, y in self.eval_set) / len(self.eval_set)

    def train(self) -> TrialResult:
        t, steps, schedule = self.t, self.t.steps, self.t.schedule
        tokens_per_step = t.batch_size * self.cfg.model.seq_len
        log_every = max(1, steps // CURVE_POINTS)
        eval_every = t.eval_interval
        result = TrialResult(status="succeeded", device=str(self.device), corpus=self.corpus.fingerprint)
        pending: list[torch.Tensor] = []
        first_loss: float | None = None
        train_time = 0.0  # seconds in training steps (not evaluations or reports), from the first step
        warm: tuple[int, float] | None = None  # (steps, train_time) at the end of the warm-up
        for step in range(steps):
            tick = time.perf_counter()
            factor = schedule.lr_factor(step)
            for group in self.optimizer.param_groups:
                group["lr"] = group["peak_lr"] * factor
            x, y = sample_batch(self.corpus.train, t.batch_size, self.cfg.model.seq_len, t.seed, step)
            ce, objective = self.loss(x, y)
            self.optimizer.zero_grad(set_to_none=True)
            objective.backward()
            if t.grad_clip:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip)
            self.optimizer.step()
            pending.append(ce.detach())
            done = step + 1
            result.steps, result.tokens = done, done * tokens_per_step
            log_point = done % log_every == 0 or done == steps
            if log_point:
                train_loss = torch.stack(pending).mean().item()  # the only host sync between log points
                pending.clear()
            train_time += time.perf_counter() - tick
            if not log_point:
                continue
            if warm is None and done >= THROUGHPUT_WARMUP_STEPS:
                warm = (done, train_time)
            first_loss = train_loss if first_loss is None else first_loss
            result.train_curve.append((done, train_loss))
            result.final_train_loss = train_loss
            if not math.isfinite(train_loss) or train_loss > t.divergence_factor * first_loss:
                result.status = "diverged"
                result.reason = f"train loss {train_loss:.4g} at step {done} (first loss {first_loss:.4g})"
                self.report(done, {"train_loss": train_loss})
                break
            metrics = {"train_loss": train_loss, "lr_factor": factor}
            if done % eval_every == 0 or done == steps:
                val_loss = self.evaluate()
                result.eval_curve.append((done, val_loss))
                metrics["val_loss"] = val_loss
                if not math.isfinite(val_loss):
                    result.status, result.reason = "diverged", f"validation loss {val_loss} at step {done}"
                    self.report(done, metrics)
                    break
                result.final_val_loss = val_loss
            if self.report(done, metrics) and done < steps:
                result.status, result.reason = "stopped", f"stopped by the early-stopping rule at step {done}"
                break
        timed_steps, timed_time = result.steps, train_time
        if warm is not None and warm[0] < result.steps:
            timed_steps, timed_time = result.steps - warm[0], train_time - warm[1]
        result.tokens_per_s = timed_steps * tokens_per_step / timed_time if timed_time > 0 else 0.0
        if result.status not in ("succeeded", "stopped"):  # a stopped run keeps its last validation loss
            result.final_val_loss = None
        return result
