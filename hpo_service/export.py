"""Building a search's export: its best candidate, with provenance, materialised for a target shape."""

from __future__ import annotations

import statistics
from datetime import UTC, datetime
from importlib.metadata import version

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from hpo_service.store.models import Search, Trial
from trainer.hparams import Multipliers
from trainer.parameterisation import Shape
from trainer.transfer import EXPORT_FORMAT, target_section


class NoResult(Exception):
    """The search has no candidate whose every replicate succeeded yet."""


def best_candidate(session: Session, search_id: int, replicates: int) -> list[Trial]:
    """The replicates of the candidate with the lowest mean loss among those whose replicates all succeeded."""
    row = session.execute(
        select(Trial.generation, Trial.index)
        .where(Trial.search_id == search_id, Trial.status == "succeeded")
        .group_by(Trial.generation, Trial.index)
        .having(func.count() == replicates)
        .order_by(func.avg(Trial.loss), Trial.generation, Trial.index)
        .limit(1)
    ).first()
    if row is None:
        raise NoResult(f"search {search_id} has no successful candidate yet")
    return list(
        session.scalars(
            select(Trial)
            .where(Trial.search_id == search_id, Trial.generation == row.generation, Trial.index == row.index)
            .order_by(Trial.replicate)
        )
    )


def build_export(session: Session, search: Search, target: Shape | None = None) -> dict:
    """The export of ``search`` for ``target`` (default: the proxy's own shape)."""
    spec = search.spec
    config = spec.train_config()
    trials = best_candidate(session, search.id, spec.optimizer.replicates)
    multipliers = Multipliers.from_dict(trials[0].multipliers).to_dict()
    losses = [t.loss for t in trials]
    p = config.parameterisation
    base = {
        "parameterisation": {"name": p.name, "alpha": p.alpha, "duration_exponent": p.duration_exponent},
        "base_shape": vars(config.base_shape()),
        "base_hps": config.base_hps.model_dump(),
        "seq_len": config.model.seq_len,
        "vocab_size": config.model.vocab_size,
        "multipliers": multipliers,
        "multipliers_linear": _linear(multipliers),
    }
    return {
        "format": EXPORT_FORMAT,
        "provenance": {
            "search_id": search.id,
            "search_name": search.name,
            "spec_hash": search.spec_hash,
            "package_version": version("completedp-hpo"),
            "created": datetime.now(UTC).isoformat(),
            "generation": trials[0].generation,
            "index": trials[0].index,
            "trial_ids": [t.id for t in trials],
        },
        "base": base,
        "loss": {
            "mean": statistics.fmean(losses),
            "std": statistics.stdev(losses) if len(losses) > 1 else None,
            "replicates": len(losses),
            "values": losses,
        },
        "target": target_section(base, target or config.base_shape(), config.model.seq_len),
    }


def _linear(multipliers: dict) -> dict:
    return {
        "module": {m: {h: 2.0**v for h, v in hps.items()} for m, hps in multipliers["module"].items()},
        "depth": {h: [2.0**v for v in values] for h, values in multipliers["depth"].items()},
        "residual": {b: 2.0**v for b, v in multipliers["residual"].items()},
    }
