"""The learning-rate schedule: linear warm-up to the peak LR, then cosine decay to a floor.

One implementation: ``trainer.train``'s loop applies it, and an export offers it to a user's own loop
(``load_export(path).schedule``), at the target's steps. In a loop of your own::

    peaks = [group["lr"] for group in optimizer.param_groups]  # as apply_export set them
    for step in range(schedule.steps):
        for group, peak in zip(optimizer.param_groups, peaks):
            group["lr"] = schedule.lr_at(step, peak)
        ...

or ``torch.optim.lr_scheduler.LambdaLR(optimizer, schedule.lr_factor)``, stepped after each optimiser step.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Schedule(BaseModel):
    """The LR of ``steps`` optimiser steps as a factor of the peak: ``warmup_steps`` linear steps up to 1, then a
    cosine from 1 down to ``lr_floor``, which it reaches at step ``steps`` (one past the last) and keeps."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    kind: Literal["linear_warmup_cosine"] = Field("linear_warmup_cosine", description="The schedule's shape.")
    steps: int = Field(gt=0, description="Optimiser steps.")
    warmup_steps: int = Field(0, ge=0, description="Linear warm-up steps before the cosine decay.")
    lr_floor: float = Field(0.1, ge=0, le=1, description="Final LR as a fraction of the peak.")

    @model_validator(mode="after")
    def _warmup_fits(self) -> Schedule:
        if self.warmup_steps > self.steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) exceeds steps ({self.steps})")
        return self

    def lr_factor(self, step: int) -> float:
        """The LR at ``step`` (counted from 0) as a fraction of the peak."""
        if step < 0:
            raise ValueError(f"step must be 0 or more, not {step}")
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.steps - self.warmup_steps))
        return self.lr_floor + (1 - self.lr_floor) * 0.5 * (1 + math.cos(math.pi * progress))

    def lr_at(self, step: int, peak_lr: float) -> float:
        """The LR at ``step`` of a parameter group whose peak LR is ``peak_lr``."""
        return peak_lr * self.lr_factor(step)

    def stretched(self, steps: int) -> Schedule:
        """The same shape over ``steps`` steps: the warm-up keeps its fraction of the run (at least one step if
        there was one), as the Complete(d)P rules keep the AdamW averaging horizons a fixed fraction of it."""
        warmup = min(steps, max(1, round(self.warmup_steps * steps / self.steps))) if self.warmup_steps else 0
        return Schedule(kind=self.kind, steps=steps, warmup_steps=warmup, lr_floor=self.lr_floor)
