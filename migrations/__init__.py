"""The Alembic migrations; installed inside the package as ``hpo_service.migrations``."""
