"""Security of the API: no CORS unless configured, cross-origin writes refused (CSRF), every write behind the
token, compared in constant time, the token never written to the controller's log, and only requests to a
host the server answers as served (DNS rebinding)."""

from __future__ import annotations

import hmac
import json
import re
import secrets
import subprocess
import sys

import fastapi.routing
import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from hpo_service.api import auth
from hpo_service.api.app import create_app
from hpo_service.api.hosts import HostPatternError
from hpo_service.store.database import database_url
from tests.controller import ROOT, Controller

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


# -- the Host check (DNS rebinding) ---------------------------------------------------------------------------------


def test_a_rebinding_host_is_refused_and_nothing_is_written_while_loopback_and_allowed_hosts_pass(
    tmp_path, monkeypatch
):
    """A real controller without a token. A page on rebind.example, its name resolved to 127.0.0.1, is the
    server's own origin to the browser: only the Host header gives it away."""
    monkeypatch.delenv("HPO_ALLOWED_HOSTS")  # the tests' TestClient host: not here
    controller = Controller(
        database_url(str(tmp_path / "hpo.db")),
        tmp_path / "controller.log",
        args=("--no-engine", "--allowed-host", "hpo.lab.example", "--allowed-host", "*.corp.example"),
    ).start()
    try:
        url, port = controller.url, controller.port

        def as_host(host: str, method: str = "GET", path: str = "/api/searches") -> httpx.Response:
            headers = {"Host": host, "Origin": f"http://{host}"}  # same-origin, as the rebinding page's
            return httpx.request(method, f"{url}{path}", headers=headers, json=SPEC if method == "POST" else None)

        for host in (f"rebind.example:{port}", "rebind.example", f"corp.example:{port}", f"localhost.evil:{port}"):
            for method in ("POST", "GET"):
                refused = as_host(host, method)
                assert refused.status_code == 400, (host, method, refused.text)
                assert refused.json()["detail"].startswith("invalid host header")
        assert as_host(f"rebind.example:{port}", "POST", "/api/searches/1/cancel").status_code == 400
        assert controller.get("/api/searches")["total"] == 0  # nothing was written
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", "LocalHost.", f"hpo.lab.example:{port}",
                     f"a.corp.example:{port}"):  # fmt: skip
            assert as_host(host).status_code == 200, host
        assert as_host(f"localhost:{port}", "POST").status_code == 201
    finally:
        controller.stop()
    assert "Traceback" not in (tmp_path / "controller.log").read_text()


LOCAL = ["localhost", "localhost:8000", "127.0.0.1:8000", "[::1]:8000", "[0:0:0:0:0:0:0:1]", "LOCALHOST.:80"]
FOREIGN = ["rebind.example", "rebind.example:8000", "127.0.0.1.rebind.example", "localhost.rebind.example", "",
           "[::1", "::1", "localhost:80:80", "localhost@rebind.example", "10.1.2.3:8000"]  # fmt: skip


@pytest.mark.parametrize(("host", "answered"), [(host, True) for host in LOCAL] + [(host, False) for host in FOREIGN])
def test_only_loopback_names_are_answered_by_default(db_url, monkeypatch, host, answered):
    monkeypatch.delenv("HPO_ALLOWED_HOSTS")
    with client_for(db_url) as client:
        response = client.post("/api/searches", json=SPEC, headers={"Host": host})
        assert response.status_code == (201 if answered else 400), response.text
        assert client.get("/api/searches", headers={"Host": "localhost"}).json()["total"] == int(answered)


@pytest.mark.parametrize(
    ("options", "answered", "refused"),
    [
        ({"bind_host": "10.1.2.3"}, ["10.1.2.3:8000", "localhost"], ["10.1.2.4", "rebind.example"]),
        ({"bind_host": "0.0.0.0"}, ["localhost"], ["0.0.0.0", "10.1.2.3"]),
        ({"bind_host": "::"}, ["[::1]:8000"], ["[::]"]),
        ({"allowed_hosts": ["*.lab.example"]}, ["a.lab.example", "b.a.lab.example:1"], ["lab.example", "xlab.example"]),
        ({"allowed_hosts": ["*"]}, ["rebind.example", "anything:1"], []),
    ],
)
def test_the_bound_address_and_allowed_hosts_are_answered_too(db_url, monkeypatch, options, answered, refused):
    monkeypatch.delenv("HPO_ALLOWED_HOSTS")
    with client_for(db_url, **options) as client:
        for host in answered:
            assert client.get("/api/health", headers={"Host": host}).status_code == 200, host
        for host in refused:
            assert client.get("/api/health", headers={"Host": host}).status_code == 400, host


def test_allowed_hosts_default_to_the_environment_and_a_bad_pattern_is_one_clear_line(db_url, monkeypatch, tmp_path):
    monkeypatch.setenv("HPO_ALLOWED_HOSTS", " hpo.lab.example, *.corp.example ")
    with client_for(db_url) as client:
        for host, status in [("hpo.lab.example", 200), ("x.corp.example", 200), ("testserver", 400)]:
            assert client.get("/api/health", headers={"Host": host}).status_code == status, host
    with pytest.raises(HostPatternError, match=r"'lab\.\*' is not a host name"):
        create_app(db_url, run_engine=False, allowed_hosts=["lab.*"])
    serve = [sys.executable, "-m", "hpo_service.cli", "serve", "--db", db_url, "--allowed-host", "*lab.example"]
    run = subprocess.run(serve, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.strip() == (
        "hpo: error: allowed host '*lab.example' is not a host name, an IP address, '*.domain' or '*' "
        "(from --allowed-host or HPO_ALLOWED_HOSTS)"
    )
