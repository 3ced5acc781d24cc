"""Property-based requests generated from the OpenAPI schema, and hostile bodies beyond it: whatever they send, the
API never answers 5xx, and what it refuses it neither stores nor echoes at length."""

from __future__ import annotations

import json
from urllib.parse import quote

import httpx
import pytest
import schemathesis
import yaml
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from hpo_service.api.app import create_app
from hpo_service.api.settings import settings_of
from hpo_service.store.database import database_url, upgrade
from hpo_service.store.models import Search


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


# Beyond the schema: bodies of every class of hostile input, each dropped into an otherwise valid spec in place
# of one value (or sent alone), on both stores.
SPEC = {
    "name": "fuzzed",
    "model": {"width": 32, "depth": 1, "head_dim": 16, "seq_len": 32, "vocab_size": 256},
    "training": {"batch_size": 4, "steps": 5, "seed": 0, "data": "builtin:python-stdlib"},
    "base_hps": {"lr": 0.01, "eps": 1e-8},
    "search_space": {"hps": ["lr"], "log2_bounds": [-1, 1]},
    "optimizer": {"name": "random", "population": 2, "generations": 1, "replicates": 1},
    "export_targets": [{"width": 64, "depth": 2, "batch_size": 8, "tokens": 100000}],
}
HOLE = "hostile_value_here"  # a plain scalar in YAML and a string in JSON, replaced by the hostile text
# Refused wherever they stand: not a number, out of any bound, not Unicode, nested or repeated past the limits,
# a YAML tag or alias.
REFUSED_JSON = [
    b"NaN",
    b"Infinity",
    b"-Infinity",
    b"1e400",
    b"-1e999",
    b"9" * 60,
    b"-" + b"9" * 45,
    b'"\\ud800"',
    b'"x\\udfffy"',
    b'"a\\u0000b"',
    b'"\\u0000"',
    b"[" * 40 + b"]" * 40,
    b'{"a":' * 40 + b"1" + b"}" * 40,
    b"[" * 3000 + b"]" * 3000,
    b"[" + b"0," * 3000 + b"0]",
]
REFUSED_YAML = [
    b".inf",
    b"-.inf",
    b".nan",
    b".NaN",
    b"1.0e+400",
    b"!!binary gIGC",
    b"!!binary AA==",
    b"!!set {a, b}",
    b"!!python/object:os.system x",
    b"!!python/name:os.system",
    b"!!timestamp 2001-12-14",
    b"!!float x",
    b"!!int 0x",
    b'"\\0"',
    b'"a\\x00"',
    b'"\\ud800"',
    b"&anchor 1",
    b"*nowhere",
    b"0x" + b"f" * 50,
    b"1_000_000_000_000_000_000_000_000_000_000_000",
    b"[" * 900 + b"]" * 900,
    b"{? [1] : 2}",
    b"[" + b"0, " * 3000 + b"0]",
]
# Odd but possibly valid somewhere: whatever the answer, never a 5xx, and nothing stored if refused.
OTHER_JSON = [b'"   "', b'"' + b"x" * 300_000 + b'"', b"1.0e308", b"1e-400", b"2" + b"0" * 30, b"true", b"null", b"{}"]
OTHER_YAML = [b"2001-12-14", b"190:20:30", b"'   '", b"~", b"yes", b"{<<: {a: 1}}", b"0o17", b"+.5"]


def _holes(value: object, path: tuple = ()) -> list[tuple]:
    """Every place in ``value`` a hostile value can take: each leaf, and each mapping or list as a whole."""
    places = [path]
    if isinstance(value, dict):
        places += [p for key, item in value.items() for p in _holes(item, (*path, key))]
    elif isinstance(value, list):
        places += [p for index, item in enumerate(value) for p in _holes(item, (*path, index))]
    return places


def _with_hole(path: tuple) -> dict | str:
    if not path:
        return HOLE
    spec = json.loads(json.dumps(SPEC))
    parent = spec
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = HOLE
    return spec


@st.composite
def hostile_bodies(draw, json_values: list[bytes], yaml_values: list[bytes]) -> tuple[bytes, str]:
    """The spec with one of its values (or the whole of it) replaced by hostile text, as JSON or as YAML."""
    path = draw(st.sampled_from(_holes(SPEC)))
    if draw(st.booleans()):
        template = json.dumps(_with_hole(path)).encode()
        return template.replace(f'"{HOLE}"'.encode(), draw(st.sampled_from(json_values))), "application/json"
    template = yaml.safe_dump(_with_hole(path), default_flow_style=True, width=1 << 20).encode()
    assert HOLE.encode() in template and f"'{HOLE}'".encode() not in template
    return template.replace(HOLE.encode(), draw(st.sampled_from(yaml_values))), "application/yaml"


def test_hostile_bodies_are_refused_small_and_store_nothing(db_url):
    with TestClient(create_app(db_url, run_engine=False)) as client:

        def stored() -> int:
            with settings_of(client.app).sessions() as session:
                return session.scalar(select(func.count()).select_from(Search))

        def post(body: tuple[bytes, str]) -> httpx.Response:
            content, content_type = body
            before = stored()
            response = client.post("/api/searches", content=content, headers={"Content-Type": content_type})
            assert response.status_code < 500, (content[:200], response.text[:300])
            assert len(response.content) < 4096, (content[:200], len(response.content))
            if response.status_code >= 400:
                assert response.json()["detail"][0]["loc"][0] == "body"
                assert stored() == before
            return response

        @given(body=hostile_bodies(REFUSED_JSON, REFUSED_YAML))
        @settings(max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def refused(body: tuple[bytes, str]) -> None:
            assert post(body).status_code == 422, body[0][:300]

        @given(
            body=st.one_of(
                hostile_bodies(OTHER_JSON, OTHER_YAML),
                st.tuples(st.binary(max_size=400), st.sampled_from(["application/json", "application/yaml"])),
            )
        )
        @settings(max_examples=100, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def never_fails(body: tuple[bytes, str]) -> None:
            post(body)

        refused()
        never_fails()
