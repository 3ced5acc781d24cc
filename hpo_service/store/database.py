"""Connecting to the store: the database URL, the SQLAlchemy engine, sessions and schema migrations.

The default is an embedded SQLite file (``hpo.db`` in the working directory) in WAL mode, so the dashboard
and API read while the engine writes; ``HPO_DATABASE_URL`` (or ``--db``) selects PostgreSQL in production.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

DEFAULT_DATABASE = "hpo.db"


class StoreError(Exception):
    """The store cannot be opened or migrated; the message says why."""


def database_url(value: str | None = None) -> str:
    """A SQLAlchemy URL from ``value`` (a URL or a SQLite file path), else ``HPO_DATABASE_URL``, else the default."""
    value = value or os.environ.get("HPO_DATABASE_URL") or DEFAULT_DATABASE
    if "://" not in value:
        return f"sqlite:///{Path(value).expanduser()}"
    if value.startswith("postgresql://"):  # psycopg 3 is the driver we ship
        return "postgresql+psycopg://" + value.removeprefix("postgresql://")
    return value


def open_database(url: str) -> Engine:
    """SQLAlchemy's connection pool (its ``Engine``) for ``url``; SQLite gets WAL, a busy timeout and enforced
    foreign keys."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)
    if parsed.database and parsed.database != ":memory:":
        path = Path(parsed.database).expanduser().resolve()
        if not path.parent.is_dir():
            raise StoreError(f"cannot create the SQLite database {parsed.database}: {path.parent} is not a directory")
        _check_sqlite_writable(path)
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

    @event.listens_for(engine, "connect")
    def _pragmas(connection, _record) -> None:
        cursor = connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    return engine


def driver_message(exc: BaseException) -> str:
    """The database driver's own first line (e.g. "database or disk is full"), without SQLAlchemy's SQL and
    links; the exception's type where the driver said nothing."""
    orig = getattr(exc, "orig", None) or exc
    lines = str(orig).strip().splitlines()
    return lines[0] if lines else type(orig).__name__


def _check_sqlite_writable(path: Path) -> None:
    """SQLite needs to write the file and, for its WAL and lock files, the folder (``access`` also says EROFS
    for a read-only mount)."""
    for target in (path, path.parent):
        if target.exists() and not os.access(target, os.W_OK):
            raise StoreError(
                f"the SQLite database {path} cannot be written: {target} is read-only "
                "(a read-only mount, or not writable by this user)"
            )


def check_writable(engine: Engine) -> None:
    """Refuse to serve a store that cannot be written (a read-only file or mount, a full disk, a read-only
    replica): said at start-up, not at the first result."""
    from sqlalchemy import text
    from sqlalchemy.exc import OperationalError, ProgrammingError

    try:
        with engine.begin() as connection:  # a write that changes nothing
            connection.execute(text("UPDATE alembic_version SET version_num = version_num"))
    except (OperationalError, ProgrammingError) as exc:
        where = engine.url.render_as_string(hide_password=True)
        raise StoreError(f"the database {where} cannot be written: {driver_message(exc)}") from None


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(sessions: sessionmaker[Session]) -> Iterator[Session]:
    """A session whose work commits at the end of the block, or rolls back if the block raises."""
    with sessions() as session, session.begin():
        yield session


def migrations_folder() -> Path:
    """The Alembic scripts: the repository's top-level ``migrations/``, which pyproject.toml installs as the package
    ``hpo_service.migrations``; found through that package, so that an installed wheel migrates as a checkout does."""
    from hpo_service import migrations

    return Path(migrations.__file__).parent


def upgrade(url: str, revision: str = "head") -> None:
    """Apply the Alembic migrations up to ``revision``."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(migrations_folder()))
    config.attributes["url"] = url
    command.upgrade(config, revision)
