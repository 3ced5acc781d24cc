"""A search's export: its best candidate, gathered from the store, in ``trainer.export``'s format."""

from __future__ import annotations

from sqlalchemy.orm import Session

from hpo_service.store import queries
from hpo_service.store.models import Search, Trial
from trainer.export import TunedHPs, export_document
from trainer.hparams import Multipliers
from trainer.parameterisation import Shape


class NoResult(Exception):
    """The search has no candidate whose every replicate succeeded yet."""


def best_candidate(session: Session, search_id: int) -> list[Trial]:
    """The replicates of the search's best candidate (``queries.best_candidates``'s ranking), by replicate."""
    best = queries.best_candidates(session, search_id, limit=1)
    if not best:
        raise NoResult(f"search {search_id} has no successful candidate yet")
    generation, index = best[0].generation, best[0].index
    return [t for t in queries.generation_trials(session, search_id, generation) if t.index == index]


def build_export(session: Session, search: Search, target: Shape | None = None) -> dict:
    """The export of ``search`` for ``target`` (default: the proxy's own shape)."""
    config = search.spec.train_config()
    trials = best_candidate(session, search.id)
    tuned = TunedHPs.found_with(config, Multipliers.from_dict(trials[0].multipliers))
    provenance = {
        "search_id": search.id,
        "search_name": search.name,
        "spec_hash": search.spec_hash,
        "generation": trials[0].generation,
        "index": trials[0].index,
        "trial_ids": [t.id for t in trials],
    }
    losses = [t.loss for t in trials]
    return export_document(tuned, target or config.base_shape(), losses=losses, provenance=provenance)
