"""FastAPI dependencies: a database session per request and the engine's command surface."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Path, Query, Request
from sqlalchemy.orm import Session

from hpo_service.engine.commands import Commands


def db_session(request: Request) -> Iterator[Session]:
    with request.app.state.sessions() as session:
        yield session


def commands(request: Request) -> Commands:
    return request.app.state.commands


MAX_ID = 2**31 - 1  # the store's integer columns are 32-bit on PostgreSQL
SearchId = Annotated[int, Path(ge=1, le=MAX_ID, description="A search's id.")]
TrialId = Annotated[int, Path(ge=1, le=MAX_ID, description="A trial's id.")]
Offset = Annotated[int, Query(ge=0, le=MAX_ID)]
