"""Read replicas: saturated read load on one server, and on two API replicas beside it, in the same run.

On each store, one ``hpo serve`` holds the engine lease and trains a search of real trials (``api_load.py``'s
spec, one CPU), and two ``hpo serve --no-engine`` serve the API from the same database. ``--clients`` clients
in a saturating closed loop (no pause) read ``api_load.py``'s nine endpoints, round-robin, in two setups:
**one server** (every client on the engine's server, as ``api_load.py --think-ms 0`` measures) and **two
replicas** (client i on replica i mod 2, a client-side stand-in for a load balancer; the engine's server
serves no reads). The setups alternate, ``--rounds`` times each, ``--seconds`` at a time, so that both meet
the same machine and the same search. The CPU time each part used is read from /proc meanwhile.

    python bench/read_replicas.py                         # SQLite and PostgreSQL: about 6 minutes
    python bench/read_replicas.py --backends sqlite --seconds 10 --rounds 1 --out /tmp/replicas.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import json
import os
import platform
import signal
import subprocess
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
from api_load import READS, SPEC, client, free_port, start_controller, summarise

ROOT = Path(__file__).resolve().parents[1]
SETUPS = ("one server", "two replicas")
POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"  # an administrator's URL: a database is made per run


@contextlib.contextmanager
def database(backend: str, folder: Path, admin_url: str) -> Iterator[str]:
    """A fresh database on ``backend``: a SQLite file in ``folder``, or a PostgreSQL database dropped after."""
    if backend == "sqlite":
        yield str(folder / "replicas.db")
        return
    import psycopg
    from sqlalchemy.engine import make_url

    name = f"hpo_read_replicas_{uuid.uuid4().hex[:8]}"
    admin = make_url(admin_url)
    with psycopg.connect(admin.render_as_string(hide_password=False), autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        yield admin.set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(admin.render_as_string(hide_password=False), autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class Servers:
    """The engine's server and two API replicas on one database, each in a session of its own."""

    def __init__(self, db: str, folder: Path) -> None:
        self.db, self.folder = db, folder
        self.processes: dict[str, subprocess.Popen] = {}
        self.urls: dict[str, str] = {}

    def start(self, name: str, *options: str) -> str:
        port = free_port()
        self.processes[name] = start_controller(self.db, port, self.folder / f"{name}.log", options)
        self.urls[name] = f"http://127.0.0.1:{port}"
        return self.urls[name]

    def cpu_seconds(self) -> dict[str, float]:
        """CPU time used so far by each server's process, and by the rest of the engine server's session (its
        Ray: the trial, the workers, the GCS)."""
        used = {name: _cpu_seconds([process.pid]) for name, process in self.processes.items()}
        engine = self.processes["engine"].pid
        used["ray"] = _cpu_seconds([pid for pid in _pids() if _sid(pid) == engine and pid != engine])
        return used

    def stop(self) -> None:
        for process in self.processes.values():
            for pid in [pid for pid in _pids() if _sid(pid) == process.pid]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def measure(servers: Servers, bases: list[str], paths: list[tuple[str, str]], args: argparse.Namespace) -> tuple:
    """``args.clients`` saturating clients for ``args.seconds``, client i on ``bases[i % len(bases)]``:
    the (server, endpoint, seconds, ok) samples, and the CPU cores each part used meanwhile."""
    per_client: list[list[tuple[str, float, bool]]] = [[] for _ in range(args.clients)]

    async def load() -> None:
        until = time.monotonic() + args.seconds
        await asyncio.gather(
            *(client(bases[i % len(bases)], paths, i, until, per_client[i]) for i in range(args.clients))
        )

    before, own_before, clock = servers.cpu_seconds(), _own_cpu_seconds(), time.monotonic()
    asyncio.run(load())
    wall = time.monotonic() - clock
    after = servers.cpu_seconds()
    cores = {part: (after[part] - before[part]) / wall for part in after}
    cores["load generator"] = (_own_cpu_seconds() - own_before) / wall
    samples = [(bases[i % len(bases)], *sample) for i, mine in enumerate(per_client) for sample in mine]
    return samples, cores


def run_backend(backend: str, args: argparse.Namespace, folder: Path) -> tuple[dict, list[dict]]:
    """The two setups, alternating, on one store: (summary, a row per setup and round)."""
    rows: list[dict] = []
    with database(backend, folder, args.postgres) as db:
        servers = Servers(db, folder)
        try:
            engine = servers.start("engine")  # the lease is free: this one takes it and trains the search
            replicas = [servers.start(f"replica-{i}", "--no-engine") for i in (1, 2)]
            roles = [httpx.get(f"{url}/api/health", timeout=30).json()["role"] for url in (engine, *replicas)]
            assert roles == ["holder", "api-only", "api-only"], roles
            search_id = httpx.post(f"{engine}/api/searches", json=SPEC, timeout=30).json()["id"]
            while httpx.get(f"{engine}/api/searches/{search_id}", timeout=30).json()["trials"]["succeeded"] < 8:
                time.sleep(1)  # a generation has ended: every chart has something to draw
            paths = [(name, path.format(id=search_id)) for name, path in READS.items()]
            samples: dict[str, list[tuple]] = {setup: [] for setup in SETUPS}
            cpu: dict[str, dict[str, float]] = {setup: {} for setup in SETUPS}
            for round_ in range(args.rounds):
                for setup, bases in zip(SETUPS, ([engine], replicas), strict=True):
                    taken, cores = measure(servers, bases, paths, args)
                    samples[setup] += taken
                    for part, used in cores.items():
                        cpu[setup][part] = cpu[setup].get(part, 0.0) + used / args.rounds
                    stats = overall(taken, args.seconds)
                    rows.append({"backend": backend, "setup": setup, "round": round_ + 1, **stats})
                    print(f"{backend:<10} {setup:<13} round {round_ + 1}: {stats['requests_per_s']:6.1f} req/s  "
                          f"p95 {stats['p95_ms']:6.1f} ms  {stats['errors']} errors", flush=True)  # fmt: skip
            trials = httpx.get(f"{engine}/api/searches/{search_id}", timeout=30).json()["trials"]
        finally:
            servers.stop()
    summary = {setup: overall(samples[setup], args.seconds * args.rounds) for setup in SETUPS}
    for setup in SETUPS:
        summary[setup]["cpu_cores"] = {part: round(used, 3) for part, used in cpu[setup].items()}
        by_server = Counter(server for server, *_ in samples[setup])
        summary[setup]["requests_by_server"] = sorted(by_server.values(), reverse=True)
    one, two = summary["one server"], summary["two replicas"]
    summary["ratio_two_replicas_over_one_server"] = {
        "requests_per_s": two["requests_per_s"] / one["requests_per_s"],
        "p95_ms": two["p95_ms"] / one["p95_ms"],
    }
    summary["trials_while_loaded"] = trials
    return summary, rows


def overall(samples: list[tuple], seconds: float) -> dict:
    stats = summarise([latency for *_, latency, _ in samples], sum(not ok for *_, ok in samples))
    return {**stats, "requests_per_s": stats["requests"] / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="sqlite,postgresql", help="comma-separated: sqlite, postgresql")
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each measurement")
    parser.add_argument("--rounds", type=int, default=2, help="measurements of each setup, alternating")
    parser.add_argument("--postgres", default=POSTGRES, help="PostgreSQL URL that may create databases")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "read_replicas.json")
    args = parser.parse_args()

    load_before = os.getloadavg()
    results, rows = {}, []
    for backend in args.backends.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            results[backend], backend_rows = run_backend(backend, args, Path(tmp))
            rows += backend_rows
    result = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "load_average_1min": {"before": load_before[0], "after": os.getloadavg()[0]},
        "settings": {"clients": args.clients, "seconds": args.seconds, "rounds": args.rounds, "think_ms": 0},
        "backends": results,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    with args.out.with_suffix(".csv").open("w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    for backend, summary in results.items():
        print(backend, json.dumps(summary["ratio_two_replicas_over_one_server"]))


def _pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def _sid(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except (ProcessLookupError, PermissionError):
        return None


def _cpu_seconds(pids: list[int]) -> float:
    """User and system CPU time of ``pids`` (those still running), from /proc/PID/stat."""
    ticks = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


if __name__ == "__main__":
    main()
