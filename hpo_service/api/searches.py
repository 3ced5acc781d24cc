"""``/api/searches``: submit, list and read searches and their generations; pause, resume, cancel; export."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

import yaml
from fastapi import APIRouter, Depends, HTTPException, Query, Request, status
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from sqlalchemy.orm import Session

from hpo_service.api.auth import require_token
from hpo_service.api.deps import Offset, SearchId, commands, db_session
from hpo_service.api.schemas import GenerationOut, Problem, SearchCreated, SearchPage, SearchSummary
from hpo_service.engine.commands import CommandError, Commands, SearchNotFound
from hpo_service.engine.entrypoints import EntrypointError, check_allowed, load_trial
from hpo_service.export import NoResult, build_export
from hpo_service.spec import SearchSpec
from hpo_service.store import queries
from hpo_service.store.models import SEARCH_STATUSES, Search
from trainer.data import source_path
from trainer.parameterisation import Shape

router = APIRouter(prefix="/api/searches", tags=["searches"])
SessionDep = Annotated[Session, Depends(db_session)]
CommandsDep = Annotated[Commands, Depends(commands)]
NOT_FOUND = {404: {"model": Problem, "description": "No search with this id."}}
AUTH = {401: {"model": Problem, "description": "HPO_API_TOKEN is set and the bearer token is missing or wrong."}}
YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml")
SPEC_BODY = {
    "requestBody": {
        "required": True,
        "description": "A search spec, as JSON or as YAML (Content-Type: application/yaml).",
        "content": {
            "application/json": {
                "schema": {"$ref": "#/components/schemas/SearchSpec"},
                "example": {
                    "name": "tiny-demo",
                    "model": {"width": 64, "depth": 2, "head_dim": 16, "seq_len": 64, "vocab_size": 256},
                    "training": {"batch_size": 16, "steps": 60, "warmup_steps": 6, "data": "builtin:python-stdlib"},
                    "search_space": {"modules": "all", "hps": ["lr", "init_std", "weight_decay"]},
                    "optimizer": {"name": "cma", "population": 6, "generations": 3, "seed": 0},
                    "execution": {"parallel": 2, "cpus_per_trial": 1, "max_retries": 1, "timeout_s": 600},
                },
            },
            "application/yaml": {"schema": {"type": "string"}},
        },
    }
}


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=SearchCreated,
    dependencies=[Depends(require_token)],
    openapi_extra=SPEC_BODY,
    responses={**AUTH, 413: {"model": Problem, "description": "Body over the size limit."}},
)
async def create_search(request: Request, commands: CommandsDep) -> SearchCreated:
    """Submit a search spec (JSON or YAML); the engine starts it as soon as it can."""
    spec = _parse_spec(await request.body(), request.headers.get("content-type", ""))
    _trial_allowed(spec, request.app.state.allowed_trials)
    search = commands.create(_within_data_roots(spec, request.app.state.data_roots))
    return SearchCreated(id=search.id, status=search.status)


def _parse_spec(body: bytes, content_type: str) -> SearchSpec:
    is_yaml = content_type.split(";")[0].strip().lower() in YAML_TYPES
    try:
        data = yaml.safe_load(body) if is_yaml else json.loads(body)
    except (ValueError, yaml.YAMLError) as exc:
        kind = "YAML" if is_yaml else "JSON"
        message = f"malformed {kind}: {exc}".replace("\n", " ")
        raise RequestValidationError([{"type": "malformed", "loc": ("body",), "msg": message, "input": None}]) from None
    if not isinstance(data, dict):
        raise RequestValidationError([{"type": "dict_type", "loc": ("body",), "msg": "the spec must be an object"}])
    try:
        return SearchSpec.model_validate(data)
    except ValidationError as exc:
        errors = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False, include_context=False)]
        raise RequestValidationError(errors) from None


def _trial_allowed(spec: SearchSpec, patterns: list[str]) -> None:
    """A spec may name a trial function to import only if the server's own configuration allows that name."""
    name = spec.execution.trial
    if name is None:
        return
    try:
        check_allowed(name, patterns)
        load_trial(name)
    except EntrypointError as exc:
        error = {"type": "trial", "loc": ("body", "execution", "trial"), "msg": str(exc)}
        raise RequestValidationError([error]) from None


def _within_data_roots(spec: SearchSpec, roots: list[Path]) -> SearchSpec:
    """A spec may only make the workers read files under the server's data roots (symlinks resolved). The
    path is stored absolute, so that workers, whatever their working directory, read the file checked here."""
    data = spec.training.data
    path = source_path(data)
    if path is None:
        return spec
    resolved = path.expanduser().resolve()
    if not any(resolved.is_relative_to(root) for root in roots):
        allowed = ", ".join(str(root) for root in roots) or "none"
        message = f"reads {resolved}, outside the server's data roots ({allowed}; see HPO_DATA_ROOTS)"
        raise RequestValidationError([{"type": "data_root", "loc": ("body", "training", "data"), "msg": message}])
    kind, _, rest = data.partition(":")
    dtype = rest.rpartition(":")[2] if kind == "tokens" else ""
    absolute = f"{kind}:{resolved}" + (f":{dtype}" if dtype in ("uint16", "uint32") else "")
    return spec.model_copy(update={"training": spec.training.model_copy(update={"data": absolute})})


@router.get("", response_model=SearchPage)
def list_searches(
    session: SessionDep,
    status: Annotated[Literal[SEARCH_STATUSES] | None, Query(description="Only searches in this status.")] = None,  # type: ignore[valid-type]
    name: Annotated[str | None, Query(max_length=200, description="Only names containing this.")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    offset: Offset = 0,
) -> SearchPage:
    """Searches, newest first."""
    total, searches = queries.searches_page(session, status, name, limit, offset)
    return SearchPage(total=total, limit=limit, offset=offset, searches=summaries(session, searches))


@router.get("/{search_id}", response_model=SearchSummary, responses=NOT_FOUND)
def get_search(search_id: SearchId, session: SessionDep) -> SearchSummary:
    """The search's status, its trials counted by status and the best loss so far."""
    return summaries(session, [search_or_404(session, search_id)])[0]


@router.get("/{search_id}/generations", response_model=list[GenerationOut], responses=NOT_FOUND)
def list_generations(search_id: SearchId, session: SessionDep) -> list[GenerationOut]:
    """Per generation: its trials, how many ended, best and median loss, diverged and failed counts."""
    search_or_404(session, search_id)
    return [
        GenerationOut(
            number=g.number,
            status=g.status,
            trials=total,
            ended=ended,
            best_loss=g.best_loss,
            median_loss=g.median_loss,
            diverged=g.diverged,
            failed=g.failed,
            created_at=g.created_at,
            finished_at=g.finished_at,
        )
        for g, total, ended in queries.generations(session, search_id)
    ]


@router.post(
    "/{search_id}/{command}",
    response_model=SearchCreated,
    dependencies=[Depends(require_token)],
    responses={**NOT_FOUND, **AUTH, 409: {"model": Problem, "description": "Not possible in the search's status."}},
)
def command_search(
    search_id: SearchId, command: Literal["pause", "resume", "cancel"], commands: CommandsDep
) -> SearchCreated:
    """Pause (running trials finish, no new ones start), resume, or cancel (running trials are stopped)."""
    try:
        search = commands.apply(search_id, command)
    except SearchNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
    except CommandError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    return SearchCreated(id=search.id, status=search.status)


@router.get(
    "/{search_id}/export",
    responses={
        **NOT_FOUND,
        409: {"model": Problem, "description": "No candidate has succeeded yet."},
        200: {"description": "The export; its JSON Schema is trainer/export.schema.json."},
    },
)
def export_search(
    search_id: SearchId,
    session: SessionDep,
    width: Annotated[int | None, Query(ge=1, le=1_000_000)] = None,
    depth: Annotated[int | None, Query(ge=1, le=100_000)] = None,
    batch_size: Annotated[int | None, Query(ge=1, le=100_000_000)] = None,
    tokens: Annotated[int | None, Query(ge=1, le=10**16)] = None,
) -> dict:
    """The best candidate's per-module HPs, with provenance, materialised for a target shape (default: the
    proxy's). Unset target fields keep the proxy's value."""
    search = search_or_404(session, search_id)
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


def search_or_404(session: Session, search_id: int) -> Search:
    search = session.get(Search, search_id)
    if search is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no search with id {search_id}")
    return search


def summaries(session: Session, searches: list[Search]) -> list[SearchSummary]:
    ids = [s.id for s in searches]
    counts, best = queries.trial_counts(session, ids), queries.best_losses(session, ids)
    completed = queries.generations_completed(session, ids)
    result = []
    for search in searches:
        optimizer = search.spec.optimizer
        result.append(
            SearchSummary(
                id=search.id,
                name=search.name,
                status=search.status,
                spec_hash=search.spec_hash,
                optimizer=optimizer.name,
                created_at=search.created_at,
                started_at=search.started_at,
                finished_at=search.finished_at,
                error=search.error,
                trials=counts[search.id],
                budget=optimizer.population * optimizer.generations * optimizer.replicates,
                generations=optimizer.generations,
                generations_completed=completed[search.id],
                best_loss=best[search.id],
            )
        )
    return result
