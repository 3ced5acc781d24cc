"""Search cost: trained tokens and wall-clock with and without early stopping and asynchronous generations,
against the final best each reaches (issue 16).

Variants of one search: ``full`` (every trial to its last step, a generation told before the next is asked);
``stopping`` (successive halving: reduction factor 3, first rung at 11% of the steps, at least 3 other curves);
``stopping+async`` (the same, ``optimizer.asynchronous``: the next generation is asked when a worker is free and
nothing is left to dispatch); ``median`` (the median rule with the spec's defaults: from 25% of the steps, at
least 4 other curves).

- **real**: each variant × optimizer seed 0, 1, 2 is a *unit*, one search run by the service itself (store,
  engine, local Ray workers, fresh-seed selection) as ``bench/per_module.py`` runs its units: a per-module search
  of LR and init std over every module of the CPU proxy (width 64, depth 4, 400 steps of 16 × 64 tokens,
  evaluated every 20 steps), trust region, 6 candidates × 4 generations on 2 workers, then its top 3 re-trained
  on 2 fresh seeds. Per unit: the tokens its search trials trained, the search phase's wall-clock (the search
  started to its last search generation told), the chosen candidate's fresh-seed loss (the export's), trials
  stopped, and how busy the workers were (search trials' wall time / (workers × search wall-clock)). Resumable:
  a unit in the results file is skipped; a unit's search found by name in ``bench/work/search_cost.db`` resumes.
- **synthetic**: the cliff landscape of ``bench/optimizers.py`` (its ``Landscape``, 21 coordinates), 20 seeds,
  8 candidates × 12 generations on 4 simulated workers, the same selection. Curves are simulated (see
  ``Curves``) and trained by a discrete-event simulation (time = steps trained) that drives the service's own
  ``SearchPlan`` (ask, ``can_ask_ahead``, tell) as the engine does, judged by the service's rule functions
  (``hpo_service.early_stopping``), a stopped trial told ``predicted_final`` as the engine tells it. The final
  best is the chosen candidate's true (noise-free) loss. It also measures what a stopped trial is told: the
  Spearman rank correlation with the loss the trial would have reached at its end, of its predicted final
  loss, its raw loss when it stopped and the penalty, over the stopped trials of every seed and, per search,
  over all its trials told a loss (``told_value.correlation``); and the final best of ``stopping`` told each of
  the three, with CMA-ES (``told_value.final_best``): the trust region moves only to a generation's best, which
  a stopped trial hardly ever is, so what a stopped trial is told seldom changes its search; CMA-ES ranks all.

Per variant: mean ± sd over seeds, and against ``full`` seed by seed (the same optimizer seed; the synthetic
part's also the same landscape): tokens and wall-clock ratios (full / variant) and the final-best difference
with its standard error; ``target_met``: the issue's ≥ 2× fewer tokens, ≥ 1.5× less wall-clock and a final best
within noise (|difference| ≤ 2 se). Both parts write ``bench/results/search_cost.json`` (keys ``real`` and
``synthetic``; running one part keeps the other's).

    python bench/search_cost.py                     # both: 1-3 h on 2 cores (a proxy trial: 30-75 s)
    python bench/search_cost.py --parts real --variants full stopping   # the main question first
    python bench/search_cost.py --parts synthetic   # about a minute (the smoke's simulations: 2 s)
    python bench/search_cost.py --smoke             # tiny shapes and budgets, afresh, into bench/work/: 1.5 min
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import os
import platform
import statistics
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from optimizers import SYNTHETIC_FLOOR, Landscape  # bench/optimizers.py, beside this script
from per_module import run_unit

from hpo_service.early_stopping import judged_steps, predicted_final, should_stop
from hpo_service.engine.optimizers import penalty
from hpo_service.engine.plan import SearchPlan
from hpo_service.engine.policy import Outcome
from hpo_service.spec import SearchSpec
from hpo_service.statuses import FINAL_TRIAL, TrialKind, TrialStatus

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "search_cost.json"
WORK = ROOT / "bench" / "work"
PARTS = ("real", "synthetic")
HALVING = {"rule": "successive_halving", "reduction_factor": 3, "min_fraction": 0.11, "min_trials": 3}
MEDIAN = {"rule": "median"}  # the spec's defaults: percentile 50, from 25% of the steps, 4 other curves
VARIANTS = {  # name -> (early_stopping section, optimizer.asynchronous)
    "full": (None, False),
    "stopping": (HALVING, False),
    "stopping+async": (HALVING, True),
    "median": (MEDIAN, False),
}
OPTIMIZER = "trust_region"
TOLD_CHOICES = ("predicted", "raw", "penalty")  # what a stopped trial is told; the service tells ``predicted``
TOLD_OPTIMIZER = "cma"  # ranks the whole generation: what a stopped trial is told moves it (trust region: no)


def real_settings(smoke: bool) -> dict:
    if smoke:
        return {"width": 32, "depth": 1, "steps": 40, "eval_every": 4, "batch_size": 8, "population": 4,
                "generations": 2, "seeds": [0], "top": 1, "parallel": 2}  # fmt: skip
    return {"width": 64, "depth": 4, "steps": 400, "eval_every": 20, "batch_size": 16, "population": 6,
            "generations": 4, "seeds": [0, 1, 2], "top": 3, "parallel": 2}  # fmt: skip


def synthetic_settings(smoke: bool) -> dict:
    return {
        "seeds": 3 if smoke else 20,
        "population": 8,
        "generations": 4 if smoke else 12,
        "parallel": 4,
        "steps": 400,
        "eval_every": 20,
        "batch_size": 16,
        "top": 3,
        "condition": 100.0,  # bench/optimizers.py's defaults
        "cliff": 1.5,
        "curves": Curves().describe(),
    }


def search_spec(
    name: str, variant: str, seed: int, s: dict, *, width: int, depth: int, optimizer: str = OPTIMIZER
) -> dict:
    """The search of one variant (see the module docstring): per-module LR and init std."""
    rule, asynchronous = VARIANTS[variant]
    spec = {
        "name": name,
        "model": {"width": width, "depth": depth, "head_dim": 16, "seq_len": 64},
        "training": {
            "batch_size": s["batch_size"],
            "steps": s["steps"],
            "warmup_steps": s["steps"] // 10,
            "device": "cpu",
            "eval_every": s["eval_every"],
        },
        "search_space": {"modules": "all", "hps": ["lr", "init_std"]},
        "optimizer": {
            "name": optimizer,
            "population": s["population"],
            "generations": s["generations"],
            "seed": seed,
            "asynchronous": asynchronous,
        },
        "selection": {"top": s["top"], "seeds": 2},
        "execution": {"parallel": s["parallel"], "cpus_per_trial": 1, "max_retries": 1, "timeout_s": 7200},
    }
    if rule is not None:
        spec["early_stopping"] = rule
    return spec


# -- statistics ---------------------------------------------------------------------------------------------------


def stats(values: Sequence[float | None]) -> dict:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return {
        "mean": statistics.fmean(finite) if finite else None,
        "sd": statistics.stdev(finite) if len(finite) > 1 else None,
        "n": len(finite),
    }


def ranks(values: Sequence[float]) -> np.ndarray:
    """1 for the smallest; ties share the mean of their ranks."""
    array = np.asarray(values, dtype=float)
    order = array.argsort(kind="stable")
    ranked = np.empty(len(array))
    ranked[order] = np.arange(1, len(array) + 1)
    for value in np.unique(array):
        tied = array == value
        ranked[tied] = ranked[tied].mean()
    return ranked


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rank correlation (Pearson's on average ranks); None when either side is constant."""
    if len(x) < 3:
        return None
    rx, ry = ranks(x), ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return None
    return float(np.corrcoef(rx, ry)[0, 1])


def compare(rows: dict[str, dict[str, dict]]) -> dict:
    """Per variant: each measure's mean ± sd over seeds, and against ``full`` seed by seed."""
    summary = {}
    measures = ("tokens", "search_wall_s", "final_best", "stopped", "diverged", "busy")
    for variant, seeds in rows.items():
        entry = {m: stats([row.get(m) for row in seeds.values()]) for m in measures}
        if variant != "full" and "full" in rows:
            entry["vs_full"] = against_full(seeds, rows["full"])
        summary[variant] = entry
    return summary


def against_full(ours: dict[str, dict], full: dict[str, dict]) -> dict:
    """Ratios of means (full / ours: > 1 means ours costs less) and the paired final-best difference."""
    seeds = sorted(set(ours) & set(full))
    if not seeds:
        return {}
    tokens = statistics.fmean(full[s]["tokens"] for s in seeds) / statistics.fmean(ours[s]["tokens"] for s in seeds)
    wall = statistics.fmean(full[s]["search_wall_s"] for s in seeds) / statistics.fmean(
        ours[s]["search_wall_s"] for s in seeds
    )
    diffs = [ours[s]["final_best"] - full[s]["final_best"] for s in seeds if ours[s]["final_best"] is not None]
    diff = stats(diffs)
    se = diff["sd"] / math.sqrt(diff["n"]) if diff["sd"] is not None else None
    within = None if se is None else abs(diff["mean"]) <= 2 * se  # None: one seed, no noise to judge by
    return {
        "seeds": len(seeds),
        "tokens_ratio": tokens,
        "wall_ratio": wall,
        "final_best_diff": diff["mean"],
        "final_best_diff_se": se,
        "within_noise": within,
        "target_met": bool(tokens >= 2 and wall >= 1.5 and within),
    }


# -- results file -------------------------------------------------------------------------------------------------


def read_part(path: Path, part: str) -> dict:
    return json.loads(path.read_text()).get(part, {}) if path.exists() else {}


def write_part(path: Path, part: str, data: dict) -> None:
    """Replace one part of the results file, keeping the other (read again now: another run may have written it)."""
    results = json.loads(path.read_text()) if path.exists() else {}
    results[part] = data
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1) + "\n")
    tmp.replace(path)


def machine() -> dict:
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}


# -- real: the service on the CPU proxy ---------------------------------------------------------------------------


def unit_result(sessions, search_id: int, parallel: int) -> dict:
    """What one finished unit cost and found, from the store."""
    from sqlalchemy import select

    from hpo_service.export import build_export
    from hpo_service.store.models import Generation, Search, Trial

    with sessions() as session:
        search = session.get(Search, search_id)
        trials = list(
            session.scalars(select(Trial).where(Trial.search_id == search_id, Trial.kind == TrialKind.SEARCH))
        )
        told = session.scalars(
            select(Generation.finished_at).where(Generation.search_id == search_id, Generation.kind == TrialKind.SEARCH)
        )
        wall = (max(told) - search.started_at).total_seconds()
        loss = build_export(session, search)["loss"]
        stopped_at = Counter(t.steps for t in trials if t.status == TrialStatus.STOPPED)
        return {
            "search_id": search_id,
            "tokens": sum(t.tokens or 0 for t in trials),
            "search_wall_s": wall,
            "final_best": loss["mean"],
            "final_best_sd": loss["std"],
            "fresh_losses": loss["values"],
            "trials": len(trials),
            "stopped": sum(t.status == TrialStatus.STOPPED for t in trials),
            "diverged": sum(t.status == TrialStatus.DIVERGED for t in trials),
            "stopped_at": {str(step): n for step, n in sorted(stopped_at.items())},  # steps trained -> trials
            "busy": sum(t.wall_time_s or 0.0 for t in trials) / (parallel * wall),
            "total_wall_s": (search.finished_at - search.started_at).total_seconds(),
        }


def run_real(args: argparse.Namespace, out: Path) -> None:
    from hpo_service.engine import executor  # imports Ray, keeping the local Ray on loopback
    from hpo_service.store.database import database_url, open_database, session_factory, upgrade

    s = real_settings(args.smoke)
    part = read_part(out, "real")
    if part.get("settings") != s:
        part = {"settings": s, "units": {}}
    database = WORK / f"{out.stem}.db"
    if args.smoke:  # a smoke run checks the script: always afresh
        part = {"settings": s, "units": {}}
        for suffix in ("", "-wal", "-shm"):
            Path(f"{database}{suffix}").unlink(missing_ok=True)
    url = database_url(str(database))
    upgrade(url)
    sessions = session_factory(open_database(url))
    executor.ensure_ray(num_cpus=s["parallel"])
    try:
        warm_workers(s)
        for seed in s["seeds"]:
            for variant in args.variants:
                unit = f"{variant} seed {seed}"
                if unit in part["units"]:
                    continue
                name = f"search-cost bench: {unit}"
                raw = search_spec(name, variant, seed, s, width=s["width"], depth=s["depth"])
                started = time.monotonic()
                search_id = run_unit(sessions, raw)
                result = unit_result(sessions, search_id, s["parallel"])
                part["units"][unit] = result | {
                    "variant": variant,
                    "seed": seed,
                    "this_run_s": time.monotonic() - started,
                }
                part["summary"] = compare(by_variant(part["units"]))
                part["machine"] = machine()
                write_part(out, "real", part)
                print(
                    f"real {unit}: {result['tokens']:,} tokens, search {result['search_wall_s']:.0f} s, "
                    f"loss {result['final_best']:.4f}, {result['stopped']} stopped, busy {result['busy']:.2f}",
                    flush=True,
                )
    finally:
        executor.release_ray()


def warm_workers(s: dict) -> None:
    """Train a few steps of the proxy in every worker process before the first unit, so that no unit's
    wall-clock pays for starting them (importing PyTorch, reading the corpus): Ray reuses them for the trials."""
    import ray

    from trainer import run_trial

    raw = search_spec("warm-up", "full", 0, s | {"steps": 2, "eval_every": 1}, width=s["width"], depth=s["depth"])
    config = SearchSpec.model_validate(raw).train_config()

    @ray.remote(num_cpus=1)
    def warm() -> None:
        run_trial(config)
        time.sleep(1.0)  # held while the others start, so that each task gets a process of its own

    ray.get([warm.remote() for _ in range(s["parallel"])])


def by_variant(units: dict[str, dict]) -> dict[str, dict[str, dict]]:
    rows: dict[str, dict[str, dict]] = {}
    for unit in units.values():
        rows.setdefault(unit["variant"], {})[str(unit["seed"])] = unit
    return rows


# -- synthetic: simulated curves, the service's plan and rules ----------------------------------------------------


@dataclass(frozen=True)
class Curves:
    """A candidate of noise-free final loss L trains as ``loss(step) = L + o + A·(1 − step/steps)^p + e``.

    A is what the loss still has to fall at step 0 (about ln 256 − 2.5 on the real proxy). ``p = p0 · 2^(k·ā)``,
    ā the mean of the candidate's LR coordinates (octaves) and k ``lr_speed``: a higher LR falls faster early on,
    so curves cross (the short-horizon bias a rule judging early can fall for). o ~ N(0, seed_sd) is the training
    seed's offset of the whole curve, e ~ N(0, eval_sd) each evaluation's own noise. A candidate over the cliff
    gives NaN at its first evaluation (the trainer ends it ``diverged`` there)."""

    amplitude: float = 3.0
    p0: float = 6.0
    lr_speed: float = 0.5
    seed_sd: float = 0.02
    eval_sd: float = 0.01

    def describe(self) -> dict:
        return {"formula": "L + o + A*(1 - step/steps)^p + e, p = p0 * 2^(k * mean LR octave)", **self.__dict__}

    def points(self, loss: float | None, mean_lr: float, steps: int, evals: list[int], rng) -> list[tuple[int, float]]:
        """``(step, validation loss)`` at each evaluation; one NaN if the candidate diverges."""
        if loss is None:
            return [(evals[0], math.nan)]
        p = self.p0 * 2 ** (self.lr_speed * mean_lr)
        offset = rng.normal(0, self.seed_sd)
        return [
            (step, loss + offset + self.amplitude * (1 - step / steps) ** p + rng.normal(0, self.eval_sd))
            for step in evals
        ]


@dataclass
class SimTrial:
    generation: int
    index: int
    kind: TrialKind
    points: list[tuple[int, float]]  # every evaluation it would report if it trained to its end
    true_loss: float | None  # the candidate's noise-free final loss; None over the cliff
    status: TrialStatus = TrialStatus.PENDING
    trained: int = 0  # steps
    start: float = 0.0
    told: dict = field(default_factory=dict)  # a stopped trial: the value of each choice in TOLD_CHOICES

    @property
    def final(self) -> float:
        """The loss it reached, or would have reached, at its last step."""
        return self.points[-1][1]

    def loss_at(self, step: int) -> float:
        return next(loss for s, loss in self.points if s == step)


class Simulation:
    """One search trained by ``parallel`` simulated workers, driven as the engine drives it (``Engine._step``):
    when a trial ends, the oldest untold generation is told once complete (and the next asked), then free workers
    get pending trials, oldest generation first; with none pending, an asynchronous stage asks ahead. A search
    trial is judged at each evaluation against the same stage's search trials' losses at that step so far, and
    stops at that step (on the real proxy the engine's request reaches it a second or two later)."""

    def __init__(self, spec: SearchSpec, landscape: Landscape, told: str, seed: int) -> None:
        self.spec, self.landscape, self.told_choice, self.seed = spec, landscape, told, seed
        self.plan = SearchPlan(spec)
        self.rule = spec.stopping()
        t = spec.training
        self.steps, self.evals = t.steps, [*range(t.eval_interval, t.steps, t.eval_interval), t.steps]
        self.judged = set(judged_steps(self.rule, t.steps, t.eval_interval)) if self.rule else set()
        self.curves = Curves()
        self.trials: list[SimTrial] = []
        self.pending: list[SimTrial] = []
        self.running = 0
        self.events: list[tuple[float, int, int]] = []  # (time, trial number, point index): the next report
        self.at_step: dict[int, dict[int, float]] = {}  # step -> search trial number -> validation loss
        self.now = 0.0
        self.searched_at = 0.0  # when the last search generation was told

    def run(self) -> Simulation:
        self._ask()
        self._step()
        while self.events:
            self.now, number, point = heapq.heappop(self.events)
            if self._report(number, point):
                self._step()
        return self

    def _ask(self) -> None:
        phase = self.plan.ask()
        generation = self.plan.generation
        for index, candidate in enumerate(phase.candidates):
            vector = np.asarray(candidate.vector)
            _, loss, _ = self.landscape([vector])[0]
            mean_lr = float(vector[self.landscape.is_lr].mean())
            for seed in candidate.seeds:
                rng = np.random.default_rng([self.seed, generation, index, seed])
                points = self.curves.points(loss, mean_lr, self.steps, self.evals, rng)
                self.pending.append(SimTrial(generation, index, phase.kind, points, loss))

    def _step(self) -> None:
        while self.plan.untold and self._complete(self.plan.told_generations):
            self._tell()
            if self.plan.finished:
                return
            if not self.plan.outstanding:
                self._ask()
        free = self.spec.execution.parallel - self.running
        if free > 0 and not self.pending and self.plan.can_ask_ahead:
            self._ask()
        for trial in self.pending[:free]:
            self._start(trial)
        self.pending = self.pending[free:]

    def _start(self, trial: SimTrial) -> None:
        trial.status, trial.start = TrialStatus.RUNNING, self.now
        self.trials.append(trial)
        self.running += 1
        self._schedule(len(self.trials) - 1, 0)

    def _schedule(self, number: int, point: int) -> None:
        trial = self.trials[number]
        heapq.heappush(self.events, (trial.start + trial.points[point][0], number, point))

    def _report(self, number: int, point: int) -> bool:
        """Trial ``number`` reached its evaluation ``point``: record it, judge it; whether the trial ended."""
        trial = self.trials[number]
        step, loss = trial.points[point]
        trial.trained = step
        if not math.isfinite(loss):
            return self._end(trial, TrialStatus.DIVERGED)
        searching = trial.kind == TrialKind.SEARCH
        if searching:
            self.at_step.setdefault(step, {})[number] = loss
        if searching and step in self.judged:
            others = [other for n, other in self.at_step[step].items() if n != number]
            if should_stop(self.rule, loss, others):
                return self._end(trial, TrialStatus.STOPPED)
        if point == len(trial.points) - 1:
            return self._end(trial, TrialStatus.SUCCEEDED)
        self._schedule(number, point + 1)
        return False

    def _end(self, trial: SimTrial, status: TrialStatus) -> bool:
        trial.status = status
        self.running -= 1
        return True

    def _complete(self, generation: int) -> bool:
        phase = self.plan.untold[generation]
        mine = [t for t in self.trials if t.generation == generation and t.status in FINAL_TRIAL]
        return len(mine) == sum(len(c.seeds) for c in phase.candidates)

    def _tell(self) -> None:
        generation = self.plan.told_generations
        phase = self.plan.untold[generation]
        outcomes: list[list[Outcome]] = [[] for _ in phase.candidates]
        for trial in (t for t in self.trials if t.generation == generation):
            if trial.status == TrialStatus.STOPPED:
                trial.told = self._told_values(trial)
                value = trial.told[self.told_choice]
                outcomes[trial.index].append(Outcome(trial.status, None if self.told_choice == "penalty" else value))
            else:
                loss = trial.final if trial.status == TrialStatus.SUCCEEDED else None
                outcomes[trial.index].append(Outcome(trial.status, loss))
        self.plan.tell(outcomes)
        if phase.kind == TrialKind.SEARCH:
            self.searched_at = self.now

    def _told_values(self, trial: SimTrial) -> dict:
        """What a stopped trial could be told: as the engine (``SearchRunner._predicted``), its raw loss when it
        stopped, and the penalty (``policy.tell`` gives it for a loss of None)."""
        raw = trial.loss_at(trial.trained)
        finished = [t for t in self.trials if t.kind == TrialKind.SEARCH and t.status == TrialStatus.SUCCEEDED]
        drops = [t.final - t.loss_at(trial.trained) for t in finished]
        worst = max((t.final for t in finished if t.generation <= trial.generation), default=None)
        return {
            "predicted": predicted_final(raw, drops),
            "raw": raw,
            "penalty": penalty(worst, self.spec.model.vocab_size),
        }

    # -- what it cost and found ------------------------------------------------------------------------------

    def result(self) -> dict:
        searched = [t for t in self.trials if t.kind == TrialKind.SEARCH]
        trained = sum(t.trained for t in searched)
        choice = self.plan.choices[-1]
        chosen = self.landscape([np.asarray(choice.vector)])[0][1] if choice.vector else None
        found = [t.true_loss for t in searched if t.true_loss is not None]
        return {
            "tokens": trained * self.spec.training.batch_size * self.spec.model.seq_len,
            "search_wall_s": self.searched_at,  # in steps: one step of one worker is one unit
            "total_wall_s": self.now,
            "final_best": chosen,
            "best_found": min(found, default=None),
            "trials": len(searched),
            "stopped": sum(t.status == TrialStatus.STOPPED for t in searched),
            "diverged": sum(t.status == TrialStatus.DIVERGED for t in searched),
            "busy": trained / (self.spec.execution.parallel * self.searched_at),
        }

    def stopped_told(self) -> list[dict]:
        """Each stopped trial's told values and the loss it would have reached."""
        return [t.told | {"final": t.final} for t in self.trials if t.status == TrialStatus.STOPPED]

    def ranking(self) -> dict[str, float | None]:
        """Per choice: the rank correlation, over the search trials told a loss, of what each was (or would
        be) told with the loss it reached or would have reached."""
        told = [t for t in self.trials if t.kind == TrialKind.SEARCH and t.status == TrialStatus.SUCCEEDED]
        told += [t for t in self.trials if t.status == TrialStatus.STOPPED]
        truth = [t.final for t in told]
        return {choice: spearman([t.told.get(choice, t.final) for t in told], truth) for choice in TOLD_CHOICES}


def run_synthetic(args: argparse.Namespace, out: Path) -> None:
    s = synthetic_settings(args.smoke)
    rows: dict[str, dict[str, dict]] = {}
    told_rows: dict[str, dict[str, dict]] = {}
    stopped: dict[str, list[dict]] = {}
    ranking: dict[str, list[dict]] = {}
    started = time.monotonic()
    for seed in range(s["seeds"]):
        for variant in args.variants:
            simulation = simulate(variant, seed, s, OPTIMIZER, "predicted")
            rows.setdefault(variant, {})[str(seed)] = simulation.result()
            if simulation.rule is not None:
                stopped.setdefault(variant, []).extend(simulation.stopped_told())
                ranking.setdefault(variant, []).append(simulation.ranking())
        told_rows.setdefault("full", {})[str(seed)] = simulate("full", seed, s, TOLD_OPTIMIZER, "predicted").result()
        for choice in TOLD_CHOICES:
            told_rows.setdefault(choice, {})[str(seed)] = simulate("stopping", seed, s, TOLD_OPTIMIZER, choice).result()
    part = {
        "settings": s | {"floor": SYNTHETIC_FLOOR, "optimizer": OPTIMIZER, "time_unit": "one step of one worker"},
        "summary": compare(rows),
        "told_value": {
            "correlation": correlations(stopped, ranking),
            "optimizer": TOLD_OPTIMIZER,
            "final_best": compare(told_rows),
        },
        "searches": rows,
        "wall_s": time.monotonic() - started,
        "machine": machine(),
    }
    write_part(out, "synthetic", part)
    print_summary("synthetic", part["summary"])
    print_summary(f"synthetic, {TOLD_OPTIMIZER}, stopped told", part["told_value"]["final_best"])
    print(json.dumps(part["told_value"]["correlation"], indent=1))


def simulate(variant: str, seed: int, s: dict, optimizer: str, told: str) -> Simulation:
    """One synthetic search of ``variant`` on landscape ``seed``, its stopped trials told ``told``."""
    raw = search_spec("synthetic", variant, seed, s, width=32, depth=2, optimizer=optimizer)
    spec = SearchSpec.model_validate(raw)
    landscape = Landscape(seed, spec.search_space.coordinates(spec.model.depth), s["condition"], s["cliff"])
    return Simulation(spec, landscape, told, seed).run()


def print_summary(part: str, summary: dict) -> None:
    for variant, entry in summary.items():
        vs = entry.get("vs_full", {})
        print(
            f"{part} {variant}: tokens {entry['tokens']['mean']:,.0f}, wall {entry['search_wall_s']['mean']:,.0f}, "
            f"final best {entry['final_best']['mean']:.4f}, stopped {entry['stopped']['mean']:.1f}"
            + (f"; vs full: tokens ×{vs['tokens_ratio']:.2f}, wall ×{vs['wall_ratio']:.2f}" if vs else "")
            + (f", final best {vs['final_best_diff']:+.4f} ± {vs['final_best_diff_se'] or 0:.4f}" if vs else ""),
            flush=True,
        )


def correlations(stopped: dict[str, list[dict]], ranking: dict[str, list[dict]]) -> dict:
    """Per stopping variant: the rank correlation with the loss reached at the end, of each choice, over the
    stopped trials of all seeds (the penalty is the same for all of them: null); and per search, over all its
    trials told a loss (mean ± sd over seeds)."""
    return {
        variant: {
            "stopped_trials": len(rows),
            "stopped": {
                choice: spearman([r[choice] for r in rows], [r["final"] for r in rows]) for choice in TOLD_CHOICES
            },
            "all_told_per_search": {choice: stats([r[choice] for r in ranking[variant]]) for choice in TOLD_CHOICES},
        }
        for variant, rows in stopped.items()
    }


# -- main ---------------------------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    p.add_argument("--smoke", action="store_true", help="tiny shapes and budgets, afresh, into bench/work/")
    p.add_argument(
        "--out",
        type=Path,
        help="results file (default: bench/results/search_cost.json, or bench/work/search_cost.smoke.json with "
        "--smoke); the real part's store is bench/work/NAME.db, after its name",
    )
    return p.parse_args()


def main() -> None:
    args = parse_args()
    out = args.out or (WORK / "search_cost.smoke.json" if args.smoke else RESULTS)
    out.parent.mkdir(parents=True, exist_ok=True)
    if "synthetic" in args.parts:
        run_synthetic(args, out)
    if "real" in args.parts:
        run_real(args, out)


if __name__ == "__main__":
    main()
