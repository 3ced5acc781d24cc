"""Which duration exponent carries HPs to a longer run: 0, 0.3 or 0.5 (the paper's), measured.

The Complete(d)P rule multiplies LR, weight decay and ε by √m_B · m_D^(−e), m_D the token ratio to the proxy
(``trainer.parameterisation``). The HPs are the equal-budget global result of ``bench/per_module.py`` (its
``global`` unit, read from ``bench/results/per_module.json``), trained at the proxy's shape on 2× and 4× its
tokens with each exponent, on the same 3 fresh seeds as that bench's checks. The best exponent has the lowest
final loss; the table in BENCHMARKS.md is rendered from ``bench/results/duration_exponent.json``.

    python bench/duration_exponent.py            # about 20 minutes on 2 cores
    python bench/duration_exponent.py --smoke    # tiny, into bench/work/
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from multiprocessing import get_context
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
EXPONENTS = (0.0, 0.3, 0.5)
MULTIPLIERS = (2, 4)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny shapes; results under bench/work/")
    return p.parse_args()


def jobs(smoke: bool) -> tuple[list[tuple], dict]:
    """(exponent, token multiplier, seed, config, multipliers) per run, and the settings they come from."""
    from hpo_service.spec import VALIDATION_PHASE, SearchSpec
    from trainer.hparams import Multipliers

    if smoke:
        settings = {"width": 32, "depth": 1, "steps": 12, "seeds": 2}
        found = {"module": {}, "depth": {}, "residual": {}}
    else:
        per_module = json.loads((RESULTS / "per_module.json").read_text())
        settings = {k: per_module["settings"][k] for k in ("width", "depth", "steps", "seeds")}
        found = per_module["units"]["global"]["multipliers"]
    spec = SearchSpec.model_validate(
        {
            "name": "duration exponent",
            "model": {"width": settings["width"], "depth": settings["depth"], "head_dim": 16, "seq_len": 64},
            "training": {"batch_size": 16, "steps": settings["steps"], "warmup_steps": settings["steps"] // 10},
            "validate": {"targets": [{"tokens_multiplier": m} for m in MULTIPLIERS], "seeds": settings["seeds"]},
        }
    )
    seeds = spec.fresh_seeds(VALIDATION_PHASE, settings["seeds"])  # the checks' seeds in bench/per_module.py
    runs = []
    for exponent in EXPONENTS:
        for target in spec.validate_.targets:
            config = spec.target_config(target)
            parameterisation = config.parameterisation.model_copy(update={"duration_exponent": exponent})
            config = config.model_copy(update={"parameterisation": parameterisation})
            for seed in seeds:
                training = config.training.model_copy(update={"seed": seed, "device": "cpu"})
                runs.append(
                    (exponent, target.tokens_multiplier, seed, config.model_copy(update={"training": training}))
                )
    return [(*run, Multipliers.from_dict(found)) for run in runs], settings


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


def train(job: tuple) -> dict:
    from trainer.train import run_trial

    exponent, multiplier, seed, config, multipliers = job
    result = run_trial(config, multipliers)
    lr = config.materialise(multipliers).group("attn_q", 0).lr
    return {"exponent": exponent, "tokens_multiplier": multiplier, "seed": seed, "status": result.status,
            "loss": result.final_val_loss, "attn_q_lr": lr}  # fmt: skip


def main() -> None:
    args = parse_args()
    runs, settings = jobs(args.smoke)
    started = time.monotonic()
    with get_context("spawn").Pool(2, initializer=_one_thread) as pool:  # fork after torch started can hang
        results = pool.map(train, runs, chunksize=1)
    summary = {}
    for multiplier in MULTIPLIERS:
        for exponent in EXPONENTS:
            losses = [r["loss"] for r in results if r["tokens_multiplier"] == multiplier and r["exponent"] == exponent]
            finite = [x for x in losses if x is not None]
            summary[f"{multiplier}x e={exponent}"] = {
                "tokens_multiplier": multiplier,
                "exponent": exponent,
                "mean": statistics.fmean(finite) if finite else None,
                "sd": statistics.stdev(finite) if len(finite) > 1 else None,
                "losses": losses,
            }
    out = (ROOT / "bench" / "work" if args.smoke else RESULTS) / "duration_exponent.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "settings": settings | {"exponents": EXPONENTS, "tokens_multipliers": MULTIPLIERS},
        "seconds": time.monotonic() - started,
        "runs": results,
        "summary": summary,
    }
    out.write_text(json.dumps(document, indent=1) + "\n")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
