"""Every write the service makes, each a named function in the caller's transaction (reads: ``queries``).

The engine, the API's commands and the benches call these; no SQL that changes the store lives elsewhere.
Writes that finish a trial only touch trials still running, so a cancelled trial stays cancelled and a final
status never changes again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import bindparam, delete, func, insert, select, update
from sqlalchemy.orm import Session

from hpo_service.statuses import SEARCH_COMMANDS, GenerationStatus, SearchStatus, TrialStatus
from hpo_service.store.models import Generation, OptimizerState, ProgressPoint, Search, Trial, utcnow


class CommandError(Exception):
    """A command that does not apply to the search in its current state."""


class SearchNotFound(CommandError):
    pass


@dataclass(frozen=True)
class FinishedTrial:
    """What a finished trial writes: its final status, losses, budget and timings."""

    trial_id: int
    status: TrialStatus
    loss: float | None
    train_loss: float | None
    steps: int | None
    tokens: int | None
    tokens_per_s: float | None
    wall_time_s: float | None
    error: str | None
    node: str | None
    worker: str | None


@dataclass(frozen=True)
class GenerationSummary:
    best_loss: float | None
    median_loss: float | None
    diverged: int
    failed: int


# -- searches -------------------------------------------------------------------------------------------------------


def create_search(session: Session, name: str, spec_json: dict, spec_hash: str) -> Search:
    search = Search(name=name, spec_json=spec_json, spec_hash=spec_hash)
    session.add(search)
    session.flush()
    return search


def apply_command(session: Session, search_id: int, command: str) -> Search:
    """Pause, resume or cancel (``statuses.SEARCH_COMMANDS``); a search already in the target status is left
    as it is."""
    allowed, target = SEARCH_COMMANDS[command]
    search = session.get(Search, search_id, with_for_update=True)
    if search is None:
        raise SearchNotFound(f"no search with id {search_id}")
    if search.status != target:
        if search.status not in allowed:
            raise CommandError(f"cannot {command} a search that is {search.status}")
        search.status = target
        if target == SearchStatus.CANCELLED:
            search.finished_at = utcnow()
    return search


def start_search(session: Session, search_id: int) -> None:
    """A queued search runs from now; a resumed one keeps its first start time."""
    search = session.get(Search, search_id)
    search.started_at = search.started_at or utcnow()
    if search.status == SearchStatus.QUEUED:
        search.status = SearchStatus.RUNNING


def complete_search(session: Session, search_id: int) -> None:
    search = session.get(Search, search_id)
    search.status, search.finished_at = SearchStatus.COMPLETED, utcnow()


def fail_search(session: Session, search_id: int, error: str) -> None:
    search = session.get(Search, search_id)
    search.status, search.error, search.finished_at = SearchStatus.FAILED, error[:4000], utcnow()


# -- generations ----------------------------------------------------------------------------------------------------


def add_generation(
    session: Session, search_id: int, number: int, trials: list[dict], optimizer: str, snapshot: bytes
) -> None:
    """A generation, its trials (``Trial`` column values) and the policy's snapshot taken right after asking it."""
    session.add(Generation(search_id=search_id, number=number))
    now = utcnow()
    session.execute(
        insert(Trial),
        [
            {
                "search_id": search_id,
                "generation": number,
                "status": TrialStatus.PENDING,
                "attempts": 0,
                "created_at": now,
                **trial,
            }
            for trial in trials
        ],
    )
    values = {"generation": number, "state": snapshot, "updated_at": now}
    if number == 0:
        session.add(OptimizerState(search_id=search_id, optimizer=optimizer, **values))
    else:  # an UPDATE, without reading back the old snapshot
        session.execute(update(OptimizerState).where(OptimizerState.search_id == search_id).values(**values))


def end_generation(session: Session, search_id: int, number: int, summary: GenerationSummary) -> None:
    session.execute(
        update(Generation)
        .where(Generation.search_id == search_id, Generation.number == number)
        .values(status=GenerationStatus.COMPLETED, finished_at=utcnow(), **vars(summary))
    )


# -- trials ---------------------------------------------------------------------------------------------------------


def claim_pending(session: Session, search_id: int, generation: int, limit: int) -> list[Trial]:
    """Up to ``limit`` pending trials of a generation, in ask order, marked running (an attempt begins)."""
    rows = session.scalars(
        select(Trial)
        .where(Trial.search_id == search_id, Trial.generation == generation, Trial.status == TrialStatus.PENDING)
        .order_by(Trial.index, Trial.replicate)
        .limit(limit)
    ).all()
    now = utcnow()
    for row in rows:
        row.status, row.attempts, row.started_at, row.error = TrialStatus.RUNNING, row.attempts + 1, now, None
    return rows


def requeue(session: Session, trial_ids: Sequence[int]) -> None:
    """Running trials whose controller stopped become pending again, their partial curves dropped; the
    interrupted attempt is not counted against the retries."""
    if trial_ids:
        session.execute(
            update(Trial)
            .where(Trial.id.in_(trial_ids), Trial.status == TrialStatus.RUNNING)
            .values(status=TrialStatus.PENDING, attempts=Trial.attempts - 1, started_at=None)
        )
        session.execute(delete(ProgressPoint).where(ProgressPoint.trial_id.in_(trial_ids)))


def cancel_unfinished(session: Session, search_id: int) -> None:
    session.execute(
        update(Trial)
        .where(Trial.search_id == search_id, Trial.status.in_((TrialStatus.PENDING, TrialStatus.RUNNING)))
        .values(status=TrialStatus.CANCELLED, finished_at=utcnow())
    )


def record_worker(session: Session, trial_id: int, node: str, worker: str) -> None:
    session.execute(update(Trial).where(Trial.id == trial_id).values(node=node[:64], worker=worker[:128]))


def record_timeout(session: Session, trial_id: int, timeout_s: float) -> None:
    session.execute(
        update(Trial)
        .where(Trial.id == trial_id, Trial.status == TrialStatus.RUNNING)
        .values(status=TrialStatus.FAILED, error=f"timed out after {timeout_s:g} s", finished_at=utcnow())
    )


def record_lost_worker(session: Session, trial_id: int, reason: str, max_retries: int) -> None:
    """Retry the same candidate while ``max_retries`` allows, else fail it with the reason."""
    trial = session.get(Trial, trial_id)
    if trial is None or trial.status != TrialStatus.RUNNING:
        return
    session.execute(delete(ProgressPoint).where(ProgressPoint.trial_id == trial_id))
    if trial.attempts <= max_retries:
        trial.status, trial.error = TrialStatus.PENDING, f"worker lost, retrying: {reason}"
    else:
        trial.status, trial.error, trial.finished_at = TrialStatus.FAILED, f"worker lost: {reason}", utcnow()


_FINISH = (
    Trial.__table__.update()
    .where(Trial.__table__.c.id == bindparam("trial_id"), Trial.__table__.c.status == TrialStatus.RUNNING)
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
)


def record_results(
    session: Session,
    results: Sequence[FinishedTrial],
    curves: Sequence[tuple[int, int, dict[str, float | None]]],
    streamed: Sequence[int],
) -> None:
    """Finish running trials (one executemany) and write their full ``curves``, which supersede the points
    streamed while they trained (dropped for the ``streamed`` trial ids)."""
    now = utcnow()
    rows = [{f"new_{k}": v for k, v in vars(r).items() if k != "trial_id"} | {"trial_id": r.trial_id} for r in results]
    session.connection().execute(_FINISH, [row | {"new_finished_at": now} for row in rows])
    if streamed:
        session.execute(delete(ProgressPoint).where(ProgressPoint.trial_id.in_(list(streamed))))
    record_progress(session, curves)


def record_progress(session: Session, points: Sequence[tuple[int, int, dict[str, float | None]]]) -> None:
    """Learning-curve points ``(trial_id, step, {train_loss, val_loss})``."""
    rows = [
        {"trial_id": trial_id, "step": int(step), "train_loss": m.get("train_loss"), "val_loss": m.get("val_loss")}
        for trial_id, step, m in points
    ]
    if rows:
        session.execute(insert(ProgressPoint), rows)
