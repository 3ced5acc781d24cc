"""The web dashboard, served by the controller: pages, their scripts, and the data endpoints they poll."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from hpo_service.dashboard import pages, routes


def install(app: FastAPI) -> None:
    """Serve the dashboard from ``app``: the pages at ``/``, their data under ``/api``, scripts at ``/static``."""
    app.include_router(pages.router)
    app.include_router(routes.router)
    app.mount("/static", StaticFiles(directory=pages.STATIC), name="static")
