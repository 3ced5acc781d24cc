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

from hpo_service.statuses import FINAL_SEARCH, GenerationStatus, SearchStatus, TrialKind

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


START_FROM_EXPORT = ("format", "base", "provenance")  # what the server reads of an export, and where it came from


def read_spec(path: Path) -> dict:
    """A search spec file, with a ``start_from.export`` path (relative to the spec's folder) replaced by the export
    it names: the server reads no file of the client's. Only ``START_FROM_EXPORT`` is sent: a large model's
    materialised target and reports would exceed the server's limit on a body's values."""
    spec = read_mapping(path)
    start = spec.get("start_from")
    if isinstance(start, dict) and isinstance(start.get("export"), str):
        export_path = Path(path).parent / Path(start["export"]).expanduser()
        spec["start_from"] = {**start, "export": _read_export(export_path)}
    return spec


def _read_export(path: Path) -> dict:
    try:
        document = json.loads(path.read_text())
    except OSError as exc:
        raise ClientError(f"start_from.export: cannot read {path}: {exc.strerror}") from None
    except ValueError as exc:  # not UTF-8, or not JSON
        raise ClientError(f"start_from.export: {path} is not a JSON export: {exc}") from None
    if not isinstance(document, dict):
        raise ClientError(f"start_from.export: {path} must hold an export document (a JSON object)")
    return {key: document[key] for key in START_FROM_EXPORT if key in document}


def submit(args: argparse.Namespace) -> int:
    spec = read_spec(args.spec)
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
    print(f"{'id':>5}  {'name':<24} {'status':<10} {'optimizer':<18} {'trials':>11}  {'best loss':>9}")
    for s in page["searches"]:
        best = "" if s["best_loss"] is None else f"{s['best_loss']:.4f}"
        progress = f"{s['ended']}/{s['budget']}"
        print(f"{s['id']:>5}  {s['name'][:24]:<24} {s['status']:<10} {s['optimizer']:<18} {progress:>11}  {best:>9}")
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
    if search["kind"] is not None:
        generations = request("GET", args.server, f"/api/searches/{args.search_id}/generations")
        print(f"  {phase_line(generations[-1], search['generations'])}")
    print(f"  best loss {best} (search-time)")
    if search["error"]:
        print(f"  error: {search['error']}")
    if search["kind"] is not None:
        selection = request("GET", args.server, f"/api/searches/{args.search_id}/selection")
        if selection:
            gaps = ", ".join(f"{s['stage']} {_signed(s['gap'])}" for s in selection)
            print(f"  selection gap (search-time minus fresh-seed loss): {gaps}")
        _print_validation(args, search)
    return 0


def phase_line(generation: dict, total: int) -> str:
    """Where the plan stands at ``generation``: ``stage per-module, generation 4 of 7`` (counted from 1)."""
    where = f"generation {generation['number'] + 1} of {total}"
    if generation["kind"] == TrialKind.VALIDATION:
        return f"validation at the targets, {where}"
    if generation["kind"] == TrialKind.REEVALUATION:
        return f"stage {generation['stage']}: re-evaluating its top candidates on fresh seeds, {where}"
    return f"stage {generation['stage']}, {where}"


def _print_validation(args: argparse.Namespace, search: dict) -> None:
    """Per validate target: each arm's mean ± sd, the speed-up and its verdict; then the recommendation."""
    for entry in request("GET", args.server, f"/api/searches/{search['id']}/validation"):
        print(f"  validation at {entry['target']['label']}:")
        print(f"    {'arm':<12} {'mean ± sd':>17}")
        for arm in entry["arms"]:
            running = f"  ({arm['unfinished']} of {arm['runs']} runs unfinished)" if arm["unfinished"] else ""
            print(f"    {arm['name']:<12} {_mean_sd(arm['mean'], arm['sd']):>17}{running}")
        if entry["speedup_over"] is not None:
            print(f"    {_speedup(entry)}")
    if search["recommendation"] is not None:
        advice = search["recommendation"]
        print(f"  recommendation: {advice['arm']} ({advice['reason']})")


def _speedup(entry: dict) -> str:
    result = entry["arms"][0]["name"]
    if entry["speedup"] is None:
        value = "n/a"
    elif entry["speedup_sd"] is None:
        value = f"{entry['speedup']:.2f}x"
    else:
        value = f"{entry['speedup']:.2f}x ± {entry['speedup_sd']:.2f}"
    return f"speed-up of {result} over {entry['speedup_over']}: {value}, {entry['verdict']}"


def _mean_sd(mean: float | None, sd: float | None) -> str:
    if mean is None:
        return "n/a"
    return f"{mean:.4f}" if sd is None else f"{mean:.4f} ± {sd:.4f}"


def _signed(value: float | None) -> str:
    return "pending" if value is None else f"{value:+.4f}"


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
    """A progress bar over the trial budget, a line per finished generation and per new phase of the plan (a
    stage, its re-evaluation, the validation), and at the end the best candidates and the transfer check."""
    from tqdm import tqdm

    search = request("GET", args.server, f"/api/searches/{args.search_id}")
    shown_generations = 0
    phase = None if len(search["stages"]) > 1 else (search["stages"][0], TrialKind.SEARCH)  # a plain search's: unsaid
    with tqdm(total=search["budget"], unit="trial", desc=search["name"], file=sys.stderr, disable=None) as bar:
        while True:
            bar.update(search["ended"] - bar.n)
            best = search["best_loss"]
            bar.set_postfix(
                status=search["status"], stage=search["stage"] or "-", best="n/a" if best is None else f"{best:.4f}"
            )
            generations = request("GET", args.server, f"/api/searches/{args.search_id}/generations")
            for g in generations[shown_generations:]:
                if g["status"] != GenerationStatus.COMPLETED:
                    break
                tqdm.write(_generation_line(args, g), file=sys.stdout)
                shown_generations += 1
            if generations and (generations[-1]["stage"], generations[-1]["kind"]) != phase:
                phase = (generations[-1]["stage"], generations[-1]["kind"])
                tqdm.write(phase_line(generations[-1], search["generations"]), file=sys.stdout)
            if search["status"] in FINAL_SEARCH:
                break
            time.sleep(args.interval)
            search = request("GET", args.server, f"/api/searches/{args.search_id}")
    _print_top(args, search)
    _print_validation(args, search)
    if search["best_loss"] is not None:
        print(f"export: hpo export {search['id']} -o best.json --width W --depth D --batch-size B --tokens N")
    return 0 if search["status"] == SearchStatus.COMPLETED else 1


def _generation_line(args: argparse.Namespace, g: dict) -> str:
    """A completed generation: a search generation's best and median loss, a re-evaluation's choice."""
    outcomes = f"diverged {g['diverged']}  failed {g['failed']}  stopped {g['stopped']}  of {g['trials']}"
    if g["kind"] == TrialKind.VALIDATION:
        return f"generation {g['number']:>3} (validation): {outcomes}"
    if g["kind"] == TrialKind.REEVALUATION:
        selection = request("GET", args.server, f"/api/searches/{args.search_id}/selection")
        stage = next((s for s in selection if s["stage"] == g["stage"]), None)
        return f"generation {g['number']:>3} ({g['stage']} re-evaluation): {_choice(stage)}  {outcomes}"
    best = "n/a" if g["best_loss"] is None else f"{g['best_loss']:.4f}"
    median = "n/a" if g["median_loss"] is None else f"{g['median_loss']:.4f}"
    return f"generation {g['number']:>3} (stage {g['stage']}): best {best}  median {median}  {outcomes}"


def _choice(stage: dict | None) -> str:
    """A stage's fresh-seed choice in a few words."""
    chosen = None if stage is None else stage["chosen"]
    if chosen is None:
        return "no candidate chosen on fresh seeds"
    return (
        f"chose generation {chosen['generation']} candidate {chosen['index']}, search-time "
        f"{chosen['search_loss']:.4f}, fresh {_mean_sd(chosen['mean'], chosen['sd'])}, gap {stage['gap']:+.4f}"
    )


def _print_top(args: argparse.Namespace, search: dict, count: int = 5) -> None:
    """The search's best search trials (re-evaluations and validations train other seeds or shapes)."""
    print(f"search {search['id']} ({search['name']}): {search['status']}")
    if search["error"]:
        print(f"  error: {search['error']}")
    params = {"sort": "loss", "limit": count, "kind": TrialKind.SEARCH}
    page = request("GET", args.server, f"/api/searches/{search['id']}/trials", params=params)
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
