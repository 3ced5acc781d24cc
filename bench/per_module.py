"""Per-module HPs against global HPs, at the proxy and transferred to a 4× wider, 2× deeper model on 2× tokens.

Both searches run on the service itself (store, engine, optimizer, local Ray), with the same trial budget:

(a) **global**: one multiplier per HP (LR, init std, weight decay) for every module (``search_space.tied``),
    around the default base HPs, with CMA;
(b) **per-module**: one multiplier per module type and HP, around (a)'s best, with the paper's trust-region
    search.

Each result goes through the service's export. Then each is trained with fresh seeds at the proxy and at the
target shape, using the export's base section: the Complete(d)P rules re-materialise its HPs there. Reported:
final validation losses (mean ± std over seeds), and the **speed-up**, as the paper measures it: the tokens
the global-HP run needs to reach the per-module run's final loss, over the per-module run's tokens (from the
seed-mean evaluation curves, interpolated; below 1 when the global HPs get there first; "not reached" if
they never do within the same budget).

    python bench/per_module.py                      # about 25 minutes on 2 cores
    python bench/per_module.py --population 4 --generations 2 --steps 40 --seeds 1   # a smoke test
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import platform
import statistics
import tempfile
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
HPS = ["lr", "init_std", "weight_decay"]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--steps", type=int, default=200, help="proxy steps (16 × 64 tokens each)")
    p.add_argument("--population", type=int, default=8)
    p.add_argument("--generations", type=int, default=5)
    p.add_argument("--seeds", type=int, default=3, help="fresh training seeds of each evaluation")
    p.add_argument("--width-factor", type=int, default=4)
    p.add_argument("--depth-factor", type=int, default=2)
    p.add_argument("--token-factor", type=int, default=2)
    p.add_argument("--out", type=Path, default=RESULTS / "per_module")
    return p.parse_args()


def spec(args: argparse.Namespace, name: str, **sections) -> dict:
    base = {
        "name": name,
        "model": {"width": args.width, "depth": args.depth, "head_dim": 16, "seq_len": 64},
        "training": {"batch_size": 16, "steps": args.steps, "warmup_steps": args.steps // 10, "device": "cpu",
                     "eval_every": max(1, args.steps // 20)},
        "optimizer": {"population": args.population, "generations": args.generations, "seed": 0},
        "execution": {"parallel": 2, "cpus_per_trial": 1, "max_retries": 0, "timeout_s": 3600},
    }  # fmt: skip
    for section, values in sections.items():
        base[section] = {**base.get(section, {}), **values}
    return base


def run_search(sessions, raw: dict) -> dict:
    """Run ``raw`` to completion on the service's engine; its export (the best candidate, at the proxy)."""
    from hpo_service.engine.commands import Commands
    from hpo_service.engine.engine import Engine
    from hpo_service.engine.executor import RayExecutor
    from hpo_service.export import build_export
    from hpo_service.spec import SearchSpec
    from hpo_service.store.models import Search

    search = Commands(sessions).create(SearchSpec.model_validate(raw))
    engine = Engine(sessions)
    engine.executor = RayExecutor()
    started = time.monotonic()
    try:
        while True:
            engine.turn()
            with sessions() as session:
                row = session.get(Search, search.id)
                if row.status in ("completed", "failed"):
                    assert row.status == "completed", row.error
                    export = build_export(session, row)
                    break
    finally:
        engine.executor.close()
    export["bench_seconds"] = time.monotonic() - started
    print(f"{raw['name']}: best proxy loss {export['loss']['mean']:.4f} in {export['bench_seconds']:.0f} s", flush=True)
    return export


def config_from_export(export: dict, training: dict, width: int, depth: int, steps: int, seed: int):
    """The training config of a model of ``width`` × ``depth`` trained ``steps`` steps with the export's HPs."""
    from trainer import TrainConfig

    base = export["base"]
    shape = base["base_shape"]
    return TrainConfig.model_validate(
        {
            "model": {"width": width, "depth": depth, "head_dim": 16, "seq_len": base["seq_len"],
                      "vocab_size": base["vocab_size"]},
            "training": {**training, "steps": steps, "warmup_steps": steps // 10, "seed": seed,
                         "eval_every": max(1, steps // 20)},
            "parameterisation": {**base["parameterisation"], "base_shape": shape},
            "base_hps": base["base_hps"],
        }
    )  # fmt: skip


def evaluate(job: tuple) -> dict:
    """Train one (arm, where, seed) evaluation; its final loss and evaluation curve in tokens."""
    from trainer import Multipliers, run_trial

    arm, where, seed, export, training, width, depth, steps = job
    config = config_from_export(export, training, width, depth, steps, seed)
    result = run_trial(config, Multipliers.from_dict(export["base"]["multipliers"]))
    tokens_per_step = config.training.batch_size * config.model.seq_len
    return {
        "arm": arm,
        "where": where,
        "seed": seed,
        "status": result.status,
        "final_val_loss": result.final_val_loss,
        "curve": [(step * tokens_per_step, loss) for step, loss in result.eval_curve],
    }


def tokens_to_reach(curve: list[tuple[int, float]], target: float) -> float | None:
    """The first token count at which ``curve`` reaches ``target`` (linear between evaluations), else None."""
    for (t0, l0), (t1, l1) in itertools.pairwise(curve):
        if l1 <= target:
            return t1 if l0 == l1 else t0 + (t1 - t0) * (l0 - target) / (l0 - l1)
    return None


def summarise(runs: list[dict]) -> dict:
    summary = {}
    for where in ("proxy", "target"):
        row = {}
        for arm in ("global", "per_module"):
            losses = [r["final_val_loss"] for r in runs if r["arm"] == arm and r["where"] == where]
            finite = [x for x in losses if x is not None]
            row[arm] = {"mean": statistics.fmean(finite) if finite else None,
                        "std": statistics.stdev(finite) if len(finite) > 1 else None, "values": losses}  # fmt: skip
        target = row["per_module"]["mean"]
        curves = [r["curve"] for r in runs if r["arm"] == "global" and r["where"] == where]
        final_tokens = curves[0][-1][0]
        mean_curve = [(t, statistics.fmean(c[i][1] for c in curves)) for i, (t, _) in enumerate(curves[0])]
        needed = tokens_to_reach(mean_curve, target) if target is not None else None
        # > 1: the global HPs need more tokens than the per-module run used (None: more than their whole budget)
        row["speed_up"] = None if needed is None else needed / final_tokens
        row["global_reaches_per_module_loss"] = needed is not None
        summary[where] = row
    return summary


def plot(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, where in zip(axes, ("proxy", "target"), strict=True):
        for arm, colour in (("global", "tab:blue"), ("per_module", "tab:red")):
            curves = [r["curve"] for r in runs if r["arm"] == arm and r["where"] == where]
            tokens = np.array([t for t, _ in curves[0]])
            losses = np.array([[loss for _, loss in c] for c in curves])
            ax.plot(tokens, losses.mean(0), color=colour, label=f"{arm.replace('_', '-')} HPs")
            ax.fill_between(tokens, losses.min(0), losses.max(0), color=colour, alpha=0.2)
        ax.set(xlabel="training tokens", ylabel="validation loss (nats/token)", title=where, xscale="log")
        ax.set_ylim(top=min(ax.get_ylim()[1], 4.0))
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    args = parse_args()
    from hpo_service.engine import executor  # imports Ray, keeping the local Ray on loopback
    from hpo_service.store.database import database_url, open_database, session_factory, upgrade

    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        url = database_url(str(Path(tmp) / "hpo.db"))
        upgrade(url)
        sessions = session_factory(open_database(url))
        executor.ensure_ray(num_cpus=2)
        try:
            tied = {"modules": "all", "hps": HPS, "tied": True}
            global_export = run_search(sessions, spec(args, "global", search_space=tied, optimizer={"name": "cma"}))
            base = global_export["base"]  # (b) starts from (a)'s best: its multipliers folded into the base HPs
            start = {h: base["base_hps"][h] * 2 ** base["multipliers"]["module"]["attn_q"][h] for h in HPS}
            per_module_export = run_search(
                sessions,
                spec(args, "per_module", base_hps=start, search_space={"modules": "all", "hps": HPS},
                     optimizer={"name": "trust_region", "sigma": 1.0}),
            )  # fmt: skip
        finally:
            executor.ray.shutdown()
    search_seconds = time.monotonic() - started

    training = spec(args, "eval")["training"]
    target = (args.width * args.width_factor, args.depth * args.depth_factor, args.steps * args.token_factor)
    shapes = {"proxy": (args.width, args.depth, args.steps), "target": target}
    jobs = [
        (arm, where, 100 + seed, export, training, *shapes[where])
        for where in ("proxy", "target")
        for arm, export in (("global", global_export), ("per_module", per_module_export))
        for seed in range(args.seeds)
    ]
    with Pool(2) as pool:
        runs = pool.map(evaluate, jobs, chunksize=1)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.with_suffix(".csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["arm", "where", "seed", "status", "tokens", "val_loss"])
        for r in runs:
            for tokens, loss in r["curve"]:
                writer.writerow([r["arm"], r["where"], r["seed"], r["status"], tokens, loss])
    summary = summarise(runs)
    result = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "settings": vars(args) | {"out": str(args.out)},
        "budget_trials_each": args.population * args.generations,
        "search_seconds": search_seconds,
        "total_seconds": time.monotonic() - started,
        "exports": {"global": global_export, "per_module": per_module_export},
        "summary": summary,
    }
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    plot(runs, args.out.with_suffix(".png"))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
