"""The search policy: which candidates to train next, what each result tells the optimizer, and when a
generation and the search end. Plain Python on plain values, apart from the store and the executor.

The engine asks it a population, persists the candidates with the policy's own serialised state in the same
transaction, trains them, and tells it the generation's outcomes once every trial has ended; the benches
drive the very same object. Diverged and failed candidates are told a penalty (``optimizers.penalty``) from
the worst finite loss the policy has seen, which it keeps in its own state, so a policy restored from its
snapshot tells exactly what an uninterrupted one would.
"""

from __future__ import annotations

import pickle
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from nevergrad.optimization import base

from hpo_service.engine.optimizers import build_optimizer, penalty
from hpo_service.spec import SearchSpec
from hpo_service.statuses import TrialStatus


class PolicyError(RuntimeError):
    """The policy cannot go on (e.g. its state cannot be saved); the message says why."""


@dataclass(frozen=True)
class Outcome:
    """How one training run of a candidate ended: its status and, if it succeeded, its final loss."""

    status: TrialStatus
    loss: float | None = None


@dataclass(frozen=True)
class Told:
    """What ending a generation told the optimizer, candidate by candidate, and its trials' outcomes."""

    values: list[float]  # told to each candidate, in ask order
    diverged: int  # trials
    failed: int  # trials


class GenerationalPolicy:
    """A Nevergrad optimizer asked one population per generation, told it once all of it has trained.

    A candidate is trained ``replicates`` times (one seed each) and told the mean of its losses, or the
    penalty if any replicate did not succeed.
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
        self.candidates: list = []  # its candidates, as Nevergrad parameters, in ask order
        self.told_generations = 0
        self.worst_loss: float | None = None  # the highest finite loss of any trial told so far

    @classmethod
    def from_spec(cls, spec: SearchSpec) -> GenerationalPolicy:
        o = spec.optimizer
        return cls(
            o.name,
            build_optimizer(spec),
            population=o.population,
            generations=o.generations,
            replicates=o.replicates,
            vocab_size=spec.model.vocab_size,
        )

    @property
    def trials_per_generation(self) -> int:
        return self.population * self.replicates

    @property
    def finished(self) -> bool:
        """True once the last generation has been told."""
        return self.told_generations >= self.generations

    def ask(self) -> list[list[float]]:
        """The next generation's candidates, as vectors of log2 multipliers."""
        if self.told_generations <= self.generation or self.finished:
            raise PolicyError(f"generation {self.generation} is asked but not told, or the search is over")
        self.candidates = [self.optimizer.ask() for _ in range(self.population)]
        self.generation += 1
        return [[float(v) for v in candidate.value] for candidate in self.candidates]

    def tell(self, outcomes: Sequence[Sequence[Outcome]]) -> Told:
        """End the current generation: ``outcomes[i]`` are candidate i's replicates, all of them final."""
        if len(outcomes) != len(self.candidates) or any(len(o) != self.replicates for o in outcomes):
            raise PolicyError(f"expected {self.population} candidates × {self.replicates} replicates of outcomes")
        finite = [o.loss for replicates in outcomes for o in replicates if o.status == TrialStatus.SUCCEEDED]
        self.worst_loss = max([*finite, *([] if self.worst_loss is None else [self.worst_loss])], default=None)
        values = []
        for candidate, replicates in zip(self.candidates, outcomes, strict=True):
            if all(o.status == TrialStatus.SUCCEEDED and o.loss is not None for o in replicates):
                value = statistics.fmean(o.loss for o in replicates)
            else:
                value = penalty(self.worst_loss, self.vocab_size)
            self.optimizer.tell(candidate, value)
            values.append(value)
        self.told_generations += 1
        flat = [o.status for replicates in outcomes for o in replicates]
        return Told(values, flat.count(TrialStatus.DIVERGED), flat.count(TrialStatus.FAILED))

    # -- its own state ---------------------------------------------------------------------------------------

    def dumps(self) -> bytes:
        try:
            return pickle.dumps(self, protocol=pickle.HIGHEST_PROTOCOL)
        except (TypeError, pickle.PicklingError) as exc:  # e.g. NGOpt choosing a thread-based recast optimizer
            chosen = type(getattr(self.optimizer, "optim", self.optimizer)).__name__
            raise PolicyError(
                f"the state of optimizer {self.name!r} ({chosen}) cannot be saved, so the search could not resume "
                f"after a restart; choose another optimizer ({exc})"
            ) from exc

    @staticmethod
    def loads(state: bytes) -> GenerationalPolicy:
        policy = pickle.loads(state)
        if not isinstance(policy, GenerationalPolicy):
            raise PolicyError(f"the stored search state is a {type(policy).__name__}, not a search policy")
        return policy
