"""A real controller (`hpo serve`) in a subprocess for the tests: started on a free loopback port, stopped by pid.

It runs in a session of its own, so that stopping it also stops the Ray processes it started.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Controller:
    def __init__(
        self, db_url: str, log_path: Path, env: dict[str, str] | None = None, args: tuple[str, ...] = ()
    ) -> None:
        """``args``: more options for ``hpo serve`` (e.g. ``--no-engine``)."""
        self.db_url, self.log_path, self.env, self.args = db_url, log_path, env or {}, args
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self, timeout_s: float = 120.0) -> Controller:
        log = self.log_path.open("a")
        command = [sys.executable, "-m", "hpo_service.cli", "serve", "--port", str(self.port), "--db", self.db_url]
        self.process = subprocess.Popen(
            [*command, *self.args],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "RAY_DEDUP_LOGS": "0", "PYTHONPATH": str(ROOT), **self.env},
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the controller exited: {self.log_path.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/api/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.kill()
        raise RuntimeError(f"the controller did not answer within {timeout_s} s")

    def kill(self) -> None:
        """SIGKILL the controller and everything in its session (its local Ray)."""
        self._signal(signal.SIGKILL)

    def stop(self) -> None:
        """SIGTERM to the controller (a clean shutdown, which stops its Ray), then SIGKILL whatever is left.

        Only the controller is signalled first: with its Ray stopped under it, its shutdown would wait on Ray.
        """
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(20)
        self._signal(signal.SIGKILL)

    def _signal(self, sig: int, grace_s: float = 5.0) -> None:
        if self.process is None:
            return
        session = self.process.pid
        for pid in _session_members(session):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(grace_s)
        deadline = time.monotonic() + grace_s
        while _session_members(session) and time.monotonic() < deadline:
            time.sleep(0.2)

    def get(self, path: str, **params) -> dict:
        response = httpx.get(f"{self.url}{path}", params=params, timeout=30)
        response.raise_for_status()
        return response.json()

    def post(self, path: str, json: dict) -> httpx.Response:
        return httpx.post(f"{self.url}{path}", json=json, timeout=30)

    def wait_for(self, search_id: int, condition, timeout_s: float = 300.0, interval_s: float = 0.1) -> dict:
        """Poll until ``condition(search, trials)``; a 503 (the store briefly away) is waited out."""
        deadline, search = time.monotonic() + timeout_s, None
        while time.monotonic() < deadline:
            try:
                trials = self.get(f"/api/searches/{search_id}/trials", limit=5000)["trials"]
                search = self.get(f"/api/searches/{search_id}")
            except httpx.HTTPStatusError as exc:
                if exc.response.status_code != 503:
                    raise
            else:
                if condition(search, trials):
                    return search
            time.sleep(interval_s)
        raise AssertionError(f"search {search_id} never met the condition; last state {search}")


def stop_session(session: int, sig: int = signal.SIGKILL, grace_s: float = 10.0) -> None:
    """Signal every process of a session (one started with ``start_new_session``) and wait for them to go."""
    for pid in _session_members(session):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
    deadline = time.monotonic() + grace_s
    while _session_members(session) and time.monotonic() < deadline:
        time.sleep(0.2)


def _session_members(session: int) -> list[int]:
    """Processes whose session id is ``session`` (the controller and the Ray processes it started)."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getsid(int(entry.name)) == session:
                    members.append(int(entry.name))
            except (ProcessLookupError, PermissionError):
                continue
    return members


def process_tree(root: int) -> list[int]:
    """``root`` and every process descended from it, found through each process's parent in /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rpartition(")")[2].split()[1])  # the name in parentheses may hold spaces
            children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


@dataclass(frozen=True)
class ListeningSocket:
    pid: int
    command: str
    protocol: str  # tcp, tcp6, udp, udp6
    address: str
    port: int


def listening_sockets(pids: list[int]) -> list[ListeningSocket]:
    """The TCP sockets listening and the UDP sockets bound (not connected) held by these processes.

    Read from /proc: the sockets a process holds are its fds' socket inodes, and /proc/PID/net/{tcp,udp}[6]
    say where each inode is bound.
    """
    found = []
    for pid in pids:
        try:
            inodes = _socket_inodes(pid)
            command = (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except OSError:
            continue  # the process has ended
        for protocol in ("tcp", "tcp6", "udp", "udp6"):
            try:
                table = (Path("/proc") / str(pid) / "net" / protocol).read_text().splitlines()[1:]
            except OSError:
                continue
            for line in table:
                fields = line.split()
                local, remote, state, inode = fields[1], fields[2], fields[3], int(fields[9])
                listening = state == "0A" if protocol.startswith("tcp") else int(remote.split(":")[1], 16) == 0
                if inode in inodes and listening:
                    address, port = _decode_address(local)
                    found.append(ListeningSocket(pid, command[:120], protocol, address, port))
    return found


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    for fd in (Path("/proc") / str(pid) / "fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    return inodes


def _decode_address(hex_address: str) -> tuple[str, int]:
    """/proc/net's ``0100007F:1F90`` (the address in host byte order, 32-bit words) as ("127.0.0.1", 8080)."""
    host, port = hex_address.split(":")
    raw = b"".join(int(host[i : i + 8], 16).to_bytes(4, sys.byteorder) for i in range(0, len(host), 8))
    address = ipaddress.ip_address(raw)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:  # an IPv4 address on an IPv6 socket
        address = address.ipv4_mapped
    return str(address), int(port, 16)


def live_session_members(session: int) -> list[tuple[int, str]]:
    """The processes of a session still running (not zombies, which have ended but await their parent), with
    their names."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            name, _, rest = stat.partition(" (")[2].rpartition(")")
            state, _ppid, _pgrp, sid = rest.split()[:4]
            if int(sid) == session and state not in "ZX":
                members.append((int(entry.name), name))
    return members
