"""Where the search went in its space of log2 multipliers: the best candidates as a module × HP grid, and the
successful trials as lines over the coordinates (parallel coordinates).

Each stage of a staged search has its own space, so the charts show one stage: the latest that has begun (the
one the search is at, or its last)."""

from __future__ import annotations

import numpy as np
from sqlalchemy.orm import Session

from hpo_service.dashboard.sampling import evenly
from hpo_service.dashboard.schemas import Candidate, Heatmap, MultiplierCharts, Parallel
from hpo_service.spec import SearchSpace
from hpo_service.statuses import TrialKind
from hpo_service.store import queries
from hpo_service.store.models import Search

MAX_LINES = 300  # trials drawn in the parallel coordinates: the best half of them, then the rest by rank
MAX_AXES = 40  # coordinates drawn; beyond that, those most correlated with the loss
COLOUR_QUANTILE = 0.9  # the colour scale ends here: a few outliers do not wash out the rest
MIN_COLOUR_SPAN = 0.01  # nats/token: losses closer than this look alike, not at the scale's two ends
MIN_RELATIVE_COLOUR_SPAN = 0.005  # of the loss, for losses far from 1
RESIDUAL_COLUMN = "branch scale"


def multiplier_charts(session: Session, search: Search, top_k: int) -> MultiplierCharts:
    stage, space = _shown_stage(session, search)
    names = space.coordinates(search.spec.model.depth)
    return MultiplierCharts(
        stage=stage,
        bounds=space.log2_bounds,
        heatmap=_heatmap(session, search.id, stage, space, names, top_k),
        parallel=_parallel(session, search.id, stage, names),
    )


def _shown_stage(session: Session, search: Search) -> tuple[str | None, SearchSpace]:
    """The stage the charts show (None without stages: every search trial) and its search space."""
    stages = search.spec.plan_stages()
    if search.spec.stages is None:
        return None, stages[0][1]
    searched = [g.stage for g, _, _ in queries.generations(session, search.id) if g.kind == TrialKind.SEARCH]
    name = searched[-1] if searched else stages[0][0]
    return name, next(space for stage, space, _ in stages if stage == name)


def _cell(name: str) -> tuple[str, str]:
    """The (row, column) of a coordinate in the grid: module type × HP, block × HP, residual branch, or the
    one row of a tied (global) search."""
    kind, *rest = name.split(".")
    if kind == "global":
        return "all modules", rest[0]
    if kind == "module":
        return rest[0], rest[1]
    if kind == "depth":
        return f"block {rest[1]}", rest[0]
    return f"residual {rest[0]}", RESIDUAL_COLUMN


def _label(name: str) -> str:
    """An axis label: ``attn_q lr``, ``block 0 lr``, ``residual attn``."""
    row, column = _cell(name)
    return row if column == RESIDUAL_COLUMN else f"{row} {column}"


def _heatmap(
    session: Session, search_id: int, stage: str | None, space: SearchSpace, names: list[str], top_k: int
) -> Heatmap:
    cells = [_cell(name) for name in names]
    rows = list(dict.fromkeys(row for row, _ in cells))
    present = {column for _, column in cells}
    columns = [h for h in space.hps if h in present] + [RESIDUAL_COLUMN] * (RESIDUAL_COLUMN in present)
    top = queries.best_candidates(session, search_id, top_k, stage)
    vectors = queries.vectors(session, [c.trial_id for c in top])
    matrix = np.array([vectors[c.trial_id] for c in top], dtype=float).reshape(len(top), len(names))

    def grid(values: np.ndarray | None) -> list[list[float | None]]:
        table: list[list[float | None]] = [[None] * len(columns) for _ in rows]
        if values is not None:
            for (row, column), value in zip(cells, values, strict=True):
                table[rows.index(row)][columns.index(column)] = float(value)
        return table

    return Heatmap(
        rows=rows,
        columns=columns,
        best=grid(matrix[0] if top else None),
        mean=grid(matrix.mean(axis=0) if top else None),
        spread=grid(matrix.std(axis=0) if top else None),
        top_k=len(top),
        best_candidate=Candidate(**top[0]._mapping) if top else None,
    )


def _parallel(session: Session, search_id: int, stage: str | None, names: list[str]) -> Parallel:
    ranked = queries.ranked_trials(session, search_id, stage=stage)
    half = MAX_LINES // 2
    picked = ranked[:half] + [ranked[half + i] for i in evenly(len(ranked) - half, MAX_LINES - half)]
    vectors = queries.vectors(session, [t.id for t in picked])
    values = np.array([vectors[t.id] for t in picked], dtype=float).reshape(len(picked), len(names))
    losses = np.array([t.loss for t in picked], dtype=float)
    axes = _informative_axes(values, losses)
    return Parallel(
        axes=[_label(names[a]) for a in axes],
        axes_total=len(names),
        values=[values[:, a].round(3).tolist() for a in axes],  # a thousandth of an octave is plenty
        loss=losses.tolist(),
        trial_id=[t.id for t in picked],
        total=len(ranked),
        colour_range=colour_range([t.loss for t in ranked]) if ranked else None,
    )


def colour_range(losses: list[float]) -> tuple[float, float]:
    """The loss colour scale's ends: the lowest loss to the 90th percentile, widened about its middle to a
    minimum span, so that a few (nearly) equal losses get neighbouring colours, not the scale's two ends."""
    low, high = min(losses), float(np.quantile(losses, COLOUR_QUANTILE))
    span = max(MIN_COLOUR_SPAN, MIN_RELATIVE_COLOUR_SPAN * abs(low))
    if high - low >= span:
        return low, high
    middle = (low + high) / 2
    return middle - span / 2, middle + span / 2


def _informative_axes(values: np.ndarray, losses: np.ndarray) -> list[int]:
    """All coordinates, or, past ``MAX_AXES``, those whose values correlate most with the loss (in order)."""
    dimension = values.shape[1]
    if dimension <= MAX_AXES or len(losses) < 2:
        return list(range(min(dimension, MAX_AXES)))
    with np.errstate(invalid="ignore", divide="ignore"):
        centred = values - values.mean(axis=0)
        loss = losses - losses.mean()
        correlation = np.abs(centred.T @ loss) / (np.linalg.norm(centred, axis=0) * np.linalg.norm(loss))
    return sorted(np.argsort(-np.nan_to_num(correlation), kind="stable")[:MAX_AXES].tolist())
