"""A page of searches as the API shows them: each with its trials counted by status, its best loss and the
commands its status allows, in a few grouped queries whatever the page size."""

from __future__ import annotations

from sqlalchemy.orm import Session

from hpo_service.api.schemas import SearchSummary
from hpo_service.statuses import FINAL_TRIAL, SEARCH_COMMANDS, SearchStatus
from hpo_service.store import queries
from hpo_service.store.models import Search


def summaries(session: Session, searches: list[Search]) -> list[SearchSummary]:
    ids = [s.id for s in searches]
    counts, best = queries.trial_counts(session, ids), queries.best_losses(session, ids)
    completed = queries.generations_completed(session, ids)
    result = []
    for search in searches:
        optimizer = search.spec.optimizer
        trials = counts[search.id]
        result.append(
            SearchSummary(
                id=search.id,
                name=search.name,
                status=search.status,
                commands=allowed_commands(search.status),
                spec_hash=search.spec_hash,
                optimizer=optimizer.name,
                created_at=search.created_at,
                started_at=search.started_at,
                finished_at=search.finished_at,
                error=search.error,
                trials=trials,
                ended=sum(n for status, n in trials.items() if status in FINAL_TRIAL),
                budget=optimizer.population * optimizer.generations * optimizer.replicates,
                generations=optimizer.generations,
                generations_completed=completed[search.id],
                best_loss=best[search.id],
            )
        )
    return result


def allowed_commands(status: SearchStatus) -> list[str]:
    """The commands a search in ``status`` may be given (the dashboard enables its buttons by them)."""
    return [command for command, (sources, _) in SEARCH_COMMANDS.items() if status in sources]
