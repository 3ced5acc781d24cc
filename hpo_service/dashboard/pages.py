"""The dashboard's pages: the searches overview at ``/`` and one page per search. They are static HTML shells;
their scripts read the API and the data endpoints and poll them while a search runs. A page that does not exist
is a 404 page in the same style (the API under ``/api`` answers JSON problems instead)."""

from __future__ import annotations

import html
from importlib.resources import files
from pathlib import Path
from string import Template

from fastapi import APIRouter
from fastapi.responses import FileResponse, HTMLResponse

from hpo_service.api.deps import MAX_ID, SessionDep
from hpo_service.store.models import Search

HERE = Path(__file__).resolve().parent
STATIC = HERE / "static"
TEMPLATES = HERE / "templates"
PLOTLY_JS = Path(str(files("plotly") / "package_data" / "plotly.min.js"))  # the copy plotly.py ships
API_PATHS = ("/api", "/static")  # what is under these is not a page: it keeps the API's JSON 404
MAX_ECHO = 200  # characters of an unknown path the 404 page repeats

router = APIRouter(include_in_schema=False)


@router.get("/", response_class=HTMLResponse)
def overview() -> HTMLResponse:
    return HTMLResponse(_render("overview.html"))


@router.get("/searches/{search_id}", response_class=HTMLResponse)
def search_page(search_id: str, session: SessionDep) -> HTMLResponse:
    """The search's page; any ``search_id`` that names no search (not a number, or unknown) is the 404 page."""
    number = int(search_id) if search_id.isascii() and search_id.isdigit() else 0
    search = session.get(Search, number) if 1 <= number <= MAX_ID else None
    if search is None:
        return not_found(f"There is no search #{search_id[:MAX_ECHO]}.")
    return HTMLResponse(_render("search.html", search_id=search.id, name=search.name))


@router.get("/static/plotly.min.js")
def plotly_js() -> FileResponse:
    return FileResponse(PLOTLY_JS, media_type="text/javascript", headers={"Cache-Control": "max-age=86400"})


def is_page(path: str) -> bool:
    """Whether ``path`` is the dashboard's to answer (with a page), not the API's."""
    return not any(path == prefix or path.startswith(f"{prefix}/") for prefix in API_PATHS)


def not_found(message: str) -> HTMLResponse:
    return HTMLResponse(_render("not_found.html", message=message), status_code=404)


def _render(template: str, **values: object) -> str:
    text = (TEMPLATES / template).read_text()
    return Template(text).substitute({key: html.escape(str(value)) for key, value in values.items()})
