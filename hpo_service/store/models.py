"""The ORM: searches, their generations and trials, trial progress, each search's optimizer state, and the
lease that names the one engine driving them.

The trial rows are also the optimizer's tell log: together with the state snapshot taken when a generation
was asked, they restore a search exactly (see ``hpo_service.engine.runner``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import cached_property
from typing import TYPE_CHECKING

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from hpo_service.statuses import GenerationStatus, SearchStatus, TrialKind, TrialStatus
from trainer.parameterisation import Parameterisation

if TYPE_CHECKING:
    from hpo_service.spec import SearchSpec


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


NEVER_REUSED = {"sqlite_autoincrement": True}  # PostgreSQL's sequences never give an id twice; SQLite needs this


class Search(Base):
    __tablename__ = "searches"
    __table_args__ = NEVER_REUSED

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16), default=SearchStatus.QUEUED, index=True)
    spec_json: Mapped[dict] = mapped_column("spec", JSON)  # as submitted (defaults filled in); read ``spec``
    spec_hash: Mapped[str] = mapped_column(String(64))
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    @cached_property
    def spec(self) -> SearchSpec:
        """The stored spec, parsed once per loaded row."""
        from hpo_service.spec import SearchSpec

        spec = self.spec_json
        parameterisation = Parameterisation.as_written(spec.get("parameterisation", {}))
        return SearchSpec.model_validate({**spec, "parameterisation": parameterisation})


class Generation(Base):
    __tablename__ = "generations"
    __table_args__ = (UniqueConstraint("search_id", "number"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    search_id: Mapped[int] = mapped_column(ForeignKey("searches.id", ondelete="CASCADE"))
    number: Mapped[int] = mapped_column(Integer)
    stage: Mapped[str | None] = mapped_column(String(64))  # None for validation, which follows every stage
    kind: Mapped[str] = mapped_column(String(16), default=TrialKind.SEARCH, server_default=TrialKind.SEARCH.value)
    status: Mapped[str] = mapped_column(String(16), default=GenerationStatus.RUNNING)
    best_loss: Mapped[float | None] = mapped_column(Float)
    median_loss: Mapped[float | None] = mapped_column(Float)
    diverged: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    stopped: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Trial(Base):
    """One training run: a candidate (``generation``, ``index``) trained with one seed (``replicate``).

    ``kind`` says why (``statuses.TrialKind``): a validation trial trains at ``target`` (a ``validate`` target's
    fields, its ``index`` among them too) as ``arm``; a re-evaluation names its search trial's candidate in
    ``origin`` (generation, index, search-time loss)."""

    __tablename__ = "trials"
    __table_args__ = (
        UniqueConstraint("search_id", "generation", "index", "replicate"),
        Index("ix_trials_search_status", "search_id", "status"),
        Index("ix_trials_search_loss", "search_id", "loss"),
        NEVER_REUSED,
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    search_id: Mapped[int] = mapped_column(ForeignKey("searches.id", ondelete="CASCADE"))
    generation: Mapped[int] = mapped_column(Integer)
    index: Mapped[int] = mapped_column(Integer)
    replicate: Mapped[int] = mapped_column(Integer, default=0)
    seed: Mapped[int] = mapped_column(BigInteger)
    stage: Mapped[str | None] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16), default=TrialKind.SEARCH, server_default=TrialKind.SEARCH.value)
    target: Mapped[dict | None] = mapped_column(JSON)
    arm: Mapped[str | None] = mapped_column(String(32))
    origin: Mapped[dict | None] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), default=TrialStatus.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    vector: Mapped[list] = mapped_column(JSON)  # the optimizer's coordinates, log2 units
    multipliers: Mapped[dict] = mapped_column(JSON)  # the same, as trainer.Multipliers.to_dict()
    hps: Mapped[dict] = mapped_column(JSON)  # materialised at the base shape: {group: {hp: value}}
    loss: Mapped[float | None] = mapped_column(Float)  # final validation loss; None unless succeeded
    train_loss: Mapped[float | None] = mapped_column(Float)
    steps: Mapped[int | None] = mapped_column(Integer)
    tokens: Mapped[int | None] = mapped_column(BigInteger)  # a 10B-token trial overflows 32 bits
    tokens_per_s: Mapped[float | None] = mapped_column(Float)
    wall_time_s: Mapped[float | None] = mapped_column(Float)
    node: Mapped[str | None] = mapped_column(String(64))
    worker: Mapped[str | None] = mapped_column(String(128))
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ProgressPoint(Base):
    """A point of a trial's learning curve: streamed while it trains, replaced by the full curve at the end."""

    __tablename__ = "progress_points"

    trial_id: Mapped[int] = mapped_column(ForeignKey("trials.id", ondelete="CASCADE"), primary_key=True)
    step: Mapped[int] = mapped_column(Integer, primary_key=True)
    train_loss: Mapped[float | None] = mapped_column(Float)
    val_loss: Mapped[float | None] = mapped_column(Float)


class OptimizerState(Base):
    """The search policy (its optimizer and the candidates it asked for ``generation``), serialised right after
    the ask."""

    __tablename__ = "optimizer_states"

    search_id: Mapped[int] = mapped_column(ForeignKey("searches.id", ondelete="CASCADE"), primary_key=True)
    generation: Mapped[int] = mapped_column(Integer)
    optimizer: Mapped[str] = mapped_column(String(32))
    state: Mapped[bytes] = mapped_column(LargeBinary)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class EngineLease(Base):
    """Which server's engine drives the searches: taken, renewed and checked against the database's clock only
    (``store.writes.acquire_lease``), so that servers on different hosts need not agree on the time."""

    __tablename__ = "engine_lease"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    holder: Mapped[str] = mapped_column(String(64))  # a random id per server process
    host: Mapped[str] = mapped_column(String(255))  # where the holder runs, for display
    pid: Mapped[int] = mapped_column(Integer)
    acquired_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    renewed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
