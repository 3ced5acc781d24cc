"""A search's plan: its stages, the fresh-seed selection after each, and the transfer check after the last.

The engine drives a plan one *phase* at a time, as it drives a generation: the plan says which candidates to
train (with which seeds, at which shape), the engine trains them all, and tells the plan their outcomes. Phases:

- **search**: one generation of the current stage's optimizer. Its coordinates are log2 multipliers relative
  to the stage's *centre*: the previous stage's choice (or ``start_from``, or the base HPs).
- **reevaluation**: after a stage's last generation, its ``selection.top`` candidates by search-time loss are
  trained again on fresh seeds (``SearchSpec.fresh_seeds``), and the best fresh-seed mean is the stage's choice.
  The best of many noisy trials is lucky; a fresh mean is not. Without selection the best search-time loss is
  chosen, as a search without stages always did.
- **validation**: after the last stage, each *arm* (the last stage's choice; the last tied stage's, i.e. the
  global HPs; the base HPs) is trained at every ``validate`` target with the same fresh seeds.

The plan is plain Python, pickled with every phase it asks (``dumps``), like the optimizer it holds, so a
search restored from the store tells exactly what an uninterrupted one would.
"""

from __future__ import annotations

import pickle
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

from hpo_service.engine import portable_cma
from hpo_service.engine.policy import GenerationalPolicy, Outcome, PolicyError, Told
from hpo_service.spec import VALIDATION_PHASE, SearchSpec
from hpo_service.statuses import TrialKind, TrialStatus
from trainer.hparams import Multipliers, interpolate_depth

portable_cma.register()  # a plan read back by another process tells CMA exactly what this one would


@dataclass(frozen=True)
class Candidate:
    """One point of a phase, trained once per seed. ``vector`` is in its stage's coordinates (a re-evaluated
    or validated candidate keeps the vector it was found with; the base arm's is empty)."""

    vector: list[float]
    multipliers: Multipliers
    seeds: list[int]
    target: int | None = None  # index into ``validate.targets``
    arm: str | None = None
    origin: dict | None = None  # a re-evaluated candidate's search trial: generation, index and loss


@dataclass(frozen=True)
class Phase:
    kind: TrialKind
    stage: str | None  # None for validation, which follows every stage
    candidates: list[Candidate]


@dataclass
class Choice:
    """What a stage handed on: the chosen multipliers, and how selection ranked its top candidates."""

    stage: str
    multipliers: Multipliers
    vector: list[float]
    search_loss: float | None
    fresh: list[dict] = field(default_factory=list)  # per re-trained candidate: origin, losses, mean, sd


class SearchPlan:
    """Stages of generational search, each followed by fresh-seed selection, then the transfer check."""

    def __init__(self, spec: SearchSpec, start: Multipliers | None = None) -> None:
        self.spec = spec
        self.start = start or Multipliers()
        self.stage_index = 0
        self.centre = self.start
        self.policy = self._stage_policy()
        self.found: list[tuple[int, int, list[float], Multipliers, float]] = []  # this stage's ranked candidates
        self.choices: list[Choice] = []
        self.phase: Phase | None = None  # the phase last asked
        self.untold: dict[int, Phase] = {}  # phases asked and not told yet, by generation
        self.generation = -1  # the phase last asked (each phase is one generation in the store)
        self.told_generations = 0
        self._pending_kind = TrialKind.SEARCH  # of the next phase
        self.done = False

    # -- what the engine asks --------------------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        return self.done

    @property
    def trials_per_generation(self) -> int:
        """The trials of the oldest phase not told yet: the next to tell."""
        return sum(len(c.seeds) for c in self.untold[self.told_generations].candidates)

    @property
    def outstanding(self) -> int:
        """Phases asked and not told yet: 1, or 2 while a stage's asynchronous optimizer has asked ahead."""
        return len(self.untold)

    @property
    def can_ask_ahead(self) -> bool:
        """Whether the next generation may be asked before the last one is told: within a stage's search, when
        its optimizer is asynchronous and has a generation left."""
        phase = self.phase
        return self.outstanding == 1 and phase is not None and phase.kind == TrialKind.SEARCH and self.policy.can_ask

    def __setstate__(self, state: dict) -> None:
        """A plan pickled before asynchronous generations: its one untold phase."""
        if "untold" not in state:
            untold = state["told_generations"] <= state["generation"]
            state["untold"] = {state["generation"]: state["phase"]} if untold else {}
        self.__dict__.update(state)

    @property
    def stage_name(self) -> str:
        return self.spec.plan_stages()[self.stage_index][0]

    def ask(self) -> Phase:
        """The next phase's candidates; the phase is persisted as generation ``self.generation``."""
        if self.done or (self.outstanding and not self.can_ask_ahead):
            raise PolicyError(f"generation {self.generation} is asked but not told, or the search is over")
        if self._pending_kind == TrialKind.SEARCH:
            self.phase = self._search_phase()
        elif self._pending_kind == TrialKind.REEVALUATION:
            self.phase = self._reevaluation_phase()
        else:
            self.phase = self._validation_phase()
        self.generation += 1
        self.untold[self.generation] = self.phase
        return self.phase

    def tell(self, outcomes: Sequence[Sequence[Outcome]]) -> Told:
        """End the oldest phase not told yet: ``outcomes[i]`` are candidate i's runs, one per seed, all final."""
        phase = self.untold.get(self.told_generations)
        if phase is None or len(outcomes) != len(phase.candidates):
            raise PolicyError("the outcomes do not match the phase asked")
        if any(len(o) != len(c.seeds) for o, c in zip(outcomes, phase.candidates, strict=True)):
            raise PolicyError("a candidate's outcomes do not match its seeds")
        if phase.kind == TrialKind.SEARCH:
            told = self.policy.tell(outcomes)
            for index, (candidate, runs) in enumerate(zip(phase.candidates, outcomes, strict=True)):
                loss = mean_loss(runs)
                if loss is not None:
                    self.found.append((self.told_generations, index, candidate.vector, candidate.multipliers, loss))
            if self.policy.finished:
                self._stage_searched()
        else:
            told = summarise(outcomes)
            if phase.kind == TrialKind.REEVALUATION:
                self._choose(phase, outcomes)
            else:
                self.done = True
        del self.untold[self.told_generations]
        self.told_generations += 1
        return told

    # -- phases ----------------------------------------------------------------------------------------------

    def _search_phase(self) -> Phase:
        name, space, _ = self.spec.plan_stages()[self.stage_index]
        depth, replicates = self.spec.model.depth, self.policy.replicates
        seeds = [self.spec.training.seed + r for r in range(replicates)]
        candidates = [
            Candidate(vector, compose(self.centre, space.multipliers(vector, depth)), seeds)
            for vector in self.policy.ask()
        ]
        return Phase(TrialKind.SEARCH, name, candidates)

    def _reevaluation_phase(self) -> Phase:
        selection = self.spec.selection_section()
        seeds = self.spec.fresh_seeds(self.stage_index, selection.seeds)
        top = sorted(self.found, key=lambda found: (found[4], found[0], found[1]))[: selection.top]
        candidates = [
            Candidate(vector, multipliers, seeds, origin={"generation": g, "index": i, "loss": loss})
            for g, i, vector, multipliers, loss in top
        ]
        return Phase(TrialKind.REEVALUATION, self.stage_name, candidates)

    def _validation_phase(self) -> Phase:
        validate = self.spec.validate_
        assert validate is not None
        seeds = self.spec.fresh_seeds(VALIDATION_PHASE, validate.seeds)
        candidates = [
            Candidate(vector, multipliers, seeds, target=t, arm=arm)
            for t in range(len(validate.targets))
            for arm, vector, multipliers in self.arms()
        ]
        return Phase(TrialKind.VALIDATION, None, candidates)

    def arms(self) -> list[tuple[str, list[float], Multipliers]]:
        """``(name, vector, multipliers)`` of each validation arm: the final choice (``per-module``, or ``global``
        when the last stage is tied), the last tied stage's choice before it (``global``), and ``base``; those
        that ``validate.arms`` names."""
        stages = self.spec.plan_stages()
        final = self.choices[-1]
        final_tied = stages[-1][1].tied
        arms = [("global" if final_tied else "per-module", final.vector, final.multipliers)]
        tied = [c for c, (_, space, _) in zip(self.choices[:-1], stages[:-1], strict=True) if space.tied]
        if tied and not final_tied:
            arms.append(("global", tied[-1].vector, tied[-1].multipliers))
        arms.append(("base", [], Multipliers()))
        return [arm for arm in arms if arm[0] in self.spec.validate_.arms]

    # -- moving on -------------------------------------------------------------------------------------------

    def _stage_searched(self) -> None:
        """The stage's last generation was told: re-evaluate its top candidates, or choose its best now."""
        if self.spec.selection_section().top and self.found:
            self._pending_kind = TrialKind.REEVALUATION
            return
        if self.found:
            _, _, vector, multipliers, loss = min(self.found, key=lambda found: (found[4], found[0], found[1]))
            self.choices.append(Choice(self.stage_name, multipliers, vector, loss))
        else:  # nothing succeeded: the next stage starts where this one did
            self.choices.append(Choice(self.stage_name, self.centre, [], None))
        self._next_stage()

    def _choose(self, phase: Phase, outcomes: Sequence[Sequence[Outcome]]) -> None:
        """Rank the re-trained candidates by their fresh-seed mean; one that failed a seed is not chosen."""
        fresh = []
        for candidate, runs in zip(phase.candidates, outcomes, strict=True):
            losses = [o.loss for o in runs if o.status == TrialStatus.SUCCEEDED and o.loss is not None]
            complete = len(losses) == len(runs)
            fresh.append(
                {
                    **(candidate.origin or {}),
                    "losses": losses,
                    "mean": statistics.fmean(losses) if complete else None,
                    "sd": statistics.stdev(losses) if complete and len(losses) > 1 else None,
                }
            )
        ranked = sorted((f["mean"], i) for i, f in enumerate(fresh) if f["mean"] is not None)
        best = ranked[0][1] if ranked else 0  # if every re-run failed, the best search-time candidate
        chosen = phase.candidates[best]
        origin = chosen.origin or {}
        self.choices.append(Choice(self.stage_name, chosen.multipliers, chosen.vector, origin.get("loss"), fresh))
        self._next_stage()

    def _next_stage(self) -> None:
        self.centre = self.choices[-1].multipliers
        self.found = []
        if self.stage_index + 1 < len(self.spec.plan_stages()):
            self.stage_index += 1
            self.policy = self._stage_policy()
            self._pending_kind = TrialKind.SEARCH
        elif self.spec.validate_ is not None:
            self._pending_kind = TrialKind.VALIDATION
        else:
            self.done = True

    def _stage_policy(self) -> GenerationalPolicy:
        _, space, optimizer = self.spec.plan_stages()[self.stage_index]
        return GenerationalPolicy.for_stage(space, optimizer, self.spec.model.depth, self.spec.model.vocab_size)

    # -- its own state ---------------------------------------------------------------------------------------

    def dumps(self) -> bytes:
        try:
            return pickle.dumps(self, protocol=pickle.HIGHEST_PROTOCOL)
        except (TypeError, pickle.PicklingError) as exc:  # e.g. NGOpt choosing a thread-based recast optimizer
            optimizer = self.policy.optimizer
            chosen = type(getattr(optimizer, "optim", optimizer)).__name__
            raise PolicyError(
                f"the state of optimizer {self.policy.name!r} ({chosen}) cannot be saved, so the search could not "
                f"resume after a restart; choose another optimizer ({exc})"
            ) from exc

    @staticmethod
    def loads(state: bytes) -> SearchPlan:
        plan = pickle.loads(state)
        if not isinstance(plan, SearchPlan):
            raise PolicyError(f"the stored search state is a {type(plan).__name__}, not a search plan")
        return plan


def compose(centre: Multipliers, step: Multipliers) -> Multipliers:
    """``step`` taken from ``centre``: log2 multipliers add, per module type and HP, per layer and per branch."""
    module = {m: dict(hps) for m, hps in centre.module.items()}
    for m, hps in step.module.items():
        for hp, value in hps.items():
            module.setdefault(m, {})[hp] = module.get(m, {}).get(hp, 0.0) + value
    depth = dict(centre.depth)
    for hp, values in step.depth.items():
        old = depth.get(hp, (0.0,) * len(values))
        if len(old) != len(values):  # tuned at another depth (a start_from): read at this one, as the trainer does
            old = tuple(interpolate_depth(old, layer, len(values)) for layer in range(len(values)))
        depth[hp] = tuple(a + b for a, b in zip(old, values, strict=True))
    residual = {b: centre.residual.get(b, 0.0) + step.residual.get(b, 0.0) for b in {*centre.residual, *step.residual}}
    return Multipliers(module=module, depth=depth, residual=residual)


def mean_loss(runs: Sequence[Outcome]) -> float | None:
    """The mean loss of a candidate's runs, or None unless every run succeeded."""
    if runs and all(o.status == TrialStatus.SUCCEEDED and o.loss is not None for o in runs):
        return statistics.fmean(o.loss for o in runs)  # type: ignore[misc]
    return None


def summarise(outcomes: Sequence[Sequence[Outcome]]) -> Told:
    """A phase that tells no optimizer: each candidate's mean (None unless every run succeeded) and the counts."""
    flat = [o.status for runs in outcomes for o in runs]
    values = [mean_loss(runs) for runs in outcomes]
    return Told(values, flat.count(TrialStatus.DIVERGED), flat.count(TrialStatus.FAILED))  # type: ignore[arg-type]
