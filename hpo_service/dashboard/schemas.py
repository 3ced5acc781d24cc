"""What the dashboard's data endpoints answer: one chart's data each, bounded in size, in columns (as Plotly
takes them). Losses are final validation losses in nats per token; multipliers are log2 (octaves)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class LossPoints(BaseModel):
    """Trials as points: ``x`` is the evaluation number or the generation, depending on the chart."""

    x: list[int] = []
    loss: list[float] = []
    trial_id: list[int] = []


class Marks(BaseModel):
    """Trials that have no loss to plot (diverged or failed), by generation."""

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


class Outcomes(BaseModel):
    """The evaluated trials: the best loss so far against evaluations, and the population per generation."""

    evaluations: int = Field(description="Trials evaluated so far (succeeded, diverged or failed).")
    best_so_far: LossPoints = Field(description="The evaluations that improved on the best loss, in order.")
    evaluated: LossPoints = Field(description="Successful evaluations; over the cap, each run's lowest and highest.")
    population: LossPoints = Field(description="Successful trials by generation; over the cap, spread by rank.")
    diverged: Marks
    failed: Marks
    generations: GenerationStats
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
    """Where the search went in its space of log2 multipliers: the heatmap and the parallel coordinates."""

    bounds: tuple[float, float] = Field(description="The search space's log2 bounds.")
    heatmap: Heatmap
    parallel: Parallel


class Curve(BaseModel):
    trial_id: int
    generation: int
    index: int
    replicate: int
    role: Literal["running", "best"]
    loss: float | None
    step: list[int] = Field(description="Optimizer steps of the train-loss points.")
    train_loss: list[float]
    val_step: list[int]
    val_loss: list[float]


class Curves(BaseModel):
    """Learning curves of the running trials (streamed while they train) and of the best trials."""

    curves: list[Curve]
