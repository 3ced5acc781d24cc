"""The reads the API makes, each one indexed query."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from hpo_service.store.models import TRIAL_STATUSES, Generation, Search, Trial


def trial_counts(session: Session, search_id: int) -> dict[str, int]:
    """Trials of the search by status, every status present (zeros included)."""
    rows = session.execute(
        select(Trial.status, func.count()).where(Trial.search_id == search_id).group_by(Trial.status)
    ).all()
    return {status: 0 for status in TRIAL_STATUSES} | dict(rows)


def best_loss(session: Session, search_id: int) -> float | None:
    """The lowest loss of a trial that succeeded; diverged and failed trials never count."""
    return session.scalar(select(func.min(Trial.loss)).where(Trial.search_id == search_id, Trial.status == "succeeded"))


def generations_completed(session: Session, search_id: int) -> int:
    return session.scalar(
        select(func.count()).where(Generation.search_id == search_id, Generation.status == "completed")
    )


def trials_page(session: Session, search_id: int, limit: int, offset: int) -> list[Trial]:
    """Trials in the order they were asked: by generation, index within it, then replicate."""
    return list(
        session.scalars(
            select(Trial)
            .where(Trial.search_id == search_id)
            .order_by(Trial.generation, Trial.index, Trial.replicate)
            .limit(limit)
            .offset(offset)
        )
    )


def search_exists(session: Session, search_id: int) -> bool:
    return session.get(Search, search_id) is not None
