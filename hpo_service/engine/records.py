"""How each executor event is written to the store.

These writes need no optimizer: a result that arrives while its search's runner is being rebuilt is stored
all the same, and the rebuilt runner reads it from the store.
"""

from __future__ import annotations

import math

from sqlalchemy import bindparam, delete, func, insert, update
from sqlalchemy.orm import Session

from hpo_service.engine.executor import Event, Finished, Lost, Progress, Started, TimedOut
from hpo_service.store.models import ProgressPoint, Search, Trial, utcnow

TRIAL_OUTCOMES = ("succeeded", "diverged", "failed")


def record_all(session: Session, events: list[Event]) -> None:
    """Write ``events`` in the caller's transaction; finished trials in one batch, after the rest."""
    finished = []
    for event in events:
        match event:
            case Started(trial_id, node, worker):
                session.execute(update(Trial).where(Trial.id == trial_id).values(node=node[:64], worker=worker[:128]))
            case Progress(trial_id, points):
                _insert_points(session, [(trial_id, step, metrics) for step, metrics in points])
            case Finished():
                finished.append(event)
            case Lost(trial_id, reason):
                _record_loss_of_worker(session, trial_id, reason)
            case TimedOut(trial_id, timeout_s):
                session.execute(
                    update(Trial)
                    .where(Trial.id == trial_id, Trial.status == "running")
                    .values(status="failed", error=f"timed out after {timeout_s:g} s", finished_at=utcnow())
                )
    if finished:
        _record_results(session, finished)


_FINISH = (
    Trial.__table__.update()
    .where(Trial.__table__.c.id == bindparam("trial_id"), Trial.__table__.c.status == "running")
    .values(
        status=bindparam("new_status"),
        loss=bindparam("new_loss"),
        train_loss=bindparam("new_train_loss"),
        steps=bindparam("new_steps"),
        tokens=bindparam("new_tokens"),
        tokens_per_s=bindparam("new_tokens_per_s"),
        wall_time_s=bindparam("new_wall_time_s"),
        error=bindparam("new_error"),
        node=func.coalesce(bindparam("new_node"), Trial.__table__.c.node),
        worker=func.coalesce(bindparam("new_worker"), Trial.__table__.c.worker),
        finished_at=bindparam("new_finished_at"),
    )
)  # a cancelled trial stays cancelled: only running trials finish


def _record_results(session: Session, events: list[Finished]) -> None:
    """One UPDATE (executemany) for the trials, one DELETE and one INSERT for their curves."""
    now, updates, points = utcnow(), [], []
    for event in events:
        result = event.result
        status = result.get("status")
        if status not in TRIAL_OUTCOMES:
            status, result = "failed", {"reason": f"the trial returned an unknown status {status!r}"}
        loss = _finite(result.get("final_val_loss")) if status == "succeeded" else None
        if status == "succeeded" and loss is None:
            status, result = "diverged", {**result, "reason": "no finite validation loss"}
        updates.append(
            {
                "trial_id": event.trial_id,
                "new_status": status,
                "new_loss": loss,
                "new_train_loss": _finite(result.get("final_train_loss")),
                "new_steps": result.get("steps"),
                "new_tokens": result.get("tokens"),
                "new_tokens_per_s": _finite(result.get("tokens_per_s")),
                "new_wall_time_s": _finite(result.get("wall_time_s")),
                "new_error": result.get("reason"),
                "new_node": event.node[:64] if event.node else None,
                "new_worker": event.worker[:128] if event.worker else None,
                "new_finished_at": now,
            }
        )
        curve: dict[int, dict[str, float]] = {}
        for step, value in result.get("train_curve", []):
            curve.setdefault(int(step), {})["train_loss"] = value
        for step, value in result.get("eval_curve", []):
            curve.setdefault(int(step), {})["val_loss"] = value
        points += [(event.trial_id, step, metrics) for step, metrics in sorted(curve.items())]
    connection = session.connection()
    connection.execute(_FINISH, updates)
    streamed = [event.trial_id for event in events if event.streamed]
    if streamed:  # the streamed points are superseded by the full curve
        session.execute(delete(ProgressPoint).where(ProgressPoint.trial_id.in_(streamed)))
    _insert_points(session, points)


def _record_loss_of_worker(session: Session, trial_id: int, reason: str) -> None:
    """Retry the same candidate while its search allows, else fail it with the reason."""
    trial = session.get(Trial, trial_id)
    if trial is None or trial.status != "running":
        return
    max_retries = session.get(Search, trial.search_id).spec.execution.max_retries
    session.execute(delete(ProgressPoint).where(ProgressPoint.trial_id == trial_id))
    if trial.attempts <= max_retries:
        trial.status, trial.error = "pending", f"worker lost, retrying: {reason}"
    else:
        trial.status, trial.error, trial.finished_at = "failed", f"worker lost: {reason}", utcnow()


def _insert_points(session: Session, points: list[tuple[int, int, dict[str, float]]]) -> None:
    rows = [
        {
            "trial_id": trial_id,
            "step": int(step),
            "train_loss": _finite(metrics.get("train_loss")),
            "val_loss": _finite(metrics.get("val_loss")),
        }
        for trial_id, step, metrics in points
    ]
    if rows:
        session.execute(insert(ProgressPoint), rows)


def _finite(value: object) -> float | None:
    """Floats that JSON and every database can store; NaN and ±inf become None."""
    if value is None:
        return None
    number = float(value)  # type: ignore[arg-type]
    return number if math.isfinite(number) else None
