"""How far does the optimal learning rate move with width and depth, under `sp` and under `completed`?

Sweeps the global base LR on a log2 grid at several widths (fixed depth) and several depths (fixed width),
for each parameterisation and seed, all from one base shape. The optimum of each curve (the seed-mean loss)
is the vertex of a parabola fitted in log2 LR around the grid minimum; the drift is the spread of those optima
in octaves. Runs are appended to the CSV as they finish, so an interrupted sweep resumes where it stopped.

    python bench/transfer_lr.py                 # the full sweep (about 32 minutes on 2 cores)
    python bench/transfer_lr.py --steps 40 --lrs -9 -7 -5 --widths 32 64 --depths 2 4 --out /tmp/quick
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from collections import defaultdict
from multiprocessing import Pool
from pathlib import Path

import numpy as np

FIELDS = ["parameterisation", "sweep", "width", "depth", "seed", "log2_lr", "final_val_loss", "status"]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parameterisations", nargs="+", default=["sp", "completed"])
    p.add_argument("--widths", nargs="+", type=int, default=[32, 64, 128, 256])
    p.add_argument("--depths", nargs="+", type=int, default=[2, 4, 8])
    p.add_argument("--base-width", type=int, default=64)
    p.add_argument("--base-depth", type=int, default=2)
    p.add_argument("--lrs", nargs="+", type=float, default=list(range(-12, -2)), help="log2 of the base LR")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--basin-max", type=float, default=-5, help="upper log2 LR of the low-LR basin (see summarise)")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "transfer_lr")
    return p.parse_args()


def jobs(args: argparse.Namespace) -> list[dict]:
    shapes = [("width", w, args.base_depth) for w in args.widths]
    shapes += [("depth", args.base_width, d) for d in args.depths]
    return [
        {"parameterisation": p, "sweep": sweep, "width": w, "depth": d, "seed": s, "log2_lr": lr}
        for p in args.parameterisations
        for sweep, w, d in shapes
        for s in args.seeds
        for lr in args.lrs
    ]


def run_job(job: dict, args: argparse.Namespace) -> dict:
    import torch

    from trainer import TrainConfig, run_trial

    torch.set_num_threads(1)
    tokens = args.steps * args.batch_size * args.seq_len
    config = TrainConfig.model_validate(
        {
            "model": {"width": job["width"], "depth": job["depth"], "head_dim": 16, "seq_len": args.seq_len},
            "training": {
                "batch_size": args.batch_size,
                "steps": args.steps,
                "warmup_steps": args.steps // 10,
                "seed": job["seed"],
                "eval_batches": 8,
            },
            "parameterisation": {
                "name": job["parameterisation"],
                "base_shape": {
                    "width": args.base_width,
                    "depth": args.base_depth,
                    "batch_size": args.batch_size,
                    "tokens": tokens,
                },
            },
            "base_hps": {"lr": 2.0 ** job["log2_lr"]},
        }
    )
    result = run_trial(config)
    loss = result.final_val_loss if result.final_val_loss is not None else float("nan")
    return {**job, "final_val_loss": loss, "status": result.status}


def _run(packed: tuple[dict, argparse.Namespace]) -> dict:
    return run_job(*packed)


def key(row: dict) -> tuple:
    return tuple(str(float(row[f])) if f == "log2_lr" else str(row[f]) for f in FIELDS[:6])


def fit_optimum(log2_lrs: np.ndarray, losses: np.ndarray) -> float:
    """Vertex of a least-squares parabola through the grid minimum and up to two neighbours on each side."""
    finite = np.isfinite(losses)
    if not finite.any():
        return float("nan")
    i = int(np.nanargmin(np.where(finite, losses, np.inf)))
    window = [j for j in range(i - 2, i + 3) if 0 <= j < len(losses) and finite[j]]
    if len(window) < 3:
        return float(log2_lrs[i])
    a, b, _ = np.polyfit(log2_lrs[window], losses[window], 2)
    if a <= 0:
        return float(log2_lrs[i])
    return float(np.clip(-b / (2 * a), log2_lrs[window[0]], log2_lrs[window[-1]]))


def summarise(rows: list[dict], basin_max: float) -> dict:
    """Fitted optima and their drift, over the whole grid and over the low-LR basin (log2 LR <= basin_max).

    This architecture normalises nearly every weight's output (pre-norm, QK-norm, final norm), so at short
    horizons very high LRs form a second basin: the weights grow until the effective LR is small again. The
    basin-restricted optimum follows the usual, low-LR optimum even where the other basin wins by a hair.
    """
    curves: dict[tuple, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        size = r["width"] if r["sweep"] == "width" else r["depth"]
        curves[(r["parameterisation"], r["sweep"], int(size))][float(r["log2_lr"])].append(float(r["final_val_loss"]))
    summary: dict = {}
    for label, cap in (("full_grid", math.inf), ("low_lr_basin", basin_max)):
        optima: dict[str, dict[str, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
        for (param, sweep, size), by_lr in sorted(curves.items()):
            lrs = np.array([lr for lr in sorted(by_lr) if lr <= cap])
            # A run that diverged makes its grid point unusable: the seed-mean is then NaN.
            means = np.array([np.mean(by_lr[lr]) for lr in lrs])
            optima[param][sweep][size] = fit_optimum(lrs, means)
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


def plot(rows: list[dict], summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    params = sorted({r["parameterisation"] for r in rows})
    sweeps = ["width", "depth"]
    fig, axes = plt.subplots(len(params), 2, figsize=(11, 4 * len(params)), squeeze=False)
    for i, param in enumerate(params):
        for j, sweep in enumerate(sweeps):
            ax = axes[i][j]
            sizes = sorted({int(r[sweep]) for r in rows if r["parameterisation"] == param and r["sweep"] == sweep})
            colours = plt.cm.viridis(np.linspace(0, 0.9, max(1, len(sizes))))
            for size, colour in zip(sizes, colours, strict=True):
                pts = defaultdict(list)
                for r in rows:
                    if r["parameterisation"] == param and r["sweep"] == sweep and int(r[sweep]) == size:
                        pts[float(r["log2_lr"])].append(float(r["final_val_loss"]))
                lrs = sorted(pts)
                ax.plot(lrs, [np.mean(pts[lr]) for lr in lrs], "o-", color=colour, label=f"{sweep} {size}")
                for label, style in (("full_grid", ":"), ("low_lr_basin", "--")):
                    opt = summary[label]["optimal_log2_lr"][param][sweep][size]
                    if math.isfinite(opt):
                        ax.axvline(opt, color=colour, linestyle=style, alpha=0.7)
            full = summary["full_grid"]["drift_octaves"][param][sweep]
            basin = summary["low_lr_basin"]["drift_octaves"][param][sweep]
            ax.set_title(
                f"{param}, {sweep}: optimum drift {full:.2f} oct (full, ..), {basin:.2f} (low-LR basin, --)", fontsize=9
            )
            ax.set_xlabel("log2 base learning rate")
            ax.set_ylabel("final validation loss (nats/byte)")
            ax.legend(fontsize=8)
            finite = [float(r["final_val_loss"]) for r in rows if math.isfinite(float(r["final_val_loss"]))]
            if finite:
                ax.set_ylim(min(finite) - 0.05, min(finite) + 1.0)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    args = parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    csv_path = args.out.with_suffix(".csv")
    done = {}
    if csv_path.exists():
        with csv_path.open() as f:
            done = {key(r): r for r in csv.DictReader(f)}
    todo = [j for j in jobs(args) if key({**j, "final_val_loss": 0, "status": ""}) not in done]
    print(f"{len(done)} runs on file, {len(todo)} to go", flush=True)
    new_file = not csv_path.exists()
    with csv_path.open("a", newline="") as f, Pool(args.workers) as pool:
        writer = csv.DictWriter(f, FIELDS)
        if new_file:
            writer.writeheader()
        for n, row in enumerate(pool.imap_unordered(_run, [(j, args) for j in todo]), 1):
            writer.writerow(row)
            f.flush()
            print(f"[{n}/{len(todo)}] {row}", flush=True)
    wanted = {key({**j, "final_val_loss": 0, "status": ""}) for j in jobs(args)}
    with csv_path.open() as f:
        rows = [r for r in csv.DictReader(f) if key(r) in wanted]
    summary = summarise(rows, args.basin_max)
    args.out.with_suffix(".json").write_text(json.dumps(summary, indent=2))
    plot(rows, summary, args.out.with_suffix(".png"))
    print(json.dumps({label: part["drift_octaves"] for label, part in summary.items()}, indent=2))


if __name__ == "__main__":
    main()
