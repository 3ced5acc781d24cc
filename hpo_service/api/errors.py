"""A store that cannot answer (a restarting server, a full disk, a read-only file) is a 503, not a 500: the
request changed nothing and can be retried."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import InterfaceError, OperationalError

from hpo_service.store.database import driver_message

RETRY_AFTER_S = 5


def install(app: FastAPI) -> None:
    app.add_exception_handler(OperationalError, _store_unavailable)
    app.add_exception_handler(InterfaceError, _store_unavailable)


async def _store_unavailable(request: Request, exc: Exception) -> JSONResponse:
    reason = driver_message(exc)
    return JSONResponse(
        status_code=503,
        content={"detail": f"the database cannot serve this request now ({reason}); nothing was changed, retry later"},
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )
