"""The API's documentation page, ``/docs`` (Swagger UI), with its script, style and icon served by this server
from the copies the ``fastapi-offline`` package ships, not from a CDN: the page works on a machine without
internet access, as the dashboard does with plotly's. There is no ``/redoc``: ReDoc's bundle loads its logo
from Redocly's CDN whatever it is told."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS = Path(str(files("fastapi_offline") / "static"))  # swagger-ui-bundle.js, swagger-ui.css, favicon.png
ASSETS_PATH = "/docs/assets"


def install(app: FastAPI) -> None:
    """Serve the documentation page of ``app`` (made with ``docs_url=None, redoc_url=None``) and its assets."""
    app.mount(ASSETS_PATH, StaticFiles(directory=ASSETS), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def swagger_ui(request: Request) -> HTMLResponse:
        assets = _root(request) + ASSETS_PATH
        return get_swagger_ui_html(
            openapi_url=_root(request) + app.openapi_url,
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{assets}/swagger-ui-bundle.js",
            swagger_css_url=f"{assets}/swagger-ui.css",
            swagger_favicon_url=f"{assets}/favicon.png",
        )


def _root(request: Request) -> str:
    """The path the app is mounted under behind a proxy (``--root-path``), empty by default."""
    return request.scope.get("root_path", "")
