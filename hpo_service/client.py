"""The CLI's side of the HTTP API: one function per command, printing for a human.

The server comes from ``--server``, else ``HPO_SERVER``, else http://127.0.0.1:8000; the token for mutating
requests from ``HPO_API_TOKEN``. Every failure is a ``ClientError`` with one line for the user.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import httpx
import yaml

from hpo_service.statuses import FINAL_SEARCH, GenerationStatus, SearchStatus

DEFAULT_SERVER = "http://127.0.0.1:8000"


class ClientError(Exception):
    """A request or an input file that failed; the message is one line for the user (exit status 2)."""


def server_url(value: str | None) -> str:
    return (value or os.environ.get("HPO_SERVER") or DEFAULT_SERVER).rstrip("/")


def request(method: str, server: str | None, path: str, **kwargs: object) -> dict:
    url = f"{server_url(server)}{path}"
    token = os.environ.get("HPO_API_TOKEN")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        response = httpx.request(method, url, timeout=30.0, headers=headers, **kwargs)
    except httpx.HTTPError as exc:
        raise ClientError(f"cannot reach the controller at {server_url(server)}: {exc}") from None
    if response.status_code >= 400:
        raise ClientError(f"{method} {path}: HTTP {response.status_code}: {_problem(response)}")
    return response.json() if response.content else {}


def _problem(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail")
    except ValueError:
        return response.text[:300]
    if isinstance(detail, list):  # FastAPI's validation errors: name each field
        return "; ".join(f"{'.'.join(str(p) for p in e.get('loc', [])[1:])}: {e.get('msg')}" for e in detail)
    return str(detail)


def read_mapping(path: Path) -> dict:
    """A YAML (or JSON: YAML is a superset) file that holds a mapping: a spec, a config, multipliers."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise ClientError(f"cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ClientError(f"{path} is not valid YAML (or JSON): {exc}".replace("\n", " ")) from None
    if not isinstance(data, dict):
        raise ClientError(f"{path} must hold a mapping of sections")
    return data


def submit(args: argparse.Namespace) -> int:
    spec = read_mapping(args.spec)
    created = request("POST", args.server, "/api/searches", json=spec)
    print(f"submitted {spec.get('name', str(args.spec))!r}; watch it with: hpo watch {created['id']}")
    print(created["id"])
    return 0


def list_searches(args: argparse.Namespace) -> int:
    params = {"limit": args.limit, **({"status": args.status} if args.status else {})}
    page = request("GET", args.server, "/api/searches", params=params)
    if args.json:
        print(json.dumps(page, indent=2))
        return 0
    print(f"{'id':>5}  {'name':<24} {'status':<10} {'optimizer':<12} {'trials':>11}  {'best loss':>9}")
    for s in page["searches"]:
        best = "" if s["best_loss"] is None else f"{s['best_loss']:.4f}"
        progress = f"{s['ended']}/{s['budget']}"
        print(f"{s['id']:>5}  {s['name'][:24]:<24} {s['status']:<10} {s['optimizer']:<12} {progress:>11}  {best:>9}")
    if page["total"] > len(page["searches"]):
        print(f"({len(page['searches'])} of {page['total']}; --limit shows more)")
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


def command(args: argparse.Namespace) -> int:
    result = request("POST", args.server, f"/api/searches/{args.search_id}/{args.command}")
    print(f"search {result['id']}: {result['status']}")
    return 0


def delete(args: argparse.Namespace) -> int:
    request("DELETE", args.server, f"/api/searches/{args.search_id}")
    print(f"search {args.search_id}: deleted")
    return 0


def export(args: argparse.Namespace) -> int:
    target = {k: getattr(args, k) for k in ("width", "depth", "batch_size", "tokens") if getattr(args, k)}
    document = request("GET", args.server, f"/api/searches/{args.search_id}/export", params=target)
    text = json.dumps(document, indent=2)
    if args.output:
        Path(args.output).write_text(text + "\n")
        shape = document["target"]["shape"]
        print(
            f"wrote {args.output}: loss {document['loss']['mean']:.4f}, HPs for width {shape['width']}, depth "
            f"{shape['depth']}, batch {shape['batch_size']}, {shape['tokens']:,} tokens "
            f"({document['target']['steps']:,} steps)",
            file=sys.stderr,
        )
    else:
        print(text)
    return 0


def watch(args: argparse.Namespace) -> int:
    """A progress bar over the trial budget, a line per finished generation, and the best candidates at the end."""
    from tqdm import tqdm

    search = request("GET", args.server, f"/api/searches/{args.search_id}")
    shown_generations = 0
    with tqdm(total=search["budget"], unit="trial", desc=search["name"], file=sys.stderr, disable=None) as bar:
        while True:
            bar.update(search["ended"] - bar.n)
            best = search["best_loss"]
            bar.set_postfix(status=search["status"], best="n/a" if best is None else f"{best:.4f}")
            generations = request("GET", args.server, f"/api/searches/{args.search_id}/generations")
            for g in generations[shown_generations:]:
                if g["status"] != GenerationStatus.COMPLETED:
                    break
                tqdm.write(_generation_line(g), file=sys.stdout)
                shown_generations += 1
            if search["status"] in FINAL_SEARCH:
                break
            time.sleep(args.interval)
            search = request("GET", args.server, f"/api/searches/{args.search_id}")
    _print_top(args, search)
    return 0 if search["status"] == SearchStatus.COMPLETED else 1


def _generation_line(g: dict) -> str:
    best = "n/a" if g["best_loss"] is None else f"{g['best_loss']:.4f}"
    median = "n/a" if g["median_loss"] is None else f"{g['median_loss']:.4f}"
    return (
        f"generation {g['number']:>3}: best {best}  median {median}  "
        f"diverged {g['diverged']}  failed {g['failed']}  of {g['trials']}"
    )


def _print_top(args: argparse.Namespace, search: dict, count: int = 5) -> None:
    print(f"search {search['id']} ({search['name']}): {search['status']}")
    if search["error"]:
        print(f"  error: {search['error']}")
    page = request("GET", args.server, f"/api/searches/{search['id']}/trials", params={"sort": "loss", "limit": count})
    ranked = [t for t in page["trials"] if t["loss"] is not None]
    if not ranked:
        return
    print(f"  {'trial':>6} {'gen':>4} {'idx':>4} {'loss':>8}  largest multipliers (log2)")
    for t in ranked:
        moves = sorted(
            ((f"{m}.{h}", v) for m, hps in t["multipliers"]["module"].items() for h, v in hps.items()),
            key=lambda item: -abs(item[1]),
        )[:3]
        shown = ", ".join(f"{name} {value:+.2f}" for name, value in moves)
        print(f"  {t['id']:>6} {t['generation']:>4} {t['index']:>4} {t['loss']:>8.4f}  {shown}")
    print(f"export: hpo export {search['id']} -o best.json --width W --depth D --batch-size B --tokens N")
