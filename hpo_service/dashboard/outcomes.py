"""The evaluated trials of a search, aggregated for two charts: the best loss so far against evaluations, and
the population of each generation (diverged, failed and stopped trials apart, since they have no loss).

Only search trials are candidates. A stage's re-evaluation (its top candidates on fresh seeds) is drawn apart in
its own generation; the validation trains at other shapes, so its losses are not drawn here at all. ``phases``
say where each stage, re-evaluation and validation lies, for the charts to mark."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

from sqlalchemy.orm import Session

from hpo_service.dashboard.sampling import envelope, evenly
from hpo_service.dashboard.schemas import GenerationStats, LossPoints, Marks, Outcomes, Phase
from hpo_service.statuses import TrialKind, TrialStatus
from hpo_service.store import queries

MAX_EVALUATED = 1000  # points of the loss-against-evaluations scatter
MAX_POPULATION = 1500  # population points; as many marks of each status in NO_LOSS
# Evaluated, but with no loss to plot: each status is marked apart (a stopped trial never trained to its end, so
# it has no final loss; what the optimizer is told for it is a prediction, not a result to draw).
NO_LOSS = (TrialStatus.DIVERGED, TrialStatus.FAILED, TrialStatus.STOPPED)


@dataclass
class _Generation:
    succeeded: list[tuple[float, int]] = field(default_factory=list)  # (loss, trial id)
    no_loss: dict[str, list[int]] = field(default_factory=lambda: {status: [] for status in NO_LOSS})


def outcomes(session: Session, search_id: int) -> Outcomes:
    rows = queries.evaluations(session, search_id, TrialKind.SEARCH)
    phases = _phases(session, search_id)
    phase_of = {g: phase for phase in phases for g in range(phase.first, phase.last + 1)}
    best_so_far, evaluated = LossPoints(), []
    best = math.inf
    generations: dict[int, _Generation] = {}
    for number, row in enumerate(rows, start=1):
        phase = phase_of.get(row.generation)
        if phase is not None and phase.first_evaluation is None:
            phase.first_evaluation = number
        generation = generations.setdefault(row.generation, _Generation())
        if row.status != TrialStatus.SUCCEEDED:
            generation.no_loss[row.status].append(row.id)
            continue
        generation.succeeded.append((row.loss, row.id))
        evaluated.append((number, row.loss, row.id))
        if row.loss < best:
            best = row.loss
            _append(best_so_far, number, row.loss, row.id)
    shown = LossPoints()
    for i in envelope([loss for _, loss, _ in evaluated], MAX_EVALUATED // 2):
        _append(shown, *evaluated[i])
    population, marks, stats = _population(generations)
    fresh = [r for r in queries.evaluations(session, search_id, TrialKind.REEVALUATION) if r.loss is not None]
    reevaluated = LossPoints()
    for i in evenly(len(fresh), MAX_POPULATION):
        _append(reevaluated, fresh[i].generation, fresh[i].loss, fresh[i].id)
    return Outcomes(
        evaluations=len(rows),
        best_so_far=best_so_far,
        evaluated=shown,
        population=population,
        **marks,
        generations=stats,
        reevaluated=reevaluated,
        phases=phases,
        sampled=len(shown.x) < len(evaluated)
        or len(population.x) < sum(len(g.succeeded) for g in generations.values())
        or any(len(m.trial_id) < m.count for m in marks.values())
        or len(reevaluated.x) < len(fresh),
    )


def _phases(session: Session, search_id: int) -> list[Phase]:
    """The search's generations, consecutive ones of the same stage and kind merged."""
    phases: list[Phase] = []
    for generation, _, _ in queries.generations(session, search_id):
        last = phases[-1] if phases else None
        if last is not None and (last.kind, last.stage) == (generation.kind, generation.stage):
            last.last = generation.number
        else:
            phases.append(
                Phase(
                    kind=generation.kind,
                    stage=generation.stage,
                    first=generation.number,
                    last=generation.number,
                    first_evaluation=None,
                )
            )
    return phases


def _population(generations: dict[int, _Generation]) -> tuple[LossPoints, dict[str, Marks], GenerationStats]:
    """Each generation's losses spread by rank (its best and worst kept), and the marks of its trials of each
    status in ``NO_LOSS`` (by status), at most ``MAX_POPULATION`` of each in all."""
    cap = max(3, MAX_POPULATION // max(1, len(generations)))
    points: list[tuple[int, float, int]] = []
    marks: dict[str, list[tuple[int, int]]] = {status: [] for status in NO_LOSS}
    stats = GenerationStats()
    for number in sorted(generations):
        generation = generations[number]
        ranked = sorted(generation.succeeded)
        points += [(number, *ranked[i]) for i in evenly(len(ranked), cap)]
        for status, trial_ids in marks.items():
            ended = generation.no_loss[status]
            trial_ids += [(number, ended[i]) for i in evenly(len(ended), cap)]
            getattr(stats, status).append(len(ended))
        losses = [loss for loss, _ in ranked]
        stats.number.append(number)
        stats.best.append(losses[0] if losses else None)
        stats.median.append(statistics.median(losses) if losses else None)
        stats.succeeded.append(len(losses))
    population = LossPoints()
    for i in evenly(len(points), MAX_POPULATION):
        _append(population, *points[i])
    return population, {status: _marks(pairs, sum(getattr(stats, status))) for status, pairs in marks.items()}, stats


def _marks(pairs: list[tuple[int, int]], count: int) -> Marks:
    kept = [pairs[i] for i in evenly(len(pairs), MAX_POPULATION)]
    return Marks(generation=[g for g, _ in kept], trial_id=[t for _, t in kept], count=count)


def _append(points: LossPoints, x: int, loss: float, trial_id: int) -> None:
    points.x.append(x)
    points.loss.append(loss)
    points.trial_id.append(trial_id)
