"""Response bodies of the API (request bodies are the search spec itself)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict


class Health(BaseModel):
    status: str
    database: str
    engine: str
    version: str


class SearchCreated(BaseModel):
    id: int
    status: str


class SearchSummary(BaseModel):
    id: int
    name: str
    status: str
    spec_hash: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None
    trials: dict[str, int]
    budget: int
    generations: int
    generations_completed: int
    best_loss: float | None


class TrialOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    generation: int
    index: int
    replicate: int
    seed: int
    status: str
    attempts: int
    loss: float | None
    train_loss: float | None
    vector: list[float]
    multipliers: dict
    hps: dict
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


class Problem(BaseModel):
    detail: str
