"""``/api/health``: is the database reachable, which role this server plays, and is its engine running.

A standby or API-only server is healthy (200) whoever holds the engine lease: a load balancer keeps sending
it reads. Only a server whose own database or engine is in trouble answers 503.
"""

from __future__ import annotations

from datetime import datetime
from importlib.metadata import version

from fastapi import APIRouter, Response, status
from pydantic import BaseModel, Field
from sqlalchemy import text

from hpo_service.api.deps import SettingsDep
from hpo_service.api.schemas import Health
from hpo_service.engine.lease import LEASE, EngineCandidate, ServerRole
from hpo_service.store import queries
from hpo_service.store.database import driver_message

router = APIRouter(prefix="/api", tags=["health"])


class LeaseHolder(BaseModel):
    """The server that holds the engine lease, or last held it."""

    host: str = Field(examples=["controller-1"])
    pid: int = Field(examples=[4242])
    this_server: bool
    acquired_at: datetime
    renewed_at: datetime
    expires_in_s: float = Field(description="by the database's clock; negative: expired, no engine holds it")


class ServerHealth(Health):
    role: ServerRole = Field(description="holder: runs the engine; standby: takes over if it dies; api-only")
    lease: LeaseHolder | None = Field(description="who holds the engine lease; null if no server ever took it")


@router.get("/health", response_model=ServerHealth, responses={503: {"model": ServerHealth}})
def health(settings: SettingsDep, response: Response) -> ServerHealth:
    candidate = settings.candidate
    lease = None
    try:
        with settings.sessions() as session:
            session.execute(text("SELECT 1"))
            lease = queries.lease(session, LEASE)
        database = "ok"
    except Exception as exc:
        database = f"error: {type(exc).__name__}: {driver_message(exc)}"
    engine = _engine_state(candidate)
    healthy = database == "ok" and engine in ("running", "standby", "off")
    if not healthy:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return ServerHealth(
        status="ok" if healthy else "degraded",
        database=database,
        engine=engine,
        version=version("completedp-hpo"),
        role=ServerRole.API_ONLY if candidate is None else candidate.role,
        lease=None if lease is None else _holder(lease, candidate),
    )


def _engine_state(candidate: EngineCandidate | None) -> str:
    if candidate is None:
        return "off"
    engine = candidate.engine
    if engine is None:
        return f"error: {candidate.error}" if candidate.error else "standby"
    if engine.error:
        return f"error: {engine.error}"
    if engine.store_error:
        return f"waiting for the database: {engine.store_error}"
    return "running" if engine.alive else "stopped"


def _holder(lease: queries.LeaseState, candidate: EngineCandidate | None) -> LeaseHolder:
    this_server = candidate is not None and lease.holder == candidate.holder
    return LeaseHolder(
        host=lease.host,
        pid=lease.pid,
        this_server=this_server,
        acquired_at=lease.acquired_at,
        renewed_at=lease.renewed_at,
        expires_in_s=round(lease.expires_in_s, 3),
    )
