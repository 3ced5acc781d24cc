"""Benches' smoke runs: the script runs end to end on its tiny budget and writes the figures it promises."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from trainer.model import GPT, ModelConfig

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


def test_gpu_throughput_smoke_times_both_loops_the_param_groups_and_two_trials_sharing_a_device(tmp_path):
    out = tmp_path / "gpu_throughput.json"
    command = [sys.executable, "bench/gpu_throughput.py", "--smoke", "--peak-tflops", "2", "--out", str(out)]
    subprocess.run(command, cwd=ROOT, check=True, timeout=300)
    document = json.loads(out.read_text())
    settings, results = document["settings"], document["results"]
    s = settings["shape"]
    model = GPT(ModelConfig(**{k: v for k, v in s.items() if k != "batch_size"}))
    matmul_params = sum(p.numel() for p in model.parameters()) - model.embedding.weight.numel()
    flops = 6 * matmul_params + 12 * s["depth"] * s["seq_len"] * s["width"]
    assert settings["flops_per_token"] == flops and settings["peak_tflops"] == 2
    eager = results["eager"]
    medians = {loop: eager[loop]["tokens_per_s"]["median"] for loop in ("nanogpt", "trainer")}
    for loop, tokens_per_s in medians.items():
        assert tokens_per_s > 0
        assert eager[loop]["mfu"] == pytest.approx(tokens_per_s * flops / 2e12)
    assert eager["trainer_over_nanogpt"] == pytest.approx(medians["trainer"] / medians["nanogpt"])
    assert eager["trainer"]["reported_tokens_per_s"]["median"] > 0
    groups = results["param_groups"]
    assert groups["global"]["groups"] < groups["per_module"]["groups"] == 10 * s["depth"] + 3
    pair = results["two_trials"]
    each = [p["tokens_per_s"] for p in pair["processes"]]
    assert len(each) == 2 and min(each) > 0 and pair["total_tokens_per_s"] == pytest.approx(sum(each))
    assert pair["total_over_single"] == pytest.approx(pair["total_tokens_per_s"] / medians["trainer"])
    assert set(document["target_met"]) == {"mode", *document["targets"]}
