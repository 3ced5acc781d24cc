"""``/api/health``: is the database reachable and the engine running."""

from __future__ import annotations

from importlib.metadata import version

from fastapi import APIRouter, Response, status
from sqlalchemy import text

from hpo_service.api.deps import SettingsDep
from hpo_service.api.schemas import Health
from hpo_service.store.database import driver_message

router = APIRouter(prefix="/api", tags=["health"])


@router.get("/health", response_model=Health, responses={503: {"model": Health}})
def health(settings: SettingsDep, response: Response) -> Health:
    try:
        with settings.sessions() as session:
            session.execute(text("SELECT 1"))
        database = "ok"
    except Exception as exc:
        database = f"error: {type(exc).__name__}: {driver_message(exc)}"
    engine = settings.engine
    if engine is None:
        engine_state = "off"
    elif engine.error:
        engine_state = f"error: {engine.error}"
    elif engine.store_error:
        engine_state = f"waiting for the database: {engine.store_error}"
    else:
        engine_state = "running" if engine.alive else "stopped"
    healthy = database == "ok" and engine_state in ("running", "off")
    if not healthy:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return Health(
        status="ok" if healthy else "degraded",
        database=database,
        engine=engine_state,
        version=version("completedp-hpo"),
    )
