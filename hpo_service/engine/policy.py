"""The search policy: which candidates to train next, what each result tells the optimizer, and when a
generation and the search end. Plain Python on plain values, apart from the store and the executor.

A stage of a search's plan (``engine.plan``) asks it a population, the engine persists the candidates with the
plan's serialised state (this policy in it) in the same transaction, trains them, and the plan tells it the
generation's outcomes once every trial has ended; the benches drive the very same object. Diverged and failed
candidates are told a penalty (``optimizers.penalty``) from the worst finite loss the policy has seen, which it
keeps in its own state, so a policy restored from its snapshot tells exactly what an uninterrupted one would.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from nevergrad.optimization import base

from hpo_service.engine.optimizers import build_stage_optimizer, penalty
from hpo_service.spec import OptimizerSection, SearchSpace, SearchSpec
from hpo_service.statuses import TrialStatus

TOLD_A_LOSS = (TrialStatus.SUCCEEDED, TrialStatus.STOPPED)  # a stopped run's loss is its predicted final loss


class PolicyError(RuntimeError):
    """The policy cannot go on (e.g. its state cannot be saved); the message says why."""


@dataclass(frozen=True)
class Outcome:
    """How one training run of a candidate ended: its status and, if it succeeded, its final loss (if it was
    stopped early, its predicted final loss: ``hpo_service.early_stopping.predicted_final``)."""

    status: TrialStatus
    loss: float | None = None


@dataclass(frozen=True)
class Told:
    """What ending a generation told the optimizer, candidate by candidate, and its trials' outcomes."""

    values: list[float | None]  # told to each candidate, in ask order (None: a phase that tells no optimizer)
    diverged: int  # trials
    failed: int  # trials
    stopped: int = 0  # trials


class GenerationalPolicy:
    """A Nevergrad optimizer asked one population per generation, told it once all of it has trained.

    A candidate is trained ``replicates`` times (one seed each) and told the mean of its losses, or the
    penalty if any replicate diverged or failed (a stopped replicate counts with its predicted final loss).
    """

    def __init__(
        self,
        name: str,
        optimizer: base.Optimizer,
        *,
        population: int,
        generations: int,
        replicates: int,
        vocab_size: int,
    ) -> None:
        self.name, self.optimizer = name, optimizer
        self.population, self.generations, self.replicates = population, generations, replicates
        self.vocab_size = vocab_size
        self.generation = -1  # the generation last asked
        self.asked: dict[int, list] = {}  # generations asked and not told yet -> candidates (Nevergrad parameters)
        self.lookahead = 0  # generations that may be asked before the one before them is told
        self.told_generations = 0
        self.worst_loss: float | None = None  # the highest finite loss of any trial told so far

    @classmethod
    def from_spec(cls, spec: SearchSpec) -> GenerationalPolicy:
        """The policy of a spec's top-level search space and optimizer (a search without stages)."""
        return cls.for_stage(spec.search_space, spec.optimizer, spec.model.depth, spec.model.vocab_size)

    @classmethod
    def for_stage(
        cls, space: SearchSpace, optimizer: OptimizerSection, depth: int, vocab_size: int
    ) -> GenerationalPolicy:
        policy = cls(
            optimizer.name,
            build_stage_optimizer(space, optimizer, depth),
            population=optimizer.population,
            generations=optimizer.generations,
            replicates=optimizer.replicates,
            vocab_size=vocab_size,
        )
        policy.lookahead = 1 if optimizer.asynchronous else 0
        return policy

    def __setstate__(self, state: dict) -> None:
        """A policy pickled before asynchronous generations: its one untold generation's candidates."""
        if "candidates" in state:
            candidates = state.pop("candidates")
            untold = state["told_generations"] <= state["generation"]
            state |= {"asked": {state["generation"]: candidates} if untold else {}, "lookahead": 0}
        self.__dict__.update(state)

    @property
    def trials_per_generation(self) -> int:
        return self.population * self.replicates

    @property
    def finished(self) -> bool:
        """True once the last generation has been told."""
        return self.told_generations >= self.generations

    @property
    def can_ask(self) -> bool:
        """Whether a generation is left to ask and at most ``lookahead`` are waiting for their tells."""
        return self.generation + 1 < self.generations and len(self.asked) <= self.lookahead

    def ask(self) -> list[list[float]]:
        """The next generation's candidates, as vectors of log2 multipliers."""
        if not self.can_ask:
            raise PolicyError(f"generation {self.generation} is asked but not told, or the search is over")
        self.generation += 1
        self.asked[self.generation] = candidates = [self.optimizer.ask() for _ in range(self.population)]
        return [[float(v) for v in candidate.value] for candidate in candidates]

    def tell(self, outcomes: Sequence[Sequence[Outcome]]) -> Told:
        """End the oldest generation not told yet: ``outcomes[i]`` are candidate i's replicates, all final."""
        candidates = self.asked.get(self.told_generations, [])
        if len(outcomes) != len(candidates) or any(len(o) != self.replicates for o in outcomes):
            raise PolicyError(f"expected {self.population} candidates × {self.replicates} replicates of outcomes")
        finite = [o.loss for replicates in outcomes for o in replicates if o.status == TrialStatus.SUCCEEDED]
        self.worst_loss = max([*finite, *([] if self.worst_loss is None else [self.worst_loss])], default=None)
        values = []
        del self.asked[self.told_generations]
        for candidate, replicates in zip(candidates, outcomes, strict=True):
            if all(o.status in TOLD_A_LOSS and o.loss is not None for o in replicates):
                value = statistics.fmean(o.loss for o in replicates)
            else:
                value = penalty(self.worst_loss, self.vocab_size)
            self.optimizer.tell(candidate, value)
            values.append(value)
        self.told_generations += 1
        flat = [o.status for replicates in outcomes for o in replicates]
        return Told(
            values, flat.count(TrialStatus.DIVERGED), flat.count(TrialStatus.FAILED), flat.count(TrialStatus.STOPPED)
        )
