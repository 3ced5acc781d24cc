"""FastAPI dependencies: a database session per request and the engine's command surface."""

from __future__ import annotations

from collections.abc import Iterator

from fastapi import Request
from sqlalchemy.orm import Session

from hpo_service.engine.commands import Commands


def db_session(request: Request) -> Iterator[Session]:
    with request.app.state.sessions() as session:
        yield session


def commands(request: Request) -> Commands:
    return request.app.state.commands
