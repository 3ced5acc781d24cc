"""Property-based requests generated from the OpenAPI schema: whatever they send, the API never answers 5xx."""

from __future__ import annotations

from urllib.parse import quote

import pytest
import schemathesis
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hpo_service.api.app import create_app
from hpo_service.store.database import database_url, upgrade


@pytest.fixture
def app(tmp_path):
    url = database_url(str(tmp_path / "hpo.db"))
    upgrade(url)
    app = create_app(url, run_engine=False, migrate=False, api_token="fuzz-token")
    with TestClient(app) as client:  # a search to find, so that generated ids sometimes hit
        headers = {"Authorization": "Bearer fuzz-token"}
        client.post("/api/searches", headers=headers, json={"name": "f", "optimizer": {"generations": 1}})
    return app


def test_no_generated_request_makes_any_endpoint_fail(app):
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    api_routes = {(m, r.path) for r in _routes(app) if r.include_in_schema for m in r.methods}
    assert {(o.method.upper(), o.path) for o in operations} == api_routes  # every endpoint of the API is fuzzed
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def no_server_error(case) -> None:
            response = case.call(headers={"Authorization": "Bearer fuzz-token"})
            assert response.status_code < 500, f"{case.method} {case.formatted_path}: {response.status_code}"

        no_server_error()


def _routes(app) -> list[APIRoute]:
    """Every API route, also those of included routers."""
    found = []
    for route in app.routes:
        inner = getattr(route, "original_router", None)
        found += [r for r in (inner.routes if inner else [route]) if isinstance(r, APIRoute)]
    return found


def test_the_dashboard_pages_never_fail_whatever_the_path(app):
    """The HTML pages are outside the OpenAPI schema: fuzz their path parameter directly."""
    with TestClient(app) as client:

        @given(segment=st.text(min_size=1, max_size=60))
        @settings(max_examples=200, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def no_server_error(segment: str) -> None:
            response = client.get(f"/searches/{quote(segment, safe='')}")
            assert response.status_code < 500, (segment, response.status_code)

        no_server_error()
