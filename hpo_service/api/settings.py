"""What the routes are given: one typed object, built once by ``create_app`` from its arguments and the
environment, and handed to the routes as a dependency (``deps.SettingsDep``). No route reads ``app.state`` or
the environment itself, so whatever a request can depend on is named here."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session, sessionmaker
from starlette.applications import Starlette

from hpo_service.engine.commands import Commands

if TYPE_CHECKING:  # named for their types only: the dashboard's routes import the API's dependencies
    from hpo_service.api.spec_limits import SpecLimits
    from hpo_service.dashboard.cache import AnswerCache
    from hpo_service.engine.lease import EngineCandidate


@dataclass(frozen=True)
class ServerSettings:
    """The server's configuration and the parts of it that requests use, fixed for the app's life."""

    sessions: sessionmaker[Session]
    commands: Commands  # the engine's command surface: all that the API may ask of it
    candidate: EngineCandidate | None  # this server's bid for the engine lease, and its engine; None: API only
    dashboard_answers: AnswerCache  # the dashboard's aggregates, kept between polls
    api_token: str | None  # guards the mutating endpoints; None: nothing is checked
    data_roots: tuple[Path, ...]  # resolved folders that specs may make the workers read
    allowed_trials: tuple[str, ...]  # patterns of the trial functions specs may name
    cors_origins: tuple[str, ...]  # browser origins allowed to call the API, without a trailing slash
    max_body_bytes: int
    allowed_hosts: tuple[str, ...]  # what a request's Host may name (hosts.allowed_hosts): loopback and more
    limits: SpecLimits  # the largest sizes a spec may ask for (spec_limits)


def attach(app: Starlette, settings: ServerSettings) -> None:
    app.state.settings = settings


def settings_of(app: Starlette) -> ServerSettings:
    """The settings ``create_app`` built ``app`` with (the one thing it keeps on ``app.state``)."""
    return app.state.settings
