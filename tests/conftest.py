"""Shared fixtures: a fresh database on each backend (SQLite file and PostgreSQL), and one local Ray.

PostgreSQL comes from ``HPO_TEST_POSTGRES`` (default: the server on 127.0.0.1:5432). Each test gets its own
freshly created database, dropped afterwards. Where no server answers, PostgreSQL tests are skipped, unless
``HPO_REQUIRE_POSTGRES=1`` (as in CI), which turns that into a failure.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy.engine import make_url

from hpo_service.store.database import database_url, open_database, session_factory, upgrade

POSTGRES = os.environ.get("HPO_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
BACKENDS = ["sqlite", "postgresql"]


def _admin():
    import psycopg

    try:
        return psycopg.connect(
            make_url(POSTGRES).render_as_string(hide_password=False), autocommit=True, connect_timeout=3
        )
    except psycopg.OperationalError as exc:
        if os.environ.get("HPO_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"PostgreSQL is required (HPO_REQUIRE_POSTGRES=1) but {POSTGRES} does not answer: {exc}")
        pytest.skip(f"no PostgreSQL at {POSTGRES}")


@pytest.fixture(autouse=True)
def test_clients_host(monkeypatch: pytest.MonkeyPatch) -> None:
    """Starlette's TestClient (and schemathesis through it) names the host ``testserver``: the apps the tests
    build answer as that host too, besides loopback (tests of the host check itself unset this)."""
    monkeypatch.setenv("HPO_ALLOWED_HOSTS", "testserver")


@pytest.fixture
def fresh_database(request: pytest.FixtureRequest, tmp_path) -> Iterator[str]:
    """The URL of an empty database on the backend named by ``request.param``."""
    if request.param == "sqlite":
        yield database_url(str(tmp_path / "hpo.db"))
        return
    name = f"hpo_test_{uuid.uuid4().hex[:12]}"
    with _admin() as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield database_url(make_url(POSTGRES).set(database=name).render_as_string(hide_password=False))
    finally:
        with _admin() as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def db_url(fresh_database: str) -> str:
    """A fresh database on the parametrised backend, migrated to the latest schema."""
    upgrade(fresh_database)
    return fresh_database


@pytest.fixture
def sessions(db_url: str):
    engine = open_database(db_url)
    yield session_factory(engine)
    engine.dispose()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every test that uses a database runs once per backend."""
    if "fresh_database" in metafunc.fixturenames:
        marker = metafunc.definition.get_closest_marker("backends")
        metafunc.parametrize("fresh_database", marker.args if marker else BACKENDS, indirect=True)


@pytest.fixture(scope="session")
def local_ray() -> Iterator[None]:
    """One local Ray for the tests that run trials in this process (two CPUs, loopback only)."""
    from hpo_service.engine.executor import ensure_ray, release_ray

    ensure_ray(num_cpus=2)
    yield
    release_ray()
