"""staged search: each trial's and generation's stage and kind; a trial's validation target, arm and origin

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03 08:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table in ("generations", "trials"):
        with op.batch_alter_table(table) as batch_op:
            batch_op.add_column(sa.Column("stage", sa.String(length=64), nullable=True))
            batch_op.add_column(sa.Column("kind", sa.String(length=16), server_default="search", nullable=False))
    with op.batch_alter_table("trials") as batch_op:
        batch_op.add_column(sa.Column("target", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("arm", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("origin", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("trials") as batch_op:
        for column in ("origin", "arm", "target"):
            batch_op.drop_column(column)
    for table in ("trials", "generations"):
        with op.batch_alter_table(table) as batch_op:
            batch_op.drop_column("kind")
            batch_op.drop_column("stage")
