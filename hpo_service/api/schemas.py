"""Response bodies of the API (the request body of a new search is the search spec itself)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from hpo_service.statuses import GenerationStatus, SearchStatus, TrialStatus


class Health(BaseModel):
    status: str = Field(examples=["ok"])
    database: str = Field(examples=["ok"])
    engine: str = Field(examples=["running"])
    version: str = Field(examples=["0.1.0"])


class SearchCreated(BaseModel):
    id: int = Field(examples=[1])
    status: SearchStatus = Field(examples=["queued"])


class SearchSummary(BaseModel):
    id: int = Field(examples=[1])
    name: str = Field(examples=["tiny-demo"])
    status: SearchStatus = Field(examples=["running"])
    commands: list[str] = Field(examples=[["pause", "cancel"]], description="The commands its status allows now.")
    spec_hash: str
    optimizer: str = Field(examples=["cma"])
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None
    trials: dict[TrialStatus, int] = Field(
        examples=[{"pending": 2, "running": 2, "succeeded": 8, "failed": 0, "diverged": 0, "cancelled": 0}]
    )
    ended: int = Field(examples=[8], description="Trials that reached a final status: what counts to the budget.")
    budget: int = Field(examples=[18], description="population × generations × replicates")
    generations: int = Field(examples=[3])
    generations_completed: int = Field(examples=[1])
    best_loss: float | None = Field(
        examples=[2.91], description="Lowest mean loss of a candidate whose replicates all succeeded (the export's)."
    )


class SearchPage(BaseModel):
    total: int
    limit: int
    offset: int
    searches: list[SearchSummary]


class GenerationOut(BaseModel):
    number: int = Field(examples=[0])
    status: GenerationStatus = Field(examples=["completed"])
    trials: int = Field(examples=[6])
    ended: int = Field(examples=[6], description="Trials that reached a final status.")
    best_loss: float | None = Field(examples=[2.92])
    median_loss: float | None = Field(examples=[2.93])
    diverged: int = Field(examples=[0])
    failed: int = Field(examples=[0])
    created_at: datetime
    finished_at: datetime | None


class TrialOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    generation: int
    index: int = Field(description="Position of the candidate within its generation.")
    replicate: int
    seed: int
    status: TrialStatus = Field(examples=["succeeded"])
    attempts: int
    loss: float | None = Field(description="Final validation loss; null unless the trial succeeded.")
    train_loss: float | None
    vector: list[float] = Field(description="The optimizer's coordinates (log2 multipliers).")
    multipliers: dict = Field(examples=[{"module": {"attn_q": {"lr": 0.5}}, "depth": {}, "residual": {}}])
    hps: dict = Field(description="Materialised values at the base shape, per module type.")
    steps: int | None
    tokens: int | None
    tokens_per_s: float | None
    wall_time_s: float | None
    node: str | None
    worker: str | None
    error: str | None
    started_at: datetime | None
    finished_at: datetime | None


class TrialPage(BaseModel):
    total: int
    limit: int
    offset: int
    trials: list[TrialOut]


class CurvePoint(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    step: int
    train_loss: float | None
    val_loss: float | None


class TrialDetail(TrialOut):
    curve: list[CurvePoint]


class ModelFamily(BaseModel):
    name: str = Field(examples=["gpt"])
    module_types: list[str]
    hps: list[str]
    residual_branches: list[str]
    parameterisations: list[str]
    optimizers: list[str]


class Meta(BaseModel):
    """The statuses the API answers with, so that a page or a client lists them without a copy of its own."""

    search_statuses: list[SearchStatus]
    trial_statuses: list[TrialStatus]


class Problem(BaseModel):
    detail: str
