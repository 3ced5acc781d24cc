"""The dashboard's data endpoints: each answers one chart, aggregated and down-sampled on the server, so that
a search of thousands of trials costs the browser no more than a small one."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from sqlalchemy.orm import Session

from hpo_service.api.deps import SearchId, db_session
from hpo_service.api.searches import NOT_FOUND, search_or_404
from hpo_service.dashboard.cache import AnswerCache
from hpo_service.dashboard.curves import curves
from hpo_service.dashboard.outcomes import outcomes
from hpo_service.dashboard.schemas import Curves, Multipliers, Outcomes
from hpo_service.dashboard.space import multipliers

router = APIRouter(prefix="/api/searches/{search_id}/dashboard", tags=["dashboard"], responses=NOT_FOUND)
SessionDep = Annotated[Session, Depends(db_session)]


def answer_cache(request: Request) -> AnswerCache:
    return request.app.state.dashboard_cache


CacheDep = Annotated[AnswerCache, Depends(answer_cache)]


@router.get("/outcomes", response_model=Outcomes)
def get_outcomes(search_id: SearchId, session: SessionDep, cache: CacheDep) -> Outcomes:
    """The best loss so far against evaluations, and every generation's population (diverged and failed apart)."""
    search_or_404(session, search_id)
    return cache.answer(session, search_id, ("outcomes", search_id), lambda: outcomes(session, search_id))


@router.get("/multipliers", response_model=Multipliers)
def get_multipliers(
    search_id: SearchId,
    session: SessionDep,
    cache: CacheDep,
    top_k: Annotated[int, Query(ge=1, le=100, description="Candidates in the heatmap's mean and spread.")] = 10,
) -> Multipliers:
    """The best candidates' log2 multipliers as a module × HP grid, and the trials over the multipliers."""
    search = search_or_404(session, search_id)
    return cache.answer(session, search_id, ("multipliers", search_id, top_k),
                        lambda: multipliers(session, search, top_k))  # fmt: skip


@router.get("/curves", response_model=Curves)
def get_curves(search_id: SearchId, session: SessionDep) -> Curves:
    """Learning curves of the running trials (as they stream in) and of the best trials."""
    search_or_404(session, search_id)
    return curves(session, search_id)
