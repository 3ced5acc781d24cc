"""The store: migrations build exactly the ORM's schema on SQLite and PostgreSQL, and the API's queries."""

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from hpo_service.store import queries
from hpo_service.store.database import StoreError, database_url, make_engine, transaction, upgrade
from hpo_service.store.models import Base, Search, Trial


def test_migrations_build_the_models_schema(db_url):
    engine = make_engine(db_url)
    with engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    engine.dispose()
    assert differences == []


def test_upgrading_twice_changes_nothing(db_url):
    upgrade(db_url)
    engine = make_engine(db_url)
    tables = set(inspect(engine).get_table_names())
    engine.dispose()
    assert {"searches", "generations", "trials", "progress_points", "optimizer_states"} <= tables


def test_the_queries_the_service_makes_are_indexed(db_url):
    engine = make_engine(db_url)
    indexes = {tuple(i["column_names"]) for i in inspect(engine).get_indexes("trials")}
    unique = {tuple(u["column_names"]) for u in inspect(engine).get_unique_constraints("trials")}
    engine.dispose()
    assert ("search_id", "status") in indexes  # counts by status, pending trials
    assert ("search_id", "loss") in indexes  # best loss
    assert ("search_id", "generation", "index", "replicate") in unique  # a candidate exists once


def test_sqlite_runs_in_wal_mode(tmp_path):
    url = database_url(str(tmp_path / "wal.db"))
    upgrade(url)
    engine = make_engine(url)
    with engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    engine.dispose()


def test_a_database_in_a_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(StoreError, match="not a directory"):
        make_engine(database_url(str(tmp_path / "absent" / "hpo.db")))


def test_a_plain_postgresql_url_uses_the_shipped_driver():
    assert database_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert database_url("runs/hpo.db") == "sqlite:///runs/hpo.db"


def trial(search_id: int, index: int, status: str, loss: float | None) -> Trial:
    return Trial(
        search_id=search_id, generation=0, index=index, seed=0, status=status, loss=loss, vector=[],
        multipliers={}, hps={},
    )  # fmt: skip


def test_best_loss_counts_only_trials_that_succeeded(sessions):
    with transaction(sessions) as session:
        search = Search(name="s", spec_json={}, spec_hash="0" * 64)
        session.add(search)
        session.flush()
        session.add_all(
            [
                trial(search.id, 0, "succeeded", 2.5),
                trial(search.id, 1, "diverged", None),
                trial(search.id, 2, "failed", None),
                trial(search.id, 3, "succeeded", 2.1),
                trial(search.id, 4, "pending", None),
            ]
        )
    with sessions() as session:
        assert queries.best_losses(session, [search.id]) == {search.id: pytest.approx(2.1)}
        counts = queries.trial_counts(session, [search.id])[search.id]
        assert counts == {"pending": 1, "running": 0, "succeeded": 2, "failed": 1, "diverged": 1, "cancelled": 0}
        total, page = queries.trials_page(session, search.id, limit=2, offset=1)
        assert total == 5 and [t.index for t in page] == [1, 2]
        _, by_loss = queries.trials_page(session, search.id, limit=5, offset=0, order="loss")
        assert [t.index for t in by_loss] == [3, 0, 1, 2, 4]  # unfinished and failed trials last
