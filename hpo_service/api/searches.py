"""``/api/searches``: submit a search, read its state and its trials, pause, resume or cancel it."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, status
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from hpo_service.api.deps import commands, db_session
from hpo_service.api.schemas import Problem, SearchCreated, SearchSummary, TrialOut, TrialPage
from hpo_service.engine.commands import CommandError, Commands, SearchNotFound
from hpo_service.spec import SearchSpec
from hpo_service.store import queries
from hpo_service.store.models import Search, Trial

router = APIRouter(prefix="/api/searches", tags=["searches"])
SessionDep = Annotated[Session, Depends(db_session)]
CommandsDep = Annotated[Commands, Depends(commands)]
NOT_FOUND = {404: {"model": Problem, "description": "No search with this id."}}


@router.post("", status_code=status.HTTP_201_CREATED, response_model=SearchCreated)
def create_search(spec: SearchSpec, commands: CommandsDep) -> SearchCreated:
    """Submit a search spec; the engine starts it as soon as it can."""
    search = commands.create(spec)
    return SearchCreated(id=search.id, status=search.status)


@router.get("/{search_id}", response_model=SearchSummary, responses=NOT_FOUND)
def get_search(search_id: int, session: SessionDep) -> SearchSummary:
    """The search's status, its trials counted by status and the best loss so far."""
    search = _search_or_404(session, search_id)
    spec = search.spec
    optimizer = spec["optimizer"]
    return SearchSummary(
        id=search.id,
        name=search.name,
        status=search.status,
        spec_hash=search.spec_hash,
        created_at=search.created_at,
        started_at=search.started_at,
        finished_at=search.finished_at,
        error=search.error,
        trials=queries.trial_counts(session, search_id),
        budget=optimizer["population"] * optimizer["generations"] * optimizer["replicates"],
        generations=optimizer["generations"],
        generations_completed=queries.generations_completed(session, search_id),
        best_loss=queries.best_loss(session, search_id),
    )


@router.get("/{search_id}/trials", response_model=TrialPage, responses=NOT_FOUND)
def list_trials(
    search_id: int,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=5000)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> TrialPage:
    """The search's trials in the order they were asked (generation, index, replicate)."""
    _search_or_404(session, search_id)
    total = session.scalar(select(func.count()).select_from(Trial).where(Trial.search_id == search_id))
    rows = queries.trials_page(session, search_id, limit, offset)
    return TrialPage(total=total, limit=limit, offset=offset, trials=[TrialOut.model_validate(r) for r in rows])


@router.post(
    "/{search_id}/{command}",
    response_model=SearchCreated,
    responses={**NOT_FOUND, 409: {"model": Problem, "description": "Not possible in the search's status."}},
)
def command_search(
    search_id: int, command: Literal["pause", "resume", "cancel"], commands: CommandsDep
) -> SearchCreated:
    """Pause (running trials finish, no new ones start), resume, or cancel (running trials are stopped)."""
    try:
        search = commands.apply(search_id, command)
    except SearchNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
    except CommandError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    return SearchCreated(id=search.id, status=search.status)


def _search_or_404(session: Session, search_id: int) -> Search:
    search = session.get(Search, search_id)
    if search is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no search with id {search_id}")
    return search
