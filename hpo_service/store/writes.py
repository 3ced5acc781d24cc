"""Every write the service makes, each a named function in the caller's transaction (reads: ``queries``).

The engine, the API's commands and the benches call these; no SQL that changes the store lives elsewhere.
A final status never changes again: every write of a search's status is one conditional UPDATE (``WHERE
status`` is still active, or still one the command moves from), and writes that finish a trial only touch
trials still running. The condition is checked by the database as it writes, so a cancel that commits while
the engine is between reading a search and writing it is never overwritten (PostgreSQL re-checks the
condition on the row it waited for; SQLite has one writer at a time).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import bindparam, case, delete, false, func, insert, literal, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from hpo_service.statuses import (
    ACTIVE_SEARCH,
    FINAL_SEARCH,
    SEARCH_COMMANDS,
    UNFINISHED_TRIAL,
    GenerationStatus,
    SearchStatus,
    TrialKind,
    TrialStatus,
)
from hpo_service.store import queries
from hpo_service.store.models import EngineLease, Generation, OptimizerState, ProgressPoint, Search, Trial, utcnow


class CommandError(Exception):
    """A command that does not apply to the search in its current state."""


class SearchNotFound(CommandError):
    pass


@dataclass(frozen=True)
class FinishedTrial:
    """What a finished trial writes: its final status, losses, budget and timings."""

    trial_id: int
    status: TrialStatus
    loss: float | None
    train_loss: float | None
    steps: int | None
    tokens: int | None
    tokens_per_s: float | None
    wall_time_s: float | None
    error: str | None
    node: str | None
    worker: str | None


@dataclass(frozen=True)
class GenerationSummary:
    best_loss: float | None
    median_loss: float | None
    diverged: int
    failed: int
    stopped: int = 0


# -- searches -------------------------------------------------------------------------------------------------------


def create_search(session: Session, name: str, spec_json: dict, spec_hash: str) -> Search:
    search = Search(name=name, spec_json=spec_json, spec_hash=spec_hash)
    session.add(search)
    session.flush()
    return search


def apply_command(session: Session, search_id: int, command: str) -> Search:
    """Pause, resume or cancel (``statuses.SEARCH_COMMANDS``); a search already in the target status is left
    as it is."""
    allowed, target = SEARCH_COMMANDS[command]
    values = {"status": target} | ({"finished_at": utcnow()} if target in FINAL_SEARCH else {})
    changed = _set_search(session, search_id, allowed, **values)
    search = session.get(Search, search_id, populate_existing=True)
    if search is None:
        raise SearchNotFound(f"no search with id {search_id}")
    if not changed and search.status != target:
        raise CommandError(f"cannot {command} a search that is {search.status}")
    return search


def start_search(session: Session, search_id: int) -> bool:
    """A queued search runs from now (a paused one stays paused; a resumed one keeps its first start time).
    False if the search has ended (cancelled right after it was submitted): then nothing is written."""
    now = literal(utcnow(), Search.started_at.type)
    running = case((Search.status == SearchStatus.QUEUED, SearchStatus.RUNNING.value), else_=Search.status)
    return _set_search(
        session, search_id, ACTIVE_SEARCH, status=running, started_at=func.coalesce(Search.started_at, now)
    )


def complete_search(session: Session, search_id: int) -> bool:
    """The search ended as planned; False (nothing written) if it had ended otherwise meanwhile."""
    return _set_search(session, search_id, ACTIVE_SEARCH, status=SearchStatus.COMPLETED, finished_at=utcnow())


def fail_search(session: Session, search_id: int, error: str) -> bool:
    """The search cannot go on, for the reason ``error``; False (nothing written) if it had ended meanwhile."""
    values = {"status": SearchStatus.FAILED, "error": storable_text(error), "finished_at": utcnow()}
    return _set_search(session, search_id, ACTIVE_SEARCH, **values)


def _set_search(session: Session, search_id: int, statuses: Iterable[SearchStatus], **values: object) -> bool:
    """Write ``values`` to the search if its status is one of ``statuses`` as the database writes it."""
    changed = session.execute(
        update(Search).where(Search.id == search_id, Search.status.in_(list(statuses))).values(**values),
        execution_options={"synchronize_session": False},
    )
    return changed.rowcount == 1


def storable_text(text: str, limit: int = 4000) -> str:
    """``text`` as every store can hold it: NUL bytes written as ``\\x00`` (PostgreSQL refuses them), lone
    surrogates escaped (they are not UTF-8), at most ``limit`` characters."""
    return text[:limit].replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode("utf-8")


def probe_writes(session: Session) -> None:
    """A write that changes nothing, to every table the engine writes: it fails only if the store refuses
    writes as such (read-only, no privilege, a missing table), never for one search's data."""
    for model in (Search, Generation, Trial, ProgressPoint, OptimizerState):
        key = next(iter(model.__table__.primary_key.columns))
        session.execute(update(model.__table__).where(false()).values({key: key}))


# -- generations ----------------------------------------------------------------------------------------------------


def add_generation(
    session: Session,
    search_id: int,
    number: int,
    trials: list[dict],
    optimizer: str,
    snapshot: bytes,
    *,
    stage: str | None = None,
    kind: str = TrialKind.SEARCH,
) -> None:
    """A generation (a phase of the search's plan), its trials (``Trial`` column values) and the plan's snapshot
    taken right after asking it."""
    session.add(Generation(search_id=search_id, number=number, stage=stage, kind=kind))
    now = utcnow()
    session.execute(
        insert(Trial),
        [
            {
                "search_id": search_id,
                "generation": number,
                "status": TrialStatus.PENDING,
                "attempts": 0,
                "created_at": now,
                "stage": stage,
                "kind": kind,
                **trial,
            }
            for trial in trials
        ],
    )
    values = {"generation": number, "state": snapshot, "updated_at": now}
    if number == 0:
        session.add(OptimizerState(search_id=search_id, optimizer=optimizer, **values))
    else:  # an UPDATE, without reading back the old snapshot
        session.execute(update(OptimizerState).where(OptimizerState.search_id == search_id).values(**values))


def save_snapshot(session: Session, search_id: int, snapshot: bytes) -> None:
    """The plan's snapshot taken right after a tell (an ask writes its own with its generation)."""
    session.execute(
        update(OptimizerState).where(OptimizerState.search_id == search_id).values(state=snapshot, updated_at=utcnow())
    )


def end_generation(session: Session, search_id: int, number: int, summary: GenerationSummary) -> None:
    session.execute(
        update(Generation)
        .where(Generation.search_id == search_id, Generation.number == number)
        .values(status=GenerationStatus.COMPLETED, finished_at=utcnow(), **vars(summary))
    )


# -- trials ---------------------------------------------------------------------------------------------------------


def claim_pending(session: Session, search_id: int, from_generation: int, limit: int) -> list[Trial]:
    """Up to ``limit`` pending trials of generation ``from_generation`` and later, in ask order, marked running
    (an attempt begins)."""
    rows = session.scalars(
        select(Trial)
        .where(Trial.search_id == search_id, Trial.generation >= from_generation, Trial.status == TrialStatus.PENDING)
        .order_by(Trial.generation, Trial.index, Trial.replicate)
        .limit(limit)
    ).all()
    now = utcnow()
    for row in rows:
        row.status, row.attempts, row.started_at, row.error = TrialStatus.RUNNING, row.attempts + 1, now, None
    return rows


def requeue(session: Session, trial_ids: Sequence[int]) -> None:
    """Running trials whose controller stopped become pending again, their partial curves dropped; the
    interrupted attempt is not counted against the retries."""
    if trial_ids:
        session.execute(
            update(Trial)
            .where(Trial.id.in_(trial_ids), Trial.status == TrialStatus.RUNNING)
            .values(status=TrialStatus.PENDING, attempts=Trial.attempts - 1, started_at=None, steps=None)
        )
        session.execute(delete(ProgressPoint).where(ProgressPoint.trial_id.in_(trial_ids)))


def cancel_unfinished(session: Session, search_id: int) -> None:
    session.execute(
        update(Trial)
        .where(Trial.search_id == search_id, Trial.status.in_((TrialStatus.PENDING, TrialStatus.RUNNING)))
        .values(status=TrialStatus.CANCELLED, finished_at=utcnow())
    )


def record_worker(session: Session, trial_id: int, node: str, worker: str) -> None:
    session.execute(update(Trial).where(Trial.id == trial_id).values(node=node[:64], worker=worker[:128]))


def record_timeout(session: Session, trial_id: int, timeout_s: float) -> None:
    session.execute(
        update(Trial)
        .where(Trial.id == trial_id, Trial.status == TrialStatus.RUNNING)
        .values(status=TrialStatus.FAILED, error=f"timed out after {timeout_s:g} s", finished_at=utcnow())
    )


def record_lost_worker(session: Session, trial_id: int, reason: str, max_retries: int) -> None:
    """Retry the same candidate while ``max_retries`` allows, else fail it with the reason."""
    trial = session.get(Trial, trial_id)
    if trial is None or trial.status != TrialStatus.RUNNING:
        return
    session.execute(delete(ProgressPoint).where(ProgressPoint.trial_id == trial_id))
    trial.steps = None
    if trial.attempts <= max_retries:
        trial.status, trial.error = TrialStatus.PENDING, storable_text(f"worker lost, retrying: {reason}")
    else:
        trial.status, trial.error = TrialStatus.FAILED, storable_text(f"worker lost: {reason}")
        trial.finished_at = utcnow()


_FINISH = (
    Trial.__table__.update()
    .where(Trial.__table__.c.id == bindparam("trial_id"), Trial.__table__.c.status == TrialStatus.RUNNING)
    .values(
        status=bindparam("new_status"),
        loss=bindparam("new_loss"),
        train_loss=bindparam("new_train_loss"),
        steps=bindparam("new_steps"),
        tokens=bindparam("new_tokens"),
        tokens_per_s=bindparam("new_tokens_per_s"),
        wall_time_s=bindparam("new_wall_time_s"),
        error=bindparam("new_error"),
        node=func.coalesce(bindparam("new_node"), Trial.__table__.c.node),
        worker=func.coalesce(bindparam("new_worker"), Trial.__table__.c.worker),
        finished_at=bindparam("new_finished_at"),
    )
)


def record_results(
    session: Session,
    results: Sequence[FinishedTrial],
    curves: Sequence[tuple[int, int, dict[str, float | None]]],
    streamed: Sequence[int],
) -> None:
    """Finish running trials (one executemany) and write their full ``curves``, which supersede the points
    streamed while they trained (dropped for the ``streamed`` trial ids)."""
    now = utcnow()
    rows = [
        {f"new_{k}": v for k, v in vars(r).items() if k != "trial_id"}
        | {"trial_id": r.trial_id, "new_error": r.error and storable_text(r.error), "new_finished_at": now}
        for r in results
    ]
    session.connection().execute(_FINISH, rows)
    if streamed:
        session.execute(delete(ProgressPoint).where(ProgressPoint.trial_id.in_(list(streamed))))
    record_progress(session, curves)


_TRAINED_SO_FAR = (
    Trial.__table__.update()
    .where(Trial.__table__.c.id == bindparam("trial_id"), Trial.__table__.c.status == TrialStatus.RUNNING)
    .values(steps=bindparam("trained"))
)


def record_progress(session: Session, points: Sequence[tuple[int, int, dict[str, float | None]]]) -> None:
    """Learning-curve points ``(trial_id, step, {train_loss, val_loss})``; a running trial's ``steps`` follow
    them (how far it has trained)."""
    rows = [
        {"trial_id": trial_id, "step": int(step), "train_loss": m.get("train_loss"), "val_loss": m.get("val_loss")}
        for trial_id, step, m in points
    ]
    if rows:
        session.execute(insert(ProgressPoint), rows)
        trained: dict[int, int] = {}
        for row in rows:
            trained[row["trial_id"]] = max(trained.get(row["trial_id"], 0), row["step"])
        session.execute(_TRAINED_SO_FAR, [{"trial_id": t, "trained": n} for t, n in trained.items()])


# -- the engine lease: one engine drives the searches (``hpo_service.engine.lease``) ------------------------------
# Every time is the database's clock (``queries.database_now``), so servers need not agree on theirs.


def acquire_lease(session: Session, name: str, holder: str, host: str, pid: int, ttl_s: float) -> bool:
    """Take the lease ``name`` for ``holder`` for ``ttl_s`` seconds unless another holder's has not expired;
    whether ``holder`` holds it now. One conditional statement decides, so of servers racing for it, one wins."""
    now = queries.database_now(session)
    term = {"holder": holder, "host": host, "pid": pid, "acquired_at": now, "renewed_at": now}
    term["expires_at"] = now + timedelta(seconds=ttl_s)
    free = or_(EngineLease.holder == holder, EngineLease.expires_at <= now)
    taken = session.execute(
        update(EngineLease).where(EngineLease.name == name, free).values(**term),
        execution_options={"synchronize_session": False},
    )
    if taken.rowcount == 1:
        return True
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    first = dialect.insert(EngineLease).values(name=name, **term).on_conflict_do_nothing()
    return session.execute(first.returning(EngineLease.name)).first() is not None  # the lease's first holder


def renew_lease(session: Session, name: str, holder: str, ttl_s: float) -> bool:
    """Extend ``holder``'s lease to ``ttl_s`` seconds from now; False once another server has taken it. A lease
    that expired while the store was away and that no one took is still ``holder``'s to renew: no other engine
    can have driven meanwhile (taking the lease names its new holder), and ``holder``'s engine wrote nothing
    while it had expired (``queries.holds_lease``)."""
    now = queries.database_now(session)
    renewed = session.execute(
        update(EngineLease)
        .where(EngineLease.name == name, EngineLease.holder == holder)
        .values(renewed_at=now, expires_at=now + timedelta(seconds=ttl_s)),
        execution_options={"synchronize_session": False},
    )
    return renewed.rowcount == 1


def release_lease(session: Session, name: str, holder: str) -> None:
    """End ``holder``'s lease now, so that another server takes it without waiting for it to expire."""
    now = queries.database_now(session)
    session.execute(
        update(EngineLease)
        .where(EngineLease.name == name, EngineLease.holder == holder, EngineLease.expires_at > now)
        .values(expires_at=now),
        execution_options={"synchronize_session": False},
    )


# -- deleting a search ----------------------------------------------------------------------------------------------


def delete_search(session: Session, search_id: int) -> None:
    """Delete a search that has ended, with its generations, trials, their curves and its optimizer state (the
    foreign keys cascade). Refused while the search is active, and while any of its trials is pending or
    running (a cancelled search whose trials the engine has yet to stop): the engine may still write for those.

    One conditional DELETE checks and deletes, so nothing is added to the search in between. On PostgreSQL the
    search's row and its trials are locked first, so that a transaction adding or claiming trials of it ends
    before the check (SQLite has one writer at a time).
    """
    if session.scalar(select(Search.id).where(Search.id == search_id).with_for_update()) is None:
        raise SearchNotFound(f"no search with id {search_id}")
    session.execute(select(Trial.id).where(Trial.search_id == search_id).with_for_update())
    unfinished = select(Trial.id).where(Trial.search_id == search_id, Trial.status.in_(UNFINISHED_TRIAL))
    deleted = session.execute(
        delete(Search).where(Search.id == search_id, Search.status.in_(FINAL_SEARCH), ~unfinished.exists()),
        execution_options={"synchronize_session": False},
    )
    if deleted.rowcount == 1:
        return
    status = session.scalar(select(Search.status).where(Search.id == search_id))
    if status is None:
        raise SearchNotFound(f"no search with id {search_id}")
    if status in ACTIVE_SEARCH:
        raise CommandError(f"cannot delete a search that is {status}: cancel it first")
    raise CommandError(f"search {search_id} is {status}, but its trials are still being stopped; try again shortly")
