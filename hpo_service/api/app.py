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
from hpo_service.api import docs, errors, health, hosts, meta, searches, trials
from hpo_service.api.limits import DEFAULT_MAX_BODY_BYTES, BodySizeLimit
from hpo_service.api.origin import SameOriginWrites
from hpo_service.api.settings import ServerSettings, attach
from hpo_service.api.spec_limits import SpecLimits
from hpo_service.dashboard.cache import AnswerCache
from hpo_service.engine.commands import Commands
from hpo_service.engine.lease import EngineCandidate, LeaseTiming
from hpo_service.store.database import check_writable, database_url, open_database, session_factory, upgrade


def create_app(
    db: str | None = None,
    *,
    run_engine: bool = True,
    lease_timing: LeaseTiming | None = None,
    migrate: bool = True,
    api_token: str | None = None,
    max_body_bytes: int | None = None,
    data_roots: list[str] | None = None,
    allowed_trials: list[str] | None = None,
    cors_origins: list[str] | None = None,
    allowed_hosts: list[str] | None = None,
    bind_host: str | None = None,
    limits: list[str] | None = None,
) -> FastAPI:
    """The app for the store at ``db`` (a URL or SQLite path; default ``HPO_DATABASE_URL`` or ``hpo.db``).

    With ``run_engine`` the server is a candidate for the engine lease (``engine.lease``; ``lease_timing``,
    default from ``HPO_LEASE_*``): it runs the engine while it holds the lease, and serves the API either way;
    without, it serves the API only. ``migrate`` brings the schema up to date first. ``api_token`` (default
    ``HPO_API_TOKEN``) guards the mutating endpoints; request bodies over ``max_body_bytes`` (default
    ``HPO_MAX_BODY_BYTES``, else 1 MiB) are refused. Specs may only name data
    files under ``data_roots`` (default ``HPO_DATA_ROOTS``, paths separated by ``os.pathsep``, else the
    working directory). Specs may name a trial function to import only if it matches ``allowed_trials``
    (default ``HPO_ALLOWED_TRIALS``, comma-separated; else none). Browser pages on other origins may call the
    API only from ``cors_origins`` (default ``HPO_CORS_ORIGINS``, comma-separated; else none): without any, no
    CORS headers are sent, and cross-origin writes are refused whatever the token. Requests are answered only
    if their ``Host`` is a loopback name, ``bind_host`` (the address the server listens on, unless a wildcard)
    or one of ``allowed_hosts`` (default ``HPO_ALLOWED_HOSTS``, comma-separated; ``*.domain``, ``*`` for any).
    Specs may ask for sizes up to ``limits`` (``NAME=VALUE`` settings over ``spec_limits.SpecLimits``'
    defaults; default ``HPO_LIMITS``, comma-separated); a bad setting raises ``spec_limits.LimitError``.
    """
    url = database_url(db)
    if migrate:
        upgrade(url)
    db_engine = open_database(url)
    if run_engine:
        check_writable(db_engine)
    sessions = session_factory(db_engine)
    candidate = EngineCandidate(sessions, lease_timing or LeaseTiming.from_environment()) if run_engine else None
    settings = _settings(
        sessions,
        candidate,
        api_token=api_token,
        max_body_bytes=max_body_bytes,
        data_roots=data_roots,
        allowed_trials=allowed_trials,
        cors_origins=cors_origins,
        allowed_hosts=allowed_hosts,
        bind_host=bind_host,
        limits=limits,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if candidate is not None:
            candidate.start()
        yield
        if candidate is not None:
            candidate.stop()
        db_engine.dispose()

    app = FastAPI(
        title="completedp-hpo",
        summary="Evolutionary per-module HP search on Complete(d)P proxies, transferred to the target shape.",
        version=_version(),
        lifespan=lifespan,
        docs_url=None,  # served by docs.install, from installed assets rather than a CDN
        redoc_url=None,  # ReDoc loads its logo from a CDN whatever it is told
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
    app.add_middleware(hosts.TrustedHosts, patterns=settings.allowed_hosts)  # the outermost: first to see a request
    for module in (health, meta, searches, trials):
        app.include_router(module.router)
    errors.install(app)
    docs.install(app)
    dashboard.install(app)
    return app


def _settings(
    sessions: sessionmaker[Session],
    candidate: EngineCandidate | None,
    *,
    api_token: str | None,
    max_body_bytes: int | None,
    data_roots: list[str] | None,
    allowed_trials: list[str] | None,
    cors_origins: list[str] | None,
    allowed_hosts: list[str] | None,
    bind_host: str | None,
    limits: list[str] | None,
) -> ServerSettings:
    """Each setting as given to ``create_app``, else from its environment variable, else its default."""
    roots = data_roots if data_roots is not None else os.environ.get("HPO_DATA_ROOTS", os.getcwd()).split(os.pathsep)
    return ServerSettings(
        sessions=sessions,
        commands=Commands(sessions, wake=candidate.wake if candidate is not None else lambda: None),
        candidate=candidate,
        dashboard_answers=AnswerCache(),
        api_token=api_token if api_token is not None else os.environ.get("HPO_API_TOKEN") or None,
        data_roots=tuple(Path(root).expanduser().resolve() for root in roots if root),
        allowed_trials=_listed(allowed_trials, "HPO_ALLOWED_TRIALS"),
        cors_origins=tuple(origin.rstrip("/") for origin in _listed(cors_origins, "HPO_CORS_ORIGINS")),
        max_body_bytes=max_body_bytes or int(os.environ.get("HPO_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES)),
        allowed_hosts=hosts.allowed_hosts(bind_host, _listed(allowed_hosts, "HPO_ALLOWED_HOSTS")),
        limits=SpecLimits.parse(_listed(limits, "HPO_LIMITS")),
    )


def _listed(configured: list[str] | None, variable: str) -> tuple[str, ...]:
    """A list setting: ``configured`` if given, else the comma-separated environment ``variable``; no blanks."""
    values = configured if configured is not None else os.environ.get(variable, "").split(",")
    return tuple(value.strip() for value in values if value.strip())


def _version() -> str:
    from importlib.metadata import version

    return version("completedp-hpo")
