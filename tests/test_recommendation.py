"""The recommendation: which arm of the transfer check the evidence supports."""

from __future__ import annotations

from hpo_service.validation import recommendation


def arm(name: str, *losses: float) -> dict:
    mean = sum(losses) / len(losses)
    sd = (sum((x - mean) ** 2 for x in losses) / (len(losses) - 1)) ** 0.5
    return {"name": name, "mean": mean, "sd": sd, "losses": list(losses)}


def target(label: str, verdict: str, *arms: dict) -> dict:
    return {"target": {"label": label}, "arms": list(arms), "speedup_over": arms[1]["name"], "verdict": verdict}


def test_the_result_is_recommended_only_when_it_wins_beyond_noise_at_every_target():
    win = target("width=256", "better", arm("per-module", 2.0, 2.01), arm("global", 2.2, 2.21), arm("base", 2.5, 2.51))
    tie = target("depth=8", "within noise", arm("per-module", 2.0, 2.1), arm("global", 2.0, 2.1), arm("base", 2.5, 2.6))
    assert recommendation([win])["arm"] == "per-module"
    advice = recommendation([win, tie])
    assert advice["arm"] == "global" and "depth=8" in advice["reason"]


def test_the_base_hps_are_recommended_when_they_beat_the_search_beyond_noise_everywhere():
    worse = [arm("per-module", 2.3, 2.31), arm("global", 2.2, 2.21), arm("base", 2.0, 2.01)]
    advice = recommendation([target("width=256", "worse", *worse), target("depth=8", "worse", *worse)])
    assert advice["arm"] == "base" and "global" in advice["reason"]
    mixed = [arm("per-module", 2.3, 2.31), arm("global", 2.2, 2.21), arm("base", 2.2, 2.21)]
    assert recommendation([target("width=256", "worse", *worse), target("depth=8", "worse", *mixed)])["arm"] == "global"


def test_nothing_is_recommended_before_a_target_is_compared():
    assert recommendation([]) is None
    assert recommendation([{"target": {"label": "x"}, "arms": [], "verdict": "pending"}]) is None
