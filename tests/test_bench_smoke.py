"""Benches' smoke runs: the script runs end to end on its tiny budget and writes the figures it promises."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STOPPING = ("stopping", "stopping+async", "median")


def test_search_cost_smoke_simulates_every_variant_and_early_stopping_trains_fewer_tokens(tmp_path):
    out = tmp_path / "search_cost.json"
    command = [sys.executable, "bench/search_cost.py", "--smoke", "--parts", "synthetic", "--out", str(out)]
    subprocess.run(command, cwd=ROOT, check=True, timeout=300)
    part = json.loads(out.read_text())["synthetic"]
    summary = part["summary"]
    assert set(summary) == {"full", *STOPPING}
    for entry in summary.values():
        assert entry["tokens"]["n"] == part["settings"]["seeds"]
        assert 0 < entry["busy"]["mean"] <= 1
        assert part["settings"]["floor"] <= entry["final_best"]["mean"] < 10
    assert summary["full"]["stopped"]["mean"] == 0
    for variant in STOPPING:  # fewer tokens on every one of the smoke's seeds (and of 20 tried)
        assert summary[variant]["stopped"]["mean"] > 0
        assert summary[variant]["vs_full"]["tokens_ratio"] > 1
        assert summary[variant]["vs_full"]["wall_ratio"] > 1
    told = part["told_value"]
    assert set(told["final_best"]) == {"full", "predicted", "raw", "penalty"}
    ranking = told["correlation"]["stopping"]["all_told_per_search"]
    assert -1 <= ranking["penalty"]["mean"] < ranking["predicted"]["mean"] <= 1
