"""``/api/searches/{id}/trials``: a search's trials, filtered, sorted and paged; one trial with its curve."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query, status

from hpo_service.api.deps import MAX_ID, NOT_FOUND, Offset, SearchDep, SessionDep, TrialId
from hpo_service.api.schemas import CurvePoint, TrialDetail, TrialOut, TrialPage
from hpo_service.statuses import TrialKind, TrialStatus
from hpo_service.store import queries
from hpo_service.store.models import Trial

STAGE_NAME = {"max_length": 64, "pattern": r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"}  # as spec.StageSection.name
router = APIRouter(prefix="/api/searches/{search_id}/trials", tags=["trials"], responses=NOT_FOUND)


@router.get("", response_model=TrialPage)
def list_trials(
    search: SearchDep,
    session: SessionDep,
    generation: Annotated[int | None, Query(ge=0, le=MAX_ID)] = None,
    status: Annotated[TrialStatus | None, Query()] = None,
    kind: Annotated[TrialKind | None, Query(description="Only search, reevaluation or validation trials.")] = None,
    stage: Annotated[str | None, Query(description="Only this stage's trials.", **STAGE_NAME)] = None,
    sort: Annotated[
        Literal["asked", "loss"], Query(description="asked: generation, index; loss: best first")
    ] = "asked",
    limit: Annotated[int, Query(ge=1, le=5000)] = 100,
    offset: Offset = 0,
) -> TrialPage:
    """The search's trials, in the order they were asked or best loss first."""
    total, rows = queries.trials_page(session, search.id, limit, offset, generation, status, sort, kind, stage)
    return TrialPage(total=total, limit=limit, offset=offset, trials=[TrialOut.model_validate(r) for r in rows])


@router.get("/{trial_id}", response_model=TrialDetail)
def get_trial(search: SearchDep, trial_id: TrialId, session: SessionDep) -> TrialDetail:
    """One trial with its learning curve (streamed while it runs, complete once it has ended)."""
    trial = session.get(Trial, trial_id)
    if trial is None or trial.search_id != search.id:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"search {search.id} has no trial {trial_id}")
    curve = [CurvePoint.model_validate(p) for p in queries.curve(session, trial_id)]
    return TrialDetail(**TrialOut.model_validate(trial).model_dump(), curve=curve)
