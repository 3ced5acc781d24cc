"""Property-based requests generated from the OpenAPI schema: whatever they send, the API never answers 5xx."""

from __future__ import annotations

import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings

from hpo_service.api.app import create_app
from hpo_service.store.database import database_url, upgrade


def test_no_generated_request_makes_any_endpoint_fail(tmp_path):
    url = database_url(str(tmp_path / "hpo.db"))
    upgrade(url)
    app = create_app(url, run_engine=False, migrate=False, api_token="fuzz-token")
    with TestClient(app) as client:  # a search to find, so that generated ids sometimes hit
        headers = {"Authorization": "Bearer fuzz-token"}
        client.post("/api/searches", headers=headers, json={"name": "f", "optimizer": {"generations": 1}})
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def no_server_error(case) -> None:
            response = case.call(headers={"Authorization": "Bearer fuzz-token"})
            assert response.status_code < 500, f"{case.method} {case.formatted_path}: {response.status_code}"

        no_server_error()
