"""The fresh-seed selection's report: per stage, its top candidates' search-time losses against their
fresh-seed means, the one chosen, and the selection gap (search-time loss minus fresh mean: how lucky the
search-time loss was)."""

from __future__ import annotations

import statistics

from sqlalchemy.orm import Session

from hpo_service.statuses import TrialKind, TrialStatus
from hpo_service.store import queries
from hpo_service.store.models import Search, Trial


def selection_report(session: Session, search: Search) -> list[dict]:
    """Per stage with re-evaluations: ``stage``, ``candidates`` [{generation, index, search_loss, losses, mean,
    sd, trial_ids}] best fresh mean first, ``chosen`` (the first, once every candidate has ended) and ``gap``."""
    by_stage: dict[str, dict[tuple[int, int], list[Trial]]] = {}
    for trial in queries.kind_trials(session, search.id, TrialKind.REEVALUATION):
        by_stage.setdefault(trial.stage, {}).setdefault((trial.generation, trial.index), []).append(trial)
    report = []
    for stage, _, _ in search.spec.plan_stages():
        if stage in by_stage:
            candidates = [_candidate(runs) for runs in by_stage[stage].values()]
            report.append(_ranked(stage, candidates))
    return report


def _candidate(runs: list[Trial]) -> dict:
    losses = [t.loss for t in runs if t.status == TrialStatus.SUCCEEDED and t.loss is not None]
    complete = len(losses) == len(runs)
    return {
        "generation": runs[0].origin["generation"],
        "index": runs[0].origin["index"],
        "search_loss": runs[0].origin["loss"],
        "losses": losses,
        "mean": statistics.fmean(losses) if complete else None,
        "sd": statistics.stdev(losses) if complete and len(losses) > 1 else None,
        "ended": all(t.status not in (TrialStatus.PENDING, TrialStatus.RUNNING) for t in runs),
        "trial_ids": [t.id for t in runs],
    }


def _ranked(stage: str, candidates: list[dict]) -> dict:
    candidates.sort(key=lambda c: (c["mean"] is None, c["mean"] or 0.0, c["search_loss"]))
    chosen = candidates[0] if all(c["ended"] for c in candidates) and candidates[0]["mean"] is not None else None
    gap = None if chosen is None else chosen["search_loss"] - chosen["mean"]
    return {"stage": stage, "candidates": candidates, "chosen": chosen, "gap": gap}
