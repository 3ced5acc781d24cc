"""The HTTP API under ``/api``: one router per resource, pydantic schemas apart from the ORM rows."""
