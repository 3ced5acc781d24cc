"""The engine: one thread in the controller that drives every active search.

Each turn of its loop it (1) picks up searches that were created, paused, resumed or cancelled through the
API, (2) collects what the executor reports and writes it in one transaction, asking the trials its search's
early-stopping rule judges hopeless to stop, (3) ends generations whose
trials are all final (tell, then ask the next), and (4) dispatches pending trials up to each search's
``parallel``, writing them as running before submitting them. The store is the source of truth: a runner
that hits a database error is dropped and rebuilt from the store on a later turn. Results that arrive while
the store refuses writes (a restarting server, a full disk) are kept and written once it answers again, so
no trial is trained twice for it.

A write the store refuses for one search's own data (a value beyond its column, text it cannot hold) is no
outage: waiting would not help, and every other search would wait with it. That search fails with the
database's reason and its trials are stopped; results of other searches that were to be written with its own
are written search by search. Only errors that say the store cannot take writes now (``OUTAGES``, or a probe
of every table failing) make the engine wait and retry.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from pydantic import ValidationError
from ray.exceptions import RayError
from sqlalchemy import exc as db_errors
from sqlalchemy.exc import DBAPIError, StatementError
from sqlalchemy.orm import Session, sessionmaker

from hpo_service.engine.executor import Event, Lost, Progress, RayExecutor, Resources, ensure_ray, release_ray
from hpo_service.engine.records import record_all
from hpo_service.engine.runner import SearchRunner
from hpo_service.statuses import FINAL_SEARCH, SearchStatus
from hpo_service.store import queries, writes
from hpo_service.store.database import driver_message, transaction
from hpo_service.store.models import Search

log = logging.getLogger(__name__)
SYNC_INTERVAL_S = 0.25  # how often the engine looks for searches changed through the API, unless woken
IDLE_WAIT_S = 0.5
MAX_BACKOFF_S = 5.0  # longest wait between attempts while the database refuses writes
# Errors that say the store or the cluster cannot take work now, whoever's it is: the engine waits and retries.
OUTAGES = (
    db_errors.OperationalError,  # down, restarting, disk full, locked, a lost connection
    db_errors.InterfaceError,
    db_errors.InternalError,  # e.g. a read-only transaction (a standby promoted away)
    db_errors.DisconnectionError,
    db_errors.TimeoutError,  # no connection free in the pool
    RayError,
)


class Engine:
    """Drives all active searches of one store on one executor."""

    def __init__(self, sessions: sessionmaker[Session], executor_factory: Callable[[], RayExecutor] = RayExecutor):
        self.sessions = sessions
        self.executor_factory = executor_factory
        self.executor: RayExecutor | None = None
        self.owns_ray = False  # this engine started or joined Ray, and leaves it when it stops
        self.runners: dict[int, SearchRunner] = {}
        self.paused: set[int] = set()
        self.owner: dict[int, int] = {}  # in-flight trial id -> search id
        self.error: str | None = None  # why the engine could not start, if it could not
        self.store_error: str | None = None  # why the last turn could not write to the store, until one can
        self.unrecorded: list[tuple[int, Event]] = []  # (search, event) not written yet: kept until the store answers
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_sync = 0.0

    # -- lifecycle ---------------------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="hpo-engine", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop the loop; trials still running are cancelled and will be re-run by the next controller."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def wake(self) -> None:
        """Look at the store now (a search was created or changed)."""
        self._wake.set()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        try:
            self.owns_ray = ensure_ray()
            self.executor = self.executor_factory()
        except Exception as exc:
            self.error = f"cannot start the executor: {type(exc).__name__}: {exc}"
            if self._stop.is_set():  # the server stopped while Ray was starting: an interruption, not a fault
                log.warning("engine: stopped while the executor was starting (%s)", self.error)
            else:
                log.exception("engine: cannot start the executor")
            if self.owns_ray:  # Ray started, the executor did not: stop Ray, or its agents linger for a minute
                release_ray()
            return
        backoff = 0.0
        while not self._stop.is_set():
            try:
                self.turn()
                if self.store_error is not None:
                    log.warning("engine: the database is back; carrying on")
                    self.store_error, backoff = None, 0.0
            except DBAPIError as exc:
                reason = f"{type(exc.orig or exc).__name__}: {driver_message(exc)}"
                if reason != self.store_error:  # once per distinct problem, not once per retry
                    log.warning("engine: the database refused a write, retrying (nothing is lost): %s", reason)
                self.store_error = reason
                self.runners.clear()  # rebuilt from the store once it answers again
                backoff = min(max(2 * backoff, 0.5), MAX_BACKOFF_S)
                self._stop.wait(backoff)
            except Exception:  # e.g. the cluster lost a node mid-call: the store still knows where things stand
                log.exception("engine: unexpected error; rebuilding the runners from the store")
                self.runners.clear()
                self._stop.wait(1.0)
        self._shutdown()

    def _shutdown(self) -> None:
        if self.executor is None:
            return
        interrupted = list(self.executor.in_flight)
        self.executor.close()
        try:
            self._record()
            with transaction(self.sessions) as session:
                writes.requeue(session, interrupted)
        except DBAPIError:
            log.warning("engine: could not write the last results; the next start re-runs those trials")
        finally:
            if self.owns_ray:  # before this thread ends: Ray's processes are SIGKILLed when it does (local_ray)
                release_ray()

    # -- one turn of the loop ------------------------------------------------------------------------------------

    def turn(self) -> None:
        assert self.executor is not None
        self._record()  # first what an earlier turn could not write, so that no result is taken for an orphan
        if self._wake.is_set() or time.monotonic() - self._last_sync >= SYNC_INTERVAL_S:
            self._wake.clear()
            self._sync()
        events = self.executor.poll(wait_s=0.05 if self.executor.in_flight else 0.0)
        touched = {self.owner[e.trial_id] for e in events if e.trial_id in self.owner}
        lost = {self.owner.get(e.trial_id) for e in events if isinstance(e, Lost)}
        self.unrecorded += [(self.owner[e.trial_id], e) for e in events]  # every event is of a trial in flight
        for event in events:
            if not self.executor.tracks(event.trial_id):
                self.owner.pop(event.trial_id, None)
        self._record()
        self._judge([e for e in events if isinstance(e, Progress)])
        for search_id in lost & set(self.runners):  # the lost trial is pending again
            self.runners[search_id].may_have_pending = True
        for search_id in list(self.runners):
            if search_id in touched or self._in_flight(search_id) == 0:
                self._step(search_id)
        if not events and not self.executor.in_flight:
            self._wake.wait(IDLE_WAIT_S)

    def _record(self) -> None:
        """Write the events not yet written, in one transaction. If the store refuses them for their data, write
        them search by search instead; an outage keeps them all for the next turn."""
        if not self.unrecorded:
            return
        try:
            with transaction(self.sessions) as session:
                record_all(session, [event for _, event in self.unrecorded])
        except Exception as exc:
            if is_outage(exc):
                raise
            self._record_search_by_search()
        self.unrecorded = []

    def _record_search_by_search(self) -> None:
        """Each search's events in a transaction of its own: a search whose own events the store refuses fails
        with the reason, and the others' are written. What is written leaves ``unrecorded`` at once, so that an
        outage midway keeps exactly what is left."""
        for search_id in dict.fromkeys(search_id for search_id, _ in self.unrecorded):
            events = [event for owner, event in self.unrecorded if owner == search_id]
            try:
                with transaction(self.sessions) as session:
                    record_all(session, events)
            except Exception as exc:
                if is_outage(exc):
                    raise
                self._fail(search_id, f"the store refused its trials' results: {describe(exc)}")
            self.unrecorded = [(owner, event) for owner, event in self.unrecorded if owner != search_id]

    def _judge(self, progress: list[Progress]) -> None:
        """Ask the trials that the early-stopping rule of their search stops now to stop (their curves are
        written already, so each is judged against the store)."""
        points: dict[int, dict[int, list[tuple[int, float]]]] = {}
        for event in progress:
            search_id = self.owner.get(event.trial_id)
            if search_id not in self.runners or self.runners[search_id].rule is None:
                continue
            curve = [(step, m["val_loss"]) for step, m in event.points if m.get("val_loss") is not None]
            if curve:
                points.setdefault(search_id, {}).setdefault(event.trial_id, []).extend(curve)
        for search_id, trials in points.items():
            with transaction(self.sessions) as session:
                stop = self.runners[search_id].to_stop(session, trials)
            if stop:
                log.info("engine: search %d: stopping trials %s early", search_id, stop)
                self.executor.stop(stop)

    def _step(self, search_id: int) -> None:
        """End the runner's generation if it can have ended, then fill its free slots."""
        runner = self.runners[search_id]
        try:
            # with one generation untold, a trial in flight is of it; with two, the older may have ended
            if self._in_flight(search_id) == 0 or runner.policy.outstanding > 1:
                with transaction(self.sessions) as session:
                    runner.advance(session)
                if runner.finished:
                    self.runners.pop(search_id)
                    return
            free = runner.spec.execution.parallel - self._in_flight(search_id)
            if search_id in self.paused or free <= 0:
                return
            if not runner.may_have_pending:  # a worker is free and nothing is left to dispatch: ask ahead?
                if not runner.policy.can_ask_ahead:
                    return
                with transaction(self.sessions) as session:
                    runner.ask_ahead(session)
            with transaction(self.sessions) as session:
                dispatches = runner.pending(session, free)
            execution = runner.spec.execution
            resources = Resources(execution.cpus_per_trial, execution.gpus_per_trial, execution.timeout_s)
            for dispatch in dispatches:
                self.executor.submit(dispatch.trial_id, dispatch.payload, resources)
                self.owner[dispatch.trial_id] = search_id
        except Exception as exc:
            if is_outage(exc):  # the store or the cluster, not the search: rebuild and carry on
                raise
            log.exception("engine: search %d failed", search_id)
            self._fail(search_id, describe(exc))

    def _in_flight(self, search_id: int) -> int:
        return sum(1 for owner in self.owner.values() if owner == search_id)

    def _sync(self) -> None:
        """Match the runners to the searches' statuses in the store (also of searches whose runner an outage
        dropped while their trials are in flight)."""
        self._last_sync = time.monotonic()
        driven = set(self.runners) | set(self.owner.values())
        with transaction(self.sessions) as session:
            searches = queries.searches_to_drive(session, list(driven))
        for search_id, status in searches:
            if status == SearchStatus.PAUSED:
                self.paused.add(search_id)
            else:
                self.paused.discard(search_id)
            if status in FINAL_SEARCH:
                self._retire(search_id)
            elif search_id not in self.runners:
                self._load(search_id)
        for search_id in driven - {search_id for search_id, _ in searches}:  # deleted meanwhile
            self._retire(search_id)

    def _load(self, search_id: int) -> None:
        """Start driving an active search: it runs from now, and its runner is rebuilt from the store."""
        runner = None
        try:
            with transaction(self.sessions) as session:
                if writes.start_search(session, search_id):  # else it ended meanwhile (a cancel right after submit)
                    runner = SearchRunner.load(session, session.get(Search, search_id))
                    orphans = queries.running_trial_ids(session, search_id)
                    writes.requeue(session, [t for t in orphans if not self.executor.tracks(t)])
        except Exception as exc:
            if is_outage(exc):
                raise
            log.exception("engine: cannot load search %d", search_id)
            self._fail(search_id, f"cannot start the search: {describe(exc)}")
            return
        if runner is None:
            self._retire(search_id)
        else:
            self.runners[search_id] = runner

    def _retire(self, search_id: int) -> None:
        """Drop a search that ended: stop its trials in flight, and mark its unfinished trials cancelled."""
        self.runners.pop(search_id, None)
        self.paused.discard(search_id)
        mine = [t for t, owner in self.owner.items() if owner == search_id]
        self.executor.cancel(mine)
        for trial_id in mine:
            self.owner.pop(trial_id)
        with transaction(self.sessions) as session:
            writes.cancel_unfinished(session, search_id)

    def _fail(self, search_id: int, reason: str) -> None:
        """End the search as failed for ``reason`` (unless it ended otherwise meanwhile), and retire it. Written
        together with a probe of every table, so that a store that refuses writes as such is never blamed on
        one search: the probe's error propagates as an outage."""
        with transaction(self.sessions) as session:
            writes.probe_writes(session)
            writes.fail_search(session, search_id, reason)
        self._retire(search_id)


def is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` says the store or the cluster cannot take work now (down, full, read-only, locked, out of
    connections, a lost node), rather than that one search's data, spec or optimizer is at fault."""
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, OUTAGES)


def describe(exc: BaseException) -> str:
    """``Type: message`` on one line; for a database error, the driver's type and first line (neither SQL nor
    values); for a spec that no longer validates, each field and what is wrong with it."""
    if isinstance(exc, StatementError) and exc.orig is not None:
        return f"{type(exc.orig).__name__}: {driver_message(exc)}"
    if isinstance(exc, ValidationError):
        fields = (f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}" for error in exc.errors())
        return f"{type(exc).__name__}: {'; '.join(fields)}"
    return f"{type(exc).__name__}: {exc}"
