"""The CLI's side of the HTTP API: small functions that call the controller and print for a human."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import httpx
import yaml

DEFAULT_SERVER = "http://127.0.0.1:8000"


class ClientError(Exception):
    """A request that failed; the message is one line for the user."""


def server_url(value: str | None) -> str:
    return (value or os.environ.get("HPO_SERVER") or DEFAULT_SERVER).rstrip("/")


def request(method: str, server: str | None, path: str, **kwargs: object) -> dict:
    url = f"{server_url(server)}{path}"
    try:
        response = httpx.request(method, url, timeout=30.0, **kwargs)
    except httpx.HTTPError as exc:
        raise ClientError(f"cannot reach the controller at {server_url(server)}: {exc}") from None
    if response.status_code >= 400:
        raise ClientError(f"{method} {path}: HTTP {response.status_code}: {_problem(response)}")
    return response.json()


def _problem(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail")
    except ValueError:
        return response.text[:300]
    if isinstance(detail, list):  # FastAPI's validation errors: name each field
        return "; ".join(f"{'.'.join(str(p) for p in e.get('loc', [])[1:])}: {e.get('msg')}" for e in detail)
    return str(detail)


def submit(args: argparse.Namespace) -> int:
    try:
        spec = yaml.safe_load(Path(args.spec).read_text())  # YAML is a superset of JSON
    except OSError as exc:
        raise ClientError(f"cannot read {args.spec}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ClientError(f"{args.spec} is neither YAML nor JSON: {exc}".replace("\n", " ")) from None
    if not isinstance(spec, dict):
        raise ClientError(f"{args.spec} must hold a mapping (the search spec)")
    created = request("POST", args.server, "/api/searches", json=spec)
    print(f"submitted {spec.get('name', args.spec)!r}; follow it with: hpo status {created['id']}")
    print(created["id"])
    return 0


def status(args: argparse.Namespace) -> int:
    search = request("GET", args.server, f"/api/searches/{args.search_id}")
    if args.json:
        print(json.dumps(search, indent=2))
        return 0
    counts = ", ".join(f"{n} {s}" for s, n in search["trials"].items() if n)
    best = "n/a" if search["best_loss"] is None else f"{search['best_loss']:.4f}"
    print(f"search {search['id']} ({search['name']}): {search['status']}")
    print(f"  generations {search['generations_completed']}/{search['generations']}; trials: {counts or 'none yet'}")
    print(f"  best loss {best}")
    if search["error"]:
        print(f"  error: {search['error']}")
    return 0
