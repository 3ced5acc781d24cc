"""The reads the API and the dashboard make; each is one or two indexed queries, whatever the page size."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from sqlalchemy import Row, Select, case, func, select
from sqlalchemy.orm import Session

from hpo_service.store.models import FINAL_TRIAL_STATUSES, TRIAL_STATUSES, Generation, ProgressPoint, Search, Trial

TrialOrder = Literal["asked", "loss"]
EVALUATED_STATUSES = ("succeeded", "diverged", "failed")  # trials whose outcome the optimizer was told


def trial_counts(session: Session, search_ids: Sequence[int]) -> dict[int, dict[str, int]]:
    """Trials of each search by status, every status present (zeros included)."""
    counts = {search_id: dict.fromkeys(TRIAL_STATUSES, 0) for search_id in search_ids}
    rows = session.execute(
        select(Trial.search_id, Trial.status, func.count())
        .where(Trial.search_id.in_(search_ids))
        .group_by(Trial.search_id, Trial.status)
    ).all()
    for search_id, status, count in rows:
        counts[search_id][status] = count
    return counts


def best_losses(session: Session, search_ids: Sequence[int]) -> dict[int, float | None]:
    """The lowest mean loss of a candidate whose replicates all succeeded (the export's best): a diverged or
    failed trial never counts, nor do the other replicates of its candidate."""
    succeeded = func.sum(case((Trial.status == "succeeded", 1), else_=0))
    candidates = (
        select(Trial.search_id, func.avg(Trial.loss).label("loss"))
        .where(Trial.search_id.in_(search_ids))
        .group_by(Trial.search_id, Trial.generation, Trial.index)
        .having(func.count() == succeeded)
        .subquery()
    )
    rows = session.execute(
        select(candidates.c.search_id, func.min(candidates.c.loss)).group_by(candidates.c.search_id)
    ).all()
    return dict.fromkeys(search_ids, None) | dict(rows)


def generations_completed(session: Session, search_ids: Sequence[int]) -> dict[int, int]:
    rows = session.execute(
        select(Generation.search_id, func.count())
        .where(Generation.search_id.in_(search_ids), Generation.status == "completed")
        .group_by(Generation.search_id)
    ).all()
    return dict.fromkeys(search_ids, 0) | dict(rows)


def searches_page(
    session: Session, status: str | None, name: str | None, limit: int, offset: int
) -> tuple[int, list[Search]]:
    """Searches, newest first, optionally of one status and with ``name`` in their name."""
    query = select(Search)
    if status:
        query = query.where(Search.status == status)
    if name:
        query = query.where(Search.name.contains(name, autoescape=True))
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
) -> tuple[int, list[Trial]]:
    """Trials in the order they were asked (generation, index, replicate), or by loss (unfinished last)."""
    query: Select = select(Trial).where(Trial.search_id == search_id)
    if generation is not None:
        query = query.where(Trial.generation == generation)
    if status:
        query = query.where(Trial.status == status)
    total = session.scalar(select(func.count()).select_from(query.subquery()))
    asked = (Trial.generation, Trial.index, Trial.replicate)
    ordering = (Trial.loss.is_(None), Trial.loss, *asked) if order == "loss" else asked
    return total, list(session.scalars(query.order_by(*ordering).limit(limit).offset(offset)))


def generations(session: Session, search_id: int) -> list[tuple[Generation, int, int]]:
    """Each generation with its number of trials and of trials that ended."""
    ended = func.sum(case((Trial.status.in_(FINAL_TRIAL_STATUSES), 1), else_=0))
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


def evaluations(session: Session, search_id: int) -> list[Row]:
    """The search's evaluated trials in the order they ended: ``id, generation, status, loss`` each."""
    return list(
        session.execute(
            select(Trial.id, Trial.generation, Trial.status, Trial.loss)
            .where(Trial.search_id == search_id, Trial.status.in_(EVALUATED_STATUSES))
            .order_by(Trial.finished_at, Trial.id)
        ).all()
    )


def ranked_trials(session: Session, search_id: int, limit: int | None = None) -> list[Row]:
    """``id, generation, index, replicate, loss`` of the trials that succeeded, lowest loss first."""
    return list(
        session.execute(
            select(Trial.id, Trial.generation, Trial.index, Trial.replicate, Trial.loss)
            .where(Trial.search_id == search_id, Trial.status == "succeeded")
            .order_by(Trial.loss, Trial.id)
            .limit(limit)
        ).all()
    )


def best_candidates(session: Session, search_id: int, replicates: int, limit: int) -> list[Row]:
    """Candidates whose replicates all succeeded, lowest mean loss first (the export's ranking):
    ``generation, index, loss`` (the mean) and ``trial_id`` (a replicate's, for the shared vector)."""
    mean = func.avg(Trial.loss)
    return list(
        session.execute(
            select(Trial.generation, Trial.index, mean.label("loss"), func.min(Trial.id).label("trial_id"))
            .where(Trial.search_id == search_id, Trial.status == "succeeded")
            .group_by(Trial.generation, Trial.index)
            .having(func.count() == replicates)
            .order_by(mean, Trial.generation, Trial.index)
            .limit(limit)
        ).all()
    )


def vectors(session: Session, trial_ids: Sequence[int]) -> dict[int, list[float]]:
    """The optimizer's coordinates of each of ``trial_ids``."""
    return dict(session.execute(select(Trial.id, Trial.vector).where(Trial.id.in_(trial_ids))).all())


def running_trials(session: Session, search_id: int, limit: int) -> list[Row]:
    """``id, generation, index, replicate, loss`` (none yet) of the search's running trials, oldest first."""
    return list(
        session.execute(
            select(Trial.id, Trial.generation, Trial.index, Trial.replicate, Trial.loss)
            .where(Trial.search_id == search_id, Trial.status == "running")
            .order_by(Trial.id)
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
