"""The dashboard's pages: the searches overview at ``/`` and one page per search. They are static HTML shells;
their scripts read the API and the data endpoints and poll them while a search runs."""

from __future__ import annotations

import html
from importlib.resources import files
from pathlib import Path
from string import Template

from fastapi import APIRouter
from fastapi.responses import FileResponse, HTMLResponse

from hpo_service.api.deps import SearchDep

HERE = Path(__file__).resolve().parent
STATIC = HERE / "static"
TEMPLATES = HERE / "templates"
PLOTLY_JS = Path(str(files("plotly") / "package_data" / "plotly.min.js"))  # the copy plotly.py ships

router = APIRouter(include_in_schema=False)


@router.get("/", response_class=HTMLResponse)
def overview() -> HTMLResponse:
    return HTMLResponse(_render("overview.html"))


@router.get("/searches/{search_id}", response_class=HTMLResponse)
def search_page(search: SearchDep) -> HTMLResponse:
    return HTMLResponse(_render("search.html", search_id=search.id, name=search.name))


@router.get("/static/plotly.min.js")
def plotly_js() -> FileResponse:
    return FileResponse(PLOTLY_JS, media_type="text/javascript", headers={"Cache-Control": "max-age=86400"})


def _render(template: str, **values: object) -> str:
    text = (TEMPLATES / template).read_text()
    return Template(text).substitute({key: html.escape(str(value)) for key, value in values.items()})
