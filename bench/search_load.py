"""Write load on a live controller: 50 searches submitted at once, then one search of 5,000 trials.

A real controller (`hpo serve`, embedded SQLite or ``--db``, local Ray) runs trials of a zero-cost trial
function (``search_load:zero_cost``, allowed with ``--allow-trial``), so what is measured is the service: the
API, the store, the engine and Ray dispatch, not training.

1. ``--searches`` clients submit a search each at the same moment (all connections open first). Reported: how
   many were accepted, the submission latencies, the time until every search completed, and whether every
   candidate of every search is in the store exactly once.
2. One search of ``--big-trials`` trials (population 50). While it runs, 20 clients read it as in
   ``api_load.py`` (250 ms between requests); reported: trials/s, read latencies and errors during the run,
   and the read latencies once it holds all of its trials.

    python bench/search_load.py                     # SQLite: about 2 minutes
    python bench/search_load.py --db postgresql://postgres@127.0.0.1:5432/postgres_search_load
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from api_load import READS, client, free_port, summarise

ROOT = Path(__file__).resolve().parents[1]
MODEL = {"width": 32, "depth": 1, "head_dim": 16, "seq_len": 32}
SEARCH_SPACE = {"modules": ["attn_q", "attn_out", "mlp_up", "mlp_down", "unembedding"], "hps": ["lr", "init_std"]}


def zero_cost(payload: dict, report) -> dict:
    """A bowl in the log2 multipliers around +0.5: a trial that costs nothing to train."""
    values = [v for hps in payload["multipliers"]["module"].values() for v in hps.values()]
    loss = 2.0 + sum((v - 0.5) ** 2 for v in values) / 10
    return {"status": "succeeded", "final_val_loss": loss, "final_train_loss": loss, "steps": 1,
            "train_curve": [(1, loss)], "eval_curve": [(1, loss)]}  # fmt: skip


def spec(name: str, population: int, generations: int, parallel: int) -> dict:
    return {
        "name": name,
        "model": MODEL,
        "training": {"batch_size": 4, "steps": 1, "warmup_steps": 0, "device": "cpu"},
        "search_space": SEARCH_SPACE,
        "optimizer": {"name": "cma", "population": population, "generations": generations, "seed": 0},
        "execution": {"parallel": parallel, "trial": "search_load:zero_cost", "timeout_s": 600},
    }


def start_controller(db: str, port: int, log: Path) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, "-m", "hpo_service.cli", "serve", "--port", str(port), "--db", db,
         "--allow-trial", "search_load:*"],
        cwd=ROOT,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "bench")},  # the workers import the trial from here
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2).status_code == 200:
                return process
        time.sleep(0.3)
    raise RuntimeError(f"the controller did not start: {log.read_text()[-2000:]}")


def stop(process: subprocess.Popen) -> None:
    for pid in [p for p in map(int, filter(str.isdigit, os.listdir("/proc"))) if _sid(p) == process.pid]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _sid(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except (ProcessLookupError, PermissionError):
        return None


def wait_until_done(base: str, ids: list[int], timeout_s: float) -> float:
    started, deadline = time.monotonic(), time.monotonic() + timeout_s
    with httpx.Client(base_url=base, timeout=30) as http:
        while time.monotonic() < deadline:
            statuses = [http.get(f"/api/searches/{i}").json()["status"] for i in ids]
            if all(s in ("completed", "failed", "cancelled") for s in statuses):
                return time.monotonic() - started
            time.sleep(0.5)
    raise RuntimeError(f"searches {ids} did not finish in {timeout_s} s")


def exactly_once(base: str, search_id: int, expected: int) -> bool:
    with httpx.Client(base_url=base, timeout=60) as http:
        trials = http.get(f"/api/searches/{search_id}/trials", params={"limit": 5000}).json()["trials"]
        summary = http.get(f"/api/searches/{search_id}").json()
    keys = {(t["generation"], t["index"]) for t in trials}
    return (
        summary["status"] == "completed"
        and len(trials) == len(keys) == expected
        and all(t["status"] == "succeeded" and t["attempts"] == 1 for t in trials)
    )


async def submit_all(base: str, specs: list[dict]) -> list[tuple[int, float, int | None]]:
    """All submissions released together once every connection is open: (status, seconds, id)."""
    clients = [httpx.AsyncClient(base_url=base, timeout=60) for _ in specs]
    try:
        await asyncio.gather(*(c.get("/api/health") for c in clients))  # connections open
        go = asyncio.Event()

        async def one(http: httpx.AsyncClient, body: dict) -> tuple[int, float, int | None]:
            await go.wait()
            tick = time.perf_counter()
            response = await http.post("/api/searches", json=body)
            elapsed = time.perf_counter() - tick
            return response.status_code, elapsed, response.json().get("id") if response.status_code == 201 else None

        tasks = [asyncio.create_task(one(c, s)) for c, s in zip(clients, specs, strict=True)]
        await asyncio.sleep(0.1)
        go.set()
        return await asyncio.gather(*tasks)
    finally:
        await asyncio.gather(*(c.aclose() for c in clients))


def read_load(base: str, search_id: int, seconds: float, clients: int = 20) -> dict:
    paths = [(name, path.format(id=search_id)) for name, path in READS.items()]
    samples: list[tuple[str, float, bool]] = []
    until = time.monotonic() + seconds

    async def load() -> None:
        await asyncio.gather(*(client(base, paths, i, until, samples, 0.25) for i in range(clients)))

    asyncio.run(load())
    overall = summarise([t for _, t, _ in samples], sum(not ok for *_, ok in samples))
    slowest = max(READS, key=lambda n: summarise([t for m, t, _ in samples if m == n], 0)["p95_ms"])
    return {**overall, "slowest_endpoint": slowest,
            "slowest_p95_ms": summarise([t for m, t, _ in samples if m == slowest], 0)["p95_ms"]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", help="database URL (default: a fresh SQLite file)")
    parser.add_argument("--searches", type=int, default=50)
    parser.add_argument("--big-trials", type=int, default=5000)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "search_load.json")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        process = start_controller(args.db or str(Path(tmp) / "load.db"), port, Path(tmp) / "controller.log")
        try:
            population, generations = 4, 5
            specs = [spec(f"burst-{i}", population, generations, parallel=2) for i in range(args.searches)]
            answers = asyncio.run(submit_all(base, specs))
            ids = [i for status, _, i in answers if status == 201]
            burst = {
                "submitted": len(specs),
                "accepted": len(ids),
                "distinct_ids": len(set(ids)),
                "errors": sum(status != 201 for status, _, _ in answers),
                "submit_latency": summarise([t for _, t, _ in answers], 0),
                "seconds_until_all_completed": wait_until_done(base, ids, 900),
                "every_candidate_exactly_once": all(exactly_once(base, i, population * generations) for i in ids),
            }
            print(json.dumps({"burst": burst}, indent=2), flush=True)

            big_spec = spec("big", population=50, generations=args.big_trials // 50, parallel=8)
            big = httpx.post(f"{base}/api/searches", json=big_spec, timeout=30).json()["id"]
            started = time.monotonic()
            with ThreadPoolExecutor(1) as pool:  # the first 30 s of the run are under read load
                reads = pool.submit(read_load, base, big, 30)
                wait_until_done(base, [big], 3600)
                elapsed = time.monotonic() - started
                during = reads.result()
            big_search = {
                "trials": args.big_trials,
                "seconds_to_complete": elapsed,
                "trials_per_s": args.big_trials / elapsed,
                "every_candidate_exactly_once": exactly_once(base, big, args.big_trials),
                "reads_while_running": during,
                "reads_when_complete": read_load(base, big, seconds=30),
            }
        finally:
            stop(process)

    result = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "db": "sqlite" if not args.db else "postgresql",
        "burst": burst,
        "big_search": big_search,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["big_search"], indent=2))


if __name__ == "__main__":
    main()
