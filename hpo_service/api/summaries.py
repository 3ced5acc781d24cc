"""A page of searches as the API shows them: each with its trials counted by status, its best loss, where its plan
stands and the commands its status allows, in a few grouped queries whatever the page size (plus the selection
report of each search that has re-evaluated, and the validation report of each whose transfer check has ended)."""

from __future__ import annotations

from sqlalchemy.orm import Session

from hpo_service.api.schemas import Recommendation, SearchSummary
from hpo_service.selection import selection_report
from hpo_service.spec import SearchSpec
from hpo_service.statuses import FINAL_TRIAL, SEARCH_COMMANDS, GenerationStatus, SearchStatus, TrialKind
from hpo_service.store import queries
from hpo_service.store.models import Generation, Search
from hpo_service.validation import recommendation, validation_report


def summaries(session: Session, searches: list[Search]) -> list[SearchSummary]:
    ids = [s.id for s in searches]
    counts, best = queries.trial_counts(session, ids), queries.best_losses(session, ids)
    completed = queries.generations_completed(session, ids)
    latest, kinds = queries.latest_generations(session, ids), queries.generation_kinds(session, ids)
    result = []
    for search in searches:
        spec, trials, current = search.spec, counts[search.id], latest[search.id]
        result.append(
            SearchSummary(
                id=search.id,
                name=search.name,
                status=search.status,
                commands=allowed_commands(search.status),
                spec_hash=search.spec_hash,
                optimizer=" → ".join(optimizer.name for _, _, optimizer in spec.plan_stages()),
                created_at=search.created_at,
                started_at=search.started_at,
                finished_at=search.finished_at,
                error=search.error,
                trials=trials,
                ended=sum(n for status, n in trials.items() if status in FINAL_TRIAL),
                budget=planned_trials(spec),
                generations=planned_generations(spec),
                generations_completed=completed[search.id],
                best_loss=best[search.id],
                stage=current_stage(current),
                kind=None if current is None else current.kind,
                stages=[name for name, _, _ in spec.plan_stages()],
                selection_gap=_selection_gap(session, search) if TrialKind.REEVALUATION in kinds[search.id] else None,
                recommendation=_recommendation(session, search) if _validated(current) else None,
            )
        )
    return result


def planned_trials(spec: SearchSpec) -> int:
    """Every trial the plan asks for if each stage finds a candidate: each stage's population × generations ×
    replicates, its top ``selection.top`` candidates (at most all it tried) on ``selection.seeds`` fresh seeds,
    then each validation arm at each target on ``validate.seeds`` seeds."""
    stages = spec.plan_stages()
    selection = spec.selection_section()
    total = 0
    for _, _, optimizer in stages:
        candidates = optimizer.population * optimizer.generations
        total += candidates * optimizer.replicates + min(selection.top, candidates) * selection.seeds
    if spec.validate_ is not None:
        total += len(spec.validate_.targets) * validation_arms(spec) * spec.validate_.seeds
    return total


def planned_generations(spec: SearchSpec) -> int:
    """Each stage's generations, one re-evaluation per stage with selection on, and one for the validation."""
    stages = spec.plan_stages()
    searched = sum(optimizer.generations for _, _, optimizer in stages)
    return searched + (len(stages) if spec.selection_section().top else 0) + int(spec.validate_ is not None)


def validation_arms(spec: SearchSpec) -> int:
    """The result, the base HPs, and the global HPs between them when a tied stage precedes a per-module last
    stage (``SearchPlan.arms``)."""
    spaces = [space for _, space, _ in spec.plan_stages()]
    return 3 if not spaces[-1].tied and any(space.tied for space in spaces[:-1]) else 2


def current_stage(generation: Generation | None) -> str | None:
    """The stage of the generation a search is at, ``validation`` for the transfer check."""
    if generation is None:
        return None
    return "validation" if generation.kind == TrialKind.VALIDATION else generation.stage


def _selection_gap(session: Session, search: Search) -> float | None:
    last = search.spec.plan_stages()[-1][0]
    return next((entry["gap"] for entry in selection_report(session, search) if entry["stage"] == last), None)


def _validated(generation: Generation | None) -> bool:
    """Whether the transfer check, always the last generation, has ended: only then is the recommendation read
    (the validation report reads every validation trial's curve, too much to repeat on every poll meanwhile)."""
    return (
        generation is not None
        and generation.kind == TrialKind.VALIDATION
        and generation.status == GenerationStatus.COMPLETED
    )


def _recommendation(session: Session, search: Search) -> Recommendation | None:
    advice = recommendation(validation_report(session, search))
    return None if advice is None else Recommendation(**advice)


def allowed_commands(status: SearchStatus) -> list[str]:
    """The commands a search in ``status`` may be given (the dashboard enables its buttons by them)."""
    return [command for command, (sources, _) in SEARCH_COMMANDS.items() if status in sources]
