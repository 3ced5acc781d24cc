"""One search's generations: ask a population, persist it, hand out its trials, and tell the optimizer.

The optimizer is pickled together with the candidates it just asked, in the same transaction that writes
those candidates as trial rows. The trial rows are the tell log. So a search is always restorable from the
store alone: unpickle the last snapshot, and the candidates of its generation are exactly the rows whose
losses still have to be told. A generation ends (all its trials final) in one transaction that also asks
and persists the next one, so a restart never sees half a step.
"""

from __future__ import annotations

import pickle
import statistics
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.orm import Session

from hpo_service.engine.optimizers import build_optimizer, penalty
from hpo_service.spec import SearchSpec
from hpo_service.store.models import (
    FINAL_TRIAL_STATUSES,
    Generation,
    OptimizerState,
    Search,
    Trial,
    utcnow,
)
from trainer.config import TrainConfig
from trainer.hparams import BLOCK_MODULE_TYPES, HP_NAMES, Multipliers


@dataclass
class Dispatch:
    """A trial the engine should submit now."""

    trial_id: int
    search_id: int
    payload: dict


class SearchRunner:
    """Holds one running search's optimizer between generations; everything else it reads from the store."""

    def __init__(self, search_id: int, spec: SearchSpec, optimizer: Any, candidates: list, generation: int) -> None:
        self.search_id, self.spec = search_id, spec
        self.optimizer, self.candidates, self.generation = optimizer, candidates, generation
        self.train_config = spec.train_config()
        self.config = self.train_config.model_dump(mode="json")
        self.finished = False  # set when the last generation has been told
        self.may_have_pending = True  # False once a dispatch found fewer pending trials than free slots

    @classmethod
    def load(cls, session: Session, search: Search) -> SearchRunner:
        """The runner of ``search``, from its last snapshot; a new search gets its first generation here."""
        spec = search.spec
        state = session.get(OptimizerState, search.id)
        if state is None:
            runner = cls(search.id, spec, build_optimizer(spec), [], -1)
            runner._ask(session, 0)
            return runner
        optimizer, candidates = pickle.loads(state.state)
        return cls(search.id, spec, optimizer, candidates, state.generation)

    @property
    def trials_per_generation(self) -> int:
        return self.spec.optimizer.population * self.spec.optimizer.replicates

    def pending(self, session: Session, limit: int) -> list[Dispatch]:
        """Up to ``limit`` pending trials of the current generation, marked running (the caller submits them)."""
        rows = session.scalars(
            select(Trial)
            .where(Trial.search_id == self.search_id, Trial.generation == self.generation, Trial.status == "pending")
            .order_by(Trial.index, Trial.replicate)
            .limit(limit)
        ).all()
        now = utcnow()
        for row in rows:
            row.status, row.attempts, row.started_at, row.error = "running", row.attempts + 1, now, None
        self.may_have_pending = len(rows) == limit
        return [Dispatch(row.id, self.search_id, self._payload(row)) for row in rows]

    def _payload(self, row: Trial) -> dict:
        config = {**self.config, "training": {**self.config["training"], "seed": row.seed}}
        payload = {"config": config, "multipliers": row.multipliers}
        if self.spec.execution.trial:
            payload["trial"] = self.spec.execution.trial
        return payload

    def advance(self, session: Session) -> bool:
        """If the current generation is complete: tell it, then ask the next or complete the search."""
        counts = dict(
            session.execute(
                select(Trial.status, func.count())
                .where(Trial.search_id == self.search_id, Trial.generation == self.generation)
                .group_by(Trial.status)
            ).all()
        )
        if sum(counts.get(s, 0) for s in FINAL_TRIAL_STATUSES) < self.trials_per_generation:
            return False
        rows = session.scalars(
            select(Trial).where(Trial.search_id == self.search_id, Trial.generation == self.generation)
        ).all()
        finite = self._tell(session, rows)
        session.execute(
            update(Generation)
            .where(Generation.search_id == self.search_id, Generation.number == self.generation)
            .values(
                status="completed",
                finished_at=utcnow(),
                best_loss=min(finite, default=None),
                median_loss=statistics.median(finite) if finite else None,
                diverged=counts.get("diverged", 0),
                failed=counts.get("failed", 0),
            )
        )
        if self.generation + 1 < self.spec.optimizer.generations:
            self._ask(session, self.generation + 1)
        else:
            search = session.get(Search, self.search_id)
            search.status, search.finished_at = "completed", utcnow()
            self.finished = True
        return True

    def _tell(self, session: Session, rows: list[Trial]) -> list[float]:
        """Tell each candidate the mean loss of its replicates, or the penalty if any of them did not succeed;
        return the losses of the candidates that succeeded."""
        worst = session.scalar(
            select(func.max(Trial.loss)).where(
                Trial.search_id == self.search_id,
                Trial.generation <= self.generation,
                Trial.status == "succeeded",
            )
        )
        by_candidate: dict[int, list[Trial]] = {}
        for row in rows:
            by_candidate.setdefault(row.index, []).append(row)
        succeeded = []
        for index, candidate in enumerate(self.candidates):
            replicates = by_candidate[index]
            if all(r.status == "succeeded" for r in replicates):
                loss = statistics.fmean(r.loss for r in replicates)
                succeeded.append(loss)
            else:
                loss = penalty(worst, self.spec.model.vocab_size)
            self.optimizer.tell(candidate, loss)
        return succeeded

    def _ask(self, session: Session, generation: int) -> None:
        """Ask a population, and persist it with the optimizer's snapshot in the caller's transaction."""
        self.candidates = [self.optimizer.ask() for _ in range(self.spec.optimizer.population)]
        self.generation = generation
        self.may_have_pending = True
        session.add(Generation(search_id=self.search_id, number=generation))
        rows = []
        for index, candidate in enumerate(self.candidates):
            vector = [float(v) for v in candidate.value]
            multipliers = self.spec.multipliers(vector)
            hps = materialised_at_base(self.train_config, multipliers, self.spec.search_space.per_depth)
            for replicate in range(self.spec.optimizer.replicates):
                rows.append(
                    {
                        "search_id": self.search_id,
                        "generation": generation,
                        "index": index,
                        "replicate": replicate,
                        "seed": self.spec.training.seed + replicate,
                        "status": "pending",
                        "attempts": 0,
                        "vector": vector,
                        "multipliers": multipliers.to_dict(),
                        "hps": hps,
                        "created_at": utcnow(),
                    }
                )
        session.execute(insert(Trial), rows)
        try:
            snapshot = pickle.dumps((self.optimizer, self.candidates), protocol=pickle.HIGHEST_PROTOCOL)
        except (TypeError, pickle.PicklingError) as exc:  # e.g. NGOpt choosing a thread-based recast optimizer
            chosen = type(getattr(self.optimizer, "optim", self.optimizer)).__name__
            raise RuntimeError(
                f"the state of optimizer {self.spec.optimizer.name!r} ({chosen}) cannot be saved, so the search "
                f"could not resume after a restart; choose another optimizer ({exc})"
            ) from exc
        values = {"generation": generation, "state": snapshot, "updated_at": utcnow()}
        if generation == 0:
            session.add(OptimizerState(search_id=self.search_id, optimizer=self.spec.optimizer.name, **values))
        else:  # an UPDATE, without reading back the old snapshot
            session.execute(update(OptimizerState).where(OptimizerState.search_id == self.search_id).values(**values))


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
