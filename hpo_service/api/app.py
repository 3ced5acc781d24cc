"""The controller's web application: the API and the dashboard, with the engine running beside it in the same
process."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from sqlalchemy.orm import Session, sessionmaker
from starlette.middleware.cors import CORSMiddleware

from hpo_service import dashboard
from hpo_service.api import errors, health, meta, searches, trials
from hpo_service.api.limits import DEFAULT_MAX_BODY_BYTES, BodySizeLimit
from hpo_service.api.origin import SameOriginWrites
from hpo_service.api.settings import ServerSettings, attach
from hpo_service.dashboard.cache import AnswerCache
from hpo_service.engine.commands import Commands
from hpo_service.engine.engine import Engine
from hpo_service.store.database import check_writable, database_url, open_database, session_factory, upgrade


def create_app(
    db: str | None = None,
    *,
    run_engine: bool = True,
    migrate: bool = True,
    api_token: str | None = None,
    max_body_bytes: int | None = None,
    data_roots: list[str] | None = None,
    allowed_trials: list[str] | None = None,
    cors_origins: list[str] | None = None,
) -> FastAPI:
    """The app for the store at ``db`` (a URL or SQLite path; default ``HPO_DATABASE_URL`` or ``hpo.db``).

    With ``run_engine`` the engine thread starts and stops with the app; ``migrate`` brings the schema up to
    date first. ``api_token`` (default ``HPO_API_TOKEN``) guards the mutating endpoints; request bodies over
    ``max_body_bytes`` (default ``HPO_MAX_BODY_BYTES``, else 1 MiB) are refused. Specs may only name data
    files under ``data_roots`` (default ``HPO_DATA_ROOTS``, paths separated by ``os.pathsep``, else the
    working directory). Specs may name a trial function to import only if it matches ``allowed_trials``
    (default ``HPO_ALLOWED_TRIALS``, comma-separated; else none). Browser pages on other origins may call the
    API only from ``cors_origins`` (default ``HPO_CORS_ORIGINS``, comma-separated; else none): without any, no
    CORS headers are sent, and cross-origin writes are refused whatever the token.
    """
    url = database_url(db)
    if migrate:
        upgrade(url)
    db_engine = open_database(url)
    if run_engine:
        check_writable(db_engine)
    sessions = session_factory(db_engine)
    engine = Engine(sessions) if run_engine else None
    settings = _settings(
        sessions,
        engine,
        api_token=api_token,
        max_body_bytes=max_body_bytes,
        data_roots=data_roots,
        allowed_trials=allowed_trials,
        cors_origins=cors_origins,
    )

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
        summary="Evolutionary per-module HP search on Complete(d)P proxies, transferred to the target shape.",
        version=_version(),
        lifespan=lifespan,
    )
    attach(app, settings)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(SameOriginWrites, allowed_origins=list(settings.cors_origins))
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )
    for module in (health, meta, searches, trials):
        app.include_router(module.router)
    errors.install(app)
    dashboard.install(app)
    return app


def _settings(
    sessions: sessionmaker[Session],
    engine: Engine | None,
    *,
    api_token: str | None,
    max_body_bytes: int | None,
    data_roots: list[str] | None,
    allowed_trials: list[str] | None,
    cors_origins: list[str] | None,
) -> ServerSettings:
    """Each setting as given to ``create_app``, else from its environment variable, else its default."""
    roots = data_roots if data_roots is not None else os.environ.get("HPO_DATA_ROOTS", os.getcwd()).split(os.pathsep)
    return ServerSettings(
        sessions=sessions,
        commands=Commands(sessions, wake=engine.wake if engine is not None else lambda: None),
        engine=engine,
        dashboard_answers=AnswerCache(),
        api_token=api_token if api_token is not None else os.environ.get("HPO_API_TOKEN") or None,
        data_roots=tuple(Path(root).expanduser().resolve() for root in roots if root),
        allowed_trials=_listed(allowed_trials, "HPO_ALLOWED_TRIALS"),
        cors_origins=tuple(origin.rstrip("/") for origin in _listed(cors_origins, "HPO_CORS_ORIGINS")),
        max_body_bytes=max_body_bytes or int(os.environ.get("HPO_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES)),
    )


def _listed(configured: list[str] | None, variable: str) -> tuple[str, ...]:
    """A list setting: ``configured`` if given, else the comma-separated environment ``variable``; no blanks."""
    values = configured if configured is not None else os.environ.get(variable, "").split(",")
    return tuple(value.strip() for value in values if value.strip())


def _version() -> str:
    from importlib.metadata import version

    return version("completedp-hpo")
