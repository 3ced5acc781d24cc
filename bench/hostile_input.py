"""Hostile submissions against a live controller: each class of bad input the service was broken with before.

A real controller (`hpo serve`, local Ray) on each store takes every case below as ``POST /api/searches``.
For each, recorded: the status, where the error points (``loc`` of the first error), the size of the answer,
how long it took, whether anything was stored (searches and trials counted before and after) and whether the
server's log holds a traceback. While the heaviest bodies are refused, another client polls ``/api/health``:
its slowest answer is recorded too.

    python bench/hostile_input.py          # SQLite and PostgreSQL, about a minute
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
POSTGRES = "postgresql://postgres@127.0.0.1:5432"
JSON, YAML = "application/json", "application/yaml"
VALID = {"name": "ok", "model": {"width": 32, "depth": 1, "head_dim": 16, "seq_len": 32}}


def _with(path: str, value: object) -> bytes:
    """The valid spec with one dotted field set to ``value``, as JSON text (``value`` may be raw JSON text)."""
    data = json.loads(json.dumps(VALID))
    *parents, leaf = path.split(".")
    node = data
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = "@@VALUE@@"
    raw = value if isinstance(value, str) and value.startswith("RAW:") else None
    text = json.dumps(data).replace('"@@VALUE@@"', raw[4:] if raw else json.dumps(value))
    return text.encode()


def _alias_bomb(levels: int = 9) -> bytes:
    """The classic "billion laughs": each level nine aliases of the one before (about 356 bytes)."""
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels):
        prev, name = chr(ord("a") + i - 1), chr(ord("a") + i)
        lines.append(f"{name}: &{name} [" + ",".join(f"*{prev}" for _ in range(9)) + "]")
    lines.append(f"name: *{chr(ord('a') + levels - 1)}")
    return "\n".join(lines).encode()


CASES: list[tuple[str, str, bytes]] = [
    ("JSON nested 100,000 deep", JSON, b'{"name": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
    ("YAML nested 100,000 deep", YAML, b"name: " + b"[" * 100_000 + b"]" * 100_000),
    ("NaN in JSON", JSON, _with("base.lr", "RAW:NaN")),
    ("Infinity in JSON", JSON, _with("base.lr", "RAW:Infinity")),
    ("1e400 in JSON", JSON, _with("base.lr", "RAW:1e400")),
    ("`.inf` in YAML", YAML, b"name: x\nbase: {lr: .inf}\n"),
    ("lone surrogate in a string", JSON, b'{"name": "a\\ud800b"}'),
    ("invalid UTF-8 (`!!binary`)", YAML, b"name: !!binary /w==\n"),
    ("invalid UTF-8 bytes in JSON", JSON, b'{"name": "\xff\xfe"}'),
    ("NUL byte in the name", JSON, b'{"name": "a\\u0000b"}'),
    ("NUL byte in the data path", JSON, _with("training.data", "text:a\u0000b")),
    ("whitespace-only name", JSON, b'{"name": "   "}'),
    ("YAML alias bomb (356 bytes)", YAML, _alias_bomb()),
    ("plain 1 MiB YAML list", YAML, b"name: x\ntags: [" + b"1," * 450_000 + b"1]\n"),
    ("width 10^6", JSON, _with("model.width", 10**6)),
    ("width 2^100", JSON, _with("model.width", 2**100)),
    ("training.seed 2^40", JSON, _with("training.seed", 2**40)),
    ("steps 10^12", JSON, _with("training.steps", 10**12)),
    ("missing text file", JSON, _with("training.data", "text:no/such/file.txt")),
    ("token ids beyond vocab_size", JSON, b"@TOKENS@"),
]
CASE_TIMEOUT_S = 60
HEAVY = {"JSON nested 100,000 deep", "YAML nested 100,000 deep", "YAML alias bomb (356 bytes)", "plain 1 MiB YAML list"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_controller(db: str, port: int, log: Path, data_root: Path) -> subprocess.Popen:
    env = {**os.environ, "HPO_DATA_ROOTS": str(data_root), "HPO_API_TOKEN": ""}
    process = subprocess.Popen(
        [sys.executable, "-m", "hpo_service.cli", "serve", "--port", str(port), "--db", db],
        cwd=data_root,
        env=env,
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


def stored(client: httpx.Client) -> tuple[int, int]:
    """Searches and trials in the store, as the API lists them."""
    page = client.get("/api/searches", params={"limit": 1000}).json()
    return page["total"], sum(sum(s["trials"].values()) for s in page["searches"])


def health_while(client_base: str, stop: threading.Event, slowest: list[float]) -> None:
    with httpx.Client(base_url=client_base, timeout=30) as health:
        while not stop.is_set():
            started = time.perf_counter()
            health.get("/api/health")
            slowest.append(time.perf_counter() - started)
            time.sleep(0.02)


def run_cases(store: str, db: str, workdir: Path) -> list[dict]:
    data_root = workdir / "data"
    data_root.mkdir()
    (data_root / "tokens.u16").write_bytes(bytes([0xFF, 0xFF]) * 4096)  # id 65535, beyond vocab 256
    tokens_case = _with("training.data", "tokens:tokens.u16")
    port, log = free_port(), workdir / f"serve-{store}.log"
    process = start_controller(db, port, log, data_root)
    rows = []
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=CASE_TIMEOUT_S) as client:
            for name, content_type, body in CASES:
                body = tokens_case if body == b"@TOKENS@" else body
                before = stored(client)
                stop, health = threading.Event(), []
                poller = threading.Thread(target=health_while, args=(client.base_url, stop, health))
                poller.start()
                time.sleep(0.1)
                started = time.perf_counter()
                try:
                    answer = client.post("/api/searches", content=body, headers={"Content-Type": content_type})
                    status, detail, size = answer.status_code, _detail(answer), len(answer.content)
                except httpx.HTTPError as exc:  # the old server could take minutes, or drop the connection
                    status, detail, size = None, f"no answer: {type(exc).__name__}", 0
                elapsed = time.perf_counter() - started
                stop.set()
                poller.join()
                print(f"{store}: {name}: {status} in {elapsed:.2f} s", file=sys.stderr)
                rows.append(
                    {
                        "store": store,
                        "case": name,
                        "body_bytes": len(body),
                        "status": status,
                        "loc": detail,
                        "answer_bytes": size,
                        "seconds": round(elapsed, 3),
                        "health_max_ms": round(1000 * max(health), 1) if health else None,
                        "heavy": name in HEAVY,
                        "stored": [a - b for a, b in zip(stored(client), before, strict=True)],
                    }
                )
            valid = client.post("/api/searches", content=json.dumps(VALID), headers={"Content-Type": JSON})
            rows.append({"store": store, "case": "a valid spec, after all of the above", "status": valid.status_code})
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(60)
    text = log.read_text(errors="replace")
    traceback = text[text.index("Traceback (most recent call last)") :][:3000] if "Traceback (most" in text else None
    for row in rows:
        row["traceback_in_log"] = traceback
    return rows


def _detail(answer: httpx.Response) -> str | None:
    try:
        errors = answer.json().get("detail")
    except ValueError:
        return None
    if isinstance(errors, list) and errors:
        return ".".join(str(part) for part in errors[0].get("loc", []))
    return str(errors)[:80] if errors else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/hostile_input.json")
    parser.add_argument("--stores", nargs="+", default=["sqlite", "postgresql"])
    args = parser.parse_args()
    rows = []
    for store in args.stores:
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(tmp)
            if store == "sqlite":
                rows += run_cases(store, str(workdir / "hpo.db"), workdir)
                continue
            import psycopg

            name = f"hpo_hostile_{uuid.uuid4().hex[:8]}"
            with psycopg.connect(f"{POSTGRES}/postgres", autocommit=True) as admin:
                admin.execute(f'CREATE DATABASE "{name}"')
            try:
                rows += run_cases(store, f"{POSTGRES}/{name}", workdir)
            finally:
                with psycopg.connect(f"{POSTGRES}/postgres", autocommit=True) as admin:
                    admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    machine = {"cpus": os.cpu_count(), "python": platform.python_version(), "date": time.strftime("%Y-%m-%d")}
    machine["load_average_1min"] = os.getloadavg()[0]  # other work on the machine slows the health answers
    args.out.write_text(
        json.dumps({"machine": machine, "command": "python bench/hostile_input.py", "rows": rows}, indent=1)
    )
    for row in rows:
        print(json.dumps(row))


if __name__ == "__main__":
    main()
