"""What each executor event means for the store: the trial's worker, its progress, its result or its loss.

These writes need no policy: a result that arrives while its search's runner is being rebuilt is stored all
the same, and the rebuilt runner reads it from the store.
"""

from __future__ import annotations

import math

from sqlalchemy.orm import Session

from hpo_service.engine.executor import Event, Finished, Lost, Progress, Started, TimedOut
from hpo_service.statuses import TRIAL_OUTCOMES, TrialStatus
from hpo_service.store import writes
from hpo_service.store.models import Search, Trial


def record_all(session: Session, events: list[Event]) -> None:
    """Write ``events`` in the caller's transaction; finished trials in one batch, after the rest."""
    finished = []
    for event in events:
        match event:
            case Started(trial_id, node, worker):
                writes.record_worker(session, trial_id, node, worker)
            case Progress(trial_id, points):
                writes.record_progress(session, [(trial_id, step, _finite_metrics(m)) for step, m in points])
            case Finished():
                finished.append(event)
            case Lost(trial_id, reason):
                trial = session.get(Trial, trial_id)
                if trial is not None:
                    max_retries = session.get(Search, trial.search_id).spec.execution.max_retries
                    writes.record_lost_worker(session, trial_id, reason, max_retries)
            case TimedOut(trial_id, timeout_s):
                writes.record_timeout(session, trial_id, timeout_s)
    if finished:
        results, curves = zip(*(_result(event) for event in finished), strict=True)
        points = [point for curve in curves for point in curve]
        writes.record_results(session, results, points, [e.trial_id for e in finished if e.streamed])


def _result(event: Finished) -> tuple[writes.FinishedTrial, list[tuple[int, int, dict[str, float | None]]]]:
    """The trial's final row and full curve from what the worker returned; a result that is not one of the
    known outcomes fails the trial, and one that succeeded without a finite loss diverged."""
    result = event.result
    status = result.get("status")
    if status not in TRIAL_OUTCOMES:
        status, result = TrialStatus.FAILED, {"reason": f"the trial returned an unknown status {status!r}"}
    loss = _finite(result.get("final_val_loss")) if status == TrialStatus.SUCCEEDED else None
    if status == TrialStatus.SUCCEEDED and loss is None:
        status, result = TrialStatus.DIVERGED, {**result, "reason": "no finite validation loss"}
    row = writes.FinishedTrial(
        trial_id=event.trial_id,
        status=TrialStatus(status),
        loss=loss,
        train_loss=_finite(result.get("final_train_loss")),
        steps=result.get("steps"),
        tokens=result.get("tokens"),
        tokens_per_s=_finite(result.get("tokens_per_s")),
        wall_time_s=_finite(result.get("wall_time_s")),
        error=None if result.get("reason") is None else str(result["reason"]),
        node=event.node[:64] if event.node else None,
        worker=event.worker[:128] if event.worker else None,
    )
    curve: dict[int, dict[str, float | None]] = {}
    for step, value in result.get("train_curve", []):
        curve.setdefault(int(step), {})["train_loss"] = _finite(value)
    for step, value in result.get("eval_curve", []):
        curve.setdefault(int(step), {})["val_loss"] = _finite(value)
    return row, [(event.trial_id, step, metrics) for step, metrics in sorted(curve.items())]


def _finite_metrics(metrics: dict[str, float]) -> dict[str, float | None]:
    return {name: _finite(metrics.get(name)) for name in ("train_loss", "val_loss")}


def _finite(value: object) -> float | None:
    """Floats that JSON and every database can store; NaN and ±inf become None."""
    if value is None:
        return None
    number = float(value)  # type: ignore[arg-type]
    return number if math.isfinite(number) else None
