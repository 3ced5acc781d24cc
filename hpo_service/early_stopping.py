"""Early stopping: which running search trial to stop, and what the optimizer is told for one that stopped.

The engine judges a trial each time its streamed curve reaches an evaluation step, against the validation
losses of the same stage's other search trials at that very step (finished, stopped or still running: a loss
at a step never changes). Rules (``spec.EarlyStoppingSection``):

- ``median`` (Optuna's MedianPruner, Ray Tune's median stopping): stop when the loss is above the given
  percentile of the others'.
- ``successive_halving`` (asynchronous, as ASHA): only at the rungs, the first evaluation steps at or after
  ``min_fraction · steps · η^k``; a trial goes on only if it is among the best ⌊n/η⌋ of the n trials that
  reached the rung so far (itself included).

Divergence needs no rule: the trainer ends a run at its first non-finite loss or loss spike (``diverged``).

**What a stopped trial is told.** Its loss at the step it stopped is not comparable with the others' final
losses: losses fall with training, so it would rank every stopped trial below every finished one by an
arbitrary margin, and a run's noise at mid-training is not its noise at the end. The penalty of a diverged
trial would throw away what the curve says. A stopped trial is told a **predicted final loss**: its loss at
the stopping step plus the median drop, from that step to the end, of the stage's trials that finished
(``predicted_final``). It ranks where its curve put it, on the scale of final losses, and it is deterministic
given the store, so a search restored after a kill tells exactly the same values. ``bench/search_cost.py``
measures this choice against the raw last loss and the penalty (rank correlation with the true final loss).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

import numpy as np

from hpo_service.spec import EarlyStoppingSection


def judged_steps(rule: EarlyStoppingSection, steps: int, eval_every: int) -> list[int]:
    """The evaluation steps at which a trial of ``steps`` steps, evaluated every ``eval_every``, is judged; never
    its last step (stopping there saves nothing)."""
    evals = list(range(eval_every, steps, eval_every))  # the last step is evaluated too, but not judged
    first = rule.min_fraction * steps
    if rule.rule == "median":
        return [s for s in evals if s >= first]
    if rule.rule == "successive_halving":
        rungs, rung = [], first
        while rung < steps:
            at = next((s for s in evals if s >= rung), None)
            if at is None:
                break
            if at not in rungs:
                rungs.append(at)
            rung *= rule.reduction_factor
        return rungs
    return []


def should_stop(rule: EarlyStoppingSection, loss: float, others: Sequence[float]) -> bool:
    """Whether a trial whose validation loss at a judged step is ``loss`` stops, given the ``others``' losses
    at that step. A non-finite loss is the trainer's to end (diverged); too few others judge nothing."""
    if not math.isfinite(loss) or len(others) < rule.min_trials:
        return False
    if rule.rule == "median":
        return loss > float(np.percentile(others, rule.percentile))
    if rule.rule == "successive_halving":
        keep = max(1, (len(others) + 1) // rule.reduction_factor)
        return sum(1 for other in others if other < loss) >= keep
    return False


def predicted_final(loss_at_stop: float, drops: Sequence[float]) -> float:
    """A stopped trial's predicted final loss: its loss when it stopped plus the median of ``drops``, the
    change from that step to the end of each finished trial of its stage (negative: losses fall). With no
    finished trial to learn from, the loss when it stopped (an upper bound, as losses fall)."""
    return loss_at_stop + (statistics.median(drops) if drops else 0.0)
