"""The transfer check's report: each arm's final losses at each ``validate`` target, and the tokens-to-loss
speed-up of the search's result over the reference arm, read from the learning curves.

**Speed-up.** Of two arms trained with the same tokens T, the worse one's final loss L is reached by the better
one after T_b ≤ T tokens (the last crossing of its seed-mean validation curve, interpolated linearly in tokens).
The speed-up of the result over the reference is T / T_b when the result is the better arm and T_b / T when
the reference is: > 1 means the result is faster. The reference's tokens to reach the result's final loss, the
paper's definition, lie beyond the run whenever the result is better; this ratio is that one's mirror, and the
same when the curves are parallel in log-tokens. Each seed pair gives one more estimate (``speedup_sd``).

**Verdict.** The result beats the reference at a target when its mean final loss is lower by more than twice
the standard error of the difference (``better``), loses when higher by as much (``worse``), and is
``within noise`` otherwise (``undetermined`` with one seed). The recommendation names the arm the evidence
supports: the result only if it is ``better`` at every target.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

from sqlalchemy.orm import Session

from hpo_service.statuses import TrialKind, TrialStatus
from hpo_service.store import queries
from hpo_service.store.models import Search, Trial

Curve = list[tuple[float, float]]  # (tokens, validation loss)


def validation_report(session: Session, search: Search) -> list[dict]:
    """Per ``validate`` target with trials: ``target``, ``arms`` [{name, mean, sd, losses, curve, ...}],
    ``speedup`` (with ``speedup_over``, ``speedup_sd``, ``speedups``) and ``verdict``."""
    trials = queries.kind_trials(session, search.id, TrialKind.VALIDATION)
    if not trials:
        return []
    curves = queries.curves(session, [t.id for t in trials])
    spec = search.spec
    by_target: dict[int, list[Trial]] = {}
    for trial in trials:
        by_target.setdefault(trial.target["index"], []).append(trial)
    report = []
    for index, target_trials in sorted(by_target.items()):
        section = spec.validate_.targets[index]
        config = spec.target_config(section)
        tokens_per_step = config.training.batch_size * config.model.seq_len
        arms: dict[str, list[Trial]] = {}
        for trial in target_trials:
            arms.setdefault(trial.arm, []).append(trial)
        arm_reports = [_arm(name, runs, curves, tokens_per_step) for name, runs in arms.items()]
        entry = {"target": {"index": index, "label": section.label(), **vars(config.shape())}, "arms": arm_reports}
        report.append(entry | _comparison(arm_reports))
    return report


def recommendation(report: Sequence[dict]) -> dict | None:
    """The arm the evidence supports, and why; None before any target has a comparison. The result only if it
    beat the reference beyond noise at every target, else the reference; and the base HPs instead of either
    if they beat it beyond noise at every target (the search did not help at these shapes)."""
    compared = [entry for entry in report if entry.get("verdict") not in (None, "pending")]
    if not compared:
        return None
    result, reference = compared[0]["arms"][0]["name"], compared[0]["speedup_over"]
    beaten = [e["target"]["label"] for e in compared if e["verdict"] == "worse"]
    unclear = [e["target"]["label"] for e in compared if e["verdict"] in ("within noise", "undetermined")]
    if not beaten and not unclear:
        chosen = {"arm": result, "reason": f"{result} beat {reference} beyond noise at every target"}
    elif beaten:
        chosen = {"arm": reference, "reason": f"{reference} beat {result} beyond noise at {', '.join(beaten)}"}
    else:
        chosen = {"arm": reference, "reason": f"{result} did not beat {reference} beyond noise at {', '.join(unclear)}"}
    return _unless_base_beats(compared, chosen)


def _unless_base_beats(compared: Sequence[dict], chosen: dict) -> dict:
    verdicts = []
    for entry in compared:
        arms = {arm["name"]: arm for arm in entry["arms"]}
        if "base" not in arms or chosen["arm"] == "base" or chosen["arm"] not in arms:
            return chosen
        verdicts.append(verdict(arms["base"], arms[chosen["arm"]]))
    if all(v == "better" for v in verdicts):
        return {"arm": "base", "reason": f"the base HPs beat {chosen['arm']} beyond noise at every target"}
    return chosen


def _arm(name: str, runs: list[Trial], curves: dict[int, list], tokens_per_step: int) -> dict:
    done = [t for t in runs if t.status == TrialStatus.SUCCEEDED and t.loss is not None]
    losses = [t.loss for t in sorted(done, key=lambda t: t.replicate)]
    seed_curves = {t.replicate: _curve(curves.get(t.id, []), tokens_per_step) for t in done}
    return {
        "name": name,
        "mean": statistics.fmean(losses) if losses else None,
        "sd": statistics.stdev(losses) if len(losses) > 1 else None,
        "losses": losses,
        "runs": len(runs),
        "unfinished": sum(1 for t in runs if t.status in (TrialStatus.PENDING, TrialStatus.RUNNING)),
        "curve": mean_curve(list(seed_curves.values())) if len(done) == len(runs) else [],
        "seed_curves": seed_curves,
    }


def _comparison(arms: list[dict]) -> dict:
    """The result (the first arm) against the reference (the second): speed-up, its spread, and the verdict."""
    if len(arms) < 2:
        return {"speedup": None, "speedup_over": None, "verdict": None}
    result, reference = arms[0], arms[1]
    out: dict = {"speedup_over": reference["name"], "speedup": None, "speedup_sd": None, "speedups": []}
    if result["unfinished"] or reference["unfinished"] or not (result["curve"] and reference["curve"]):
        return out | {"verdict": "pending"}
    out["speedup"] = speedup(result["curve"], reference["curve"])
    pairs = sorted(set(result["seed_curves"]) & set(reference["seed_curves"]))
    out["speedups"] = [speedup(result["seed_curves"][s], reference["seed_curves"][s]) for s in pairs]
    finite = [s for s in out["speedups"] if s is not None]
    out["speedup_sd"] = statistics.stdev(finite) if len(finite) > 1 else None
    return out | {"verdict": verdict(result, reference)}


def verdict(result: dict, reference: dict) -> str:
    """``better``, ``worse``, ``within noise`` or ``undetermined`` (see the module docstring)."""
    if result["sd"] is None or reference["sd"] is None:
        return "undetermined"
    error = math.sqrt(result["sd"] ** 2 / len(result["losses"]) + reference["sd"] ** 2 / len(reference["losses"]))
    difference = reference["mean"] - result["mean"]
    if difference > 2 * error:
        return "better"
    if difference < -2 * error:
        return "worse"
    return "within noise"


def speedup(result: Curve, reference: Curve) -> float | None:
    """The tokens-to-loss speed-up of ``result`` over ``reference`` (see the module docstring); None if the
    better curve never reaches the worse one's final loss (it cannot, unless its own curve is not monotone)."""
    if not result or not reference:
        return None
    total = min(result[-1][0], reference[-1][0])
    if result[-1][1] <= reference[-1][1]:
        reached = tokens_to_reach(result, reference[-1][1])
        return None if reached is None else total / reached
    reached = tokens_to_reach(reference, result[-1][1])
    return None if reached is None else reached / total


def tokens_to_reach(curve: Curve, level: float) -> float | None:
    """The tokens from which ``curve`` stays at ``level`` or below (its last crossing, linearly interpolated
    between points), so that a dip below the level early in a noisy curve does not count; None if it ends
    above the level."""
    last = len(curve)
    while last > 0 and curve[last - 1][1] <= level:
        last -= 1
    if last == len(curve):
        return None
    if last == 0:
        return curve[0][0]
    (t0, l0), (t1, l1) = curve[last - 1], curve[last]
    return t0 + (t1 - t0) * (l0 - level) / (l0 - l1)


def mean_curve(curves: list[Curve]) -> Curve:
    """The seed-mean curve at the token counts every seed evaluated."""
    if not curves:
        return []
    shared = set.intersection(*(set(dict(c)) for c in curves))
    return [(tokens, statistics.fmean(dict(c)[tokens] for c in curves)) for tokens in sorted(shared)]


def _curve(points: list, tokens_per_step: int) -> Curve:
    return [(float(p.step * tokens_per_step), p.val_loss) for p in points if p.val_loss is not None]
