"""A staged search's two checks, for the dashboard: per stage, the fresh-seed selection of the candidate it
hands on (``hpo_service.selection``), and after the last stage the transfer check at larger shapes
(``hpo_service.validation``), each with a sentence saying where it stands or what it found."""

from __future__ import annotations

from sqlalchemy.orm import Session

from hpo_service.dashboard.schemas import (
    ArmCheck,
    Recommendation,
    SelectionCandidate,
    SelectionPanel,
    StageSelection,
    TargetCheck,
    TransferPanel,
)
from hpo_service.selection import selection_report
from hpo_service.statuses import FINAL_SEARCH, TrialKind
from hpo_service.store import queries
from hpo_service.store.models import Search
from hpo_service.validation import recommendation, validation_report


def selection_panel(session: Session, search: Search) -> SelectionPanel:
    selection = search.spec.selection_section()
    panel = SelectionPanel(enabled=selection.top > 0, top=selection.top, seeds=selection.seeds, stages=[])
    if not panel.enabled:
        return panel
    reports = {entry["stage"]: entry for entry in selection_report(session, search)}
    phases = [(g.kind, g.stage) for g, _, _ in queries.generations(session, search.id)]
    for name, _, _ in search.spec.plan_stages():
        entry = reports.get(name)
        panel.stages.append(_stage_selection(entry) if entry else _unselected(search, name, phases))
    return panel


def _unselected(search: Search, stage: str, phases: list[tuple[str, str | None]]) -> StageSelection:
    """A stage with no re-evaluation yet: to come, never run, or passed over (none of its candidates succeeded)."""
    if (TrialKind.SEARCH, stage) in phases and phases[-1] != (TrialKind.SEARCH, stage):
        state, summary = "none chosen", "no candidate succeeded: the next stage starts where this one did"
    elif search.status in FINAL_SEARCH:
        state, summary = "not run", "not run: the search ended before this stage's selection"
    else:
        selection = search.spec.selection_section()
        waiting = f"its top {selection.top} candidates are re-trained on {selection.seeds} fresh seeds"
        state, summary = "pending", f"pending: after its last generation, {waiting}"
    return StageSelection(stage=stage, state=state, candidates=[], gap=None, summary=summary)


def _stage_selection(entry: dict) -> StageSelection:
    chosen = entry["chosen"]
    candidates = [SelectionCandidate(**c, chosen=c is chosen) for c in entry["candidates"]]
    if chosen is not None:
        state, summary = "chosen", _chosen_summary(chosen, entry["gap"])
    elif all(c["ended"] for c in entry["candidates"]):
        state = "none chosen"
        summary = "no candidate's fresh runs all succeeded: the best search-time candidate was handed on"
    else:
        runs = [len(c["trial_ids"]) for c in entry["candidates"]]
        state, summary = "running", f"re-training its top {len(runs)} candidates on fresh seeds ({sum(runs)} runs)"
    return StageSelection(stage=entry["stage"], state=state, candidates=candidates, gap=entry["gap"], summary=summary)


def _chosen_summary(chosen: dict, gap: float) -> str:
    """``chose g3.1: search-time 2.3100, fresh 2.4600 ± 0.0200: gap -0.1500``."""
    spread = "" if chosen["sd"] is None else f" ± {chosen['sd']:.4f}"
    candidate = f"g{chosen['generation']}.{chosen['index']}"
    fresh = f"fresh {chosen['mean']:.4f}{spread}"
    return f"chose {candidate}: search-time {chosen['search_loss']:.4f}, {fresh}: gap {gap:+.4f}"


def transfer_panel(session: Session, search: Search) -> TransferPanel:
    validate = search.spec.validate_
    if validate is None:
        return TransferPanel(enabled=False, state="off", targets=[], recommendation=None, summary="")
    report = {entry["target"]["index"]: entry for entry in validation_report(session, search)}
    targets = [_target_check(i, target.label(), report.get(i)) for i, target in enumerate(validate.targets)]
    advice = recommendation(list(report.values()))
    runs = [(arm.runs, arm.unfinished) for target in targets for arm in target.arms]
    unfinished = sum(u for _, u in runs)
    if report and not unfinished:
        state = "done"
        summary = (
            f"Recommendation: use {advice['arm']}, since {advice['reason']}."
            if advice
            else "No recommendation: no target could compare its arms."
        )
    elif report:
        state, summary = "running", f"pending: {unfinished} of {sum(r for r, _ in runs)} runs still training"
    elif search.status in FINAL_SEARCH:
        state, summary = "not run", "not run: the search ended before its transfer check"
    else:
        waiting = f"each arm is trained at each target on {validate.seeds} fresh seeds"
        state, summary = "pending", f"pending: after the last stage's selection, {waiting}"
    return TransferPanel(
        enabled=True,
        state=state,
        targets=targets,
        recommendation=None if advice is None else Recommendation(**advice),
        summary=summary,
    )


def _target_check(index: int, label: str, entry: dict | None) -> TargetCheck:
    if entry is None:
        return TargetCheck(index=index, label=label, arms=[], speedup=None, speedup_sd=None, speedup_over=None,
                           verdict=None, summary="pending")  # fmt: skip
    arms = [_arm_check(arm) for arm in entry["arms"]]
    return TargetCheck(
        index=index,
        label=label,
        arms=arms,
        speedup=entry["speedup"],
        speedup_sd=entry.get("speedup_sd"),
        speedup_over=entry["speedup_over"],
        verdict=entry["verdict"],
        summary=_speedup_summary(entry),
    )


def _arm_check(arm: dict) -> ArmCheck:
    if arm["unfinished"]:
        summary = f"{arm['name']}: {arm['unfinished']} of {arm['runs']} runs training"
    elif arm["mean"] is None:
        summary = f"{arm['name']}: no run succeeded"
    else:
        spread = "" if arm["sd"] is None else f" ± {arm['sd']:.4f}"
        failed = arm["runs"] - len(arm["losses"])
        summary = f"{arm['name']}: {arm['mean']:.4f}{spread} over {len(arm['losses'])} seeds" + (
            f" ({failed} failed)" if failed else ""
        )
    return ArmCheck(
        name=arm["name"],
        mean=arm["mean"],
        sd=arm["sd"],
        losses=arm["losses"],
        runs=arm["runs"],
        unfinished=arm["unfinished"],
        tokens=[tokens for tokens, _ in arm["curve"]],
        loss=[loss for _, loss in arm["curve"]],
        summary=summary,
    )


def _speedup_summary(entry: dict) -> str:
    """``speed-up of per-module over base: 1.24× (sd 0.05 over 3 seed pairs); verdict: better``."""
    verdict = entry["verdict"]
    if verdict is None:
        return "one arm only: nothing to compare"
    if verdict == "pending":
        if any(arm["unfinished"] for arm in entry["arms"]):
            return "pending"
        return "no comparison: an arm has no seed-mean curve (not all of its runs succeeded)"
    result, reference = entry["arms"][0]["name"], entry["speedup_over"]
    speedup = entry["speedup"]
    if speedup is None:
        measured = "not readable from the curves (the better curve never reaches the other's final loss)"
    else:
        finite = [s for s in entry["speedups"] if s is not None]
        spread = "" if entry["speedup_sd"] is None else f" (sd {entry['speedup_sd']:.2f} over {len(finite)} seed pairs)"
        measured = f"{speedup:.2f}×{spread}"
    return f"speed-up of {result} over {reference}: {measured}; verdict: {verdict}"
