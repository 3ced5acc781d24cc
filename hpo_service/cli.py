"""`hpo`: the command-line entry point."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import yaml
from pydantic import ValidationError

from hpo_service import client
from hpo_service.spec import SEARCH_SECTIONS
from hpo_service.statuses import SEARCH_COMMANDS, SearchStatus, TrialStatus
from trainer.config import TrainConfig
from trainer.hparams import Multipliers

COMMAND_HELP = {  # one for each of statuses.SEARCH_COMMANDS
    "pause": "let running trials finish, start no new ones",
    "resume": "carry on",
    "cancel": "stop the search and its running trials",
}
SEARCH_ID_HELP = "the search's id (as `hpo submit` printed it and `hpo list` shows it)"
PROXY_DEFAULT = "(default: the proxy's, i.e. the search's base shape)"


DESCRIPTION = """\
Per-module hyperparameter search on a small proxy model, transferred to the model you will train
(Complete(d)P): an evolutionary optimizer proposes log2 multipliers of each module's HPs, trials train the
proxy on Ray, and the best candidate is exported for the target width, depth, batch size and tokens.

`hpo serve` runs the controller (the API, the dashboard and the engine); `hpo run` starts one and watches a
search on it; the other commands talk to a running controller (--server, $HPO_SERVER), except `hpo train`,
which trains one model here."""
EXAMPLE = """\
example:
  hpo serve &                                 # the controller, dashboard at http://127.0.0.1:8000
  hpo submit examples/tiny.yaml               # prints the new search's id, e.g. 1
  hpo watch 1                                 # follow it until it ends
  hpo export 1 --width 1024 -o hps.json       # its best HPs, for a 16x wider model than the proxy"""

CLIError = client.ClientError  # one kind of error for the user, one line and exit status 2, for every command


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except CLIError as exc:
        print(f"hpo: error: {exc}", file=sys.stderr)
        return 2


def build_parser() -> argparse.ArgumentParser:
    """The `hpo` command line; each subcommand sets ``handler``."""
    parser = argparse.ArgumentParser(
        prog="hpo", description=DESCRIPTION, epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", help="one of these (`hpo COMMAND --help` says more)"
    )
    _add_service_commands(commands)
    train = commands.add_parser("train", help="train one model from a YAML config (or search spec)")
    train.add_argument("config", type=Path, help="YAML with model, training, parameterisation and base_hps")
    train.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set model.width=128 (repeatable)",
    )
    train.add_argument("--multipliers", type=Path, help="YAML/JSON of per-module log2 multipliers")
    train.add_argument("--json", action="store_true", help="print the result as JSON")
    train.set_defaults(handler=_train)
    _describe_subcommands(parser)
    return parser


def _describe_subcommands(parser: argparse.ArgumentParser) -> None:
    """Each subcommand's own --help opens with the line that lists it in its parent's (unless it has more to say)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for listed in action._choices_actions:
                command = action.choices[listed.dest]
                command.description = command.description or listed.help
                _describe_subcommands(command)


def _add_service_commands(commands: argparse._SubParsersAction) -> None:
    serve = commands.add_parser("serve", help="run the controller: the API, the dashboard and the engine")
    serve.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: loopback only)")
    serve.add_argument("--port", type=int, default=8000, help="port to listen on (default: %(default)s)")
    serve.add_argument("--db", help="database URL or SQLite file (default: $HPO_DATABASE_URL, else hpo.db)")
    serve.add_argument(
        "--no-engine",
        dest="run_engine",
        action="store_false",
        help="serve the API and the dashboard only, never the engine: a read replica beside the server that runs "
        "it (without this option, servers sharing a database run one engine between them, the others standing by)",
    )
    serve.add_argument(
        "--limit",
        dest="limits",
        action="append",
        metavar="NAME=VALUE",
        help="raise (or lower) a limit on the sizes specs may ask for, e.g. 'width=65536' or 'params=2e10'; names: "
        "width, depth, head_dim, seq_len, vocab_size, batch_size, steps, params, activations (repeatable; default: "
        "$HPO_LIMITS, comma-separated, over limits sized for one trial on one large machine)",
    )
    serve.add_argument(
        "--data-root",
        dest="data_roots",
        action="append",
        metavar="DIR",
        help="a folder specs may read data from (repeatable; default: $HPO_DATA_ROOTS, else the working directory)",
    )
    serve.add_argument(
        "--allow-trial",
        dest="allowed_trials",
        action="append",
        metavar="PATTERN",
        help="trial functions specs may name, e.g. 'mylab.trials:*' (repeatable; default: $HPO_ALLOWED_TRIALS, "
        "else none)",
    )
    serve.add_argument(
        "--cors-origin",
        dest="cors_origins",
        action="append",
        metavar="ORIGIN",
        help="a browser origin allowed to call the API, e.g. 'https://lab.example' (repeatable; default: "
        "$HPO_CORS_ORIGINS, else none: other origins' pages can neither read the API nor write to it)",
    )
    serve.add_argument(
        "--allowed-host",
        dest="allowed_hosts",
        action="append",
        metavar="HOST",
        help="a host name the server answers as besides loopback and --host, e.g. 'hpo.lab.example', "
        "'*.lab.example' or '*' for any (repeatable; default: $HPO_ALLOWED_HOSTS, comma-separated): a request "
        "naming another host in its Host header is refused, which stops DNS rebinding",
    )
    serve.set_defaults(handler=_serve)

    def server_option(command: argparse.ArgumentParser) -> None:
        command.add_argument("--server", help=f"controller URL (default: $HPO_SERVER or {client.DEFAULT_SERVER})")

    submit = commands.add_parser("submit", help="submit a search spec (YAML or JSON); prints the search id last")
    submit.add_argument(
        "spec",
        type=Path,
        help="the search spec, a YAML or JSON file (e.g. examples/tiny.yaml); the export a start_from.export path "
        "names (relative to the spec's folder) is read here and its base HPs and provenance sent inline",
    )
    server_option(submit)
    submit.set_defaults(handler=client.submit)

    listing = commands.add_parser("list", help="the searches, newest first")
    listing.add_argument("--status", choices=list(SearchStatus), help="only the searches in this status")
    listing.add_argument("--limit", type=int, default=20, help="at most this many searches (default: %(default)s)")
    listing.add_argument("--json", action="store_true", help="print the API's JSON")
    server_option(listing)
    listing.set_defaults(handler=client.list_searches)

    status = commands.add_parser(
        "status", help="a search's status, stage, trial counts, best loss, selection gaps and transfer check"
    )
    status.add_argument("search_id", type=int, help=SEARCH_ID_HELP)
    status.add_argument("--json", action="store_true", help="print the API's JSON")
    server_option(status)
    status.set_defaults(handler=client.status)

    watch = commands.add_parser("watch", help="follow a search live until it ends")
    watch.add_argument("search_id", type=int, help=SEARCH_ID_HELP)
    watch.add_argument("--interval", type=float, default=1.0, help="seconds between updates")
    server_option(watch)
    watch.set_defaults(handler=client.watch)

    for name in SEARCH_COMMANDS:
        control = commands.add_parser(name, help=COMMAND_HELP[name])
        control.add_argument("search_id", type=int, help=SEARCH_ID_HELP)
        server_option(control)
        control.set_defaults(handler=client.command)

    delete = commands.add_parser(
        "delete", help="delete a search that has ended, with its trials and curves (cancel it first if active)"
    )
    delete.add_argument("search_id", type=int, help=SEARCH_ID_HELP)
    server_option(delete)
    delete.set_defaults(handler=client.delete)

    export = commands.add_parser("export", help="the best per-module HPs, materialised for a target shape (JSON)")
    export.add_argument("search_id", type=int, help=SEARCH_ID_HELP)
    export.add_argument("-o", "--output", type=Path, help="write to this file instead of stdout")
    export.add_argument("--width", type=int, help=f"target width {PROXY_DEFAULT}")
    export.add_argument("--depth", type=int, help=f"target depth in blocks {PROXY_DEFAULT}")
    export.add_argument("--batch-size", type=int, help=f"target batch size in sequences {PROXY_DEFAULT}")
    export.add_argument("--tokens", type=int, help=f"target training tokens {PROXY_DEFAULT}")
    server_option(export)
    export.set_defaults(handler=client.export)

    run = commands.add_parser("run", help="start a local controller, submit SPEC and watch it; Ctrl-C stops")
    run.add_argument("spec", type=Path, help="the search spec, a YAML or JSON file (e.g. examples/tiny.yaml)")
    run.add_argument("--port", type=int, default=8000, help="port of the local controller (default: %(default)s)")
    run.add_argument("--db", help="database URL or SQLite file (default: $HPO_DATABASE_URL, else hpo.db)")
    run.set_defaults(handler=_run)

    db = commands.add_parser("db", help="database maintenance")
    db_commands = db.add_subparsers(dest="db_command", required=True, metavar="COMMAND", help="one of these")
    db_upgrade = db_commands.add_parser("upgrade", help="apply the schema migrations")
    db_upgrade.add_argument("--db", help="database URL or SQLite file (default: $HPO_DATABASE_URL, else hpo.db)")
    db_upgrade.set_defaults(handler=_db_upgrade)


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from hpo_service.api.app import create_app
    from hpo_service.api.hosts import HostPatternError
    from hpo_service.api.spec_limits import LimitError
    from hpo_service.engine.lease import LeaseTimingError

    options = {"data_roots": args.data_roots, "allowed_trials": args.allowed_trials, "cors_origins": args.cors_origins}
    options |= {"allowed_hosts": args.allowed_hosts, "bind_host": args.host, "limits": args.limits}
    try:
        app = _open_store(lambda url: create_app(url, run_engine=args.run_engine, **options), args.db)
    except HostPatternError as exc:
        raise CLIError(f"{exc} (from --allowed-host or HPO_ALLOWED_HOSTS)") from None
    except LimitError as exc:
        raise CLIError(f"{exc} (from --limit or HPO_LIMITS)") from None
    except LeaseTimingError as exc:
        raise CLIError(str(exc)) from None
    logging.getLogger("uvicorn.access").addFilter(_without_query_string)  # uvicorn's log config keeps it
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0


def _without_query_string(record: logging.LogRecord) -> bool:
    """Access log lines name the path only: a token sent as ``?token=...`` must not end up in the log."""
    if isinstance(record.args, tuple) and len(record.args) == 5 and isinstance(record.args[2], str):
        client_addr, method, path, http_version, status = record.args
        record.args = (client_addr, method, path.partition("?")[0], http_version, status)
    return True


def _run(args: argparse.Namespace) -> int:
    from hpo_service.local_run import run_locally

    spec = client.read_spec(args.spec)
    return _open_store(lambda url: run_locally(spec, url, args.port), args.db)


def _db_upgrade(args: argparse.Namespace) -> int:
    from hpo_service.store.database import database_url, upgrade

    url = database_url(args.db)
    _open_store(upgrade, url)
    print(f"database at {_redacted(url)} is at the latest schema")
    return 0


def _open_store(open_: Callable, url: str | None) -> object:
    from sqlalchemy.exc import SQLAlchemyError

    from hpo_service.store.database import StoreError, driver_message

    try:
        return open_(url)
    except StoreError as exc:
        raise CLIError(str(exc)) from None
    except SQLAlchemyError as exc:
        raise CLIError(f"cannot open the database: {driver_message(exc)}") from None


def _redacted(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _train(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from trainer.train import run_trial

    config = load_train_config(args.config, args.overrides)
    multipliers = _load_multipliers(args.multipliers)
    with tqdm(total=config.training.steps, unit="step", file=sys.stderr, disable=None) as bar:

        def report(step: int, metrics: dict[str, float]) -> None:
            bar.update(step - bar.n)
            bar.set_postfix({k: f"{v:.4f}" for k, v in metrics.items() if k.endswith("loss")})

        result = run_trial(config, multipliers, report)
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        loss = "n/a" if result.final_val_loss is None else f"{result.final_val_loss:.4f}"
        print(
            f"{result.status}: val loss {loss} after {result.steps} steps, {result.tokens} tokens, "
            f"{result.tokens_per_s:,.0f} tokens/s on {result.device}"
        )
        if result.reason:
            print(f"reason: {result.reason}")
    return 1 if result.status == TrialStatus.FAILED else 0


def load_train_config(path: Path, overrides: Sequence[str] = ()) -> TrainConfig:
    """A config file, its base shape pinned to the shape it states, then ``overrides`` applied on top.

    Pinning first means ``--set model.width=256`` trains a wider model with the file's HPs *transferred*.
    """
    data = {k: v for k, v in client.read_mapping(path).items() if k not in SEARCH_SECTIONS}
    config = _validate(data, str(path)).with_base_shape_pinned()
    data = config.model_dump()
    for override in overrides:
        key, sep, raw = override.partition("=")
        if not sep or not key:
            raise CLIError(f"--set expects KEY=VALUE, got {override!r}")
        _set_dotted(data, key, yaml.safe_load(raw))
    return _validate(data, "--set")


def _validate(data: dict, source: str) -> TrainConfig:
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise CLIError(f"{source}: {problems}") from None


def _set_dotted(data: dict, key: str, value: object) -> None:
    *parents, leaf = key.split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise CLIError(f"--set {key}: {part!r} is not a section")
    node[leaf] = value


def _load_multipliers(path: Path | None) -> Multipliers:
    if path is None:
        return Multipliers()
    try:
        return Multipliers.from_dict(client.read_mapping(path))
    except (ValueError, TypeError) as exc:
        raise CLIError(f"{path}: {exc}") from None


if __name__ == "__main__":
    sys.exit(main())
