"""The web dashboard, served by the controller: pages, their scripts, and the data endpoints they poll."""

from __future__ import annotations

import inspect

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException
from starlette.responses import Response

from hpo_service.dashboard import pages, routes


def install(app: FastAPI) -> None:
    """Serve the dashboard from ``app``: the pages at ``/``, their data under ``/api``, scripts at ``/static``;
    a path that is no page answers the dashboard's 404 page, while the API's keep their JSON."""
    app.include_router(pages.router)
    app.include_router(routes.router)
    app.mount("/static", StaticFiles(directory=pages.STATIC), name="static")
    api_handler = app.exception_handlers.get(HTTPException, http_exception_handler)

    async def page_not_found(request: Request, exc: Exception) -> Response:
        if isinstance(exc, HTTPException) and exc.status_code == 404 and pages.is_page(request.url.path):
            return pages.not_found(f"There is no page at {request.url.path[: pages.MAX_ECHO]}.")
        answer = api_handler(request, exc)
        return await answer if inspect.isawaitable(answer) else answer

    app.add_exception_handler(HTTPException, page_not_found)
