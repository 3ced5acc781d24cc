"""How each executor event is written to the store.

These writes need no optimizer: a result that arrives while its search's runner is being rebuilt is stored
all the same, and the rebuilt runner reads it from the store.
"""

from __future__ import annotations

import math

from sqlalchemy import delete, insert, update
from sqlalchemy.orm import Session

from hpo_service.engine.executor import Event, Finished, Lost, Progress, Started, TimedOut
from hpo_service.store.models import ProgressPoint, Search, Trial, utcnow

TRIAL_OUTCOMES = ("succeeded", "diverged", "failed")


def record(session: Session, event: Event) -> None:
    """Write ``event`` in the caller's transaction."""
    match event:
        case Started(trial_id, node, worker):
            session.execute(update(Trial).where(Trial.id == trial_id).values(node=node[:64], worker=worker[:128]))
        case Progress(trial_id, points):
            _insert_points(session, trial_id, points)
        case Finished(trial_id, result, node, worker):
            _record_result(session, trial_id, result, node, worker)
        case Lost(trial_id, reason):
            _record_loss_of_worker(session, trial_id, reason)
        case TimedOut(trial_id, timeout_s):
            _finish(session, trial_id, status="failed", error=f"timed out after {timeout_s:g} s")


def _record_result(session: Session, trial_id: int, result: dict, node: str | None, worker: str | None) -> None:
    status = result.get("status")
    if status not in TRIAL_OUTCOMES:
        status, result = "failed", {"reason": f"the trial returned an unknown status {status!r}"}
    loss = _finite(result.get("final_val_loss")) if status == "succeeded" else None
    if status == "succeeded" and loss is None:
        status, result = "diverged", {**result, "reason": "no finite validation loss"}
    _finish(
        session,
        trial_id,
        status=status,
        loss=loss,
        train_loss=_finite(result.get("final_train_loss")),
        steps=result.get("steps"),
        tokens=result.get("tokens"),
        tokens_per_s=_finite(result.get("tokens_per_s")),
        wall_time_s=_finite(result.get("wall_time_s")),
        error=result.get("reason"),
        **({"node": node[:64]} if node else {}),
        **({"worker": worker[:128]} if worker else {}),
    )
    session.execute(delete(ProgressPoint).where(ProgressPoint.trial_id == trial_id))
    curve: dict[int, dict[str, float]] = {}
    for step, loss_value in result.get("train_curve", []):
        curve.setdefault(int(step), {})["train_loss"] = loss_value
    for step, loss_value in result.get("eval_curve", []):
        curve.setdefault(int(step), {})["val_loss"] = loss_value
    _insert_points(session, trial_id, sorted(curve.items()))


def _record_loss_of_worker(session: Session, trial_id: int, reason: str) -> None:
    """Retry the same candidate while its search allows, else fail it with the reason."""
    trial = session.get(Trial, trial_id)
    if trial is None or trial.status != "running":
        return
    max_retries = session.get(Search, trial.search_id).spec.get("execution", {}).get("max_retries", 1)
    session.execute(delete(ProgressPoint).where(ProgressPoint.trial_id == trial_id))
    if trial.attempts <= max_retries:
        trial.status, trial.error = "pending", f"worker lost, retrying: {reason}"
    else:
        trial.status, trial.error, trial.finished_at = "failed", f"worker lost: {reason}", utcnow()


def _finish(session: Session, trial_id: int, **values: object) -> None:
    session.execute(
        update(Trial)
        .where(Trial.id == trial_id, Trial.status == "running")  # a cancelled trial stays cancelled
        .values(finished_at=utcnow(), **values)
    )


def _insert_points(session: Session, trial_id: int, points: list[tuple[int, dict[str, float]]]) -> None:
    rows = [
        {
            "trial_id": trial_id,
            "step": int(step),
            "train_loss": _finite(metrics.get("train_loss")),
            "val_loss": _finite(metrics.get("val_loss")),
        }
        for step, metrics in points
    ]
    if rows:
        session.execute(insert(ProgressPoint), rows)


def _finite(value: object) -> float | None:
    """Floats that JSON and every database can store; NaN and ±inf become None."""
    if value is None:
        return None
    number = float(value)  # type: ignore[arg-type]
    return number if math.isfinite(number) else None
