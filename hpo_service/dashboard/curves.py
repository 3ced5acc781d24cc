"""Learning curves for the dashboard: the running trials of any kind (their streamed progress), the best search
trials, and the search trials the early-stopping rule stopped last (each curve ends where it stopped)."""

from __future__ import annotations

from sqlalchemy import Row
from sqlalchemy.orm import Session

from hpo_service.dashboard.sampling import evenly
from hpo_service.dashboard.schemas import Curve, Curves
from hpo_service.statuses import TrialKind
from hpo_service.store import queries

MAX_RUNNING = 10  # running trials whose curves are drawn (the oldest first)
BEST = 5  # best trials whose curves are drawn
MAX_STOPPED = 5  # stopped trials whose curves are drawn (the last to stop first)
MAX_POINTS = 250  # points per series (train loss, validation loss) of one curve


def curves(session: Session, search_id: int) -> Curves:
    trials = [
        *((t, "running") for t in queries.running_trials(session, search_id, MAX_RUNNING)),
        *((t, "best") for t in queries.ranked_trials(session, search_id, BEST)),
        *((t, "stopped") for t in queries.stopped_trials(session, search_id, MAX_STOPPED)),
    ]
    points = queries.curves(session, [t.id for t, _ in trials])
    return Curves(curves=[_curve(trial, role, points[trial.id]) for trial, role in trials])


def _curve(trial: Row, role: str, points: list[Row]) -> Curve:
    train = [p for p in points if p.train_loss is not None]
    val = [p for p in points if p.val_loss is not None]
    train = [train[i] for i in evenly(len(train), MAX_POINTS)]
    val = [val[i] for i in evenly(len(val), MAX_POINTS)]
    return Curve(
        trial_id=trial.id,
        generation=trial.generation,
        index=trial.index,
        replicate=trial.replicate,
        role=role,
        kind=TrialKind.SEARCH if role == "best" else trial.kind,
        arm=None if role == "best" else trial.arm,
        loss=trial.loss,
        stopped_at=trial.steps if role == "stopped" else None,
        step=[p.step for p in train],
        train_loss=[p.train_loss for p in train],
        val_step=[p.step for p in val],
        val_loss=[p.val_loss for p in val],
    )
