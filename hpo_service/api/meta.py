"""``/api/model-families``: what a spec may name (module types, HPs, parameterisations, optimizers);
``/api/meta``: the statuses searches and trials may be in."""

from __future__ import annotations

from typing import get_args

from fastapi import APIRouter

from hpo_service.api.schemas import Meta, ModelFamily
from hpo_service.spec import OptimizerName
from hpo_service.statuses import SearchStatus, TrialStatus
from trainer.hparams import HP_NAMES, RESIDUAL_BRANCHES
from trainer.model import MODULE_TYPES
from trainer.parameterisation import PARAMETERISATIONS

router = APIRouter(prefix="/api", tags=["meta"])


@router.get("/model-families", response_model=list[ModelFamily])
def model_families() -> list[ModelFamily]:
    """The trainer's model family and the names a search space may use."""
    return [
        ModelFamily(
            name="gpt",
            module_types=list(MODULE_TYPES),
            hps=list(HP_NAMES),
            residual_branches=list(RESIDUAL_BRANCHES),
            parameterisations=list(PARAMETERISATIONS),
            optimizers=list(get_args(OptimizerName)),
        )
    ]


@router.get("/meta", response_model=Meta)
def meta() -> Meta:
    """The statuses a search and a trial may be in (the dashboard's filters list them from here)."""
    return Meta(search_statuses=list(SearchStatus), trial_statuses=list(TrialStatus))
