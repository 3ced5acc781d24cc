"""How fast the dashboard answers for a search of 5,000 trials, on SQLite and on PostgreSQL.

A search is written straight into a fresh store (SQLAlchemy Core bulk inserts): 50 generations of 100
candidates over the 33 log2 multipliers of examples/tiny.yaml, converging as a CMA search would, with 3% of
the trials diverged, 1% failed, the last generation half done (2 running, with streamed curves) and a
60-point learning curve (plus 10 validation points) for every trial that ended. Then a real server
(uvicorn, ``create_app`` without the engine) answers each page and data endpoint ``--repeats`` times over
HTTP; the median and 95th percentile are reported, with the size of each answer. With ``--browser``, Debian's
Chromium (driven by Playwright) also opens the search page and times it until every chart is drawn.

    python bench/dashboard_scale.py                       # SQLite and PostgreSQL, with the browser: ~1 minute
    python bench/dashboard_scale.py --postgres none --browser none
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from importlib.metadata import version
from pathlib import Path

import httpx
import numpy as np
import uvicorn
import yaml
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from hpo_service.api.app import create_app
from hpo_service.engine.runner import materialised_at_base
from hpo_service.spec import SearchSpec
from hpo_service.statuses import TRIAL_OUTCOMES, TrialStatus
from hpo_service.store import queries, writes
from hpo_service.store.database import database_url, open_database, session_factory, transaction, upgrade

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
CHARTS = ("progress", "population", "heatmap", "spread", "parallel", "curves")


# -- the store ---------------------------------------------------------------------------------------------------


def populate(sessions: sessionmaker[Session], trials: int = 5000, population: int = 100, seed: int = 0) -> int:
    """Write a running search of ``trials`` trials (``population`` per generation); return its id."""
    raw = yaml.safe_load((ROOT / "examples" / "tiny.yaml").read_text())
    raw["name"] = f"scale-{trials}"
    raw["optimizer"] |= {"population": population, "generations": -(-trials // population)}
    spec = SearchSpec.model_validate(raw)
    config, dimension = spec.train_config(), spec.dimension()
    low, high = spec.search_space.log2_bounds
    rng = np.random.default_rng(seed)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    generations = -(-trials // population)
    optimum = rng.normal(0, 1, dimension)
    hps = materialised_at_base(config, spec.multipliers([0.0] * dimension), False)  # a realistic size
    with transaction(sessions) as session:
        search_id = writes.create_search(session, spec.name, spec.model_dump(mode="json"), spec.digest()).id
        writes.start_search(session, search_id)
        for g in range(generations):
            rows = []
            for index in range(min(population, trials - g * population)):
                i = g * population + index
                vector = np.clip(optimum + rng.normal(0, 2.0 * 0.93**g, dimension), low, high)
                status = _status(rng.random(), last=g == generations - 1, position=index / population)
                ended = status in TRIAL_OUTCOMES
                loss = 2.3 + 0.02 * float(np.mean((vector - optimum) ** 2)) + rng.normal(0, 0.01)
                rows.append(
                    {
                        "index": index,
                        "replicate": 0,
                        "seed": int(rng.integers(2**31)),
                        "status": status,
                        "attempts": int(status != TrialStatus.PENDING),
                        "vector": vector.tolist(),
                        "multipliers": spec.multipliers(vector.tolist()).to_dict(),
                        "hps": hps,
                        "loss": loss if status == TrialStatus.SUCCEEDED else None,
                        "train_loss": loss + 0.05 if ended else None,
                        "steps": 60 if ended else None,
                        "node": "10.0.0.1" if status != TrialStatus.PENDING else None,
                        "error": "worker lost: node died" if status == TrialStatus.FAILED else None,
                        "wall_time_s": 3.0 if ended else None,
                        "started_at": start + timedelta(seconds=2 * i) if status != TrialStatus.PENDING else None,
                        "finished_at": start + timedelta(seconds=2 * i + 3) if ended else None,
                    }
                )
            writes.add_generation(session, search_id, g, rows, spec.optimizer.name, snapshot=b"")
            if g < generations - 1:
                writes.end_generation(session, search_id, g, writes.GenerationSummary(None, None, 0, 0))
        points = []
        for trial_id, status, loss in queries.trial_outcomes(session, search_id):
            if status == TrialStatus.PENDING:
                continue
            steps = 60 if status != TrialStatus.RUNNING else 25
            final = loss if loss is not None else 2.5
            for step in range(1, steps + 1):
                train = final + 3.0 * np.exp(-step / 12) + rng.normal(0, 0.02)
                val = final + 3.0 * np.exp(-step / 12) if step % 6 == 0 else None
                points.append((trial_id, step, {"train_loss": train, "val_loss": val}))
        writes.record_progress(session, points)
    return search_id


def _status(roll: float, last: bool, position: float) -> str:
    """3% diverged and 1% failed; the last generation's first half ended, then 2% running, the rest pending."""
    if last and position >= 0.5:
        return "running" if position < 0.52 else "pending"
    return "succeeded" if roll > 0.04 else "diverged" if roll > 0.01 else "failed"


# -- measuring ---------------------------------------------------------------------------------------------------


def endpoints(search_id: int) -> dict[str, str]:
    """What a browser asks for: the pages, the summary it polls, the charts' data and a page of the table."""
    api = f"/api/searches/{search_id}"
    return {
        "overview page": "/",
        "searches list (overview data)": "/api/searches?limit=100",
        "search page": f"/searches/{search_id}",
        "search summary (polled)": api,
        "outcomes (progress, population)": f"{api}/dashboard/outcomes",
        "multipliers (heatmaps, parallel)": f"{api}/dashboard/multipliers",
        "curves": f"{api}/dashboard/curves",
        "trial table page (by loss)": f"{api}/trials?limit=25&sort=loss",
    }


def items(body: object) -> str:
    """What an answer holds, in a few words."""
    if not isinstance(body, dict):
        return ""
    if "population" in body:
        return (
            f"{len(body['evaluated']['x'])} evaluation + {len(body['population']['x'])} population points, "
            f"{len(body['generations']['number'])} generations"
        )
    if "parallel" in body:
        p = body["parallel"]
        return f"{len(p['trial_id'])} lines × {len(p['axes'])} axes, {len(body['heatmap']['rows'])}-row grid"
    if "curves" in body:
        points = sum(len(c["step"]) + len(c["val_step"]) for c in body["curves"])
        return f"{len(body['curves'])} curves, {points} points"
    if "trials" in body and isinstance(body["trials"], list):
        return f"{len(body['trials'])} of {body['total']} trials"
    if "searches" in body:
        return f"{len(body['searches'])} searches"
    return "summary"


def measure(base: str, search_id: int, repeats: int) -> dict[str, dict]:
    results = {}
    with httpx.Client(base_url=base, timeout=60) as client:
        for name, path in endpoints(search_id).items():
            times, response = [], None
            for i in range(repeats + 2):  # two warm-up requests
                tick = time.perf_counter()
                response = client.get(path)
                elapsed = time.perf_counter() - tick
                response.raise_for_status()
                if i >= 2:
                    times.append(1000 * elapsed)
            is_json = response.headers["content-type"].startswith("application/json")
            results[name] = {
                "path": path,
                "median_ms": statistics.median(times),
                "p95_ms": float(np.percentile(times, 95)),
                "max_ms": max(times),
                "bytes": len(response.content),
                "holds": items(response.json()) if is_json else "HTML",
            }
            print(f"  {name:36s} {results[name]['median_ms']:8.1f} ms median, p95 {results[name]['p95_ms']:.1f}, "
                  f"{results[name]['bytes'] / 1024:.0f} KiB {results[name]['holds']}", flush=True)  # fmt: skip
    return results


def measure_browser(chromium: str, base: str, search_id: int, repeats: int) -> dict:
    """Milliseconds from navigation to the summary shown, and to every chart drawn and the trial table filled,
    in a fresh page each time."""
    from playwright.sync_api import sync_playwright

    summary, drawn = [], []
    ready = " && ".join(f"document.querySelector('#chart-{c} .main-svg')" for c in CHARTS)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        for _ in range(repeats + 1):  # the first load fills the cache with plotly.min.js
            page = context.new_page()
            tick = time.perf_counter()
            page.goto(f"{base}/searches/{search_id}")
            page.wait_for_function("document.getElementById('progress-text').textContent !== ''", polling=10)
            summary.append(1000 * (time.perf_counter() - tick))
            page.wait_for_function(f"{ready} && document.querySelectorAll('#trials tbody tr').length > 0", polling=10)
            drawn.append(1000 * (time.perf_counter() - tick))
            page.close()
        browser.close()
    return {
        "first_load_drawn_ms": drawn[0],
        "summary_median_ms": statistics.median(summary[1:]),
        "drawn_median_ms": statistics.median(drawn[1:]),
        "drawn_max_ms": max(drawn[1:]),
        "loads": repeats,
    }


@contextmanager
def serving(url: str) -> Iterator[str]:
    """A real HTTP server for the store at ``url`` (no engine), on a free loopback port."""
    app = create_app(url, run_engine=False, migrate=False)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@contextmanager
def fresh_database(kind: str, postgres: str, folder: Path) -> Iterator[str]:
    """A migrated, empty database: a SQLite file in ``folder``, or a new PostgreSQL database dropped after."""
    if kind == "sqlite":
        url = database_url(str(folder / f"scale-{uuid.uuid4().hex[:8]}.db"))
        upgrade(url)
        yield url
        return
    import psycopg

    name = f"hpo_bench_{uuid.uuid4().hex[:12]}"
    admin = make_url(database_url(postgres)).render_as_string(hide_password=False)
    plain = admin.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        url = make_url(admin).set(database=name).render_as_string(hide_password=False)
        upgrade(url)
        yield url
    finally:
        with psycopg.connect(plain, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def bench_backend(url: str, args: argparse.Namespace) -> dict:
    engine = open_database(url)
    tick = time.perf_counter()
    search_id = populate(session_factory(engine), args.trials, args.population)
    result: dict = {"populate_s": time.perf_counter() - tick}
    engine.dispose()
    print(f"  {args.trials} trials written in {result['populate_s']:.1f} s", flush=True)
    with serving(url) as base:
        result["endpoints"] = measure(base, search_id, args.repeats)
        if args.browser.lower() != "none":
            result["browser"] = b = measure_browser(args.browser, base, search_id, args.browser_repeats)
            print(
                f"  in the browser (medians): summary shown in {b['summary_median_ms']:.0f} ms, every chart drawn "
                f"in {b['drawn_median_ms']:.0f} ms; first load {b['first_load_drawn_ms']:.0f} ms",
                flush=True,
            )
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=5000)
    p.add_argument("--population", type=int, default=100)
    p.add_argument("--repeats", type=int, default=30, help="timed requests per endpoint (after two warm-ups)")
    p.add_argument("--browser", default=CHROMIUM, help="Chromium to time the page in; 'none' to skip")
    p.add_argument("--browser-repeats", type=int, default=5)
    p.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/postgres", help="'none' to skip")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "dashboard_scale.json")
    args = p.parse_args()
    backends = ["sqlite"] + ([] if args.postgres.lower() == "none" else ["postgresql"])
    results: dict = {
        "trials": args.trials,
        "population": args.population,
        "repeats": args.repeats,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            **{name: version(name) for name in ("fastapi", "sqlalchemy", "uvicorn", "plotly")},
        },
        "backends": {},
    }
    with tempfile.TemporaryDirectory(prefix="hpo_dashboard_") as folder:
        for backend in backends:
            with fresh_database(backend, args.postgres, Path(folder)) as url:
                print(f"{backend}:", flush=True)
                results["backends"][backend] = bench_backend(url, args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"results in {args.out}")


if __name__ == "__main__":
    main()
