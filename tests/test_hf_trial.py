"""examples/hf_llama_trial.py: a user's own model (a Hugging Face Llama) searched by the service, its export applied
back to a fresh Llama; and the trial function itself, called directly: it trains, stops when told, diverges."""

from __future__ import annotations

import math
import re

import httpx
import pytest
import torch

from hpo_service.store.database import database_url
from tests.controller import Controller
from trainer import MODULE_TYPES, Multipliers, TrainConfig, apply_export, apply_to_model, load_export

pytest.importorskip("transformers")
from examples.hf_llama_trial import build_model, train  # needs transformers

TRIAL = "examples.hf_llama_trial:train"
MODEL = {"width": 32, "depth": 2, "head_dim": 16, "seq_len": 32}
TRAINING = {"batch_size": 4, "steps": 20, "warmup_steps": 2, "eval_every": 5, "grad_clip": 1.0, "device": "cpu"}
CONFIG = TrainConfig.model_validate({"model": MODEL, "training": TRAINING})
SPEC = {
    "name": "hf-llama",
    "model": MODEL,
    "training": TRAINING,
    "search_space": {"modules": "all", "hps": ["lr", "init_std"], "log2_bounds": [-1.0, 1.0], "residual": True},
    "optimizer": {"name": "cma", "population": 2, "generations": 2, "seed": 0},
    "execution": {"parallel": 2, "max_retries": 0, "timeout_s": 120, "trial": TRIAL},
}


def payload(multipliers: Multipliers | None = None, **training: float) -> dict:
    """What the service hands a trial: CONFIG (with these ``training`` changes) and the multipliers."""
    multipliers = multipliers or Multipliers()
    config = CONFIG.model_copy(update={"training": CONFIG.training.model_copy(update=training)})
    return {"config": config.model_dump(mode="json"), "multipliers": multipliers.to_dict()}


def test_the_trial_function_trains_the_llama_and_reports_each_evaluation():
    reported: list[tuple[int, dict]] = []
    result = train(payload(), lambda step, metrics: reported.append((step, metrics)))

    assert result["status"] == "succeeded" and result["steps"] == 20 and result["tokens"] == 20 * 4 * 32
    evaluations = [(step, metrics["val_loss"]) for step, metrics in reported if "val_loss" in metrics]
    assert evaluations == result["eval_curve"] and [step for step, _ in evaluations] == [5, 10, 15, 20]
    assert result["final_val_loss"] == evaluations[-1][1] < evaluations[0][1] - 0.5  # it learns
    assert result["train_curve"][0][1] == pytest.approx(math.log(256), abs=0.2)  # a fresh init: uniform guesses


def test_a_report_answering_true_stops_the_trial():
    result = train(payload(), lambda step, metrics: "val_loss" in metrics)

    assert result["status"] == "stopped" and result["steps"] == 5 and "step 5" in result["reason"]
    assert result["eval_curve"] == [(5, result["final_val_loss"])]


@pytest.mark.parametrize(
    ("lr", "divergence_factor", "reason"), [(8.0, 3.0, r"train loss \d+\.?\d* at"), (60.0, 1e300, "train loss nan at")]
)
def test_a_run_whose_loss_blows_up_or_is_not_finite_diverges_at_that_step(lr, divergence_factor, reason):
    """A finite loss above divergence_factor × the first one, or a NaN: caught at once, not at the next
    evaluation."""
    multipliers = Multipliers(module={m: {"lr": lr} for m in MODULE_TYPES})
    result = train(payload(multipliers, divergence_factor=divergence_factor), lambda step, metrics: False)

    assert result["status"] == "diverged" and re.match(reason, result["reason"]), result["reason"]
    assert result["final_val_loss"] is None and result["steps"] < CONFIG.training.eval_interval


def test_the_trial_trains_on_the_device_ray_assigned_unless_its_config_names_one():
    assigned = {**payload(), "device": "cuda:7"}  # no such device here: it fails where it is used
    auto = {**assigned["config"], "training": {**assigned["config"]["training"], "device": "auto"}}
    with pytest.raises((RuntimeError, AssertionError), match=r"(?i)cuda"):
        train({**assigned, "config": auto}, lambda step, metrics: False)

    named = train(assigned, lambda step, metrics: False)  # CONFIG names the CPU
    assert named["status"] == "succeeded" and named["device"] == "cpu"


def test_the_service_searches_the_llama_and_its_export_applies_to_a_fresh_one(tmp_path):
    """Submitted over HTTP to a real controller, which allows the example and runs it on its own Ray workers."""
    env = {"HPO_ALLOWED_TRIALS": "examples.hf_llama_trial:*"}
    controller = Controller(database_url(str(tmp_path / "hpo.db")), tmp_path / "controller.log", env=env).start()
    try:
        response = controller.post("/api/searches", SPEC)
        assert response.status_code == 201, response.text
        search_id = response.json()["id"]
        search = controller.wait_for(search_id, lambda s, trials: s["status"] in ("completed", "failed"))
        trials = controller.get(f"/api/searches/{search_id}/trials", limit=100)["trials"]
        exported = httpx.get(f"{controller.url}/api/searches/{search_id}/export", timeout=30)
    finally:
        controller.stop()

    assert search["status"] == "completed", search
    assert len(trials) == 4 and {t["status"] for t in trials} == {"succeeded"}, trials
    assert all(math.isfinite(t["loss"]) and t["steps_trained"] == 20 for t in trials)
    best = min(trials, key=lambda t: t["loss"])
    multipliers = Multipliers.from_dict(best["multipliers"])
    # the Llama trained, not the built-in proxy: the example, run here, gives the loss the worker reported
    again = train(payload(multipliers, seed=best["seed"]), lambda step, metrics: False)
    assert best["loss"] == pytest.approx(again["final_val_loss"], rel=1e-4)

    assert exported.status_code == 200, exported.text
    export = exported.json()
    assert export["loss"]["mean"] == best["loss"] and load_export(export).tuned.multipliers == multipliers
    torch.manual_seed(0)
    applied = apply_export(build_model(CONFIG), export, layout="hf-llama")
    torch.manual_seed(0)
    trained = apply_to_model(build_model(CONFIG), CONFIG.materialise(multipliers), layout="hf-llama")
    # the HPs the best trial trained with: the same groups, and the same weights from the same seed
    assert [g["names"] for g in applied] == [g["names"] for g in trained]
    for mine, theirs in zip(applied, trained, strict=True):
        for key in ("lr", "weight_decay", "betas", "eps", "grad_scale"):
            assert mine[key] == pytest.approx(theirs[key], rel=1e-12)
        assert all(torch.equal(p, q) for p, q in zip(mine["params"], theirs["params"], strict=True))
    assert any(g["grad_scale"] != 1.0 for g in applied)  # residual multipliers folded into o_proj and down_proj
