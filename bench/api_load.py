"""Read load on a live controller: concurrent clients poll the API and the dashboard while a search trains.

A real controller (`hpo serve`, embedded SQLite or ``--db``, local Ray) runs a search of real trials. Meanwhile
``--clients`` concurrent clients (one asyncio loop, one HTTP connection each, on loopback) request the reads
a dashboard and the CLI make, round-robin, for ``--seconds``, each waiting ``--think-ms`` between its requests
(a bounded loop; a dashboard tab polls every 1.5 s; 0 is a saturating closed loop). Reported per endpoint and
overall: requests, errors (any status but 200, or a failed connection), and latency percentiles.

    python bench/api_load.py                        # 20 clients for 60 s on SQLite: about 1.5 minutes
    python bench/api_load.py --think-ms 0 --out bench/results/api_load_saturated.json
    python bench/api_load.py --db postgresql://postgres@127.0.0.1:5432/postgres_load --clients 20
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
SPEC = {
    "name": "load",
    "model": {"width": 32, "depth": 1, "head_dim": 16, "seq_len": 32},
    "training": {"batch_size": 4, "steps": 400, "warmup_steps": 10, "device": "cpu"},
    "search_space": {"modules": "all", "hps": ["lr", "init_std"]},
    "optimizer": {"name": "cma", "population": 8, "generations": 100, "seed": 0},
    "execution": {"parallel": 1, "cpus_per_trial": 1, "timeout_s": 600},
}
READS = {
    "searches list": "/api/searches?limit=50",
    "search summary": "/api/searches/{id}",
    "generations": "/api/searches/{id}/generations",
    "trials page": "/api/searches/{id}/trials?limit=100",
    "trials by loss": "/api/searches/{id}/trials?sort=loss&limit=25",
    "dashboard outcomes": "/api/searches/{id}/dashboard/outcomes",
    "dashboard multipliers": "/api/searches/{id}/dashboard/multipliers",
    "dashboard curves": "/api/searches/{id}/dashboard/curves",
    "search page": "/searches/{id}",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_controller(db: str, port: int, log: Path, options: tuple[str, ...] = ()) -> subprocess.Popen:
    """``hpo serve`` (with ``options``, e.g. ``--no-engine``) in a session of its own, once it answers."""
    process = subprocess.Popen(
        [sys.executable, "-m", "hpo_service.cli", "serve", "--port", str(port), "--db", db, *options],
        cwd=ROOT,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2).status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.3)
    raise RuntimeError(f"the controller did not start: {log.read_text()[-2000:]}")


async def client(
    base: str, paths: list[tuple[str, str]], offset: int, until: float, samples: list, think_s: float = 0.0
) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        i = offset
        await asyncio.sleep(think_s * offset / 20)  # spread the clients' first requests
        while time.monotonic() < until:
            name, path = paths[i % len(paths)]
            i += 1
            tick = time.perf_counter()
            try:
                ok = (await http.get(path)).status_code == 200
            except httpx.HTTPError:
                ok = False
            samples.append((name, time.perf_counter() - tick, ok))
            if think_s:
                await asyncio.sleep(think_s)


def summarise(latencies: list[float], errors: int) -> dict:
    ms = sorted(1000 * t for t in latencies)
    q = statistics.quantiles(ms, n=100) if len(ms) > 1 else ms * 99
    return {"requests": len(ms), "errors": errors, "p50_ms": q[49], "p95_ms": q[94], "p99_ms": q[98]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--think-ms", type=float, default=250.0, help="each client's pause between requests")
    parser.add_argument("--db", help="database URL (default: a fresh SQLite file)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "api_load.json")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        db = args.db or str(Path(tmp) / "load.db")
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        process = start_controller(db, port, Path(tmp) / "controller.log")
        try:
            search_id = httpx.post(f"{base}/api/searches", json=SPEC, timeout=30).json()["id"]
            while httpx.get(f"{base}/api/searches/{search_id}", timeout=30).json()["trials"]["succeeded"] < 8:
                time.sleep(1)  # a generation has ended: every chart has something to draw
            paths = [(name, path.format(id=search_id)) for name, path in READS.items()]
            samples: list[tuple[str, float, bool]] = []
            until = time.monotonic() + args.seconds

            async def load() -> None:
                think_s = args.think_ms / 1000
                await asyncio.gather(*(client(base, paths, i, until, samples, think_s) for i in range(args.clients)))

            asyncio.run(load())
            trials_during = httpx.get(f"{base}/api/searches/{search_id}", timeout=30).json()["trials"]
        finally:
            for pid in [p for p in map(int, filter(str.isdigit, os.listdir("/proc"))) if _sid(p) == process.pid]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    result = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "settings": {
            "clients": args.clients,
            "seconds": args.seconds,
            "think_ms": args.think_ms,
            "db": "sqlite" if not args.db else "url",
        },
        "trials_while_loaded": trials_during,
        "overall": summarise([t for _, t, _ in samples], sum(not ok for *_, ok in samples)),
        "endpoints": {
            name: summarise(
                [t for n, t, _ in samples if n == name], sum(1 for n, _, ok in samples if n == name and not ok)
            )
            for name in READS
        },
    }
    result["overall"]["requests_per_s"] = result["overall"]["requests"] / args.seconds
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"overall": result["overall"], "trials": trials_during}, indent=2))
    for name, row in result["endpoints"].items():
        print(f"{name:<24} {row['requests']:>6} req  {row['errors']} err  "
              f"p50 {row['p50_ms']:7.1f}  p95 {row['p95_ms']:7.1f}  p99 {row['p99_ms']:7.1f} ms")  # fmt: skip


def _sid(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except (ProcessLookupError, PermissionError):
        return None


if __name__ == "__main__":
    main()
