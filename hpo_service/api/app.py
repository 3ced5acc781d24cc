"""The controller's web application: the API, with the engine running beside it in the same process."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from hpo_service.api import health, searches
from hpo_service.engine.commands import Commands
from hpo_service.engine.engine import Engine
from hpo_service.store.database import database_url, make_engine, session_factory, upgrade


def create_app(db: str | None = None, *, run_engine: bool = True, migrate: bool = True) -> FastAPI:
    """The app for the store at ``db`` (a URL or SQLite path; default ``HPO_DATABASE_URL`` or ``hpo.db``).

    With ``run_engine`` the engine thread starts with the app and stops with it; ``migrate`` brings the
    schema up to date first.
    """
    url = database_url(db)
    if migrate:
        upgrade(url)
    db_engine = make_engine(url)
    sessions = session_factory(db_engine)
    engine = Engine(sessions) if run_engine else None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if engine is not None:
            engine.start()
        yield
        if engine is not None:
            engine.stop()
        db_engine.dispose()

    app = FastAPI(
        title="completedp-hpo",
        summary="Evolutionary per-module HP search on Complete(d)P proxies.",
        lifespan=lifespan,
    )
    app.state.sessions = sessions
    app.state.engine = engine
    app.state.commands = Commands(sessions, wake=engine.wake if engine is not None else lambda: None)
    app.include_router(health.router)
    app.include_router(searches.router)
    return app
