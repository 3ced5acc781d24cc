"""Alembic environment: runs the migrations against the URL ``hpo db upgrade`` passes (or ``HPO_DATABASE_URL``)."""

from alembic import context

from hpo_service.store.database import database_url, open_database
from hpo_service.store.models import Base

config = context.config
target_metadata = Base.metadata


def run_migrations_online() -> None:
    url = config.attributes.get("url") or database_url()
    engine = open_database(url)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    context.configure(url=config.attributes.get("url") or database_url(), target_metadata=target_metadata)
    with context.begin_transaction():
        context.run_migrations()
else:
    run_migrations_online()
