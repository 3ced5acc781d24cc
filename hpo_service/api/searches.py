"""``/api/searches``: submit, list, read and delete searches and their generations; pause, resume, cancel;
the fresh-seed selection and the transfer check; export."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Response, status
from pydantic import AfterValidator

from hpo_service.api import spec_body
from hpo_service.api.admission import AdmittedSpec
from hpo_service.api.auth import require_token
from hpo_service.api.deps import NOT_FOUND, CommandsDep, Offset, SearchDep, SearchId, SessionDep, SettingsDep
from hpo_service.api.schemas import (
    GenerationOut,
    Problem,
    SearchCreated,
    SearchPage,
    SearchSummary,
    SelectionStage,
    ValidationEntry,
)
from hpo_service.api.summaries import summaries
from hpo_service.engine.commands import CommandError, SearchNotFound
from hpo_service.export import NoResult, build_export
from hpo_service.selection import selection_report
from hpo_service.statuses import SEARCH_COMMANDS, SearchStatus
from hpo_service.store import queries, writes
from hpo_service.store.database import transaction
from hpo_service.validation import validation_report
from trainer.parameterisation import Shape

router = APIRouter(prefix="/api/searches", tags=["searches"])
AUTH = {401: {"model": Problem, "description": "HPO_API_TOKEN is set and the bearer token is missing or wrong."}}
CommandName = Literal[tuple(SEARCH_COMMANDS)]  # type: ignore[valid-type]


def _without_nul(text: str | None) -> str | None:
    """No database stores a NUL character in a string (PostgreSQL refuses it; SQLite's LIKE ends the pattern
    there, so that it would match every name)."""
    if text is not None and "\x00" in text:
        raise ValueError("must not contain a NUL character")
    return text


NameFilter = Annotated[
    str | None,
    Query(
        max_length=200,
        description="Only names containing this text, in any case (``%`` and ``_`` are plain characters).",
    ),
    AfterValidator(_without_nul),
]


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=SearchCreated,
    dependencies=[Depends(require_token)],
    openapi_extra=spec_body.OPENAPI,
    responses={**AUTH, 413: {"model": Problem, "description": "Body over the size limit."}},
)
def create_search(spec: AdmittedSpec, commands: CommandsDep) -> SearchCreated:
    """Submit a search spec (JSON or YAML); the engine starts it as soon as it can."""
    search = commands.create(spec)
    return SearchCreated(id=search.id, status=search.status)


@router.get("", response_model=SearchPage)
def list_searches(
    session: SessionDep,
    status: Annotated[SearchStatus | None, Query(description="Only searches in this status.")] = None,
    name: NameFilter = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    offset: Offset = 0,
) -> SearchPage:
    """Searches, newest first."""
    total, searches = queries.searches_page(session, status, name, limit, offset)
    return SearchPage(total=total, limit=limit, offset=offset, searches=summaries(session, searches))


@router.get("/{search_id}", response_model=SearchSummary, responses=NOT_FOUND)
def get_search(search: SearchDep, session: SessionDep) -> SearchSummary:
    """The search's status, its trials counted by status, the best loss so far and the commands it allows."""
    return summaries(session, [search])[0]


@router.get("/{search_id}/generations", response_model=list[GenerationOut], responses=NOT_FOUND)
def list_generations(search: SearchDep, session: SessionDep) -> list[GenerationOut]:
    """Per generation (a phase of the plan: a stage's search, its re-evaluation, or the validation): its trials,
    how many ended, best and median search-time loss, diverged, failed and stopped counts."""
    return [
        GenerationOut(
            number=g.number,
            stage=g.stage,
            kind=g.kind,
            status=g.status,
            trials=total,
            ended=ended,
            best_loss=g.best_loss,
            median_loss=g.median_loss,
            diverged=g.diverged,
            failed=g.failed,
            stopped=g.stopped,
            created_at=g.created_at,
            finished_at=g.finished_at,
        )
        for g, total, ended in queries.generations(session, search.id)
    ]


@router.get("/{search_id}/selection", response_model=list[SelectionStage], responses=NOT_FOUND)
def get_selection(search: SearchDep, session: SessionDep) -> list[dict]:
    """Per stage that re-trained its top candidates on fresh seeds: their search-time losses against their
    fresh-seed means, the one chosen and the gap between its two losses; [] before any re-evaluation."""
    return selection_report(session, search)


@router.get("/{search_id}/validation", response_model=list[ValidationEntry], responses=NOT_FOUND)
def get_validation(search: SearchDep, session: SessionDep) -> list[dict]:
    """Per validate target with trials: each arm's final losses and seed-mean curve, the result's tokens-to-loss
    speed-up over the reference arm and the verdict; [] before the transfer check. The arm the evidence supports
    is the search summary's recommendation."""
    return validation_report(session, search)


@router.post(
    "/{search_id}/{command}",
    response_model=SearchCreated,
    dependencies=[Depends(require_token)],
    responses={**NOT_FOUND, **AUTH, 409: {"model": Problem, "description": "Not possible in the search's status."}},
)
def command_search(search: SearchDep, command: CommandName, commands: CommandsDep) -> SearchCreated:
    """Pause (running trials finish, no new ones start), resume, or cancel (running trials are stopped)."""
    try:
        changed = commands.apply(search.id, command)
    except CommandError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    return SearchCreated(id=changed.id, status=changed.status)


@router.delete(
    "/{search_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    dependencies=[Depends(require_token)],
    responses={
        **NOT_FOUND,
        **AUTH,
        409: {"model": Problem, "description": "The search has not ended, or its trials are still being stopped."},
    },
)
def delete_search(search_id: SearchId, settings: SettingsDep) -> Response:
    """Delete a search that has ended (cancel an active one first), with its generations, trials, their
    learning curves and its optimizer state."""
    try:
        with transaction(settings.sessions) as session:
            writes.delete_search(session, search_id)
    except SearchNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
    except CommandError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/{search_id}/export",
    responses={
        **NOT_FOUND,
        409: {"model": Problem, "description": "No candidate has succeeded yet."},
        200: {"description": "The export; its JSON Schema is trainer/export.schema.json."},
    },
)
def export_search(
    search: SearchDep,
    session: SessionDep,
    width: Annotated[int | None, Query(ge=1, le=1_000_000)] = None,
    depth: Annotated[int | None, Query(ge=1, le=100_000)] = None,
    batch_size: Annotated[int | None, Query(ge=1, le=100_000_000)] = None,
    tokens: Annotated[int | None, Query(ge=1, le=10**16)] = None,
) -> dict:
    """The best candidate's per-module HPs, with provenance, materialised for a target shape (default: the
    proxy's). Unset target fields keep the proxy's value."""
    base = search.spec.train_config().base_shape()
    target = Shape(
        width=width or base.width,
        depth=depth or base.depth,
        batch_size=batch_size or base.batch_size,
        tokens=tokens or base.tokens,
    )
    try:
        return build_export(session, search, target)
    except NoResult as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
