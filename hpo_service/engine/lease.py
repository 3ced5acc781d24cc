"""The engine lease: of the servers sharing a store, exactly one runs the engine; the others stand by.

Every ``hpo serve`` without ``--no-engine`` is a candidate. It tries to take the lease (a row of the store)
every ``renew_every_s``; the one that holds it runs the engine and renews the lease at that pace. A lease lasts
``ttl_s`` from its last renewal, so when its holder dies another candidate takes it within
``ttl_s + renew_every_s``; a holder that stops cleanly releases it, and a standby takes it at once.

Clocks: the lease's expiry is set and compared on the database's clock (``queries.database_now``), the one
clock every server reads, so servers on different hosts need not agree on the time.

What is guaranteed:

- The store: at most one server holds the lease at any moment, and every transaction its engine commits first
  checks, in that transaction, that it still does (``fenced``); a takeover is ordered after the old holder's
  last commit. An engine that lost the lease writes nothing, however late it notices, and the new holder's
  engine requeues the trials still marked running when it loads each search. Each result is stored once.
- Execution, with a local Ray per server (the default): a holder that dies takes its local Ray with it (its
  workers die with their server's process group), so a trial the new holder re-runs is no longer running
  elsewhere. A holder whose renewals go unanswered (the store restarting, a full disk: an outage every server
  meets) keeps its trials running, since cancelling them would throw away their work for nothing; its engine
  writes nothing meanwhile, and once the store answers it renews the lease, unless another server took it,
  which it learns at that renewal, and then it stops its engine and cancels its trials. So only where this
  one server is cut off from a store that others still reach (or is paused: SIGSTOP, a frozen VM) may a
  trial run twice at once, after ``ttl_s``; its result is stored once, by the new holder.
- Execution on a shared cluster (``RAY_ADDRESS``): the dead holder's trials are its Ray driver's tasks, which
  Ray ends only once it notices the driver gone: soon for a driver on a cluster node, after the client's
  reconnect grace (``RAY_CLIENT_RECONNECT_GRACE_PERIOD``, 30 s) for ``ray://``. Until then a trial may run
  twice at once (its orphaned result is never stored); an ``HPO_LEASE_TTL_S`` above that grace plus
  ``renew_every_s`` and a few seconds rules it out.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import StrEnum

from sqlalchemy import Connection, event
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, SessionTransaction, sessionmaker

from hpo_service.engine.engine import Engine
from hpo_service.store import queries, writes
from hpo_service.store.database import driver_message, transaction

log = logging.getLogger(__name__)
LEASE = "engine"  # the lease's name in the store


class ServerRole(StrEnum):
    HOLDER = "holder"  # holds the lease: its engine drives the searches
    STANDBY = "standby"  # a candidate: takes the lease when the holder dies or stops
    API_ONLY = "api-only"  # ``hpo serve --no-engine``: serves the API and never takes the lease


@dataclass(frozen=True)
class LeaseTiming:
    """How long a lease lasts and how often it is renewed (and sought): ``0 < renew_every_s < ttl_s``."""

    ttl_s: float = 15.0
    renew_every_s: float = 2.5

    def __post_init__(self) -> None:
        if not 0 < self.renew_every_s < self.ttl_s:
            raise LeaseTimingError(
                "the engine lease needs 0 < HPO_LEASE_RENEW_S < HPO_LEASE_TTL_S, "
                f"got {self.renew_every_s:g} s and {self.ttl_s:g} s"
            )

    @classmethod
    def from_environment(cls) -> LeaseTiming:
        """``HPO_LEASE_TTL_S`` (default 15 s) and ``HPO_LEASE_RENEW_S`` (a sixth of it)."""
        ttl_s = _seconds("HPO_LEASE_TTL_S", cls.ttl_s)
        return cls(ttl_s, _seconds("HPO_LEASE_RENEW_S", ttl_s / 6))


class LeaseTimingError(ValueError):
    """The lease's timing, as configured, cannot work."""


def _seconds(variable: str, default: float) -> float:
    text = os.environ.get(variable)
    try:
        return default if text is None else float(text)
    except ValueError:
        raise LeaseTimingError(f"{variable} must be a number of seconds, got {text!r}") from None


class LeaseLost(Exception):
    """What an engine's commit meets once its server no longer holds the lease."""


class EngineCandidate:
    """This server's candidacy for the engine lease: it runs an engine while, and only while, it holds it."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        timing: LeaseTiming | None = None,
        engine_factory: Callable[[sessionmaker[Session]], Engine] = Engine,
    ) -> None:
        self.sessions = sessions
        self.timing = timing or LeaseTiming()
        self.engine_factory = engine_factory
        self.holder = uuid.uuid4().hex  # this process's id in the lease, new at every start
        self.engine: Engine | None = None  # running while this server holds the lease
        self.error: str | None = None  # why this server's last engine stopped by itself, until one runs
        self._engine_sessions = fenced(sessions, self._holds, stall_limit_s=self.timing.ttl_s)
        self._valid_until = 0.0  # time.monotonic() when the lease expires unless renewed: then the log says so
        self._rest_until = 0.0  # after an engine stopped by itself, the lease is left to others until then
        self._store = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hpo-lease-store")
        self._unrenewed = False  # the store has not answered a renewal in time: said once in the log
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def role(self) -> ServerRole:
        return ServerRole.HOLDER if self.engine is not None else ServerRole.STANDBY

    def start(self) -> None:
        """Seek the lease once now (a lone server starts its engine before it serves), then in the background."""
        self._turn()
        self._thread = threading.Thread(target=self._run, name="hpo-lease", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the engine, then release the lease, so that a standby server takes over at once."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._step_down("this server is stopping", release=True)
        self._store.shutdown(wait=False)

    def wake(self) -> None:
        """Have the engine look at the store now, if this server runs it (else its holder sees it within 0.25 s)."""
        engine = self.engine
        if engine is not None:
            engine.wake()

    def _run(self) -> None:
        while not self._stop.wait(self._pause()):
            try:
                self._turn()
            except Exception:  # the candidacy must outlive anything one turn meets
                log.exception("engine lease: unexpected error")

    def _pause(self) -> float:
        return self.timing.renew_every_s

    def _turn(self) -> None:
        if self.engine is None:
            if time.monotonic() >= self._rest_until and self._ask(self._acquire, self.timing.renew_every_s):
                self._take_over()
        elif not self.engine.alive:
            self.error = self.engine.error or "the engine stopped"
            self._rest_until = time.monotonic() + self.timing.ttl_s
            self._step_down(f"its engine stopped ({self.error})", release=True)
        else:
            renewed = self._ask(self._renew, self.timing.renew_every_s)  # None: the store did not answer
            if renewed is False:
                self._step_down("another server holds the lease", release=False)
            elif renewed is None and time.monotonic() >= self._valid_until and not self._unrenewed:
                self._unrenewed = True
                log.warning(
                    "engine lease: not renewed for %g s; this server's trials keep running, and its engine writes "
                    "nothing until the store answers and the lease is still this server's",
                    self.timing.ttl_s,
                )
            elif renewed:
                self._unrenewed = False

    def _holds(self, session: Session) -> bool:
        return queries.holds_lease(session, LEASE, self.holder)

    def _acquire(self, session: Session) -> bool:
        host, pid = socket.gethostname(), os.getpid()
        return writes.acquire_lease(session, LEASE, self.holder, host, pid, self.timing.ttl_s)

    def _renew(self, session: Session) -> bool:
        return writes.renew_lease(session, LEASE, self.holder, self.timing.ttl_s)

    def _release(self, session: Session) -> None:
        writes.release_lease(session, LEASE, self.holder)

    def _ask(self, write: Callable[[Session], bool | None], limit_s: float) -> bool | None:
        """``write`` in a transaction of its own: its answer, or None if the store refused or did not answer
        within ``limit_s``."""
        asked = time.monotonic()
        answer = self._store.submit(self._in_transaction, write)
        try:
            yes = answer.result(timeout=max(0.0, limit_s))
        except TimeoutError:
            log.warning("engine lease: the store did not answer within %.1f s", limit_s)
            return None
        except DBAPIError as exc:
            log.warning("engine lease: the store refused: %s", driver_message(exc))
            return None
        if yes:
            self._valid_until = asked + self.timing.ttl_s
        return yes

    def _in_transaction(self, write: Callable[[Session], bool | None]) -> bool | None:
        with transaction(self.sessions) as session:
            return write(session)

    def _take_over(self) -> None:
        log.warning("engine lease taken: this server's engine drives the searches")
        self.error = None
        self.engine = self.engine_factory(self._engine_sessions)
        self.engine.start()

    def _step_down(self, why: str, release: bool) -> None:
        engine, self.engine = self.engine, None
        if engine is None:
            return
        log.warning("engine lease: stopping this server's engine: %s", why)
        engine.stop()
        if release:
            self._ask(self._release, self.timing.renew_every_s)


def fenced(
    sessions: sessionmaker[Session], holds: Callable[[Session], bool], stall_limit_s: float
) -> sessionmaker[Session]:
    """``sessions``' twin whose every commit first asks ``holds`` within the committing transaction, and is
    refused if it says no. The refusal is an ``OperationalError``: to the engine, a write the store refused,
    so it keeps what it could not write and tries again later, by which time it has been stopped.

    On PostgreSQL the check share-locks the lease's row until the commit; a server stalled inside a transaction
    (paused, cut off) would hold up a takeover for as long, so its transaction is ended by the database once
    idle for ``stall_limit_s``.
    """
    twin = sessionmaker(class_=sessions.class_, **sessions.kw)

    @event.listens_for(twin, "after_begin")
    def limit_stalls(session: Session, begun: SessionTransaction, connection: Connection) -> None:
        if connection.dialect.name == "postgresql":
            limit_ms = round(stall_limit_s * 1000)
            connection.exec_driver_sql(f"SET LOCAL idle_in_transaction_session_timeout = {limit_ms}")

    @event.listens_for(twin, "before_commit")
    def check(session: Session) -> None:
        session.flush()  # on SQLite, a transaction that has written holds the write lock from here to its commit
        if not holds(session):
            lost = LeaseLost("this server no longer holds the engine lease; nothing was written")
            raise OperationalError("check the engine lease", None, lost)

    return twin
