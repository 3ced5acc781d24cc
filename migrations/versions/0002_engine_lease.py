"""engine lease; 64-bit trial seeds and token counts; SQLite never reuses a deleted search's or trial's id

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24 10:00:00.000000
"""

from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "engine_lease",
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("holder", sa.String(length=64), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("acquired_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("renewed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    never_reused = {"sqlite_autoincrement": True}  # without it, SQLite gives a deleted newest row's id again
    rebuild = "always" if op.get_bind().dialect.name == "sqlite" else "auto"  # PostgreSQL: sequences never do
    with _foreign_keys_off():
        with op.batch_alter_table("searches", recreate=rebuild, table_kwargs=never_reused):
            pass
        with op.batch_alter_table("trials", recreate=rebuild, table_kwargs=never_reused) as batch_op:
            batch_op.alter_column("seed", existing_type=sa.Integer(), type_=sa.BigInteger(), existing_nullable=False)
            batch_op.alter_column("tokens", existing_type=sa.Integer(), type_=sa.BigInteger(), existing_nullable=True)


def downgrade() -> None:
    with _foreign_keys_off(), op.batch_alter_table("trials", schema=None) as batch_op:
        batch_op.alter_column("tokens", existing_type=sa.BigInteger(), type_=sa.Integer(), existing_nullable=True)
        batch_op.alter_column("seed", existing_type=sa.BigInteger(), type_=sa.Integer(), existing_nullable=False)

    op.drop_table("engine_lease")


@contextmanager
def _foreign_keys_off() -> Iterator[None]:
    """SQLite changes a table by rebuilding it; with foreign keys enforced, dropping the old ``searches`` or
    ``trials`` would delete every row that refers to them (``ON DELETE CASCADE``). The pragma takes effect only outside
    a transaction, which is where a migration of an existing database stands until its first write."""
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        yield
        return
    bind.exec_driver_sql("PRAGMA foreign_keys=OFF")
    if (
        bind.exec_driver_sql("PRAGMA foreign_keys").scalar()
        and bind.exec_driver_sql("SELECT 1 FROM searches LIMIT 1").first()
    ):
        raise RuntimeError(
            "cannot rebuild searches and trials: SQLite enforces foreign keys here, and rows would be lost"
        )
    try:
        yield
    finally:
        bind.exec_driver_sql("PRAGMA foreign_keys=ON")
