"""A search's result and its export, gathered from the store, in ``trainer.export``'s format.

The result is the last stage's fresh-seed choice once its top candidates were re-trained (``selection``), else
the best search-time candidate so far. Its export's ``loss`` is then the fresh-seed mean ± sd, and the export
carries the selection (per stage: the gap between search-time and fresh losses) and, once the transfer check
ran, its ``validation`` report and the arm the evidence supports. Every export carries the proxy's training
recipe (schedule, clipping, z-loss, data) beside its HPs.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from hpo_service.selection import selection_report
from hpo_service.spec import SearchSpec
from hpo_service.statuses import TrialKind
from hpo_service.store import queries
from hpo_service.store.models import Search, Trial
from hpo_service.validation import recommendation, validation_report
from trainer.export import Recipe, TunedHPs, export_document, load_export
from trainer.hparams import Multipliers
from trainer.parameterisation import Shape


class NoResult(Exception):
    """The search has no candidate whose every replicate succeeded yet."""


class StartError(ValueError):
    """A ``start_from`` that cannot be started from; the message says why."""


def result_trials(session: Session, search: Search) -> list[Trial]:
    """The trials that measured the search's result: the last stage's best re-trained candidate's fresh runs,
    else the replicates of the last stage's best search-time candidate (``queries.best_candidates``'s ranking),
    else, before the last stage has one, of the best of any stage so far."""
    last_stage = search.spec.plan_stages()[-1][0]
    fresh = queries.reevaluated(session, search.id, last_stage)
    best = fresh or queries.best_candidates(session, search.id, limit=1, stage=last_stage)
    best = best or queries.best_candidates(session, search.id, limit=1)  # before the last stage has a result
    if not best:
        raise NoResult(f"search {search.id} has no successful candidate yet")
    generation, index = best[0].generation, best[0].index
    return [t for t in queries.generation_trials(session, search.id, generation) if t.index == index]


def build_export(session: Session, search: Search, target: Shape | None = None) -> dict:
    """The export of ``search`` for ``target`` (default: the proxy's own shape)."""
    config = search.spec.train_config()
    trials = result_trials(session, search)
    tuned = TunedHPs.found_with(config, Multipliers.from_dict(trials[0].multipliers))
    provenance = {
        "search_id": search.id,
        "search_name": search.name,
        "spec_hash": search.spec_hash,
        "generation": trials[0].generation,
        "index": trials[0].index,
        "trial_ids": [t.id for t in trials],
        "measured_on": "fresh seeds" if trials[0].origin else "search seeds",
    }
    losses = [t.loss for t in trials]
    recipe = Recipe.of(config.training)
    document = export_document(
        tuned, target or config.base_shape(), recipe=recipe, losses=losses, provenance=provenance
    )
    selection = selection_report(session, search)
    if selection:
        document["selection"] = [_without_runs(stage) for stage in selection]
    validation = validation_report(session, search)
    if validation:
        document["validation"] = {
            "targets": [_without_curves(entry) for entry in validation],
            "recommendation": recommendation(validation),
            "arms": _arm_multipliers(session, search),
        }
    return document


def starting_point(session: Session, spec: SearchSpec) -> Multipliers | None:
    """The multipliers ``spec.start_from`` names (another search's result, or an export's), checked to mean the
    same thing here: the same parameterisation, vocabulary and base HPs."""
    start = spec.start_from
    if start is None:
        return None
    if start.export is not None:
        try:
            tuned = load_export(start.export).tuned
        except ValueError as exc:
            raise StartError(f"not a usable export: {exc}") from None
        source, where = (tuned.parameterisation, tuned.vocab_size, tuned.base_hps), "the export"
        multipliers = tuned.multipliers
    else:
        other = session.get(Search, start.search)
        if other is None:
            raise StartError(f"no search with id {start.search}")
        o = other.spec
        source, where = (o.parameterisation.to_parameterisation(), o.model.vocab_size, o.base_hps), f"search {other.id}"
        try:
            multipliers = Multipliers.from_dict(result_trials(session, other)[0].multipliers)
        except NoResult:
            raise StartError(f"search {other.id} has no result to start from yet") from None
    own = (spec.parameterisation.to_parameterisation(), spec.model.vocab_size, spec.base_hps)
    for name, theirs, ours in zip(("parameterisation", "vocab_size", "base_hps"), source, own, strict=True):
        if theirs != ours:
            theirs_shown, ours_shown = _shown(theirs, ours), _shown(ours, theirs)
            raise StartError(f"{where} was made with {name} {theirs_shown}, this spec has {ours_shown}")
    return multipliers


def _arm_multipliers(session: Session, search: Search) -> dict[str, dict]:
    """Each validation arm's multipliers, so that the export names the HPs of whichever arm the evidence
    supports."""
    arms: dict[str, dict] = {}
    for trial in queries.kind_trials(session, search.id, TrialKind.VALIDATION):
        arms.setdefault(trial.arm, trial.multipliers)
    return arms


def _without_curves(entry: dict) -> dict:
    arms = [{k: v for k, v in arm.items() if k not in ("curve", "seed_curves")} for arm in entry["arms"]]
    return entry | {"arms": arms}


def _without_runs(stage: dict) -> dict:
    def trim(candidate: dict | None) -> dict | None:
        return None if candidate is None else {k: v for k, v in candidate.items() if k != "ended"}

    return stage | {"candidates": [trim(c) for c in stage["candidates"]], "chosen": trim(stage["chosen"])}


def _shown(value: object, other: object) -> str:
    """``value`` as an error shows it against ``other``: a parameterisation by the fields that differ."""
    if hasattr(value, "model_dump"):
        return str(value.model_dump())
    if hasattr(value, "__dataclass_fields__"):
        differ = [f for f in value.__dataclass_fields__ if getattr(value, f) != getattr(other, f)]
        if differ == ["name"]:
            return repr(value.name)
        return ", ".join(f"{f} {getattr(value, f)!r}" for f in differ)
    return repr(value)
