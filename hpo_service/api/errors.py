"""Errors as answers: a store that cannot answer (a restarting server, a full disk, a read-only file) is a 503,
not a 500: the request changed nothing and can be retried. A request that fails validation is a 422 that
always renders and stays small, whatever the request held: what it echoes of the input is cut short, and
text that UTF-8 cannot encode (a lone surrogate) is escaped."""

from __future__ import annotations

import math
import reprlib
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import InterfaceError, OperationalError

from hpo_service.store.database import driver_message

RETRY_AFTER_S = 5
MAX_ERRORS = 20  # per response; the rest are counted
MAX_TEXT = 300  # characters of a message, or of an echoed input
_ECHO = reprlib.Repr()  # abridges containers and long values as it writes them, not after
_ECHO.maxlevel, _ECHO.maxdict, _ECHO.maxlist, _ECHO.maxtuple, _ECHO.maxset = 2, 4, 4, 4, 4
_ECHO.maxstring, _ECHO.maxlong, _ECHO.maxother = 80, 40, 80


def install(app: FastAPI) -> None:
    app.add_exception_handler(OperationalError, _store_unavailable)
    app.add_exception_handler(InterfaceError, _store_unavailable)
    app.add_exception_handler(RequestValidationError, _invalid_request)


async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    detail = [_bounded(error) for error in errors[:MAX_ERRORS]]
    if len(errors) > MAX_ERRORS:
        more = {"type": "more_errors", "loc": ["body"], "msg": f"and {len(errors) - MAX_ERRORS} more errors"}
        detail.append(more)
    return JSONResponse(status_code=422, content={"detail": detail})


def _bounded(error: dict[str, Any]) -> dict[str, Any]:
    """One validation error as JSON: its location, type and message, the input and context cut short."""
    bounded = {
        "type": _text(str(error.get("type", "invalid"))),
        "loc": [item if isinstance(item, int) else _text(str(item)) for item in error.get("loc", ())],
        "msg": _text(str(error.get("msg", ""))),
    }
    if "input" in error:
        bounded["input"] = _echo(error["input"])
    if isinstance(error.get("ctx"), dict):
        bounded["ctx"] = {_text(str(key)): _echo(value) for key, value in list(error["ctx"].items())[:8]}
    return bounded


def _echo(value: Any) -> Any:
    """A short, always-encodable rendering of an input: small scalars as they are, anything else abridged."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int) and abs(value) < 2**53:
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    if isinstance(value, str):
        return _text(value)
    return _text(_ECHO.repr(value))


def _text(text: str) -> str:
    """``text`` cut to ``MAX_TEXT`` characters, with what UTF-8 cannot encode escaped."""
    if len(text) > MAX_TEXT:
        text = f"{text[:MAX_TEXT]}… ({len(text)} characters)"
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


async def _store_unavailable(request: Request, exc: Exception) -> JSONResponse:
    reason = driver_message(exc)
    return JSONResponse(
        status_code=503,
        content={"detail": f"the database cannot serve this request now ({reason}); nothing was changed, retry later"},
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )
