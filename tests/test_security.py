"""Security of the API: no CORS unless configured, cross-origin writes refused (CSRF), every write behind the
token, compared in constant time, and the token never written to the controller's log."""

from __future__ import annotations

import hmac
import json
import re
import secrets

import fastapi.routing
import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from hpo_service.api import auth
from hpo_service.api.app import create_app
from tests.controller import Controller

pytestmark = pytest.mark.backends("sqlite")  # none of this depends on the store

SPEC = {
    "name": "t",
    "model": {"width": 32, "depth": 1, "head_dim": 16, "seq_len": 32},
    "training": {"batch_size": 4, "steps": 5, "warmup_steps": 1, "device": "cpu"},
    "optimizer": {"name": "random", "population": 1, "generations": 1},
}
LAB, EVIL, SELF = "http://lab.example", "http://evil.example", "http://testserver"
WRITES = {"POST", "PUT", "PATCH", "DELETE"}
TOKEN = f"tok-{secrets.token_hex(16)}"


@pytest.fixture(autouse=True)
def no_configuration_from_the_environment(monkeypatch):
    for name in ("HPO_CORS_ORIGINS", "HPO_API_TOKEN"):
        monkeypatch.delenv(name, raising=False)


def client_for(db_url: str, **options) -> TestClient:
    return TestClient(create_app(db_url, run_engine=False, **options))


def preflight(client: TestClient, origin: str, method: str = "POST") -> httpx.Response:
    asking = {"Access-Control-Request-Method": method, "Access-Control-Request-Headers": "content-type"}
    return client.options("/api/searches", headers={"Origin": origin, **asking})


def writes(app: FastAPI) -> list[tuple[str, str]]:
    """Every (method, path) the app serves that writes; FastAPI >= 0.137 no longer flattens included routers
    into ``app.routes``, and ``iter_route_contexts`` walks them."""
    flattened = getattr(fastapi.routing, "iter_route_contexts", lambda routes: routes)(app.routes)
    return [(method, r.path) for r in flattened for method in sorted((getattr(r, "methods", None) or set()) & WRITES)]


def status_of(client: TestClient, search_id: int) -> str:
    return client.get(f"/api/searches/{search_id}").json()["status"]


def test_without_cors_origins_no_page_of_another_origin_may_read_or_preflight(db_url):
    with client_for(db_url) as client:
        read = client.get("/api/searches", headers={"Origin": EVIL})
        assert read.status_code == 200 and "access-control-allow-origin" not in read.headers
        for origin in (EVIL, LAB):
            assert "access-control-allow-origin" not in preflight(client, origin).headers


def test_configured_cors_origins_and_only_those_get_cors_headers(db_url):
    with client_for(db_url, cors_origins=[LAB]) as client:
        read = client.get("/api/searches", headers={"Origin": LAB})
        assert read.headers["access-control-allow-origin"] == LAB
        allowed = preflight(client, LAB)
        assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == LAB
        assert "POST" in allowed.headers["access-control-allow-methods"]
        assert preflight(client, LAB, method="DELETE").status_code == 400
        assert "access-control-allow-origin" not in client.get("/api/searches", headers={"Origin": EVIL}).headers
        assert "access-control-allow-origin" not in preflight(client, EVIL).headers


def test_cors_origins_default_to_the_environment(db_url, monkeypatch):
    monkeypatch.setenv("HPO_CORS_ORIGINS", f" {LAB}/, https://other.example")
    with client_for(db_url) as client:
        assert client.get("/api/searches", headers={"Origin": LAB}).headers["access-control-allow-origin"] == LAB


def test_a_cross_origin_write_is_refused_and_changes_nothing(db_url):
    """A form on another site can POST without a preflight; with no token set it would otherwise cancel."""
    with client_for(db_url) as client:
        search_id = client.post("/api/searches", json=SPEC).json()["id"]
        refused = client.post(f"/api/searches/{search_id}/cancel", headers={"Origin": EVIL})
        assert refused.status_code == 403
        assert refused.json() == {"detail": f"cross-origin request from {EVIL} refused; allow it with --cors-origin"}
        assert status_of(client, search_id) == "queued"
        smuggled = client.post(
            "/api/searches", content=json.dumps(SPEC), headers={"Origin": "null", "Content-Type": "text/plain"}
        )
        assert smuggled.status_code == 403
        cross_site = client.post(f"/api/searches/{search_id}/cancel", headers={"Sec-Fetch-Site": "cross-site"})
        assert cross_site.status_code == 403
        assert client.get("/api/searches").json()["total"] == 1 and status_of(client, search_id) == "queued"


def test_same_origin_writes_writes_without_origin_and_configured_origins_pass(db_url):
    with client_for(db_url, cors_origins=[LAB]) as client:
        search_id = client.post("/api/searches", json=SPEC, headers={"Origin": SELF}).json()["id"]
        assert client.post(f"/api/searches/{search_id}/pause", headers={"Origin": SELF}).status_code == 200
        assert client.post(f"/api/searches/{search_id}/resume", headers={"Origin": LAB}).status_code == 200
        assert client.post(f"/api/searches/{search_id}/cancel").status_code == 200
        assert status_of(client, search_id) == "cancelled"


def test_the_token_is_compared_in_constant_time_whatever_its_length(db_url, monkeypatch):
    compared, compare_digest = [], hmac.compare_digest

    def spy(given, expected):
        compared.append((given, expected))
        return compare_digest(given, expected)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    with client_for(db_url, api_token=TOKEN) as client:
        assert client.post("/api/searches", json=SPEC, headers={"Authorization": "Bearer x"}).status_code == 401
        assert client.post("/api/searches", json=SPEC).status_code == 401
        accepted = client.post("/api/searches", json=SPEC, headers={"Authorization": f"Bearer {TOKEN}"})
        assert accepted.status_code == 201
    assert compared == [(b"x", TOKEN.encode()), (b"", TOKEN.encode()), (TOKEN.encode(), TOKEN.encode())]


def test_every_mutating_route_needs_the_token(db_url):
    with client_for(db_url, api_token=TOKEN) as client:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        search_id = client.post("/api/searches", json=SPEC, headers=headers).json()["id"]
        values = {"search_id": search_id, "command": "cancel", "trial_id": 1}
        routes = writes(client.app)
        assert set(routes) >= {("POST", "/api/searches"), ("POST", "/api/searches/{search_id}/{command}")}
        for method, route in routes:
            path = re.sub(r"{(\w+)}", lambda m: str(values[m.group(1)]), route)
            response = client.request(method, path, json=SPEC)
            assert response.status_code == 401, (method, path, response.text)
            assert response.headers["www-authenticate"] == "Bearer"
        assert status_of(client, search_id) == "queued"


def test_the_token_is_never_logged_nor_echoed(db_url, tmp_path):
    """A real controller with uvicorn's access log on: the right token, a wrong one and one in a query string."""
    wrong = f"wrong-{secrets.token_hex(16)}"
    log = tmp_path / "controller.log"
    controller = Controller(db_url, log, env={"HPO_API_TOKEN": TOKEN}).start()
    try:
        url, good = controller.url, {"Authorization": f"Bearer {TOKEN}"}
        assert httpx.get(f"{url}/api/searches", params={"token": TOKEN}).status_code == 200
        in_query = httpx.post(f"{url}/api/searches", params={"token": TOKEN}, json=SPEC)
        wrong_token = httpx.post(f"{url}/api/searches", json=SPEC, headers={"Authorization": f"Bearer {wrong}"})
        created = httpx.post(f"{url}/api/searches", json=SPEC, headers=good)
        cancelled = httpx.post(f"{url}/api/searches/{created.json()['id']}/cancel", headers=good)
    finally:
        controller.stop()
    assert (in_query.status_code, wrong_token.status_code, created.status_code) == (401, 401, 201)
    assert cancelled.status_code == 200
    for response in (in_query, wrong_token):
        assert TOKEN not in response.text and wrong not in response.text
    text = log.read_text()
    assert TOKEN not in text and wrong not in text
    assert '"POST /api/searches HTTP/1.1" 201' in text and '"GET /api/searches HTTP/1.1" 200' in text  # logged
