"""The dashboard's data endpoints: each answers one chart, aggregated and down-sampled on the server, so that
a search of thousands of trials costs the browser no more than a small one."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from hpo_service.api.deps import NOT_FOUND, SearchDep, SessionDep, SettingsDep
from hpo_service.dashboard.cache import AnswerCache
from hpo_service.dashboard.checks import selection_panel, transfer_panel
from hpo_service.dashboard.curves import curves
from hpo_service.dashboard.outcomes import outcomes
from hpo_service.dashboard.schemas import Curves, MultiplierCharts, Outcomes, SelectionPanel, TransferPanel
from hpo_service.dashboard.space import multiplier_charts

router = APIRouter(prefix="/api/searches/{search_id}/dashboard", tags=["dashboard"], responses=NOT_FOUND)


def answer_cache(settings: SettingsDep) -> AnswerCache:
    return settings.dashboard_answers


CacheDep = Annotated[AnswerCache, Depends(answer_cache)]


@router.get("/outcomes", response_model=Outcomes)
def get_outcomes(search: SearchDep, session: SessionDep, cache: CacheDep) -> Outcomes:
    """The best loss so far against evaluations, and every generation's population (diverged, failed and stopped
    trials apart)."""
    return cache.answer(session, search.id, ("outcomes", search.id), lambda: outcomes(session, search.id))


@router.get("/multipliers", response_model=MultiplierCharts)
def get_multipliers(
    search: SearchDep,
    session: SessionDep,
    cache: CacheDep,
    top_k: Annotated[int, Query(ge=1, le=100, description="Candidates in the heatmap's mean and spread.")] = 10,
) -> MultiplierCharts:
    """The best candidates' log2 multipliers as a module × HP grid, and the trials over the multipliers."""
    return cache.answer(session, search.id, ("multipliers", search.id, top_k),
                        lambda: multiplier_charts(session, search, top_k))  # fmt: skip


@router.get("/curves", response_model=Curves)
def get_curves(search: SearchDep, session: SessionDep) -> Curves:
    """Learning curves of the running trials (as they stream in), of the best trials, and of the last stopped."""
    return curves(session, search.id)


@router.get("/selection", response_model=SelectionPanel)
def get_selection(search: SearchDep, session: SessionDep, cache: CacheDep) -> SelectionPanel:
    """Per stage, the re-trained candidates' search-time loss against their fresh-seed mean, and the choice."""
    return cache.answer(
        session, search.id, ("selection", search.id, search.status), lambda: selection_panel(session, search)
    )


@router.get("/transfer", response_model=TransferPanel)
def get_transfer(search: SearchDep, session: SessionDep, cache: CacheDep) -> TransferPanel:
    """Per validate target, each arm's seed-mean validation curve and final loss, the speed-up and verdict."""
    return cache.answer(
        session, search.id, ("transfer", search.id, search.status), lambda: transfer_panel(session, search)
    )
