"""Trials per second through the engine's whole loop with a zero-cost trial, against Optuna's ask/tell.

Ours: a search of ``--population`` × ``--generations`` trials goes through the real loop, one ``Engine.turn``
after another: ask a Nevergrad CMA population, persist it (trial rows and the optimizer snapshot), dispatch
each trial as a task on a real local Ray, collect the results, write them, tell the optimizer, ask the next.
The trial itself costs nothing (a sum of squares of the multipliers), so what is measured is the controller.
Optuna: the same number of trials over the same box (``spec.dimension()`` floats in the log2 bounds), with
the same objective, in the plain loop ``trial = study.ask(distributions); study.tell(trial, value)`` on
``RDBStorage`` (CMA-ES with the same population, and the default TPE). Both run on a fresh SQLite file and on
a fresh PostgreSQL database each, with the same store settings: Optuna's SQLite connections get the pragmas
our store's engine reports (WAL, ``synchronous``, foreign keys, busy timeout; Optuna's default is a rollback
journal with full syncs), its PostgreSQL connections are pinged before use as ours are, and the settings each
side ran with are read back from its own connections and recorded. Two floors isolate the dispatch: the same
number of no-op Ray tasks (submit, wait, get) and the executor alone (``RayExecutor.submit``/``poll`` with the
engine's payloads). One-time startup (Ray, migrations, Optuna's tables, the first Ray workers) is timed apart.

    python bench/engine_overhead.py      # 500 trials, SQLite and PostgreSQL: about 5.5 minutes on 2 cores
    python bench/engine_overhead.py --trials 200 --population 20 --postgres none --samplers cma
    python bench/engine_overhead.py --trials 40 --repeats 1 --optuna-repeats 1 --out /tmp/eo.json  # a smoke run
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import math
import os
import platform
import pstats
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import optuna
import ray
import yaml
from sqlalchemy import Engine as SqlEngine
from sqlalchemy import event, func, select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from hpo_service.engine.commands import Commands
from hpo_service.engine.engine import Engine
from hpo_service.engine.executor import Finished, RayExecutor, Resources, ensure_ray
from hpo_service.spec import SearchSpec
from hpo_service.store.database import database_url, open_database, session_factory, upgrade
from hpo_service.store.models import Search, Trial

ROOT = Path(__file__).resolve().parents[1]
SQLITE_PRAGMAS = ("journal_mode", "synchronous", "foreign_keys", "busy_timeout")  # what a commit costs
POSTGRES_SETTINGS = ("synchronous_commit", "fsync")


def zero_cost_trial(payload: dict, report: Callable[[int, dict[str, float]], None]) -> dict:
    """A trial that trains nothing: its loss is the sum of squares of the log2 multipliers (minimum at 0)."""
    multipliers = payload["multipliers"]
    values = [v for hps in multipliers.get("module", {}).values() for v in hps.values()]
    values += [v for layers in multipliers.get("depth", {}).values() for v in layers]
    values += list(multipliers.get("residual", {}).values())
    loss = math.fsum(v * v for v in values)
    return {
        "status": "succeeded",
        "final_val_loss": loss,
        "final_train_loss": loss,
        "train_curve": [],
        "eval_curve": [],
        "steps": 0,
        "tokens": 0,
        "wall_time_s": 0.0,
        "tokens_per_s": 0.0,
    }


@ray.remote
def _noop(payload: dict) -> int:
    return len(payload)


def make_spec(args: argparse.Namespace, generations: int | None = None) -> SearchSpec:
    """examples/tiny.yaml with the bench's population, generations and execution settings."""
    raw = yaml.safe_load((ROOT / "examples" / "tiny.yaml").read_text())
    raw["name"] = "engine-overhead"
    raw["optimizer"] |= {"name": "cma", "population": args.population, "generations": generations or args.generations}
    raw["execution"] |= {"parallel": args.parallel, "cpus_per_trial": args.cpus_per_trial, "max_retries": 0}
    return SearchSpec.model_validate(raw)


# -- databases ---------------------------------------------------------------------------------------------------


def postgres_admin_url(url: str) -> str:
    return make_url(database_url(url)).render_as_string(hide_password=False)


def postgres_version(url: str | None) -> str | None:
    if url is None:
        return None
    import psycopg

    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as connection:
        return connection.execute("SHOW server_version").fetchone()[0]


def postgres_reachable(url: str) -> str | None:
    """None if we can create databases at ``url``, else why not."""
    import psycopg

    try:
        with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), connect_timeout=5) as connection:
            connection.execute("SELECT 1")
    except psycopg.Error as exc:
        return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0]}"
    return None


@contextmanager
def fresh_database(kind: str, admin_url: str | None, folder: Path) -> Iterator[str]:
    """A SQLAlchemy URL of a new, empty database, removed afterwards."""
    name = f"hpo_bench_{uuid.uuid4().hex[:12]}"
    if kind == "sqlite":
        path = folder / f"{name}.db"
        try:
            yield database_url(str(path))
        finally:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
        return
    import psycopg

    assert admin_url is not None
    plain = admin_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(plain, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def store_settings(db: SqlEngine) -> dict[str, str]:
    """The settings that decide what a commit costs, as a new connection of ``db`` reports them."""
    if db.dialect.name == "sqlite":
        queries = {name: f"PRAGMA {name}" for name in SQLITE_PRAGMAS}
    else:
        queries = {name: f"SHOW {name}" for name in POSTGRES_SETTINGS}
    with db.connect() as connection:
        return {name: str(connection.exec_driver_sql(query).scalar()) for name, query in queries.items()}


def _apply_pragmas(pragmas: dict[str, str], dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    for name, value in pragmas.items():
        cursor.execute(f"PRAGMA {name}={value}")
    cursor.close()


def optuna_storage(url: str) -> tuple[optuna.storages.RDBStorage, dict[str, str]]:
    """Optuna's ``RDBStorage`` on ``url`` with our store's settings, and those settings as read back from it.

    SQLite: every Optuna connection gets the pragmas a connection of our ``open_database`` reports on the same
    file. PostgreSQL: the server's settings are shared; connections are pinged before use, as ours are.
    """
    if make_url(url).get_backend_name() != "sqlite":
        storage = optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True})
        return storage, store_settings(storage.engine)
    ours = open_database(url)
    wanted = store_settings(ours)
    ours.dispose()
    storage = optuna.storages.RDBStorage(url)
    event.listen(storage.engine, "connect", partial(_apply_pragmas, wanted))
    storage.engine.dispose()  # the connection that created Optuna's tables had Optuna's defaults
    settings = store_settings(storage.engine)
    if settings != wanted:
        raise RuntimeError(f"Optuna's SQLite settings {settings} differ from ours {wanted}")
    return storage, settings


# -- ours --------------------------------------------------------------------------------------------------------


def run_search(
    engine: Engine, commands: Commands, spec: SearchSpec, sessions: sessionmaker[Session]
) -> tuple[float, float]:
    """Wall and CPU seconds from creating the search to its completed status, turning ``Engine.turn``.

    Each turn runs in this thread, as the engine's own thread would run it; the search's first ask (in the
    turn that loads it) is timed, and so is every write the engine makes. The CPU time is this process's
    (all its threads, Ray's client threads included; not the Ray workers', nor PostgreSQL's).
    """
    tick, cpu = time.perf_counter(), time.process_time()
    search_id = commands.create(spec).id
    seen = False
    while True:
        engine.turn()
        if search_id in engine.runners:
            seen = True
        elif seen:  # a runner is dropped once its last generation is told (or the search failed)
            break
    elapsed, cpu = time.perf_counter() - tick, time.process_time() - cpu
    with sessions() as session:
        status = session.get(Search, search_id).status
        succeeded = session.scalar(
            select(func.count()).where(Trial.search_id == search_id, Trial.status == "succeeded")
        )
    expected = spec.optimizer.population * spec.optimizer.generations
    if status != "completed" or succeeded != expected:
        raise RuntimeError(f"search {search_id} ended {status} with {succeeded}/{expected} trials succeeded")
    return elapsed, cpu


def bench_engine(url: str, args: argparse.Namespace) -> dict:
    spec = make_spec(args)
    trials = spec.optimizer.population * spec.optimizer.generations
    tick = time.perf_counter()
    upgrade(url)
    db = open_database(url)
    sessions = session_factory(db)
    setup_s = time.perf_counter() - tick
    settings = store_settings(db)
    engine = Engine(sessions)
    engine.executor = RayExecutor(trial_fn=zero_cost_trial)
    commands = Commands(sessions, wake=engine.wake)
    warmup_s, _ = run_search(engine, commands, make_spec(args, generations=2), sessions)  # workers, imports
    runs = [run_search(engine, commands, spec, sessions) for _ in range(args.repeats)]
    profile = None
    if args.profile:  # one more run, untimed
        profiler = cProfile.Profile()
        profiler.enable()
        run_search(engine, commands, spec, sessions)
        profiler.disable()
        profile = top_functions(profiler, args.profile_lines)
    db.dispose()
    rates = [trials / wall for wall, _ in runs]
    result = {
        "trials": trials,
        "store_settings": settings,
        "setup_s": setup_s,
        "warmup_search_s": warmup_s,
        "seconds": [wall for wall, _ in runs],
        "cpu_seconds": [cpu for _, cpu in runs],
        "trials_per_s": rates,
        "median_trials_per_s": statistics.median(rates),
        "median_cpu_ms_per_trial": 1000 * statistics.median(cpu for _, cpu in runs) / trials,
    }
    if profile is not None:
        result["profile"] = profile
    return result


def top_functions(profiler: cProfile.Profile, lines: int) -> str:
    """The profile's top functions by cumulative time, as pstats prints them."""
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(lines)
    return out.getvalue()


def bench_ray_floor(args: argparse.Namespace) -> dict:
    """The dispatch alone, generation by generation as the engine does it: no store, no optimizer.

    ``ray``: bare no-op tasks (submit, ``ray.wait``, ``ray.get``). ``executor``: ``RayExecutor.submit`` and
    ``poll`` with the engine's own payloads and the zero-cost trial, i.e. everything but the controller.
    """
    spec = make_spec(args)
    population, generations = spec.optimizer.population, spec.optimizer.generations
    trials = population * generations
    config = spec.train_config().model_dump(mode="json")
    rng = np.random.default_rng(0)
    payloads = []
    for _ in range(population):
        multipliers = spec.multipliers(list(rng.uniform(-1, 1, spec.dimension())))
        payloads.append({"config": config, "multipliers": multipliers.to_dict()})
    resources = Resources(args.cpus_per_trial, 0.0, 600.0)

    def bare() -> float:
        tick = time.perf_counter()
        for _ in range(generations):
            queue, waiting = list(range(population)), []
            while queue or waiting:
                while queue and len(waiting) < args.parallel:
                    waiting.append(_noop.options(num_cpus=args.cpus_per_trial).remote(payloads[queue.pop()]))
                ready, waiting = ray.wait(waiting, num_returns=1)
                ray.get(ready)
        return time.perf_counter() - tick

    executor = RayExecutor(trial_fn=zero_cost_trial)

    def through_executor() -> float:
        tick = time.perf_counter()
        next_id = 0
        for _ in range(generations):
            waiting = set()
            queue = list(range(population))
            while queue or waiting:
                while queue and len(waiting) < args.parallel:
                    index = queue.pop()
                    executor.submit(next_id, payloads[index], resources)
                    waiting.add(next_id)
                    next_id += 1
                for happened in executor.poll(wait_s=0.05):
                    if isinstance(happened, Finished):
                        waiting.discard(happened.trial_id)
        return time.perf_counter() - tick

    bare()  # the workers
    through_executor()
    result = {}
    for label, fn in (("ray", bare), ("executor", through_executor)):
        times = [fn() for _ in range(args.repeats)]
        rates = [trials / t for t in times]
        result[label] = {"seconds": times, "trials_per_s": rates, "median_trials_per_s": statistics.median(rates)}
    return result


# -- Optuna ------------------------------------------------------------------------------------------------------


def bench_optuna(url: str, sampler_name: str, args: argparse.Namespace) -> dict:
    spec = make_spec(args)
    trials = spec.optimizer.population * spec.optimizer.generations
    low, high = spec.search_space.log2_bounds
    distributions = {
        name: optuna.distributions.FloatDistribution(low, high)
        for name in spec.search_space.coordinates(spec.model.depth)
    }
    tick = time.perf_counter()
    storage, settings = optuna_storage(url)
    setup_s = time.perf_counter() - tick
    times, cpu_times, splits = [], [], []
    for repeat in range(args.optuna_repeats):
        if sampler_name == "cma":
            sampler = optuna.samplers.CmaEsSampler(seed=args.seed, popsize=args.population)
        else:
            sampler = optuna.samplers.TPESampler(seed=args.seed)
        study = optuna.create_study(storage=storage, sampler=sampler, study_name=f"{sampler_name}-{repeat}")
        marks = []
        tick, cpu = time.perf_counter(), time.process_time()
        for i in range(trials):
            trial = study.ask(distributions)
            study.tell(trial, math.fsum(v * v for v in trial.params.values()))
            if (i + 1) % args.population == 0:
                marks.append(time.perf_counter())
        times.append(time.perf_counter() - tick)
        cpu_times.append(time.process_time() - cpu)
        splits.append([args.population / (b - a) for a, b in zip([tick, *marks], marks, strict=False)])
    storage.engine.dispose()
    rates = [trials / t for t in times]
    return {
        "trials": trials,
        "store_settings": settings,
        "setup_s": setup_s,
        "seconds": times,
        "cpu_seconds": cpu_times,
        "trials_per_s": rates,
        "median_trials_per_s": statistics.median(rates),
        "median_cpu_ms_per_trial": 1000 * statistics.median(cpu_times) / trials,
        "first_and_last_generation_trials_per_s": [[split[0], split[-1]] for split in splits],
    }


# -- main --------------------------------------------------------------------------------------------------------


def machine(postgres: str | None) -> dict:
    return {
        "cpus": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        **{name: version(name) for name in ("ray", "optuna", "nevergrad", "sqlalchemy", "psycopg")},
        "cmaes": _version_or_none("cmaes"),
        "postgresql": postgres_version(postgres),
    }


def _version_or_none(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=500, help="trials per timed run (a multiple of --population)")
    p.add_argument("--population", type=int, default=20, help="candidates per generation (ours and Optuna's CMA-ES)")
    p.add_argument("--parallel", type=int, default=20, help="our execution.parallel: trials in flight at once")
    p.add_argument("--cpus-per-trial", type=float, default=1.0, help="Ray CPUs each trial task asks for")
    p.add_argument("--repeats", type=int, default=3, help="timed runs of ours (and of the Ray floors)")
    p.add_argument("--optuna-repeats", type=int, default=2, help="timed runs of each Optuna configuration")
    p.add_argument("--samplers", nargs="+", choices=["cma", "tpe"], default=["cma", "tpe"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--postgres",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="a server URL whose user may CREATE DATABASE (a fresh one per run, dropped after); 'none' to skip",
    )
    p.add_argument("--profile", action="store_true", help="print a cProfile of one more, untimed run of ours")
    p.add_argument("--profile-lines", type=int, default=40)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "engine_overhead.json")
    args = p.parse_args()
    if args.trials % args.population:
        p.error(f"--trials ({args.trials}) must be a multiple of --population ({args.population})")
    args.generations = args.trials // args.population
    return args


def main() -> None:
    args = parse_args()
    started, load_before = time.perf_counter(), os.getloadavg()[0]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if "cma" in args.samplers and _version_or_none("cmaes") is None:
        print("Optuna's CmaEsSampler needs the 'cmaes' package (pip install cmaes): skipping CMA-ES", flush=True)
        args.samplers = [s for s in args.samplers if s != "cma"]
    databases = ["sqlite"]
    postgres = None
    if args.postgres.lower() != "none":
        postgres = postgres_admin_url(args.postgres)
        why = postgres_reachable(postgres)
        if why is None:
            databases.append("postgresql")
        else:
            print(f"PostgreSQL at {args.postgres} is unreachable ({why}): skipping PostgreSQL", flush=True)
            postgres = None

    tick = time.perf_counter()
    ensure_ray()
    # The bench runs as a script: Ray's workers get the zero-cost trial by value, not by importing this file.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray_init_s = time.perf_counter() - tick
    spec = make_spec(args)
    print(
        f"{args.trials} trials per run: population {args.population} × {args.generations} generations, "
        f"{spec.dimension()} dimensions, parallel {args.parallel}, {args.cpus_per_trial:g} CPU per trial; "
        f"Ray started in {ray_init_s:.1f} s",
        flush=True,
    )

    results: dict = {"ours": {}, "optuna": {}}
    floor = bench_ray_floor(args)
    print(
        f"dispatch floor: bare Ray {floor['ray']['median_trials_per_s']:,.0f} tasks/s, "
        f"RayExecutor {floor['executor']['median_trials_per_s']:,.0f} trials/s",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="hpo_bench_") as folder:
        for db in databases:
            with fresh_database(db, postgres, Path(folder)) as url:
                ours = bench_engine(url, args)
            results["ours"][db] = ours
            print(
                f"{db}: ours {ours['median_trials_per_s']:,.1f} trials/s "
                f"({', '.join(f'{r:,.1f}' for r in ours['trials_per_s'])}), "
                f"{ours['median_cpu_ms_per_trial']:.2f} CPU ms/trial; setup {ours['setup_s']:.2f} s, "
                f"warm-up search {ours['warmup_search_s']:.2f} s",
                flush=True,
            )
            if "profile" in ours:
                print(ours["profile"], flush=True)
            for sampler in args.samplers:
                with fresh_database(db, postgres, Path(folder)) as url:
                    theirs = bench_optuna(url, sampler, args)
                results["optuna"].setdefault(db, {})[sampler] = theirs
                print(
                    f"{db}: Optuna {sampler} {theirs['median_trials_per_s']:,.1f} trials/s "
                    f"({', '.join(f'{r:,.1f}' for r in theirs['trials_per_s'])}), "
                    f"{theirs['median_cpu_ms_per_trial']:.2f} CPU ms/trial; "
                    f"setup {theirs['setup_s']:.2f} s; store settings {theirs['store_settings']} "
                    f"(ours {ours['store_settings']})",
                    flush=True,
                )
    ratios = {
        db: {
            sampler: results["ours"][db]["median_trials_per_s"] / theirs["median_trials_per_s"]
            for sampler, theirs in results["optuna"].get(db, {}).items()
        }
        for db in databases
    }
    cpu_ratios = {
        db: {
            sampler: theirs["median_cpu_ms_per_trial"] / results["ours"][db]["median_cpu_ms_per_trial"]
            for sampler, theirs in results["optuna"].get(db, {}).items()
        }
        for db in databases
    }
    floor_ms = {label: 1000 / part["median_trials_per_s"] for label, part in floor.items()}
    ms_per_trial = {
        db: {
            "ours": 1000 / part["median_trials_per_s"],
            "bare_ray_tasks_alone": floor_ms["ray"],
            "executor_alone": floor_ms["executor"],
            "controller_and_store": 1000 / part["median_trials_per_s"] - floor_ms["executor"],
        }
        for db, part in results["ours"].items()
    }
    summary = {
        "machine": machine(postgres) | {"load_average_1min": [load_before, os.getloadavg()[0]]},
        "settings": {
            "trials": args.trials,
            "population": args.population,
            "generations": args.generations,
            "dimension": spec.dimension(),
            "parallel": args.parallel,
            "cpus_per_trial": args.cpus_per_trial,
            "repeats": args.repeats,
            "optuna_repeats": args.optuna_repeats,
        },
        "ray_init_s": ray_init_s,
        "dispatch_floor": floor,
        **results,
        "ratio_ours_over_optuna": ratios,
        "cpu_ratio_optuna_over_ours": cpu_ratios,
        "ms_per_trial": ms_per_trial,
        "total_s": time.perf_counter() - started,
    }
    for part in summary["ours"].values():
        part.pop("profile", None)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2))
    print(
        json.dumps(
            {
                k: summary[k]
                for k in ("ratio_ours_over_optuna", "cpu_ratio_optuna_over_ours", "ms_per_trial", "total_s")
            },
            indent=2,
        )
    )
    ray.shutdown()


if __name__ == "__main__":
    main()
