"""The reads the API and the dashboard make; each is one or two indexed queries, whatever the page size."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from sqlalchemy import Row, Select, Subquery, case, func, or_, select, text
from sqlalchemy.orm import Session

from hpo_service.statuses import ACTIVE_SEARCH, FINAL_TRIAL, TRIAL_OUTCOMES, GenerationStatus, TrialKind, TrialStatus
from hpo_service.store.models import EngineLease, Generation, OptimizerState, ProgressPoint, Search, Trial

TrialOrder = Literal["asked", "loss"]


def trial_counts(session: Session, search_ids: Sequence[int]) -> dict[int, dict[str, int]]:
    """Trials of each search by status, every status present (zeros included)."""
    counts = {search_id: dict.fromkeys(TrialStatus, 0) for search_id in search_ids}
    rows = session.execute(
        select(Trial.search_id, Trial.status, func.count())
        .where(Trial.search_id.in_(search_ids))
        .group_by(Trial.search_id, Trial.status)
    ).all()
    for search_id, status, count in rows:
        counts[search_id][status] = count
    return counts


# -- what the engine reads ---------------------------------------------------------------------------------------


def searches_to_drive(session: Session, also: Sequence[int]) -> list[Row]:
    """``id, status`` of the active searches and of ``also`` (the ones the engine drives, whatever they became)."""
    query = select(Search.id, Search.status).where(or_(Search.status.in_(ACTIVE_SEARCH), Search.id.in_(list(also))))
    return list(session.execute(query).all())


def policy_snapshot(session: Session, search_id: int) -> bytes | None:
    """The search's policy as serialised when its current generation was asked; None before the first."""
    return session.scalar(select(OptimizerState.state).where(OptimizerState.search_id == search_id))


def generation_trials(session: Session, search_id: int, generation: int) -> list[Trial]:
    """The trials of one generation, in ask order (candidate, then replicate)."""
    query = select(Trial).where(Trial.search_id == search_id, Trial.generation == generation)
    return list(session.scalars(query.order_by(Trial.index, Trial.replicate)))


def ended_trials(session: Session, search_id: int, generation: int) -> int:
    """How many trials of one generation are final."""
    return session.scalar(
        select(func.count()).where(
            Trial.search_id == search_id, Trial.generation == generation, Trial.status.in_(FINAL_TRIAL)
        )
    )


def unsuccessful_errors(session: Session, search_id: int) -> list[Row]:
    """``status, error, trials``: the search's trials that ended without succeeding (failed or diverged),
    grouped by status and error text, the commonest first (ties: the first to be asked)."""
    trials = func.count().label("trials")
    return list(
        session.execute(
            select(Trial.status, Trial.error, trials)
            .where(Trial.search_id == search_id, Trial.status.in_((TrialStatus.FAILED, TrialStatus.DIVERGED)))
            .group_by(Trial.status, Trial.error)
            .order_by(trials.desc(), func.min(Trial.id))
        ).all()
    )


def running_trial_ids(session: Session, search_id: int) -> list[int]:
    return list(
        session.scalars(select(Trial.id).where(Trial.search_id == search_id, Trial.status == TrialStatus.RUNNING))
    )


# -- the ranking ------------------------------------------------------------------------------------------------


def _candidates(search_ids: Sequence[int], generation: int | None = None, stage: str | None = None) -> Subquery:
    """The ranking's one definition: each candidate whose replicates all succeeded, with their mean loss.

    Only search trials are ranked (re-evaluations and validations are not candidates of the search). A diverged
    or failed trial never counts, nor do the other replicates of its candidate; a candidate with replicates
    still to train is not ranked yet. Columns: ``search_id, generation, index, loss`` (the mean)
    and ``trial_id`` (its first replicate's, for the shared vector and multipliers). ``stage``: that stage's only.
    """
    succeeded = func.sum(case((Trial.status == TrialStatus.SUCCEEDED, 1), else_=0))
    query = select(
        Trial.search_id,
        Trial.generation,
        Trial.index,
        func.avg(Trial.loss).label("loss"),
        func.min(Trial.id).label("trial_id"),
    ).where(Trial.search_id.in_(search_ids), Trial.kind == TrialKind.SEARCH)
    if generation is not None:
        query = query.where(Trial.generation == generation)
    if stage is not None:
        query = query.where(Trial.stage == stage)
    return query.group_by(Trial.search_id, Trial.generation, Trial.index).having(func.count() == succeeded).subquery()


def best_losses(session: Session, search_ids: Sequence[int]) -> dict[int, float | None]:
    """Each search's best candidate's mean loss (the export's best), None before any candidate succeeded."""
    ranked = _candidates(search_ids)
    rows = session.execute(select(ranked.c.search_id, func.min(ranked.c.loss)).group_by(ranked.c.search_id)).all()
    return dict.fromkeys(search_ids, None) | dict(rows)


def best_candidates(session: Session, search_id: int, limit: int | None = None, stage: str | None = None) -> list[Row]:
    """The search's ranked candidates (of one ``stage``, or all), best first: ``generation, index, loss`` (the
    mean) and ``trial_id``."""
    ranked = _candidates([search_id], stage=stage)
    return list(
        session.execute(
            select(ranked.c.generation, ranked.c.index, ranked.c.loss, ranked.c.trial_id)
            .order_by(ranked.c.loss, ranked.c.generation, ranked.c.index)
            .limit(limit)
        ).all()
    )


def reevaluated(session: Session, search_id: int, stage: str) -> list[Row]:
    """A stage's re-trained candidates whose fresh seeds all succeeded, best fresh mean first: ``generation,
    index, loss`` (the fresh mean) and ``trial_id`` (the first fresh run's)."""
    succeeded = func.sum(case((Trial.status == TrialStatus.SUCCEEDED, 1), else_=0))
    ranked = (
        select(Trial.generation, Trial.index, func.avg(Trial.loss).label("loss"), func.min(Trial.id).label("trial_id"))
        .where(Trial.search_id == search_id, Trial.kind == TrialKind.REEVALUATION, Trial.stage == stage)
        .group_by(Trial.generation, Trial.index)
        .having(func.count() == succeeded)
        .subquery()
    )
    return list(session.execute(select(ranked).order_by(ranked.c.loss, ranked.c.generation, ranked.c.index)).all())


def kind_trials(session: Session, search_id: int, kind: TrialKind) -> list[Trial]:
    """The search's trials of one kind, in the order they were asked."""
    query = select(Trial).where(Trial.search_id == search_id, Trial.kind == kind)
    return list(session.scalars(query.order_by(Trial.generation, Trial.index, Trial.replicate)))


def candidate_losses(session: Session, search_id: int, generation: int) -> list[float]:
    """The mean losses of one generation's ranked candidates (for its best and median)."""
    ranked = _candidates([search_id], generation)
    return list(session.scalars(select(ranked.c.loss)))


def generations_completed(session: Session, search_ids: Sequence[int]) -> dict[int, int]:
    rows = session.execute(
        select(Generation.search_id, func.count())
        .where(Generation.search_id.in_(search_ids), Generation.status == GenerationStatus.COMPLETED)
        .group_by(Generation.search_id)
    ).all()
    return dict.fromkeys(search_ids, 0) | dict(rows)


def latest_generations(session: Session, search_ids: Sequence[int]) -> dict[int, Generation | None]:
    """Each search's last generation asked (the current one while it runs), None before the first."""
    last = (
        select(Generation.search_id, func.max(Generation.number).label("number"))
        .where(Generation.search_id.in_(search_ids))
        .group_by(Generation.search_id)
        .subquery()
    )
    rows = session.scalars(
        select(Generation).join(last, (Generation.search_id == last.c.search_id) & (Generation.number == last.c.number))
    )
    return dict.fromkeys(search_ids, None) | {g.search_id: g for g in rows}


def generation_kinds(session: Session, search_ids: Sequence[int]) -> dict[int, set[str]]:
    """The kinds of generation (``TrialKind``, each its trials' kind) each search has asked."""
    kinds: dict[int, set[str]] = {search_id: set() for search_id in search_ids}
    query = select(Generation.search_id, Generation.kind).where(Generation.search_id.in_(search_ids)).distinct()
    rows = session.execute(query)
    for search_id, kind in rows:
        kinds[search_id].add(kind)
    return kinds


def searches_page(
    session: Session, status: str | None, name: str | None, limit: int, offset: int
) -> tuple[int, list[Search]]:
    """Searches, newest first, optionally of one status and with ``name`` in their name (ignoring case; ``%``
    and ``_`` are matched as themselves)."""
    query = select(Search)
    if status:
        query = query.where(Search.status == status)
    if name:
        query = query.where(Search.name.icontains(name, autoescape=True))
    total = session.scalar(select(func.count()).select_from(query.subquery()))
    return total, list(session.scalars(query.order_by(Search.id.desc()).limit(limit).offset(offset)))


def trials_page(
    session: Session,
    search_id: int,
    limit: int,
    offset: int,
    generation: int | None = None,
    status: str | None = None,
    order: TrialOrder = "asked",
    kind: str | None = None,
    stage: str | None = None,
) -> tuple[int, list[Trial]]:
    """Trials in the order they were asked (generation, index, replicate), or by loss (unfinished last)."""
    query: Select = select(Trial).where(Trial.search_id == search_id)
    if generation is not None:
        query = query.where(Trial.generation == generation)
    if status:
        query = query.where(Trial.status == status)
    if kind:
        query = query.where(Trial.kind == kind)
    if stage:
        query = query.where(Trial.stage == stage)
    total = session.scalar(select(func.count()).select_from(query.subquery()))
    asked = (Trial.generation, Trial.index, Trial.replicate)
    ordering = (Trial.loss.is_(None), Trial.loss, *asked) if order == "loss" else asked
    return total, list(session.scalars(query.order_by(*ordering).limit(limit).offset(offset)))


def generations(session: Session, search_id: int) -> list[tuple[Generation, int, int]]:
    """Each generation with its number of trials and of trials that ended."""
    ended = func.sum(case((Trial.status.in_(FINAL_TRIAL), 1), else_=0))
    rows = session.execute(
        select(Generation, func.count(Trial.id), ended)
        .join(Trial, (Trial.search_id == Generation.search_id) & (Trial.generation == Generation.number))
        .where(Generation.search_id == search_id)
        .group_by(Generation.id)
        .order_by(Generation.number)
    ).all()
    return [(g, total, int(done or 0)) for g, total, done in rows]


def curve(session: Session, trial_id: int) -> list[ProgressPoint]:
    return list(
        session.scalars(select(ProgressPoint).where(ProgressPoint.trial_id == trial_id).order_by(ProgressPoint.step))
    )


def trial_outcomes(session: Session, search_id: int) -> list[Row]:
    """``id, status, loss`` of every trial of the search, by id."""
    query = select(Trial.id, Trial.status, Trial.loss).where(Trial.search_id == search_id).order_by(Trial.id)
    return list(session.execute(query).all())


def evaluations(session: Session, search_id: int, kind: TrialKind) -> list[Row]:
    """The search's evaluated trials of one kind in the order they ended: ``id, generation, status, loss`` each."""
    return list(
        session.execute(
            select(Trial.id, Trial.generation, Trial.status, Trial.loss)
            .where(Trial.search_id == search_id, Trial.kind == kind, Trial.status.in_(TRIAL_OUTCOMES))
            .order_by(Trial.finished_at, Trial.id)
        ).all()
    )


def ranked_trials(session: Session, search_id: int, limit: int | None = None, stage: str | None = None) -> list[Row]:
    """``id, generation, index, replicate, loss`` of the search trials (of one ``stage``, or all) that succeeded,
    lowest loss first; re-evaluations and validations are not candidates."""
    query = select(Trial.id, Trial.generation, Trial.index, Trial.replicate, Trial.loss).where(
        Trial.search_id == search_id, Trial.kind == TrialKind.SEARCH, Trial.status == TrialStatus.SUCCEEDED
    )
    if stage is not None:
        query = query.where(Trial.stage == stage)
    return list(session.execute(query.order_by(Trial.loss, Trial.id).limit(limit)).all())


def vectors(session: Session, trial_ids: Sequence[int]) -> dict[int, list[float]]:
    """The optimizer's coordinates of each of ``trial_ids``."""
    return dict(session.execute(select(Trial.id, Trial.vector).where(Trial.id.in_(trial_ids))).all())


def running_trials(session: Session, search_id: int, limit: int) -> list[Row]:
    """``id, generation, index, replicate, loss`` (none yet), ``kind`` and ``arm`` of the search's running
    trials, oldest first."""
    return list(
        session.execute(
            select(Trial.id, Trial.generation, Trial.index, Trial.replicate, Trial.loss, Trial.kind, Trial.arm)
            .where(Trial.search_id == search_id, Trial.status == TrialStatus.RUNNING)
            .order_by(Trial.id)
            .limit(limit)
        ).all()
    )


def stopped_trials(session: Session, search_id: int, limit: int) -> list[Row]:
    """``id, generation, index, replicate, loss`` (none), ``kind``, ``arm`` and ``steps`` (where it stopped) of
    the search's trials that the early-stopping rule stopped, the last to stop first."""
    return list(
        session.execute(
            select(
                Trial.id, Trial.generation, Trial.index, Trial.replicate, Trial.loss, Trial.kind, Trial.arm, Trial.steps
            )
            .where(Trial.search_id == search_id, Trial.status == TrialStatus.STOPPED)
            .order_by(Trial.finished_at.desc(), Trial.id.desc())
            .limit(limit)
        ).all()
    )


def curves(session: Session, trial_ids: Sequence[int]) -> dict[int, list[Row]]:
    """The learning curve (``step, train_loss, val_loss`` points, by step) of each of ``trial_ids``."""
    result: dict[int, list[Row]] = {trial_id: [] for trial_id in trial_ids}
    rows = session.execute(
        select(ProgressPoint.trial_id, ProgressPoint.step, ProgressPoint.train_loss, ProgressPoint.val_loss)
        .where(ProgressPoint.trial_id.in_(trial_ids))
        .order_by(ProgressPoint.trial_id, ProgressPoint.step)
    ).all()
    for row in rows:
        result[row.trial_id].append(row)
    return result


# -- the engine lease ----------------------------------------------------------------------------------------------


def database_now(session: Session) -> datetime:
    """The database's clock, in UTC: the one clock every server sharing the store reads, whatever its own says.

    PostgreSQL's ``clock_timestamp()`` (``now()`` stands still for the whole transaction). SQLite's clock is
    its host's, to the millisecond; every server sharing a SQLite file runs on that host.
    """
    if session.get_bind().dialect.name == "sqlite":
        now = datetime.fromisoformat(session.scalar(text("SELECT strftime('%Y-%m-%d %H:%M:%f', 'now')")))
    else:
        now = session.scalar(select(func.clock_timestamp()))
    return _utc(now)


def holds_lease(session: Session, name: str, holder: str) -> bool:
    """Whether ``holder`` holds the lease ``name`` now, by the database's clock.

    Asked at the end of a transaction, the answer holds until it commits: on PostgreSQL the lease's row stays
    share-locked (``FOR SHARE``), so no one can take the lease meanwhile; on SQLite a transaction that has
    written holds the database's only write lock, to the same effect.
    """
    now = database_now(session)
    held = select(EngineLease.name).where(
        EngineLease.name == name, EngineLease.holder == holder, EngineLease.expires_at > now
    )
    return session.scalar(held.with_for_update(read=True)) is not None


@dataclass(frozen=True)
class LeaseState:
    holder: str
    host: str
    pid: int
    acquired_at: datetime
    renewed_at: datetime
    expires_in_s: float  # by the database's clock; negative once it has expired


def lease(session: Session, name: str) -> LeaseState | None:
    """Who holds the lease ``name`` (or last held it) and for how long yet; None if no server ever took it."""
    row = session.get(EngineLease, name)
    if row is None:
        return None
    expires_in_s = (_utc(row.expires_at) - database_now(session)).total_seconds()
    return LeaseState(row.holder, row.host, row.pid, _utc(row.acquired_at), _utc(row.renewed_at), expires_in_s)


def _utc(moment: datetime) -> datetime:
    """``moment`` in UTC; SQLite hands back the UTC times it stores without a zone."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


# -- early stopping (``hpo_service.early_stopping``) -----------------------------------------------------------------


def _stage_search(search_id: int, stage: str | None):
    """The search trials of one stage (of a search without stages: stage null)."""
    same_stage = Trial.stage.is_(None) if stage is None else Trial.stage == stage
    return (Trial.search_id == search_id, Trial.kind == TrialKind.SEARCH, same_stage)


def stage_losses_at(session: Session, search_id: int, stage: str | None, step: int) -> dict[int, float]:
    """Trial id -> validation loss at ``step``, of the stage's search trials that reached it (any status)."""
    rows = session.execute(
        select(ProgressPoint.trial_id, ProgressPoint.val_loss)
        .join(Trial, Trial.id == ProgressPoint.trial_id)
        .where(*_stage_search(search_id, stage), ProgressPoint.step == step, ProgressPoint.val_loss.is_not(None))
    ).all()
    return dict(rows)


def last_val_point(session: Session, trial_id: int) -> tuple[int, float] | None:
    """A trial's last ``(step, validation loss)``."""
    row = session.execute(
        select(ProgressPoint.step, ProgressPoint.val_loss)
        .where(ProgressPoint.trial_id == trial_id, ProgressPoint.val_loss.is_not(None))
        .order_by(ProgressPoint.step.desc())
        .limit(1)
    ).first()
    return None if row is None else (row.step, row.val_loss)


def drops_after(session: Session, search_id: int, stage: str | None, step: int) -> list[float]:
    """Final loss minus the validation loss at ``step``, of each of the stage's search trials that succeeded."""
    rows = session.execute(
        select(Trial.loss - ProgressPoint.val_loss)
        .join(ProgressPoint, ProgressPoint.trial_id == Trial.id)
        .where(
            *_stage_search(search_id, stage),
            Trial.status == TrialStatus.SUCCEEDED,
            ProgressPoint.step == step,
            ProgressPoint.val_loss.is_not(None),
        )
    ).all()
    return [row[0] for row in rows]
