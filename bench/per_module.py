"""Per-module HPs against equally-budgeted global HPs, each found and checked by the service itself.

Every *unit* is one search on the service (its store, engine, local Ray workers, stages, fresh-seed selection
and ``validate:`` transfer check), at a proxy of width 64, depth 4 and 409,600 tokens:

- ``global``: the global HPs (one tied multiplier per HP for every module), CMA-ES, with as many search trials
  as the two stages of ``staged`` together: the equal-budget baseline;
- ``staged``: the paper's recipe: the global stage, then per-module multipliers of every searched HP around
  its choice, with the trust-region search;
- ``staged-lr``: the same, per-module over the learning rate only;
- ``staged-no-selection``: ``staged`` choosing by search-time loss, without re-training its top candidates.

Each unit's result is trained with the same 3 fresh seeds at four targets: 4× wider, 2× deeper, 2× the tokens,
and all three together. The per-module speed-up is read from the curves of a staged unit's result against
``global``'s result, seed by seed (``hpo_service.validation.speedup``: tokens to the same loss; > 1 means
per-module is faster).

The run is resumable: units run one after another on one SQLite database (``bench/work/per_module.db``); a
killed run restarted with the same command resumes its search where the store left it (the service's own crash
safety), and each finished unit is written to ``bench/results/per_module.json`` at once, so a fresh checkout
resumes from the first unit not there, or from ``bench/results/per_module.checkpoint.sqlite`` (a copy of the store
taken with SQLite's backup API while a unit runs) when one was committed.

    python bench/per_module.py                       # every unit: hours on 2 cores
    python bench/per_module.py --units global staged # the two that answer the main question first
    python bench/per_module.py --smoke               # tiny shapes, into bench/work/: checks the script
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sqlite3
import statistics
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "per_module.json"
WORK = ROOT / "bench" / "work"
CHECKPOINT = RESULTS.with_name("per_module.checkpoint.sqlite")  # the store of unfinished units, when committed
CHECKPOINT_EVERY_S = 600
DURATION_EXPONENT = 0.5  # every unit's, pinned: the one they all ran with (bench/duration_exponent.py measures it)
UNITS = ("global", "staged", "staged-lr", "staged-no-selection")
TARGETS = {
    "width": {"width_factor": 4},
    "depth": {"depth_factor": 2},
    "tokens": {"tokens_multiplier": 2},
    "all": {"width_factor": 4, "depth_factor": 2, "tokens_multiplier": 2},
}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--units", nargs="+", choices=UNITS, default=list(UNITS))
    p.add_argument("--smoke", action="store_true", help="tiny shapes and budgets, results under bench/work/")
    p.add_argument("--parallel", type=int, default=2, help="trials at once (one CPU each)")
    return p.parse_args()


def settings(smoke: bool) -> dict:
    if smoke:
        return {"width": 32, "depth": 1, "steps": 12, "population": 2, "generations": 1, "seeds": 2, "top": 1}
    return {"width": 64, "depth": 4, "steps": 400, "population": 6, "generations": 3, "seeds": 3, "top": 3}


def unit_spec(unit: str, s: dict, parallel: int) -> dict:
    """The search spec of one unit (see the module docstring)."""
    hps = ["lr", "init_std"]
    optimizer = {"population": s["population"], "generations": s["generations"], "seed": 0}
    global_stage = {
        "name": "global",
        "search_space": {"tied": True, "hps": hps},
        "optimizer": {"name": "cma", **optimizer},
    }
    per_module = {
        "name": "per-module",
        "search_space": {"modules": "all", "hps": ["lr"] if unit == "staged-lr" else hps},
        "optimizer": {"name": "trust_region", "sigma": 0.5, **optimizer},
    }
    if unit == "global":  # as many search trials as both stages of a staged unit
        stages = [global_stage | {"optimizer": global_stage["optimizer"] | {"generations": 2 * s["generations"]}}]
    else:
        stages = [global_stage, per_module]
    targets = []
    for factors in TARGETS.values():
        target = {}
        if "width_factor" in factors:
            target["width"] = s["width"] * factors["width_factor"]
        if "depth_factor" in factors:
            target["depth"] = s["depth"] * factors["depth_factor"]
        if "tokens_multiplier" in factors:
            target["tokens_multiplier"] = factors["tokens_multiplier"]
        targets.append(target)
    return {
        "name": f"per-module bench: {unit}",
        "model": {"width": s["width"], "depth": s["depth"], "head_dim": 16, "seq_len": 64},
        "parameterisation": {"name": "completed", "duration_exponent": DURATION_EXPONENT},
        "training": {
            "batch_size": 16,
            "steps": s["steps"],
            "warmup_steps": s["steps"] // 10,
            "device": "cpu",
            "eval_every": max(1, s["steps"] // 20),
        },
        "stages": stages,
        "selection": {"top": 0 if unit == "staged-no-selection" else s["top"], "seeds": 2},
        "validate": {"targets": targets, "seeds": s["seeds"], "arms": ["global" if unit == "global" else "per-module"]},
        "execution": {"parallel": parallel, "cpus_per_trial": 1, "max_retries": 1, "timeout_s": 7200},
    }


def run_unit(sessions, raw: dict) -> int:
    """Run the unit's search to its end on the service's engine, resuming it if the store has it already."""
    from sqlalchemy import select

    from hpo_service.engine.commands import Commands
    from hpo_service.engine.engine import Engine
    from hpo_service.engine.executor import RayExecutor
    from hpo_service.spec import SearchSpec
    from hpo_service.store.models import Search

    with sessions() as session:
        search_id = session.scalar(select(Search.id).where(Search.name == raw["name"]))
    if search_id is None:
        search_id = Commands(sessions).create(SearchSpec.model_validate(raw)).id
    engine = Engine(sessions)
    engine.executor = RayExecutor()
    try:
        while True:
            engine.turn()
            with sessions() as session:
                row = session.get(Search, search_id)
                if row.status not in ("queued", "running"):
                    if row.status != "completed":
                        raise RuntimeError(f"{raw['name']} ended {row.status}: {row.error}")
                    return search_id
    finally:
        engine.executor.close()


def unit_result(sessions, search_id: int) -> dict:
    """What a finished unit found: its export (proxy loss on fresh seeds), selection and validation curves."""
    from sqlalchemy import func, select

    from hpo_service.export import build_export
    from hpo_service.selection import selection_report
    from hpo_service.store.models import Search, Trial
    from hpo_service.validation import validation_report

    with sessions() as session:
        search = session.get(Search, search_id)
        export = build_export(session, search)
        kinds = dict(
            session.execute(
                select(Trial.kind, func.count()).where(Trial.search_id == search_id).group_by(Trial.kind)
            ).all()
        )
        validation = validation_report(session, search)
        return {
            "search_id": search_id,
            "wall_s": (search.finished_at - search.started_at).total_seconds(),
            "trials": kinds,
            "proxy": export["loss"],
            "multipliers": export["base"]["multipliers"],
            "selection": [
                {k: stage[k] for k in ("stage", "gap")} | {"chosen": stage["chosen"]}
                for stage in selection_report(session, search)
            ],
            "validation": [
                {
                    "target": entry["target"],
                    "arm": entry["arms"][0]["name"],
                    "losses": entry["arms"][0]["losses"],
                    "seed_curves": {str(k): v for k, v in entry["arms"][0]["seed_curves"].items()},
                }
                for entry in validation
            ],
        }


def comparisons(units: dict) -> dict:
    """Per staged unit and target: final losses (mean ± sd) against ``global``'s, and the speed-up over it from
    the seed-mean curves and seed by seed (the same fresh seeds in every unit)."""
    from hpo_service.validation import mean_curve, speedup

    if "global" not in units:
        return {}
    baseline = {entry["target"]["label"]: entry for entry in units["global"]["validation"]}
    out: dict = {}
    for name, unit in units.items():
        if name == "global":
            continue
        rows = {}
        for entry in unit["validation"]:
            label = entry["target"]["label"]
            ours, theirs = entry["seed_curves"], baseline[label]["seed_curves"]
            seeds = sorted(set(ours) & set(theirs))
            per_seed = [speedup(ours[s], theirs[s]) for s in seeds]
            finite = [x for x in per_seed if x is not None]
            rows[label] = {
                "per_module": _stats(entry["losses"]),
                "global": _stats(baseline[label]["losses"]),
                "speedup": speedup(mean_curve(list(ours.values())), mean_curve(list(theirs.values()))),
                "speedup_seeds": per_seed,
                "speedup_sd": statistics.stdev(finite) if len(finite) > 1 else None,
            }
        out[name] = rows
    return out


def _stats(losses: list[float]) -> dict:
    return {
        "mean": statistics.fmean(losses) if losses else None,
        "sd": statistics.stdev(losses) if len(losses) > 1 else None,
        "n": len(losses),
    }


def keep_checkpoint(database: Path, stop: threading.Event) -> None:
    """Copy the store to ``CHECKPOINT`` every ``CHECKPOINT_EVERY_S`` seconds with SQLite's online backup API
    (a consistent snapshot while the engine writes), so committing that file carries an unfinished unit."""
    while not stop.wait(CHECKPOINT_EVERY_S):
        tmp = CHECKPOINT.with_suffix(".tmp")
        with sqlite3.connect(database) as source, sqlite3.connect(tmp) as copy:
            source.backup(copy)
        tmp.replace(CHECKPOINT)


def main() -> None:
    args = parse_args()
    from hpo_service.engine import executor  # imports Ray, keeping the local Ray on loopback
    from hpo_service.store.database import database_url, open_database, session_factory, upgrade

    s = settings(args.smoke)
    results_path = WORK / "per_module.smoke.json" if args.smoke else RESULTS
    WORK.mkdir(parents=True, exist_ok=True)
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    if results.get("settings") != s:
        results = {"settings": s, "units": {}}
    database = WORK / ("per_module.smoke.db" if args.smoke else "per_module.db")
    if not args.smoke and not database.exists() and CHECKPOINT.exists():  # a fresh checkout: resume from it
        shutil.copyfile(CHECKPOINT, database)
    url = database_url(str(database))
    upgrade(url)
    sessions = session_factory(open_database(url))
    executor.ensure_ray(num_cpus=args.parallel)
    stop = threading.Event()
    if not args.smoke:
        threading.Thread(target=keep_checkpoint, args=(database, stop), daemon=True).start()
    try:
        for unit in args.units:
            if unit in results["units"]:
                continue
            started = time.monotonic()
            search_id = run_unit(sessions, unit_spec(unit, s, args.parallel))
            results["units"][unit] = unit_result(sessions, search_id) | {"this_run_s": time.monotonic() - started}
            results["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version()}
            results["comparisons"] = comparisons(results["units"])
            tmp = results_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(results, indent=1) + "\n")
            tmp.replace(results_path)
            print(f"{unit}: done, proxy {results['units'][unit]['proxy']['mean']:.4f}", flush=True)
    finally:
        stop.set()
        executor.release_ray()
    if all(unit in results["units"] for unit in UNITS):
        CHECKPOINT.unlink(missing_ok=True)  # every unit is in the results file: nothing left to resume
    print(json.dumps(results.get("comparisons", {}), indent=1))


if __name__ == "__main__":
    main()
