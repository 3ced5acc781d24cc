"""Does the optimal base LR stay put when batch size or training duration change, under `completed`?

Two sweeps from one base shape (width 64, depth 2, batch B0, S0 steps): batch size × m at a fixed token budget
(steps × 1/m: the setting of the paper's batch rule, since changing batch and tokens together changes nothing),
and tokens × m at the base batch size (steps × m). At each point the global base LR is swept on a log2 grid
under `completed`, which carries it to the new batch and duration (LR, weight decay and ε by sqrt(m_B/m_D),
1 − β by m_B/m_D), and under `completep`, which at the base width and depth leaves every HP as given ("not
scaling"). The optimum of each curve (seed-mean loss) is the vertex of a parabola around the grid minimum; the
drift is the spread of the optima in octaves. Runs are appended to the CSV as they finish, so a sweep resumes.

    python bench/transfer_batch.py              # 288 runs: 53 minutes on 2 busy shared cores, ~20 on idle ones
    python bench/transfer_batch.py --base-steps 40 --multipliers 0.5 1 2 --lrs -9 -7 -5 --seeds 0 --out /tmp/quick
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import time
from collections import defaultdict
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from transfer_lr import fit_optimum

FIELDS = ["parameterisation", "batch_size", "steps", "seed", "log2_lr", "final_val_loss", "status", "wall_s"]
SWEEPS = ("batch", "duration")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parameterisations", nargs="+", default=["completed", "completep"])
    p.add_argument("--multipliers", nargs="+", type=float, default=[0.25, 0.5, 1, 2, 4])
    p.add_argument("--lrs", nargs="+", type=float, default=list(range(-11, -3)), help="log2 of the base LR")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--base-steps", type=int, default=200)
    p.add_argument("--base-batch-size", type=int, default=16)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--basin-max", type=float, default=-5, help="upper log2 LR of the low-LR basin (see transfer_lr)")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "transfer_batch")
    return p.parse_args()


def sweep_shapes(args: argparse.Namespace) -> dict[str, dict[float, tuple[int, int]]]:
    """(batch size, steps) at each multiplier of each sweep."""
    b0, s0 = args.base_batch_size, args.base_steps
    shapes = {
        "batch": {m: (b0 * m, s0 / m) for m in args.multipliers},
        "duration": {m: (b0, s0 * m) for m in args.multipliers},
    }
    for sweep, points in shapes.items():
        for m, (b, s) in points.items():
            if b != int(b) or s != int(s):
                raise SystemExit(f"{sweep} × {m:g} needs batch {b} and {s} steps: pick multipliers that divide evenly")
    return {sweep: {m: (int(b), int(s)) for m, (b, s) in points.items()} for sweep, points in shapes.items()}


def jobs(args: argparse.Namespace) -> list[dict]:
    """Every distinct run: the base shape belongs to both sweeps but is trained once per parameterisation."""
    shapes = sorted({bs for points in sweep_shapes(args).values() for bs in points.values()})
    return [
        {"parameterisation": p, "batch_size": b, "steps": s, "seed": seed, "log2_lr": lr}
        for p in args.parameterisations
        for b, s in shapes
        for seed in args.seeds
        for lr in args.lrs
    ]


def run_job(job: dict, args: argparse.Namespace) -> dict:
    import torch

    from trainer import TrainConfig, run_trial

    torch.set_num_threads(1)
    b0 = args.base_batch_size
    config = TrainConfig.model_validate(
        {
            "model": {"width": args.width, "depth": args.depth, "head_dim": 16, "seq_len": args.seq_len},
            "training": {
                "batch_size": job["batch_size"],
                "steps": job["steps"],
                "warmup_steps": job["steps"] // 10,
                "seed": job["seed"],
                "device": "cpu",
                # Only the final loss is used; the same number of validation sequences at every batch size.
                "eval_every": job["steps"],
                "eval_batches": max(1, 8 * b0 // job["batch_size"]),
            },
            "parameterisation": {
                "name": job["parameterisation"],
                "base_shape": {
                    "width": args.width,
                    "depth": args.depth,
                    "batch_size": b0,
                    "tokens": args.base_steps * b0 * args.seq_len,
                },
            },
            "base_hps": {"lr": 2.0 ** job["log2_lr"]},
        }
    )
    result = run_trial(config)
    loss = result.final_val_loss if result.final_val_loss is not None else float("nan")
    return {**job, "final_val_loss": loss, "status": result.status, "wall_s": round(result.wall_time_s, 2)}


def _run(packed: tuple[dict, argparse.Namespace]) -> dict:
    return run_job(*packed)


def key(row: dict) -> tuple:
    return (row["parameterisation"], int(row["batch_size"]), int(row["steps"]), int(row["seed"]), float(row["log2_lr"]))


def curves(rows: list[dict], args: argparse.Namespace) -> dict[tuple, dict[float, list[float]]]:
    """Final losses by (parameterisation, sweep, multiplier) and log2 LR."""
    out: dict[tuple, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for sweep, points in sweep_shapes(args).items():
        for m, shape in points.items():
            for r in rows:
                if (int(r["batch_size"]), int(r["steps"])) == shape:
                    out[(r["parameterisation"], sweep, m)][float(r["log2_lr"])].append(float(r["final_val_loss"]))
    return out


def summarise(rows: list[dict], args: argparse.Namespace) -> dict:
    """Fitted optima and their drift, over the whole grid and over the low-LR basin (log2 LR <= basin_max)."""
    summary: dict = {}
    for label, cap in (("full_grid", math.inf), ("low_lr_basin", args.basin_max)):
        optima: dict[str, dict[str, dict[str, float]]] = defaultdict(lambda: defaultdict(dict))
        for (param, sweep, m), by_lr in sorted(curves(rows, args).items()):
            lrs = np.array([lr for lr in sorted(by_lr) if lr <= cap])
            means = np.array([np.mean(by_lr[lr]) for lr in lrs])  # NaN where a seed diverged
            optima[param][sweep][f"{m:g}"] = fit_optimum(lrs, means)
        drift = {
            param: {sweep: max(o.values()) - min(o.values()) for sweep, o in sweeps.items()}
            for param, sweeps in optima.items()
        }
        summary[label] = {
            "basin_max_log2_lr": cap if math.isfinite(cap) else None,
            "optimal_log2_lr": optima,
            "drift_octaves": drift,
        }
    return summary


def plot(rows: list[dict], summary: dict, args: argparse.Namespace, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = curves(rows, args)
    params = [p for p in args.parameterisations if any(k[0] == p for k in data)]
    fig, axes = plt.subplots(len(SWEEPS), len(params), figsize=(5.5 * len(params), 8), squeeze=False)
    colours = plt.cm.viridis(np.linspace(0, 0.9, len(args.multipliers)))
    for i, sweep in enumerate(SWEEPS):
        for j, param in enumerate(params):
            ax = axes[i][j]
            losses = []
            for m, colour in zip(sorted(args.multipliers), colours, strict=True):
                by_lr = data.get((param, sweep, m))
                if not by_lr:
                    continue
                lrs = sorted(by_lr)
                means = [np.mean(by_lr[lr]) for lr in lrs]
                losses += [v for v in means if math.isfinite(v)]
                ax.plot(lrs, means, "o-", color=colour, label=f"{sweep} ×{m:g}")
                opt = summary["full_grid"]["optimal_log2_lr"][param][sweep][f"{m:g}"]
                if math.isfinite(opt):
                    ax.axvline(opt, color=colour, linestyle="--", alpha=0.7)
            drift = summary["full_grid"]["drift_octaves"][param][sweep]
            what = "batch size at fixed tokens" if sweep == "batch" else "tokens at fixed batch size"
            ax.set_title(f"{param}, {what}: optimum drift {drift:.2f} octaves (--)", fontsize=9)
            ax.set_xlabel("log2 base learning rate")
            ax.set_ylabel("final validation loss (nats/byte)")
            ax.legend(fontsize=8)
            if losses:
                ax.set_ylim(min(losses) - 0.05, min(losses) + 1.0)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def table(summary: dict, args: argparse.Namespace) -> str:
    mults = " / ".join(f"×{m:g}" for m in sorted(args.multipliers))
    lines = [
        f"| sweep | parameterisation | optimal log2 base LR at {mults} | drift | drift in low-LR basin |",
        "|---|---|---|---|---|",
    ]
    full, basin = summary["full_grid"], summary["low_lr_basin"]
    for sweep in SWEEPS:
        for param in args.parameterisations:
            optima = full["optimal_log2_lr"].get(param, {}).get(sweep)
            if not optima:
                continue
            cells = " / ".join(f"{optima[f'{m:g}']:.2f}" for m in sorted(args.multipliers) if f"{m:g}" in optima)
            lines.append(
                f"| {sweep} | `{param}` | {cells} | {full['drift_octaves'][param][sweep]:.2f} "
                f"| {basin['drift_octaves'][param][sweep]:.2f} |"
            )
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    csv_path = args.out.with_suffix(".csv")
    done = {}
    if csv_path.exists():
        with csv_path.open() as f:
            done = {key(r): r for r in csv.DictReader(f)}
    todo = [j for j in jobs(args) if key(j) not in done]
    # Longest runs first, so the pool does not end on one long run.
    todo.sort(key=lambda j: (-j["batch_size"] * j["steps"], -j["steps"]))
    print(f"{len(done)} runs on file, {len(todo)} to go", flush=True)
    start = time.perf_counter()
    new_file = not csv_path.exists()
    with csv_path.open("a", newline="") as f, Pool(args.workers) as pool:
        writer = csv.DictWriter(f, FIELDS)
        if new_file:
            writer.writeheader()
        for n, row in enumerate(pool.imap_unordered(_run, [(j, args) for j in todo]), 1):
            writer.writerow(row)
            f.flush()
            print(f"[{n}/{len(todo)}, {time.perf_counter() - start:.0f} s] {row}", flush=True)
    wanted = {key(j) for j in jobs(args)}
    with csv_path.open() as f:
        rows = [r for r in csv.DictReader(f) if key(r) in wanted]
    summary = summarise(rows, args)
    args.out.with_suffix(".json").write_text(json.dumps(summary, indent=2))
    plot(rows, summary, args, args.out.with_suffix(".png"))
    print(table(summary, args))


if __name__ == "__main__":
    main()
