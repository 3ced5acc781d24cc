"""FastAPI dependencies: the server's settings, a database session per request, the engine's command surface,
and the search a path names (404 if there is none)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Path, Query, Request, status
from sqlalchemy.orm import Session

from hpo_service.api.schemas import Problem
from hpo_service.api.settings import ServerSettings, settings_of
from hpo_service.engine.commands import Commands
from hpo_service.store.models import Search

MAX_ID = 2**31 - 1  # the store's integer columns are 32-bit on PostgreSQL
SearchId = Annotated[int, Path(ge=1, le=MAX_ID, description="A search's id.")]
TrialId = Annotated[int, Path(ge=1, le=MAX_ID, description="A trial's id.")]
Offset = Annotated[int, Query(ge=0, le=MAX_ID)]
NOT_FOUND = {404: {"model": Problem, "description": "No search with this id."}}


def server_settings(request: Request) -> ServerSettings:
    return settings_of(request.app)


SettingsDep = Annotated[ServerSettings, Depends(server_settings)]


def db_session(settings: SettingsDep) -> Iterator[Session]:
    with settings.sessions() as session:
        yield session


SessionDep = Annotated[Session, Depends(db_session)]


def commands(settings: SettingsDep) -> Commands:
    return settings.commands


CommandsDep = Annotated[Commands, Depends(commands)]


def search_or_404(search_id: SearchId, session: SessionDep) -> Search:
    search = session.get(Search, search_id)
    if search is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no search with id {search_id}")
    return search


SearchDep = Annotated[Search, Depends(search_or_404)]  # routes that take it answer NOT_FOUND
