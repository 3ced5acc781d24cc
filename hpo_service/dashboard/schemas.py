"""What the dashboard's data endpoints answer: one chart's data each, bounded in size, in columns (as Plotly
takes them). Losses are final validation losses in nats per token; multipliers are log2 (octaves)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from hpo_service.api import schemas as api
from hpo_service.statuses import TrialKind


class LossPoints(BaseModel):
    """Trials as points: ``x`` is the evaluation number or the generation, depending on the chart."""

    x: list[int] = []
    loss: list[float] = []
    trial_id: list[int] = []


class Marks(BaseModel):
    """Trials that have no loss to plot (diverged, failed, or stopped early), by generation."""

    generation: list[int] = []
    trial_id: list[int] = []
    count: int = Field(0, description="All such trials; the lists may hold a sample of them.")


class GenerationStats(BaseModel):
    number: list[int] = []
    best: list[float | None] = []
    median: list[float | None] = []
    succeeded: list[int] = []
    diverged: list[int] = []
    failed: list[int] = []
    stopped: list[int] = []


class Phase(BaseModel):
    """Consecutive generations of one stage and kind: a stage's search, its re-evaluation, or the validation."""

    kind: TrialKind
    stage: str | None = Field(description="Null for the validation, which follows every stage.")
    first: int = Field(description="Its first generation.")
    last: int = Field(description="Its last generation so far.")
    first_evaluation: int | None = Field(
        description="A search phase's first evaluation (the best-loss chart's x); null before one has ended."
    )


class Outcomes(BaseModel):
    """The evaluated search trials: the best loss so far against evaluations, and the population per generation;
    re-evaluations apart, and validations (at other shapes) not at all."""

    evaluations: int = Field(description="Search trials evaluated so far (succeeded, diverged, failed or stopped).")
    best_so_far: LossPoints = Field(description="The evaluations that improved on the best loss, in order.")
    evaluated: LossPoints = Field(description="Successful evaluations; over the cap, each run's lowest and highest.")
    population: LossPoints = Field(description="Successful trials by generation; over the cap, spread by rank.")
    diverged: Marks
    failed: Marks
    stopped: Marks = Field(description="Stopped by the early-stopping rule: never a candidate, never the best.")
    generations: GenerationStats
    reevaluated: LossPoints = Field(description="Fresh-seed runs of the candidates selection re-trained.")
    phases: list[Phase] = Field(description="Where each stage, re-evaluation and validation lies, in order.")
    sampled: bool = Field(description="Whether some points were left out to keep the answer small.")


class Candidate(BaseModel):
    generation: int
    index: int
    loss: float = Field(description="Mean loss over the candidate's replicates.")
    trial_id: int


class Heatmap(BaseModel):
    """The search space as a grid: rows are module types (then blocks and residual branches), columns HPs."""

    rows: list[str]
    columns: list[str]
    best: list[list[float | None]] = Field(description="The best candidate's log2 multipliers; null: not searched.")
    mean: list[list[float | None]] = Field(description="Mean over the top-k candidates.")
    spread: list[list[float | None]] = Field(description="Standard deviation over the top-k candidates.")
    top_k: int = Field(description="Candidates in the mean and spread.")
    best_candidate: Candidate | None


class Parallel(BaseModel):
    """Successful trials over the multipliers: the best half of the lines, and the rest spread by rank."""

    axes: list[str] = Field(description="Coordinates shown; over the cap, those most correlated with the loss.")
    axes_total: int
    values: list[list[float]] = Field(description="Per axis, one log2 multiplier per trial.")
    loss: list[float]
    trial_id: list[int]
    total: int = Field(description="Successful trials in all.")
    colour_range: tuple[float, float] | None = Field(
        description="The colour scale's ends: the lowest loss and the 90th percentile, widened about their middle "
        "to at least 0.01 nats/token (or 0.5 % of the loss) when the losses are closer."
    )


class MultiplierCharts(BaseModel):
    """Where the search went in its space of log2 multipliers: the heatmap and the parallel coordinates. A staged
    search shows its latest stage, in that stage's coordinates (relative to its centre, the previous choice)."""

    stage: str | None = Field(description="The stage shown; null for a search without stages.")
    bounds: tuple[float, float] = Field(description="The search space's log2 bounds.")
    heatmap: Heatmap
    parallel: Parallel


class Curve(BaseModel):
    trial_id: int
    generation: int
    index: int
    replicate: int
    role: Literal["running", "best", "stopped"]
    kind: TrialKind = Field(description="The best and the stopped are search trials; a running one may be any kind.")
    arm: str | None = Field(description="A validation trial's arm.")
    loss: float | None
    stopped_at: int | None = Field(description="The step a stopped trial stopped at: where its curve ends.")
    step: list[int] = Field(description="Optimizer steps of the train-loss points.")
    train_loss: list[float]
    val_step: list[int]
    val_loss: list[float]


class Curves(BaseModel):
    """Learning curves of the running trials (streamed while they train), of the best trials, and of the trials
    the early-stopping rule stopped last."""

    curves: list[Curve]


class SelectionCandidate(api.SelectionCandidate):
    chosen: bool


class StageSelection(BaseModel):
    """One stage's fresh-seed selection, and a sentence saying where it stands or what it chose."""

    stage: str
    state: Literal["pending", "running", "chosen", "none chosen", "not run"]
    candidates: list[SelectionCandidate] = Field(description="Best fresh mean first.")
    gap: float | None = Field(description="The chosen candidate's search-time loss minus its fresh-seed mean.")
    summary: str


class SelectionPanel(BaseModel):
    """Per stage, the re-trained candidates' search-time loss against their fresh-seed mean; off without
    selection."""

    enabled: bool
    top: int
    seeds: int
    stages: list[StageSelection] = Field(description="Every stage, in order.")


class ArmCheck(BaseModel):
    """One arm at one target: its final losses and its seed-mean validation curve."""

    name: str
    mean: float | None
    sd: float | None
    losses: list[float]
    runs: int
    unfinished: int
    tokens: list[float] = Field(description="The seed-mean curve's x, once every run has ended.")
    loss: list[float]
    summary: str


class TargetCheck(BaseModel):
    """One ``validate`` target: its arms, the result's speed-up over the reference, and the verdict."""

    index: int
    label: str
    arms: list[ArmCheck] = Field(description="The result first, then the reference; none before it started.")
    speedup: float | None
    speedup_sd: float | None
    speedup_over: str | None
    verdict: str | None
    summary: str


class Recommendation(BaseModel):
    arm: str
    reason: str


class TransferPanel(BaseModel):
    """The transfer check: each target's arms, speed-up and verdict, and the arm the evidence supports; off
    without a ``validate`` section."""

    enabled: bool
    state: Literal["off", "pending", "running", "done", "not run"]
    targets: list[TargetCheck]
    recommendation: Recommendation | None
    summary: str
