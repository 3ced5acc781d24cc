"""Which optimizer? Best loss against trials for the service's optimizers and Optuna's, on one per-module search.

Seven optimizers get the same budget (``--population`` candidates per generation, the same generations) on the
same box of log2 multipliers: the service's own ``cma``, ``diagonal_cma``, ``de``, ``trust_region`` and
``random``, and Optuna's TPE and CMA-ES samplers (through ``study.ask``/``study.tell``), every one driven by
the engine's own search policy (``hpo_service.engine.policy.GenerationalPolicy``): one population asked,
evaluated, then told, diverged and failed candidates told ``penalty(worst finite loss so far, V)``. Optuna's
``FAIL`` state would let TPE and CMA-ES ignore what the service's optimizers are told to avoid.

- **synthetic** (8 × 12 trials, 20 seeds): a cheap stand-in for a per-module landscape, one instance per
  seed, in the real search's dimension: a rotated quadratic in log2 multipliers with condition number
  ``--condition``, its optimum ±1 octave off the base HPs in a third of the coordinates, and a divergence
  cliff: a candidate with any LR coordinate above ``--cliff`` octaves diverges. Loss = ``2 + q(x)``, q(0) = 1.
- **real** (8 × 4 trials, 3 seeds): the tiny proxy (width 32, depth 2, ``--steps`` steps on the CPU) trained
  by ``trainer.run_trial``, searching every module's LR and init std (21 coordinates). The training seed (data
  and init) is the spec's, fixed; only the optimizer's seed varies.

Both write one row per trial (loss, what the optimizer was told, best so far; the real part also the vector)
to ``<out>_synthetic.csv`` and ``<out>_real.csv``; the summary (final best per optimizer: mean ± std over
seeds, mean rank) goes to ``<out>.json`` and ``<out>.png`` and is printed as a markdown table. The summary is
built from the CSVs on file, so running one part refreshes that part and keeps the other.

    python bench/optimizers.py      # both: 672 real trials, 26 min on 2 shared cores (a trial 4.4 s; ~1 s idle)
    python bench/optimizers.py --parts synthetic --synthetic-seeds 100
    python bench/optimizers.py --seeds 1 --synthetic-seeds 2 --generations 2 --steps 20 --out /tmp/optimizers
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import statistics
import time
import warnings
from collections import defaultdict
from collections.abc import Callable
from importlib.metadata import version
from multiprocessing import Pool
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import optuna

from hpo_service.engine.policy import GenerationalPolicy, Outcome
from hpo_service.spec import SearchSpec
from hpo_service.statuses import TrialStatus

OURS = ["cma", "diagonal_cma", "de", "trust_region", "random"]
OPTUNA = ["optuna_tpe", "optuna_cma"]
PARTS = ["synthetic", "real"]
FIELDS = ["optimizer", "seed", "trial", "generation", "status", "loss", "told", "best_so_far", "trial_s"]
FIELDS_REAL = [*FIELDS, "vector"]  # the candidate, in ``SearchSpace.coordinates`` order
SYNTHETIC_FLOOR = 2.0

Evaluated = tuple[str, float | None, float]  # status, final loss (None unless succeeded), seconds
Evaluate = Callable[[list[np.ndarray]], list[Evaluated]]


def make_spec(args: argparse.Namespace, optimizer: str, seed: int, generations: int) -> SearchSpec:
    """The real part's search; the synthetic part borrows its dimension, bounds and population."""
    return SearchSpec.model_validate(
        {
            "name": "bench-optimizers",
            "model": {"width": 32, "depth": 2, "head_dim": 16, "seq_len": 64},
            "training": {
                "batch_size": 8,
                "steps": args.steps,
                "warmup_steps": max(1, args.steps // 10),
                "device": "cpu",
            },
            "search_space": {"modules": "all", "hps": ["lr", "init_std"]},
            "optimizer": {
                "name": optimizer if optimizer in OURS else "cma",
                "population": args.population,
                "generations": generations,
                "seed": seed,
            },
        }
    )


# -- the optimizers, all driven by the service's own search policy ------------------------------------------------


class OptunaSampler:
    """An Optuna sampler over the same box, behind Nevergrad's ask/tell so that the service's policy drives it
    exactly as it drives its own optimizers: a whole population asked before any of it is told, and the same
    penalty for diverged candidates.

    Both keep Optuna's defaults but CMA-ES's ``popsize`` (the population, so that its generations are ours).
    Optuna infers the joint search space from completed trials, so under this protocol the first population
    of either sampler is uniformly random (and TPE's second too: it wants 10 finished trials); from then on
    CMA-ES starts at the centre of the box (the base HPs) with σ0 = 1 octave, and TPE treats the pending
    trials of its own population as bad ones (constant liar).
    """

    def __init__(self, spec: SearchSpec, sampler: str) -> None:
        seed, population = spec.optimizer.seed, spec.optimizer.population
        if sampler == "optuna_cma":
            chosen = optuna.samplers.CmaEsSampler(seed=seed, popsize=population, warn_independent_sampling=False)
        else:
            chosen = optuna.samplers.TPESampler(seed=seed, warn_independent_sampling=False)
        self.study = optuna.create_study(sampler=chosen)
        low, high = spec.search_space.log2_bounds
        self.names = spec.search_space.coordinates(spec.model.depth)
        self.distributions = {name: optuna.distributions.FloatDistribution(low, high) for name in self.names}

    def ask(self) -> SimpleNamespace:
        trial = self.study.ask(self.distributions)
        return SimpleNamespace(trial=trial, value=np.array([trial.params[name] for name in self.names]))

    def tell(self, candidate: SimpleNamespace, loss: float) -> None:
        self.study.tell(candidate.trial, loss)


def make_policy(name: str, spec: SearchSpec) -> GenerationalPolicy:
    """The policy the engine would run for ``spec``, or the same policy around an Optuna sampler."""
    if name not in OPTUNA:
        return GenerationalPolicy.from_spec(spec)
    o = spec.optimizer
    return GenerationalPolicy(
        name,
        OptunaSampler(spec, name),
        population=o.population,
        generations=o.generations,
        replicates=1,
        vocab_size=spec.model.vocab_size,
    )


def run_search(name: str, spec: SearchSpec, evaluate: Evaluate) -> list[dict]:
    """One search of ``spec``'s budget with optimizer ``name``: a row per trial, in ask order."""
    policy = make_policy(name, spec)
    rows: list[dict] = []
    best = math.inf
    for generation in range(spec.optimizer.generations):
        vectors = [np.asarray(v) for v in policy.ask()]
        outcomes = evaluate(vectors)
        told = policy.tell([[Outcome(TrialStatus(status), loss)] for status, loss, _ in outcomes]).values
        for vector, (status, loss, seconds), value in zip(vectors, outcomes, told, strict=True):
            best = min(best, value)
            rows.append(
                {
                    "optimizer": name,
                    "seed": spec.optimizer.seed,
                    "trial": len(rows) + 1,
                    "generation": generation,
                    "status": status,
                    "loss": "" if loss is None else loss,
                    "told": value,
                    "best_so_far": best,
                    "trial_s": round(seconds, 4),
                    "vector": " ".join(f"{v:.3f}" for v in vector),
                }
            )
    return rows


# -- synthetic landscape ------------------------------------------------------------------------------------------


class Landscape:
    """An ill-conditioned, rotated quadratic in log2 multipliers with a divergence cliff on the LR coordinates."""

    def __init__(self, seed: int, coordinates: list[str], condition: float, cliff: float) -> None:
        rng = np.random.default_rng([seed, 20250])  # not the optimizer's stream
        d = len(coordinates)
        rotation, _ = np.linalg.qr(rng.normal(size=(d, d)))
        self.hessian = rotation @ np.diag(np.logspace(0, math.log10(condition), d)) @ rotation.T
        self.optimum = rng.normal(0, 0.2, d)
        shifted = rng.choice(d, size=d // 3, replace=False)
        self.optimum[shifted] = rng.choice([-1.0, 1.0], size=len(shifted))
        self.is_lr = np.array([name.endswith(".lr") for name in coordinates])
        self.optimum[self.is_lr] = np.minimum(self.optimum[self.is_lr], cliff - 0.25)  # the optimum is feasible
        self.cliff = cliff
        self.scale = 1.0 / self.quadratic(np.zeros(d))

    def quadratic(self, x: np.ndarray) -> float:
        delta = x - self.optimum
        return 0.5 * float(delta @ self.hessian @ delta)

    def __call__(self, vectors: list[np.ndarray]) -> list[Evaluated]:
        return [
            ("diverged", None, 0.0)
            if np.any(v[self.is_lr] > self.cliff)
            else ("succeeded", SYNTHETIC_FLOOR + self.scale * self.quadratic(v), 0.0)
            for v in vectors
        ]


def run_synthetic(args: argparse.Namespace) -> list[dict]:
    rows = []
    for seed in range(args.synthetic_seeds):
        for name in args.optimizers:
            spec = make_spec(args, name, seed, args.synthetic_generations)
            landscape = Landscape(seed, spec.search_space.coordinates(spec.model.depth), args.condition, args.cliff)
            rows += run_search(name, spec, landscape)
        print(f"synthetic seed {seed}: {len(args.optimizers)} optimizers done", flush=True)
    return rows


# -- real proxy ---------------------------------------------------------------------------------------------------


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)


def _train(packed: tuple) -> Evaluated:
    from trainer import run_trial

    config, multipliers = packed
    result = run_trial(config, multipliers)
    return result.status, result.final_val_loss, result.wall_time_s


def run_real(args: argparse.Namespace, write: Callable[[list[dict]], None]) -> None:
    with Pool(args.workers, initializer=_worker_init) as pool:
        for seed in range(args.seeds):
            for name in args.optimizers:
                spec = make_spec(args, name, seed, args.generations)
                config = spec.train_config()

                def evaluate(vectors: list[np.ndarray], spec: SearchSpec = spec, config=config) -> list[Evaluated]:
                    return pool.map(_train, [(config, spec.multipliers(list(v))) for v in vectors], chunksize=1)

                tick = time.perf_counter()
                rows = run_search(name, spec, evaluate)
                write(rows)
                diverged = sum(r["status"] != "succeeded" for r in rows)
                print(
                    f"real seed {seed} {name}: best {rows[-1]['best_so_far']:.4f}, {diverged}/{len(rows)} "
                    f"diverged or failed, {time.perf_counter() - tick:.0f} s",
                    flush=True,
                )


# -- summary ------------------------------------------------------------------------------------------------------


def read_rows(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


def average_ranks(values: list[float]) -> list[float]:
    """1 for the smallest; ties share the mean of their ranks."""
    return [1 + sum(w < v for w in values) + (sum(w == v for w in values) - 1) / 2 for v in values]


def summarise(rows: list[dict]) -> dict:
    """Final best per optimizer: mean ± std over seeds and mean rank (over the seeds every optimizer ran)."""
    final: dict[str, dict[int, float]] = defaultdict(dict)
    trials: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        final[r["optimizer"]][int(r["seed"])] = float(r["best_so_far"])  # rows are in trial order
        trials[r["optimizer"]].append(r)
    names = list(final)
    common = sorted(set.intersection(*(set(final[n]) for n in names)))
    ranks: dict[str, list[float]] = defaultdict(list)
    for seed in common:
        for name, rank in zip(names, average_ranks([final[n][seed] for n in names]), strict=True):
            ranks[name].append(rank)
    base = [float(r["loss"]) for r in trials.get("trust_region", []) if r["trial"] == "1" and r["loss"]]
    summary = {
        "base_hps_loss": statistics.fmean(base) if base else None,
        "optimizers": {
            name: {
                "final_best_mean": statistics.fmean(final[name].values()),
                "final_best_std": statistics.stdev(final[name].values()) if len(final[name]) > 1 else 0.0,
                "mean_rank": statistics.fmean(ranks[name]) if ranks[name] else None,
                "diverged_or_failed_fraction": sum(r["status"] != "succeeded" for r in trials[name])
                / len(trials[name]),
                "final_best_per_seed": final[name],
            }
            for name in names
        },
    }
    return summary


def curves(rows: list[dict]) -> dict[str, np.ndarray]:
    """Best so far per optimizer: an array of seeds × trials."""
    by: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        by[r["optimizer"]][int(r["seed"])].append(float(r["best_so_far"]))
    return {name: np.array([seeds[s] for s in sorted(seeds)]) for name, seeds in by.items()}


def plot(parts: dict[str, list[dict]], summaries: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(parts), figsize=(6.5 * len(parts), 4.8), squeeze=False)
    colours = dict(zip(OURS + OPTUNA, plt.cm.tab10(np.arange(10)), strict=False))
    for ax, (part, rows) in zip(axes[0], parts.items(), strict=True):
        lows, highs = [], []
        for name, best in curves(rows).items():
            values = best - SYNTHETIC_FLOOR if part == "synthetic" else best
            mean = values.mean(axis=0)
            sem = values.std(axis=0, ddof=1) / math.sqrt(len(values)) if len(values) > 1 else np.zeros_like(mean)
            x = np.arange(1, len(mean) + 1)
            style = "--" if name in OPTUNA else "-"
            ax.plot(x, mean, style, color=colours.get(name), label=f"{name} ({len(values)} seeds)")
            ax.fill_between(x, mean - sem, mean + sem, color=colours.get(name), alpha=0.15)
            lows.append(float(mean[-1]))
            highs.append(float(mean[len(mean) // 4]))
        if part == "synthetic":
            ax.set_yscale("log")
            ax.axhline(1.0, color="grey", linestyle=":", label="base HPs")
            ax.set_ylim(0.7 * min(lows), 10.0)
            ax.set_ylabel("best loss so far above the optimum (regret)")
        else:
            base = summaries[part]["base_hps_loss"]
            if base is not None:
                ax.axhline(base, color="grey", linestyle=":", label="base HPs")
            top = max(highs) if base is None else max(base, min(highs)) + 0.02
            ax.set_ylim(min(lows) - 0.03, top)
            ax.set_ylabel("best final validation loss so far (nats/byte)")
        ax.set_xlabel("trials")
        ax.set_title(f"{part}: best so far, mean over seeds ± s.e.m.", fontsize=10)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def markdown(summaries: dict[str, dict]) -> str:
    parts = list(summaries)
    names = list(dict.fromkeys(n for s in summaries.values() for n in s["optimizers"]))
    head = "| optimizer | " + " | ".join(f"{p}: final best | {p}: mean rank | {p}: diverged" for p in parts) + " |"
    lines = [head, "|" + "---|" * (1 + 3 * len(parts))]
    for name in names:
        cells = []
        for p in parts:
            o = summaries[p]["optimizers"].get(name)
            if o is None:
                cells += ["", "", ""]
                continue
            rank = "" if o["mean_rank"] is None else f"{o['mean_rank']:.2f}"
            cells += [
                f"{o['final_best_mean']:.4f} ± {o['final_best_std']:.4f}",
                rank,
                f"{100 * o['diverged_or_failed_fraction']:.0f}%",
            ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# -- main ---------------------------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", nargs="+", choices=PARTS, default=PARTS)
    p.add_argument("--optimizers", nargs="+", choices=OURS + OPTUNA, default=OURS + OPTUNA)
    p.add_argument("--population", type=int, default=8, help="candidates per generation (DE needs at least 4)")
    p.add_argument("--generations", type=int, default=4, help="generations of a real search")
    p.add_argument("--synthetic-generations", type=int, default=12, help="generations of a synthetic search")
    p.add_argument("--seeds", type=int, default=3, help="optimizer seeds of the real part: 0 .. N-1")
    p.add_argument("--synthetic-seeds", type=int, default=20, help="landscape and optimizer seeds: 0 .. N-1")
    p.add_argument("--steps", type=int, default=100, help="training steps of a real trial")
    p.add_argument("--condition", type=float, default=100.0, help="condition number of the synthetic quadratic")
    p.add_argument("--cliff", type=float, default=1.5, help="synthetic: any LR coordinate above this diverges")
    p.add_argument("--workers", type=int, default=2, help="processes training real trials")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "optimizers")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", module="optuna")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    paths = {part: Path(f"{args.out}_{part}.csv") for part in PARTS}
    spec = make_spec(args, "cma", 0, args.generations)
    print(
        f"{spec.dimension()} coordinates, population {args.population}; generations: {args.generations} real, "
        f"{args.synthetic_generations} synthetic; optimizers: {', '.join(args.optimizers)}",
        flush=True,
    )
    json_path = args.out.with_suffix(".json")
    timings = json.loads(json_path.read_text()).get("wall_s", {}) if json_path.exists() else {}  # of the parts kept
    for part in args.parts:
        tick = time.perf_counter()
        with paths[part].open("w", newline="") as f:
            writer = csv.DictWriter(f, FIELDS_REAL if part == "real" else FIELDS, extrasaction="ignore")
            writer.writeheader()

            def write(rows: list[dict], writer: csv.DictWriter = writer, f=f) -> None:
                writer.writerows(rows)
                f.flush()

            if part == "synthetic":
                write(run_synthetic(args))
            else:
                run_real(args, write)
        timings[part] = time.perf_counter() - tick
        print(f"{part}: {timings[part]:.0f} s", flush=True)

    parts = {part: read_rows(path) for part, path in paths.items() if path.exists()}
    summaries = {part: summarise(rows) for part, rows in parts.items()}
    trial_s = [float(r["trial_s"]) for r in parts.get("real", []) if r["status"] == "succeeded"]
    summary = {
        "settings": {
            "dimension": spec.dimension(),
            "coordinates": spec.search_space.coordinates(spec.model.depth),
            "log2_bounds": list(spec.search_space.log2_bounds),
            "population": args.population,
            "real": {
                "generations": args.generations,
                "trials_per_search": args.population * args.generations,
                "seeds": args.seeds,
                "steps": args.steps,
                "model": spec.model.model_dump(mode="json"),
                "training_seed": spec.training.seed,
                "workers": args.workers,
                "median_trial_s": statistics.median(trial_s) if trial_s else None,
            },
            "synthetic": {
                "generations": args.synthetic_generations,
                "trials_per_search": args.population * args.synthetic_generations,
                "seeds": args.synthetic_seeds,
                "condition": args.condition,
                "cliff": args.cliff,
                "floor": SYNTHETIC_FLOOR,
            },
            "penalty": "max(worst finite loss so far, ln V) + 1, as the service; Optuna is told the same",
            "optuna": "defaults but CMA-ES popsize = population; first population (TPE: first two) uniformly random",
        },
        "wall_s": timings,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            **{name: version(name) for name in ("torch", "nevergrad", "optuna", "cmaes")},
        },
        **summaries,
    }
    json_path.write_text(json.dumps(summary, indent=2))
    plot(parts, summaries, args.out.with_suffix(".png"))
    print(markdown(summaries))


if __name__ == "__main__":
    main()
