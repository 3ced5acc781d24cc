"""The store: migrations build exactly the ORM's schema on SQLite and PostgreSQL, and the API's queries."""

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text

from hpo_service.spec import SearchSpec
from hpo_service.statuses import TrialStatus
from hpo_service.store import queries
from hpo_service.store.database import StoreError, database_url, open_database, transaction, upgrade
from hpo_service.store.models import Base, Search, Trial


def test_migrations_build_the_models_schema(db_url):
    engine = open_database(db_url)
    with engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    engine.dispose()
    assert differences == []


def schema_and_rows(url: str) -> dict[str, dict]:
    """Per table: its columns, indexes, constraints and every row, as the database itself reports them."""
    engine = open_database(url)
    inspector, snapshot = inspect(engine), {}
    with engine.connect() as connection:
        for table in inspector.get_table_names():
            snapshot[table] = {
                "columns": [
                    (c["name"], str(c["type"]), c["nullable"], c["default"]) for c in inspector.get_columns(table)
                ],
                "indexes": sorted((i["name"], i["column_names"], i["unique"]) for i in inspector.get_indexes(table)),
                "unique": sorted((u["name"], u["column_names"]) for u in inspector.get_unique_constraints(table)),
                "foreign_keys": sorted(str(f) for f in inspector.get_foreign_keys(table)),
                "primary_key": inspector.get_pk_constraint(table)["constrained_columns"],
                "rows": sorted(map(tuple, connection.execute(text(f'SELECT * FROM "{table}"'))), key=repr),
            }
    engine.dispose()
    return snapshot


def test_upgrading_twice_changes_nothing(db_url, sessions):
    with transaction(sessions) as session:  # a database in use, not an empty one
        search = Search(name="in use", spec_json={"name": "in use"}, spec_hash="0" * 64)
        session.add(search)
        session.flush()
        session.add_all(
            [trial(search.id, 0, TrialStatus.SUCCEEDED, 2.5), trial(search.id, 1, TrialStatus.RUNNING, None)]
        )
    before = schema_and_rows(db_url)
    upgrade(db_url)
    assert schema_and_rows(db_url) == before  # same schema, same rows
    head = ScriptDirectory(str(Path(__file__).parents[1] / "migrations")).get_current_head()
    assert before["alembic_version"]["rows"] == [(head,)]  # at the newest migration
    assert len(before["searches"]["rows"]) == 1 and len(before["trials"]["rows"]) == 2


def test_the_queries_the_service_makes_are_indexed(db_url):
    engine = open_database(db_url)
    indexes = {tuple(i["column_names"]) for i in inspect(engine).get_indexes("trials")}
    unique = {tuple(u["column_names"]) for u in inspect(engine).get_unique_constraints("trials")}
    engine.dispose()
    assert ("search_id", "status") in indexes  # counts by status, pending trials
    assert ("search_id", "loss") in indexes  # best loss
    assert ("search_id", "generation", "index", "replicate") in unique  # a candidate exists once


def test_sqlite_runs_in_wal_mode(tmp_path):
    url = database_url(str(tmp_path / "wal.db"))
    upgrade(url)
    engine = open_database(url)
    with engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    engine.dispose()


def test_a_database_in_a_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(StoreError, match="not a directory"):
        open_database(database_url(str(tmp_path / "absent" / "hpo.db")))


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
        expected = {"pending": 1, "running": 0, "succeeded": 2, "failed": 1, "diverged": 1, "stopped": 0}
        expected["cancelled"] = 0
        assert counts == expected
        total, page = queries.trials_page(session, search.id, limit=2, offset=1)
        assert total == 5 and [t.index for t in page] == [1, 2]
        _, by_loss = queries.trials_page(session, search.id, limit=5, offset=0, order="loss")
        assert [t.index for t in by_loss] == [3, 0, 1, 2, 4]  # unfinished and failed trials last


def test_a_stored_spec_reads_as_it_meant_when_it_was_stored():
    """Fields a stored spec predates mean what they meant then; a spec stored now keeps its own values."""
    legacy = SearchSpec.model_validate({"name": "old"}).to_json()
    for field in ("decay_norm_gains", "duration_exponent"):
        del legacy["parameterisation"][field]
    current = SearchSpec.model_validate({"name": "new"})
    read = {"old": Search(spec_json=legacy).spec.parameterisation, "new": Search(spec_json=current.to_json()).spec}
    assert (read["old"].duration_exponent, read["old"].decay_norm_gains) == (0.5, True)
    assert read["new"].parameterisation.duration_exponent == 0.3
    assert read["new"] == current
