"""One search in the engine: moves candidates from its policy to the store and the executor, and results back.

The policy's snapshot is written together with the candidates it just asked, in the same transaction that
writes those candidates as trial rows; the trial rows are the tell log. So a search is always restorable from
the store alone: load the last snapshot, and the candidates of its generation are exactly the rows whose
outcomes still have to be told. A generation ends (all its trials final) in one transaction that also asks
and persists the next one, so a restart never sees half a step.

A search whose trials all fail ends ``failed``, with the commonest error as its reason, at the first of:
- a generation in which every trial failed (an error, a timeout, a worker lost beyond its retries): what
  fails every candidate alike (missing data, a broken trial function, too little memory) fails the next
  generation too, so the search stops there rather than spend its budget on failures;
- its last generation, if no trial of the search succeeded (every one failed or diverged): there is no
  candidate to export.
A generation where some trials failed and others diverged or succeeded is told as usual, and the search goes on.
"""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass

from sqlalchemy.orm import Session

from hpo_service.early_stopping import judged_steps, predicted_final, should_stop
from hpo_service.engine.plan import SearchPlan
from hpo_service.engine.policy import Outcome
from hpo_service.export import starting_point
from hpo_service.spec import SearchSpec, TargetSection
from hpo_service.statuses import TrialKind, TrialStatus
from hpo_service.store import queries, writes
from hpo_service.store.models import Search, Trial
from trainer.config import TrainConfig
from trainer.hparams import BLOCK_MODULE_TYPES, HP_NAMES, Multipliers


@dataclass
class Dispatch:
    """A trial the engine should submit now."""

    trial_id: int
    search_id: int
    payload: dict


class SearchRunner:
    """Holds one running search's policy between generations; everything else it reads from the store."""

    def __init__(self, search_id: int, spec: SearchSpec, policy: SearchPlan) -> None:
        self.search_id, self.spec, self.policy = search_id, spec, policy
        self.train_config = spec.train_config()
        self.config = self.train_config.model_dump(mode="json")
        self.may_have_pending = True  # False once a dispatch found fewer pending trials than free slots
        self.finished = False  # True once it ended the search: completed, or failed by its trials
        self.rule = spec.stopping()
        training = self.train_config.training
        self.judged = set(judged_steps(self.rule, training.steps, training.eval_interval)) if self.rule else set()
        self.stopping: set[int] = set()  # trials asked to stop

    @classmethod
    def load(cls, session: Session, search: Search) -> SearchRunner:
        """The runner of ``search``, from its last snapshot; a new search gets its first generation here."""
        snapshot = queries.policy_snapshot(session, search.id)
        if snapshot is not None:
            return cls(search.id, search.spec, SearchPlan.loads(snapshot))
        start = starting_point(session, search.spec)
        runner = cls(search.id, search.spec, SearchPlan(search.spec, start))
        runner._ask(session)
        return runner

    def pending(self, session: Session, limit: int) -> list[Dispatch]:
        """Up to ``limit`` pending trials of the generations not told yet, oldest first, marked running (the
        caller submits them)."""
        rows = writes.claim_pending(session, self.search_id, self.policy.told_generations, limit)
        self.may_have_pending = len(rows) == limit
        return [Dispatch(row.id, self.search_id, self._payload(row)) for row in rows]

    def _payload(self, row: Trial) -> dict:
        config = self.config if row.target is None else self._target_config(row.target)
        config = {**config, "training": {**config["training"], "seed": row.seed}}
        payload = {"config": config, "multipliers": row.multipliers}
        if self.spec.execution.trial:
            payload["trial"] = self.spec.execution.trial
        return payload

    def _target_config(self, target: dict) -> dict:
        """The configuration a validation trial trains with: the proxy's, at the target's shape."""
        fields = {k: v for k, v in target.items() if k != "index"}
        return self.spec.target_config(TargetSection(**fields)).model_dump(mode="json")

    def to_stop(self, session: Session, points: dict[int, list[tuple[int, float]]]) -> list[int]:
        """Of the running search trials with new ``points`` (trial id -> [(step, validation loss)]), those the
        early-stopping rule stops now (``hpo_service.early_stopping``); re-evaluations and checks never stop."""
        phase = self.policy.phase
        if self.rule is None or phase is None or phase.kind != TrialKind.SEARCH:
            return []
        stop = []
        for trial_id, curve in points.items():
            for step, loss in curve:
                if trial_id in self.stopping or step not in self.judged:
                    continue
                others = queries.stage_losses_at(session, self.search_id, phase.stage, step)
                others.pop(trial_id, None)
                if should_stop(self.rule, loss, list(others.values())):
                    self.stopping.add(trial_id)
                    stop.append(trial_id)
        return stop

    def ask_ahead(self, session: Session) -> bool:
        """Ask the next generation before the last one is told, if the stage's optimizer is asynchronous and
        one is left (the engine calls this when a worker is free and nothing is pending)."""
        if not self.policy.can_ask_ahead:
            return False
        self._ask(session)
        return True

    def advance(self, session: Session) -> bool:
        """If the oldest generation not told yet is complete: tell it, then fail the search if its trials all
        failed (see the module's docstring), else ask the next generation (unless it was asked ahead) or
        complete the search. The plan's snapshot is written with the tell."""
        generation = self.policy.told_generations
        if queries.ended_trials(session, self.search_id, generation) < self.policy.trials_per_generation:
            return False
        rows = queries.generation_trials(session, self.search_id, generation)
        outcomes: list[list[Outcome]] = [[] for _ in range(len(self.policy.phase.candidates))]
        for row in rows:
            loss = self._predicted(session, row) if row.status == TrialStatus.STOPPED else row.loss
            outcomes[row.index].append(Outcome(row.status, loss))
        told = self.policy.tell(outcomes)
        losses = queries.candidate_losses(session, self.search_id, generation)
        summary = writes.GenerationSummary(
            best_loss=min(losses, default=None),
            median_loss=_median(losses),
            diverged=told.diverged,
            failed=told.failed,
            stopped=told.stopped,
        )
        writes.end_generation(session, self.search_id, generation, summary)
        writes.save_snapshot(session, self.search_id, self.policy.dumps())
        failure = self._failure(session, rows)
        if failure is not None:
            writes.fail_search(session, self.search_id, failure)
        elif self.policy.finished:
            writes.complete_search(session, self.search_id)
        elif not self.policy.outstanding:
            self._ask(session)
        self.finished = failure is not None or self.policy.finished
        return True

    def _predicted(self, session: Session, row: Trial) -> float | None:
        """What a stopped trial is told: its predicted final loss (``early_stopping.predicted_final``), from the
        store alone, so that a restored search tells the same."""
        point = queries.last_val_point(session, row.id)
        if point is None:
            return None  # told the penalty
        step, loss = point
        return predicted_final(loss, queries.drops_after(session, self.search_id, row.stage, step))

    def _failure(self, session: Session, generation: list[Trial]) -> str | None:
        """Why the search fails now that ``generation`` has been told, if it does: every trial of the generation
        failed, or the search is over and none of its trials succeeded."""
        if all(row.status == TrialStatus.FAILED for row in generation):
            errors = Counter(_outcome(row.status, row.error) for row in generation)
            error, trials = errors.most_common(1)[0]
            number, total = generation[0].generation, len(generation)
            return f"all {total} trials of generation {number} failed: {error} ({trials} of {total})"
        if not self.policy.finished:
            return None
        if queries.trial_counts(session, [self.search_id])[self.search_id][TrialStatus.SUCCEEDED]:
            return None
        unsuccessful = queries.unsuccessful_errors(session, self.search_id)
        commonest, total = unsuccessful[0], sum(row.trials for row in unsuccessful)
        return f"no trial succeeded: {_outcome(commonest.status, commonest.error)} ({commonest.trials} of {total})"

    def _ask(self, session: Session) -> None:
        """Ask the plan's next phase, and persist it with the plan's snapshot in the caller's transaction."""
        phase = self.policy.ask()
        self.may_have_pending = True
        trials = []
        for index, candidate in enumerate(phase.candidates):
            target = None
            config, per_depth = self.train_config, any(space.per_depth for _, space, _ in self.spec.plan_stages())
            if candidate.target is not None:
                section = self.spec.validate_.targets[candidate.target]
                target = {"index": candidate.target, **section.model_dump(exclude_none=True)}
                config, per_depth = self.spec.target_config(section), False
            hps = materialised_at_base(config, candidate.multipliers, per_depth)
            for replicate, seed in enumerate(candidate.seeds):
                trials.append(
                    {
                        "index": index,
                        "replicate": replicate,
                        "seed": seed,
                        "vector": candidate.vector,
                        "multipliers": candidate.multipliers.to_dict(),
                        "hps": hps,
                        "target": target,
                        "arm": candidate.arm,
                        "origin": candidate.origin,
                    }
                )
        snapshot = self.policy.dumps()
        optimizer = self.policy.policy.name
        number = self.policy.generation
        writes.add_generation(
            session, self.search_id, number, trials, optimizer, snapshot, stage=phase.stage, kind=phase.kind
        )


def _outcome(status: str, error: str | None) -> str:
    """A trial's error as a search's reason says it: a diverged trial's reason is marked as a divergence."""
    if status == TrialStatus.DIVERGED:
        return f"diverged: {error}" if error else "diverged"
    return error or f"{status} without a reason"


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def materialised_at_base(config: TrainConfig, multipliers: Multipliers, per_depth: bool) -> dict[str, dict]:
    """The values a trial trains with, per module type (per ``type.layer`` when the search is per-depth)."""
    hps = config.materialise(multipliers)
    values: dict[str, dict[str, float]] = {}
    for group in hps.groups:
        if group.layer not in (None, 0) and not per_depth:
            continue
        key = group.module_type
        if per_depth and group.module_type in BLOCK_MODULE_TYPES:
            key = f"{group.module_type}.{group.layer}"
        values[key] = {hp: getattr(group, hp) for hp in HP_NAMES}
    values["forward"] = {"residual_attn": hps.residual_attn, "residual_mlp": hps.residual_mlp, "logit": hps.logit}
    return values
