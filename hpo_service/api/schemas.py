"""Response bodies of the API (the request body of a new search is the search spec itself)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator

from hpo_service.statuses import GenerationStatus, SearchStatus, TrialKind, TrialStatus


class Health(BaseModel):
    status: str = Field(examples=["ok"])
    database: str = Field(examples=["ok"])
    engine: str = Field(examples=["running"])
    version: str = Field(examples=["0.1.0"])


class SearchCreated(BaseModel):
    id: int = Field(examples=[1])
    status: SearchStatus = Field(examples=["queued"])


class Recommendation(BaseModel):
    arm: str = Field(examples=["per-module"], description="The validation arm the evidence supports.")
    reason: str = Field(examples=["per-module beat global beyond noise at every target"])


class SearchSummary(BaseModel):
    id: int = Field(examples=[1])
    name: str = Field(examples=["tiny-demo"])
    status: SearchStatus = Field(examples=["running"])
    commands: list[str] = Field(examples=[["pause", "cancel"]], description="The commands its status allows now.")
    spec_hash: str
    optimizer: str = Field(examples=["cma → trust_region"], description="Each stage's optimizer, in turn.")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None
    trials: dict[TrialStatus, int] = Field(
        examples=[
            {"pending": 2, "running": 2, "succeeded": 8, "failed": 0, "diverged": 0, "stopped": 0, "cancelled": 0}
        ]
    )
    ended: int = Field(examples=[8], description="Trials that reached a final status: what counts to the budget.")
    budget: int = Field(
        examples=[18],
        description="Every planned trial: each stage's population × generations × replicates, its re-evaluations "
        "(min(selection.top, its candidates) × selection.seeds) and the validation's targets × arms × seeds.",
    )
    generations: int = Field(
        examples=[3], description="Planned generations: each stage's, one per re-evaluation, one for validation."
    )
    generations_completed: int = Field(examples=[1])
    best_loss: float | None = Field(
        examples=[2.91],
        description="Lowest search-time mean loss of a candidate whose replicates all succeeded. A search with "
        "selection reports its result on fresh seeds instead: see selection_gap and the export's loss.",
    )
    stage: str | None = Field(
        examples=["per-module"],
        description="The current (or last) generation's stage, 'validation' for the transfer check, null before "
        "the first generation.",
    )
    kind: TrialKind | None = Field(examples=["search"], description="What the current (or last) generation does.")
    stages: list[str] = Field(examples=[["global", "per-module"]], description="A search without stages has one.")
    selection_gap: float | None = Field(
        examples=[-0.004],
        description="The last stage's selection gap (search-time loss minus fresh-seed mean of its choice).",
    )
    recommendation: Recommendation | None = Field(
        description="The validation arm the evidence supports (as in the export), once the transfer check has ended."
    )


class SearchPage(BaseModel):
    total: int
    limit: int
    offset: int
    searches: list[SearchSummary]


class GenerationOut(BaseModel):
    number: int = Field(examples=[0])
    stage: str | None = Field(examples=["global"], description="Null for the validation, which follows every stage.")
    kind: TrialKind = Field(examples=["search"])
    status: GenerationStatus = Field(examples=["completed"])
    trials: int = Field(examples=[6])
    ended: int = Field(examples=[6], description="Trials that reached a final status.")
    best_loss: float | None = Field(examples=[2.92])
    median_loss: float | None = Field(examples=[2.93])
    diverged: int = Field(examples=[0])
    failed: int = Field(examples=[0])
    stopped: int = Field(examples=[3], description="Trials the early-stopping rule stopped.")
    created_at: datetime
    finished_at: datetime | None


class TrialOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    generation: int
    index: int = Field(description="Position of the candidate within its generation.")
    replicate: int
    seed: int
    stage: str | None = Field(examples=["global"], description="Its stage; null for a validation trial.")
    kind: TrialKind = Field(examples=["search"])
    arm: str | None = Field(examples=["per-module"], description="A validation trial's arm.")
    target: dict | None = Field(
        examples=[{"index": 0, "width": 128}], description="A validation trial's target: its index and fields."
    )
    origin: dict | None = Field(
        examples=[{"generation": 1, "index": 3, "loss": 2.91}],
        description="A re-evaluation's search candidate: generation, index and search-time loss.",
    )
    status: TrialStatus = Field(examples=["succeeded"])
    attempts: int
    loss: float | None = Field(description="Final validation loss; null unless the trial succeeded.")
    train_loss: float | None
    vector: list[float] = Field(description="The optimizer's coordinates (log2 multipliers).")
    multipliers: dict = Field(examples=[{"module": {"attn_q": {"lr": 0.5}}, "depth": {}, "residual": {}}])
    hps: dict = Field(description="Materialised values at the base shape, per module type.")
    steps_trained: int = Field(
        validation_alias=AliasChoices("steps_trained", "steps"),
        description="Optimizer steps it trained: 0 while pending, its last reported step while it runs, where it "
        "ended (its last step, or where it diverged or was stopped) once ended.",
    )
    tokens: int | None
    tokens_per_s: float | None = Field(
        description="Training throughput after warm-up: the tokens of the steps after the first few (compiling) "
        "over the time those steps took, evaluations not counted."
    )
    wall_time_s: float | None
    node: str | None
    worker: str | None
    error: str | None
    started_at: datetime | None
    finished_at: datetime | None

    @field_validator("steps_trained", mode="before")
    @classmethod
    def _none_trained_yet(cls, steps: int | None) -> int:
        return steps or 0


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


class SelectionCandidate(BaseModel):
    generation: int
    index: int
    search_loss: float = Field(description="Its search-time mean loss.")
    losses: list[float] = Field(description="Its fresh-seed losses, of the runs that succeeded.")
    mean: float | None = Field(description="Their mean; null unless every fresh run succeeded.")
    sd: float | None
    trial_ids: list[int]


class SelectionStage(BaseModel):
    """A stage's fresh-seed selection: its top candidates by search-time loss, best fresh mean first."""

    stage: str = Field(examples=["global"])
    candidates: list[SelectionCandidate]
    chosen: SelectionCandidate | None = Field(description="The best fresh mean, once every candidate has ended.")
    gap: float | None = Field(description="The chosen candidate's search-time loss minus its fresh-seed mean.")


class ValidationTarget(BaseModel):
    index: int = Field(description="Its position in the spec's validate.targets.")
    label: str = Field(examples=["width=128 depth=4"])
    width: int
    depth: int
    batch_size: int
    tokens: int


class ValidationArm(BaseModel):
    name: str = Field(examples=["per-module"], description="per-module, global or base.")
    mean: float | None = Field(description="Mean final loss of its runs that succeeded.")
    sd: float | None
    losses: list[float]
    runs: int
    unfinished: int
    curve: list[tuple[float, float]] = Field(
        description="Seed-mean validation curve as [tokens, loss] points, once every run has ended."
    )


class ValidationEntry(BaseModel):
    """One target of the transfer check: each arm's losses, and the result's speed-up over the reference."""

    target: ValidationTarget
    arms: list[ValidationArm] = Field(description="The result first, then the reference (speedup_over).")
    speedup: float | None = Field(description="Tokens-to-loss speed-up of the first arm over speedup_over.")
    speedup_over: str | None
    speedup_sd: float | None = None
    speedups: list[float | None] = Field(default_factory=list, description="One per seed pair.")
    verdict: Literal["better", "worse", "within noise", "undetermined", "pending"] | None


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
