"""Renders the tables and figures of BENCHMARKS.md and RELIABILITY.md from ``bench/results/``.

A rendered part sits between marker comments, invisible on the rendered page: a table between
``<!-- table:NAME -->`` and ``<!-- /table -->`` on lines of their own, a figure inside a sentence between
``<!-- fig:NAME -->`` and ``<!-- /fig -->``. Everything else in the documents is written by hand. A bench
writes its results file; this script writes the figures, so a document cannot say what its source does not.

    python bench/report.py           # rewrite the parts of both documents from the results files
    python bench/report.py --check   # change nothing; exit 1 naming each part that differs from its source
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import statistics
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache, partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
DOCUMENTS = (ROOT / "BENCHMARKS.md", ROOT / "RELIABILITY.md")
MARKED = re.compile(
    r"(?P<open><!-- (?P<kind>table|fig):(?P<name>[\w.-]+) -->)(?P<body>.*?)(?P<close><!-- /(?P=kind) -->)", re.DOTALL
)
ENGINE_TARGET = 10.0  # ours / Optuna, trials per second
THROUGHPUT_TARGET = 1.05  # plain / trainer, tokens per second


@dataclass(frozen=True)
class Part:
    name: str
    sources: tuple[str, ...]  # results files, relative to bench/results
    render: Callable[[], str]


PARTS: dict[str, Part] = {}


def part(name: str, *sources: str) -> Callable[[Callable[[], str]], Callable[[], str]]:
    """Register ``render`` as the text of the part ``name``, computed from ``sources``."""

    def register(render: Callable[[], str]) -> Callable[[], str]:
        PARTS[name] = Part(name, sources, render)
        return render

    return register


@cache
def results(name: str) -> dict:
    return json.loads((RESULTS / name).read_text())


# -- formatting ----------------------------------------------------------------------------------------------


def num(value: float, digits: int = 2) -> str:
    """``value`` with thousands separators and a true minus sign, as the documents print numbers."""
    return f"{value:,.{digits}f}".replace("-", "−")


def octaves(value: float) -> str:
    return f"{num(value)} octave{'s' if value >= 1 else ''}"


def bold(text: str, when: bool = True) -> str:
    return f"**{text}**" if when else text


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(cells) + " |" for cells in (header, *rows)]
    return "\n".join([lines[0], "|" + "---|" * len(header), *lines[1:]])


def with_separators(text: str) -> str:
    """``text`` with its integers of four digits or more written with thousands separators."""
    return re.sub(r"\b\d{4,}\b", lambda m: f"{int(m[0]):,}", text)


def size(n_bytes: int) -> str:
    return f"{n_bytes:,} B" if n_bytes < 1024 else f"{n_bytes / 1024:,.0f} KiB"


# -- LR transfer across width and depth ----------------------------------------------------------------------

TRANSFER_LABELS = {"completed": "`completed`", "completep": "not scaling", "sp": "`sp`"}


def optima(grid: dict, parameterisation: str, sweep: str, basin: dict) -> str:
    """The optima along one sweep, each with its low-LR-basin optimum beside it where that differs."""
    cells = []
    for key, value in grid["optimal_log2_lr"][parameterisation][sweep].items():
        low = basin["optimal_log2_lr"][parameterisation][sweep][key]
        cells.append(num(value) + ("" if low == value else f" ({num(low)} in the low-LR basin)"))
    return " / ".join(cells)


def drift(grid: dict, parameterisation: str, sweep: str, basin: dict, smallest: bool) -> str:
    value, low = grid["drift_octaves"][parameterisation][sweep], basin["drift_octaves"][parameterisation][sweep]
    text = bold(octaves(value), smallest)
    return text + ("" if low == value else f" ({num(low)} in the low-LR basin)")


def smallest_drift(grid: dict, parameterisation: str, sweep: str) -> bool:
    """Whether ``parameterisation`` moves its optimum least along ``sweep``: the figure a table puts in bold."""
    drifts = grid["drift_octaves"]
    return drifts[parameterisation][sweep] == min(by_sweep[sweep] for by_sweep in drifts.values())


def span(values: list[str]) -> str:
    return f"{float(values[-1]) / float(values[0]):g}×"


@part("transfer_lr", "transfer_lr.json")
def transfer_lr_table() -> str:
    data = results("transfer_lr.json")
    grid, basin = data["full_grid"], data["low_lr_basin"]
    header, rows = ["parameterisation"], []
    for sweep in ("width", "depth"):
        shapes = list(grid["optimal_log2_lr"]["completed"][sweep])
        header += [f"optimal log2 LR at {sweep} {' / '.join(shapes)}", f"drift ({sweep}, {span(shapes)})"]
    for parameterisation in grid["optimal_log2_lr"]:
        row = [TRANSFER_LABELS[parameterisation]]
        for sweep in ("width", "depth"):
            smallest = smallest_drift(grid, parameterisation, sweep)
            row += [optima(grid, parameterisation, sweep, basin), drift(grid, parameterisation, sweep, basin, smallest)]
        rows.append(row)
    return table(header, rows)


@part("transfer_lr.sp_depth_drift_in_basin", "transfer_lr.json")
def transfer_lr_sp_depth_drift() -> str:
    return num(results("transfer_lr.json")["low_lr_basin"]["drift_octaves"]["sp"]["depth"])


# -- coordinate check ----------------------------------------------------------------------------------------


@part("coord_check", "coord_check.json")
def coord_check_table() -> str:
    growth = results("coord_check.json")["growth_256_over_32"]
    parameterisations = list(growth)
    modules = list(growth[parameterisations[0]])
    header = ["module", *(f"`{p}` update / activation" for p in parameterisations)]
    rows = [
        [
            "unembedding (logits)" if module == "unembedding" else module,
            *(
                f"{num(growth[p][module]['update'])} / {num(growth[p][module]['activation'])}"
                for p in parameterisations
            ),
        ]
        for module in modules
    ]
    return table(header, rows)


@part("coord_check.widths", "coord_check.json")
def coord_check_widths() -> str:
    widths = results("coord_check.json")["widths"]
    return f"Widths {widths[0]} → {widths[-1]} ({widths[-1] // widths[0]}×)"


# -- trainer throughput --------------------------------------------------------------------------------------


@part("throughput", "throughput.json")
def throughput_table() -> str:
    """Each loop's rate over the runs, and the ratio per pair of runs (a plain run and the trainer run after it),
    whose median is robust to the machine's drift where the ratio of the medians is not."""
    data = results("throughput.json")

    def spread_row(label: str, values: dict, digits: int) -> list[str]:
        spread = f"{num(values['min'], digits)}–{num(values['max'], digits)}"
        return [label, num(values["median"], digits), spread, num(values["sd"], digits)]

    pairs = data["ratio_plain_over_trainer_per_repeat"]
    verdict = "meets" if pairs["median"] <= THROUGHPUT_TARGET else "misses"
    ratio = spread_row("**ratio plain / trainer, per pair**", pairs, 2)
    ratio[1] = f"**{ratio[1]}** ({verdict} the target ≤ {num(THROUGHPUT_TARGET)})"
    return table(
        ["loop", "median", "min–max", "sd"],
        [
            spread_row("plain PyTorch GPT, tokens/s", data["plain_tokens_per_s"], 0),
            spread_row("trainer (`run_trial`), tokens/s", data["trainer_tokens_per_s"], 0),
            ratio,
        ],
    )


@part("throughput.setup", "throughput.json")
def throughput_setup() -> str:
    data = results("throughput.json")
    shape = data["shape"]
    mode = "`torch.compile`" if data["compile"] else "eager mode"
    return (
        f"alternating {data['repeats']} times in one process; width {shape['width']}, depth {shape['depth']}, "
        f"seq {shape['seq_len']}, batch {shape['batch_size']}, {shape['steps']} timed steps after "
        f"{shape['warmup']} warm-up steps, host sync every {data['host_sync_every_steps']} step(s), "
        f"{data['device'].upper()}, {data['machine'].split(', ')[-1]}, {mode}; load average "
        f"{num(data['load_average_1min'][0], 1)} before and {num(data['load_average_1min'][1], 1)} after"
    )


# -- engine overhead -----------------------------------------------------------------------------------------

SAMPLERS = {"cma": "CMA-ES", "tpe": "TPE"}


def engine_databases() -> list[str]:
    return list(results("engine_overhead.json")["ours"])


def rate_with_range(run: dict) -> str:
    """The median in bold, and the range of the runs."""
    rates = run["trials_per_s"]
    return f"**{num(run['median_trials_per_s'], 0)}** ({num(min(rates), 0)}–{num(max(rates), 0)})"


@part("engine_overhead", "engine_overhead.json")
def engine_overhead_table() -> str:
    data = results("engine_overhead.json")
    databases = engine_databases()
    rows = [["ours (engine + Ray)", *(rate_with_range(data["ours"][db]) for db in databases)]]
    samplers = list(data["optuna"][databases[0]])
    for sampler in samplers:
        rows.append(
            [
                f"Optuna {SAMPLERS[sampler]}, ask/tell",
                *(num(data["optuna"][db][sampler]["median_trials_per_s"], 1) for db in databases),
            ]
        )
    for sampler in samplers:
        first = sampler == samplers[0]
        rows.append(
            [
                bold(f"ratio ours / Optuna {SAMPLERS[sampler]}", first),
                *(bold(f"{num(data['ratio_ours_over_optuna'][db][sampler], 1)}×", first) for db in databases),
            ]
        )
    return table(["loop", *(f"{DATABASE_LABELS[db]} trials/s" for db in databases)], rows)


DATABASE_LABELS = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}


@part("engine_overhead.per_trial", "engine_overhead.json")
def engine_overhead_per_trial() -> str:
    data = results("engine_overhead.json")
    databases = engine_databases()
    ms = data["ms_per_trial"]
    rows = [
        ["ours, whole loop (wall)", *(num(ms[db]["ours"], 1) for db in databases)],
        ["no-op Ray tasks alone, in generations (wall)", *(num(ms[db]["bare_ray_tasks_alone"]) for db in databases)],
        ["`RayExecutor` alone: submit and poll (wall)", *(num(ms[db]["executor_alone"], 1) for db in databases)],
        [
            "**controller and store: ours − executor (wall)**",
            *(bold(num(ms[db]["controller_and_store"], 1)) for db in databases),
        ],
        [
            "ours, CPU of the controller's process",
            *(num(data["ours"][db]["median_cpu_ms_per_trial"], 1) for db in databases),
        ],
    ]
    for sampler in data["optuna"][databases[0]]:
        rows.append(
            [
                f"Optuna {SAMPLERS[sampler]}, CPU",
                *(num(data["optuna"][db][sampler]["median_cpu_ms_per_trial"], 0) for db in databases),
            ]
        )
    return table(["ms per trial", *(DATABASE_LABELS[db] for db in databases)], rows)


@part("engine_overhead.startup", "engine_overhead.json")
def engine_overhead_startup() -> str:
    data = results("engine_overhead.json")
    databases = engine_databases()
    settings = data["settings"]
    warmup_trials = 2 * settings["population"]

    def optuna_setup(db: str) -> str:
        times = [run["setup_s"] for run in data["optuna"][db].values()]
        return f"{num(min(times))}–{num(max(times))}"

    rows = [
        ["Ray (`ray.init`, once)", *(num(data["ray_init_s"], 1) for _ in databases)],
        ["ours: migrations and engine", *(num(data["ours"][db]["setup_s"]) for db in databases)],
        [
            f"ours: a {warmup_trials}-trial warm-up search (starts the Ray workers)",
            *(num(data["ours"][db]["warmup_search_s"]) for db in databases),
        ],
        ["Optuna: its tables (per sampler)", *(optuna_setup(db) for db in databases)],
    ]
    return table(["one-time startup, not counted (s)", *(DATABASE_LABELS[db] for db in databases)], rows)


@part("engine_overhead.store_settings", "engine_overhead.json")
def engine_overhead_store_settings() -> str:
    data = results("engine_overhead.json")
    databases = engine_databases()
    if "store_settings" not in data["ours"][databases[0]]:  # a run from before the bench recorded them
        return table(
            ["store settings", "ours", "Optuna"],
            [
                [
                    "not recorded: this run predates equal settings (re-run the bench)",
                    "SQLite: WAL, `synchronous=NORMAL`",
                    "SQLite: Optuna's defaults, rollback journal, `synchronous=FULL`",
                ]
            ],
        )
    samplers = list(data["optuna"][databases[0]])
    rows = []
    for db in databases:
        runs = [data["ours"][db], *(data["optuna"][db][sampler] for sampler in samplers)]
        for name in runs[0]["store_settings"]:
            rows.append([DATABASE_LABELS[db], f"`{name}`", *(run["store_settings"].get(name, "—") for run in runs)])
    return table(
        [
            "store",
            "setting, as each side's connection reports it",
            "ours",
            *(f"Optuna {SAMPLERS[s]}" for s in samplers),
        ],
        rows,
    )


@part("engine_overhead.setup", "engine_overhead.json")
def engine_overhead_setup() -> str:
    settings = results("engine_overhead.json")["settings"]
    return (
        f"{settings['dimension']} multipliers, Nevergrad CMA with population {settings['population']} × "
        f"{settings['generations']} generations = {settings['trials']} trials, `parallel` {settings['parallel']}, "
        f"{settings['cpus_per_trial']:g} CPU per trial"
    )


@part("engine_overhead.repeats", "engine_overhead.json")
def engine_overhead_repeats() -> str:
    settings = results("engine_overhead.json")["settings"]
    return (
        f"Ours is the median of {settings['repeats']} runs, each Optuna figure the median of "
        f"{settings['optuna_repeats']}"
    )


@part("engine_overhead.verdict", "engine_overhead.json")
def engine_overhead_verdict() -> str:
    ratios = results("engine_overhead.json")["ratio_ours_over_optuna"]
    misses = [
        f"{DATABASE_LABELS[db]} against {SAMPLERS[sampler]} ({num(ratio, 1)}×)"
        for db, by_sampler in ratios.items()
        for sampler, ratio in by_sampler.items()
        if ratio < ENGINE_TARGET
    ]
    target = f"The target (≥ {ENGINE_TARGET:g}× Optuna)"
    if not misses:
        return f"{target} holds on both databases against both samplers."
    return f"{target} is missed on {', '.join(misses)}."


@part("engine_overhead.dispatch_share", "engine_overhead.json")
def engine_overhead_dispatch_share() -> str:
    """The executor's floor as a share of ours, per trial on SQLite: what Ray's dispatch costs of the whole."""
    ms = results("engine_overhead.json")["ms_per_trial"]["sqlite"]
    return f"{ms['executor_alone'] / ms['ours']:.0%}"


@part("engine_overhead.optuna_range", "engine_overhead.json")
def engine_overhead_optuna_range() -> str:
    rates = [
        run["median_trials_per_s"]
        for by_sampler in results("engine_overhead.json")["optuna"].values()
        for run in by_sampler.values()
    ]
    return f"{num(min(rates), 0)}–{num(max(rates), 0)}"


@part("engine_overhead.load", "engine_overhead.json")
def engine_overhead_load() -> str:
    data = results("engine_overhead.json")
    low, high = sorted(data["machine"]["load_average_1min"])
    return f"load average {num(low, 1)}–{num(high, 1)} during the run above; {num(data['total_s'] / 60, 1)} minutes"


# -- dashboard at scale --------------------------------------------------------------------------------------

DASHBOARD_ROWS = {  # results key: (what the page asks for, path as the document writes it)
    "overview page": ("overview page", "`/`"),
    "searches list (overview data)": ("searches list (overview, polled every 2 s)", "`/api/searches?limit=100`"),
    "search page": ("search page", "`/searches/{id}`"),
    "search summary (polled)": ("search summary (polled every 1.5 s)", "`/api/searches/{id}`"),
    "outcomes (progress, population)": ("best so far + population", "`.../dashboard/outcomes`"),
    "multipliers (heatmaps, parallel)": ("heatmaps + parallel coordinates", "`.../dashboard/multipliers`"),
    "curves": ("learning curves (polled while trials run)", "`.../dashboard/curves`"),
    "trial table page (by loss)": ("trial table, one page by loss", "`.../trials?limit=25&sort=loss`"),
}
LIVE_POLLS = ("search summary (polled)", "curves")
TRIAL_ENDED = (
    *LIVE_POLLS,
    "outcomes (progress, population)",
    "multipliers (heatmaps, parallel)",
    "trial table page (by loss)",
)


def dashboard_backends() -> dict:
    return results("dashboard_scale.json")["backends"]


@part("dashboard_scale", "dashboard_scale.json")
def dashboard_scale_table() -> str:
    backends = dashboard_backends()
    names = list(backends)
    rows = []
    for key, (what, path) in DASHBOARD_ROWS.items():
        timings = [backends[db]["endpoints"][key] for db in names]
        answer = backends[names[0]]["endpoints"][key]
        html = answer["holds"] == "HTML"
        rows.append(
            [
                what,
                path,
                *(f"{num(t['median_ms'], 1)} / {num(t['p95_ms'], 1)}" for t in timings),
                f"{size(answer['bytes'])}{' ' if html else ': '}{with_separators(answer['holds'])}",
            ]
        )
    return table(["what the browser asks for", "path", *(DATABASE_LABELS[db] for db in names), "answer"], rows)


@part("dashboard_scale.populate", "dashboard_scale.json")
def dashboard_scale_populate() -> str:
    backends = dashboard_backends()
    return ", ".join(f"{num(b['populate_s'], 1)} s on {DATABASE_LABELS[db]}" for db, b in backends.items())


@part("dashboard_scale.repeats", "dashboard_scale.json")
def dashboard_scale_repeats() -> str:
    return f"{results('dashboard_scale.json')['repeats']} times"


@part("dashboard_scale.browser", "dashboard_scale.json")
def dashboard_scale_browser() -> str:
    backends = dashboard_backends()
    browser = {db: b["browser"] for db, b in backends.items()}
    labels = " / ".join(DATABASE_LABELS[db] for db in browser)
    summary = " / ".join(f"{num(b['summary_median_ms'], 0)} ms" for b in browser.values())
    drawn = " / ".join(num(b["drawn_median_ms"], 0) for b in browser.values())
    loads = {b["loads"] for b in browser.values()}
    slowest = max(b["drawn_max_ms"] for b in browser.values())
    return (
        f"shows the summary after {summary} ({labels}) and has every chart drawn and the table filled after "
        f"{drawn} ms (medians of {'/'.join(map(str, sorted(loads)))} loads; the slowest {num(slowest, 0)} ms)"
    )


def dashboard_sum_ms(keys: tuple[str, ...]) -> str:
    endpoints = dashboard_backends()["sqlite"]["endpoints"]
    return num(sum(endpoints[key]["median_ms"] for key in keys), 0)


@part("dashboard_scale.live_polls_ms", "dashboard_scale.json")
def dashboard_scale_live_polls() -> str:
    return dashboard_sum_ms(LIVE_POLLS)


@part("dashboard_scale.trial_ended_ms", "dashboard_scale.json")
def dashboard_scale_trial_ended() -> str:
    return dashboard_sum_ms(TRIAL_ENDED)


# -- which optimizer -----------------------------------------------------------------------------------------

OPTIMIZER_LABELS = {
    "trust_region": "`trust_region` (the paper's)",
    "cma": "`cma`",
    "diagonal_cma": "`diagonal_cma`",
    "de": "`de`",
    "random": "`random`",
    "optuna_tpe": "Optuna TPE",
    "optuna_cma": "Optuna CMA-ES",
}


@part("optimizers", "optimizers.json")
def optimizers_table() -> str:
    data = results("optimizers.json")
    synthetic, real = data["synthetic"]["optimizers"], data["real"]["optimizers"]

    def best_of(runs: dict, key: str) -> float:
        return min(run[key] for run in runs.values())

    rows = []
    for name, label in OPTIMIZER_LABELS.items():
        s, r = synthetic[name], real[name]
        rows.append(
            [
                label,
                bold(
                    f"{num(s['final_best_mean'])} ± {num(s['final_best_std'])}",
                    s["final_best_mean"] == best_of(synthetic, "final_best_mean"),
                ),
                bold(num(s["mean_rank"]), s["mean_rank"] == best_of(synthetic, "mean_rank")),
                f"{s['diverged_or_failed_fraction']:.0%}",
                bold(
                    f"{num(r['final_best_mean'], 3)} ± {num(r['final_best_std'], 3)}",
                    r["final_best_mean"] == best_of(real, "final_best_mean"),
                ),
                bold(num(r["mean_rank"]), r["mean_rank"] == best_of(real, "mean_rank")),
            ]
        )
    header = ["optimizer", "synthetic: final best", "mean rank", "diverged", "real: final best", "mean rank"]
    return table(header, rows)


@part("optimizers.synthetic_base_hps", "optimizers.json")
def optimizers_synthetic_base_hps() -> str:
    return f"{results('optimizers.json')['synthetic']['base_hps_loss']:g}"


@part("optimizers.real_base_hps", "optimizers.json")
def optimizers_real_base_hps() -> str:
    return num(results("optimizers.json")["real"]["base_hps_loss"], 3)


@part("optimizers.wall", "optimizers.json")
def optimizers_wall() -> str:
    wall = results("optimizers.json")["wall_s"]
    total = sum(wall.values())
    parts = " + ".join(f"{name} {num(seconds, 0)} s" for name, seconds in wall.items())
    return f"{parts} ({num(total / 60, 0)} minutes)"


@part("optimizers.real_diverged", "optimizers.json")
def optimizers_real_diverged() -> str:
    data = results("optimizers.json")
    real = data["settings"]["real"]
    runs = len(data["real"]["optimizers"]) * real["seeds"] * real["trials_per_search"]
    diverged = sum(
        run["diverged_or_failed_fraction"] * real["seeds"] * real["trials_per_search"]
        for run in data["real"]["optimizers"].values()
    )
    return f"{round(diverged):,} of the {runs:,} trials diverged or failed"


# -- LR transfer across batch size and duration --------------------------------------------------------------


@part("transfer_batch", "transfer_batch.json")
def transfer_batch_table() -> str:
    data = results("transfer_batch.json")
    grid, basin = data["full_grid"], data["low_lr_basin"]
    factors = " / ".join(FACTOR_LABELS.get(f, f"×{f}") for f in grid["optimal_log2_lr"]["completed"]["batch"])
    rows = [
        [
            label,
            TRANSFER_LABELS[parameterisation],
            optima(grid, parameterisation, sweep, basin),
            drift(grid, parameterisation, sweep, basin, smallest_drift(grid, parameterisation, sweep)),
        ]
        for sweep, label in (("batch", "batch (fixed tokens)"), ("duration", "duration (fixed batch)"))
        for parameterisation in grid["optimal_log2_lr"]
    ]
    return table(["sweep", "parameterisation", f"optimal log2 base LR at {factors}", "drift"], rows)


FACTOR_LABELS = {"0.25": "×¼", "0.5": "×½"}


BASE_BATCH, BASE_STEPS = 16, 200  # transfer_batch.py's base shape: the ×1 point of both sweeps


@cache
def transfer_batch_best_losses() -> dict[tuple[str, int, int], float]:
    """The lowest seed-mean final validation loss on the LR grid, per (parameterisation, batch, steps)."""
    losses: dict[tuple[str, int, int, str], list[float]] = {}
    with (RESULTS / "transfer_batch.csv").open() as rows:
        for row in csv.DictReader(rows):
            if row["status"] == "succeeded":
                key = (row["parameterisation"], int(row["batch_size"]), int(row["steps"]), row["log2_lr"])
                losses.setdefault(key, []).append(float(row["final_val_loss"]))
    best: dict[tuple[str, int, int], float] = {}
    for (parameterisation, batch, steps, _lr), values in losses.items():
        shape = (parameterisation, batch, steps)
        best[shape] = min(best.get(shape, math.inf), statistics.fmean(values))
    return best


def transfer_batch_best(sweep: str, factor: float) -> str:
    """``completed``'s best loss against not scaling's at one point of a sweep."""
    if sweep == "duration":
        batch, steps = BASE_BATCH, round(BASE_STEPS * factor)
    else:  # batch at fixed tokens
        batch, steps = round(BASE_BATCH * factor), round(BASE_STEPS / factor)
    best = transfer_batch_best_losses()
    return f"{num(best[('completed', batch, steps)], 3)} against {num(best[('completep', batch, steps)], 3)}"


for _sweep, _factor in (("duration", 4), ("batch", 0.25), ("duration", 0.25), ("batch", 2)):
    part(f"transfer_batch.best.{_sweep}.{_factor:g}", "transfer_batch.csv")(
        partial(transfer_batch_best, _sweep, _factor)
    )


def transfer_batch_drift(parameterisation: str, sweep: str) -> str:
    return num(results("transfer_batch.json")["full_grid"]["drift_octaves"][parameterisation][sweep])


@part("transfer_batch.unscaled_batch_drift", "transfer_batch.json")
def transfer_batch_unscaled_batch() -> str:
    return transfer_batch_drift("completep", "batch")


@part("transfer_batch.completed_batch_drift", "transfer_batch.json")
def transfer_batch_completed_batch() -> str:
    return transfer_batch_drift("completed", "batch")


@part("transfer_batch.unscaled_duration_drift", "transfer_batch.json")
def transfer_batch_unscaled_duration() -> str:
    return transfer_batch_drift("completep", "duration")


# -- per-module against global HPs ---------------------------------------------------------------------------


PER_MODULE_UNITS = {  # unit: its column
    "staged": "staged: global, then per-module (LR, init std)",
    "staged-lr": "staged, per-module LR only",
    "staged-no-selection": "staged, without fresh-seed selection",
}
PER_MODULE_TARGETS = {"width": "4× wider", "depth": "2× deeper", "tokens": "2× tokens", "all": "all three"}


def per_module_results() -> dict:
    return results("per_module.json")


def loss_cell(stats: dict | None) -> str:
    if stats is None or stats.get("mean") is None:
        return "pending"
    sd = stats.get("sd", stats.get("std"))
    return f"{num(stats['mean'], 3)} ± {num(sd, 3)}" if sd is not None else num(stats["mean"], 3)


def speedup_cell(row: dict) -> str:
    if row["speedup"] is None:
        return "n/a"
    spread = f" ± {num(row['speedup_sd'])}" if row["speedup_sd"] is not None else ""
    return bold(f"{num(row['speedup'])}×{spread}", row["speedup"] >= 1.2)


@part("per_module", "per_module.json")
def per_module_table() -> str:
    """Rows: the proxy and each target; columns: the equal-budget global HPs, then each staged unit's
    final loss and its speed-up over global (tokens to the same loss; > 1: per-module is faster)."""
    data = per_module_results()
    units, comparisons = data["units"], data.get("comparisons", {})
    baseline = units.get("global")
    header = ["", "global HPs (equal budget)"] + [PER_MODULE_UNITS[u] for u in PER_MODULE_UNITS]
    proxy = ["proxy (fresh seeds)", loss_cell(baseline and baseline["proxy"])]
    for unit in PER_MODULE_UNITS:
        found = units.get(unit)
        proxy.append(loss_cell(found and found["proxy"]) + ("" if unit != "staged-no-selection" else " (search seed)"))
    rows = [proxy]
    for key, label in PER_MODULE_TARGETS.items():
        entry = next((e for e in (baseline or {}).get("validation", []) if target_key(e["target"]) == key), None)
        row = [label, loss_cell(None if entry is None else {"mean": mean(entry["losses"]), "sd": sd(entry["losses"])})]
        for unit in PER_MODULE_UNITS:
            compared = next((v for k, v in comparisons.get(unit, {}).items() if label_key(k) == key), None)
            if compared is None:
                row.append("pending")
            else:
                row.append(f"{loss_cell(compared['per_module'])}, {speedup_cell(compared)}")
        rows.append(row)
    return table(header, rows)


def target_key(target: dict) -> str:
    return label_key(target["label"])


def label_key(label: str) -> str:
    """Which of ``PER_MODULE_TARGETS`` a target's label names."""
    names = {part.partition("=")[0] for part in label.split()}
    if len(names) > 1:
        return "all"
    return {"width": "width", "depth": "depth", "tokens_multiplier": "tokens"}[names.pop()]


def mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def sd(values: list[float]) -> float | None:
    return statistics.stdev(values) if len(values) > 1 else None


@part("per_module.units", "per_module.json")
def per_module_units() -> str:
    data = per_module_results()
    done = [u for u in ("global", *PER_MODULE_UNITS) if u in data["units"]]
    hours = sum(u["wall_s"] for u in data["units"].values()) / 3600
    finished = ", ".join(done) or "none"
    return f"{len(done)} of {1 + len(PER_MODULE_UNITS)} units finished ({finished}; {num(hours, 1)} hours)"


@part("per_module.setup", "per_module.json")
def per_module_setup() -> str:
    s = per_module_results()["settings"]
    tokens = s["steps"] * 16 * 64
    trials = s["population"] * s["generations"]
    return (
        f"width {s['width']}, depth {s['depth']}, {s['steps']} steps of 16 × 64 bytes ({tokens:,} tokens); "
        f"{2 * trials} search trials per unit ({s['population']} × {s['generations']} per stage of a staged unit, "
        f"{s['population']} × {2 * s['generations']} for the global one), the top "
        f"{s['top']} re-trained on 2 fresh seeds, results checked on {s['seeds']} fresh seeds"
    )


def all_axes_speedup(unit: str) -> str:
    """A unit's speed-up over the equal-budget global HPs after the all-axes transfer, with its seeds'."""
    row = next(v for k, v in per_module_results()["comparisons"][unit].items() if label_key(k) == "all")
    seeds = ", ".join(num(x) for x in row["speedup_seeds"])
    return f"{num(row['speedup'])}× ± {num(row['speedup_sd'])} (seeds {seeds})"


@part("per_module.all_axes", "per_module.json")
def per_module_all_axes() -> str:
    return all_axes_speedup("staged")


@part("per_module.all_axes_lr", "per_module.json")
def per_module_all_axes_lr() -> str:
    return all_axes_speedup("staged-lr")


@part("per_module.all_axes_no_selection", "per_module.json")
def per_module_all_axes_no_selection() -> str:
    return all_axes_speedup("staged-no-selection")


@part("per_module.gaps", "per_module.json")
def per_module_gaps() -> str:
    units = per_module_results()["units"]
    gaps = [
        f"{unit} {stage['stage']} {num(stage['gap'], 3)}"
        for unit, found in units.items()
        for stage in found["selection"]
        if stage["gap"] is not None
    ]
    return "; ".join(gaps) or "none measured yet"


@part("duration_exponent", "duration_exponent.json")
def duration_exponent_table() -> str:
    """Rows: the token multiplier; columns: each exponent's final loss (mean ± sd over the seeds), the lowest
    in bold."""
    data = results("duration_exponent.json")
    exponents = data["settings"]["exponents"]
    rows = []
    for multiplier in data["settings"]["tokens_multipliers"]:
        cells = [data["summary"][f"{multiplier}x e={e}"] for e in exponents]
        best = min(c["mean"] for c in cells if c["mean"] is not None)
        rows.append([f"{multiplier}× tokens"] + [bold(loss_cell(c), c["mean"] == best) for c in cells])
    return table(["", *(f"exponent {e:g}" for e in exponents)], rows)


@part("duration_exponent.best", "duration_exponent.json")
def duration_exponent_best() -> str:
    """The exponent with the lowest loss summed over the token multipliers."""
    data = results("duration_exponent.json")
    totals = {
        e: sum(data["summary"][f"{m}x e={e}"]["mean"] for m in data["settings"]["tokens_multipliers"])
        for e in data["settings"]["exponents"]
    }
    return f"{min(totals, key=totals.get):g}"


@part("duration_exponent.paired", "duration_exponent.json")
def duration_exponent_paired() -> str:
    """Seed by seed (the same seeds in every arm): 0.3's final loss minus 0.5's, at each token multiplier."""
    data = results("duration_exponent.json")
    rows = []
    for multiplier in data["settings"]["tokens_multipliers"]:
        runs = {(r["exponent"], r["seed"]): r["loss"] for r in data["runs"] if r["tokens_multiplier"] == multiplier}
        seeds = sorted({seed for _, seed in runs})
        differences = ", ".join(num(runs[(0.3, seed)] - runs[(0.5, seed)], 3) for seed in seeds)
        rows.append(f"{multiplier}× tokens: {differences}")
    return "; ".join(rows)


SEARCH_COST_VARIANTS = {
    "full": "every trial to its end",
    "stopping": "successive halving",
    "stopping+async": "successive halving + asynchronous generations",
    "median": "median rule",
}


def cost_ratio(value: float) -> str:
    return bold(f"{num(value)}×", value >= 1.5)


def search_cost_table(part: str) -> str:
    """Per variant: tokens and wall-clock (mean over seeds), the ratios to ``full`` seed by seed, the final
    best (mean ± sd) and its difference to ``full`` ± its standard error, trials stopped, worker busy share."""
    summary = results("search_cost.json")[part]["summary"]
    rows = []
    for variant, label in SEARCH_COST_VARIANTS.items():
        if variant not in summary:  # a part still running
            continue
        entry = summary[variant]
        versus = entry.get("vs_full")
        tokens, wall, best = f"{num(entry['tokens']['mean'] / 1e6, 1)}M", "", loss_cell(entry["final_best"])
        if versus:
            tokens += f", {cost_ratio(versus['tokens_ratio'])} fewer"
            wall = f"{cost_ratio(versus['wall_ratio'])} less"
            se = versus["final_best_diff_se"]
            spread = f" ± {num(se, 3)}" if se is not None else ", one seed"
            best += f" ({num(versus['final_best_diff'], 3)}{spread})"
        rows.append(
            [
                f"{label} (`{variant}`)",
                tokens,
                wall or "(the baseline)",
                best,
                num(entry["stopped"]["mean"], 1),
                num(entry["busy"]["mean"]),
            ]
        )
    header = ["variant", "trained tokens", "wall-clock", "final best (vs full ± se)", "stopped", "workers busy"]
    return table(header, rows)


@part("search_cost.synthetic", "search_cost.json")
def search_cost_synthetic() -> str:
    return search_cost_table("synthetic")


@part("search_cost.real", "search_cost.json")
def search_cost_real() -> str:
    return search_cost_table("real")


@part("search_cost.real_units", "search_cost.json")
def search_cost_real_units() -> str:
    """How much of the real part has run: seeds per variant, and their wall-clock."""
    real = results("search_cost.json")["real"]
    per_variant = Counter(unit["variant"] for unit in real["units"].values())
    hours = sum(unit["total_wall_s"] for unit in real["units"].values()) / 3600
    done = ", ".join(f"`{variant}` {per_variant[variant]}" for variant in SEARCH_COST_VARIANTS)
    return f"seeds run, of {len(real['settings']['seeds'])} per variant: {done} ({num(hours, 1)} hours of searches)"


@part("search_cost.real_paired", "search_cost.json")
def search_cost_real_paired() -> str:
    """Seed by seed, each variant's final best minus ``full``'s (positive: the variant's is worse)."""
    units = results("search_cost.json")["real"]["units"]
    full = {u["seed"]: u["final_best"] for u in units.values() if u["variant"] == "full"}
    parts = []
    for variant in SEARCH_COST_VARIANTS:
        ran = [u for u in units.values() if u["variant"] == variant]
        diffs = sorted((u["seed"], u["final_best"] - full[u["seed"]]) for u in ran)
        if variant != "full" and diffs:
            parts.append(f"`{variant}` " + ", ".join(f"{d:+.3f}".replace("-", "−") for _, d in diffs))
    return "; ".join(parts)


@part("search_cost.synthetic_setup", "search_cost.json")
def search_cost_synthetic_setup() -> str:
    s = results("search_cost.json")["synthetic"]["settings"]
    return (
        f"{s['seeds']} seeds, {s['population']} candidates × {s['generations']} generations of `{s['optimizer']}` "
        f"on {s['parallel']} simulated workers, {s['steps']} steps evaluated every {s['eval_every']}, "
        f"the top {s['top']} re-trained on fresh seeds"
    )


@part("search_cost.told", "search_cost.json")
def search_cost_told() -> str:
    """Spearman correlation, per search over every trial told a loss (successive halving), of each choice of
    what a stopped trial is told with the loss it would have reached."""
    ranking = results("search_cost.json")["synthetic"]["told_value"]["correlation"]["stopping"]
    per_search = ranking["all_told_per_search"]
    return ", ".join(f"{name} {num(per_search[name]['mean'], 3)}" for name in ("predicted", "raw", "penalty"))


# -- RELIABILITY.md: load ------------------------------------------------------------------------------------

API_LOAD_RUNS = {  # results file: (load, store, command)
    "api_load.json": ("bounded loop", "SQLite", "`python bench/api_load.py`"),
    "api_load_postgresql.json": (
        "same",
        "PostgreSQL",
        "`python bench/api_load.py --db postgresql://postgres@127.0.0.1:5432/postgres_load`",
    ),
    "api_load_saturated.json": (
        "saturating closed loop",
        "SQLite",
        "`python bench/api_load.py --think-ms 0 --out bench/results/api_load_saturated.json`",
    ),
}


def load_description(settings: dict, kind: str) -> str:
    if kind == "same":
        return "same"
    pause = f"{settings['think_ms']:g} ms between requests" if settings["think_ms"] else "no pause"
    return f"{settings['clients']} clients, {pause} ({kind})"


def latencies(stats: dict) -> str:
    return f"{num(stats['p50_ms'], 0)} / **{num(stats['p95_ms'], 0)}** / {num(stats['p99_ms'], 0)}"


@part("api_load", *API_LOAD_RUNS)
def api_load_table() -> str:
    rows = []
    for source, (kind, store, command) in API_LOAD_RUNS.items():
        data = results(source)
        overall = data["overall"]
        rows.append(
            [
                load_description(data["settings"], kind),
                store,
                num(overall["requests_per_s"], 0),
                str(overall["errors"]),
                latencies(overall),
                command,
            ]
        )
    return table(["Load", "Store", "Requests/s", "Errors", "p50 / p95 / p99 (ms)", "Command"], rows)


@part("api_load.saturated_wait", "api_load_saturated.json")
def api_load_saturated_wait() -> str:
    """Little's law: clients that never pause wait clients / throughput each on average."""
    data = results("api_load_saturated.json")
    rate = data["overall"]["requests_per_s"]
    clients = data["settings"]["clients"]
    wait_ms = 1000 * clients / rate
    return f"At {num(rate, 0)} requests/s, {clients} clients that never pause wait about {num(wait_ms, 0)} ms each"


@part("search_load", "search_load.json")
def search_load_table() -> str:
    data = results("search_load.json")
    burst, big = data["burst"], data["big_search"]
    once = (
        "every candidate exactly once"
        if burst["every_candidate_exactly_once"]
        else "**a candidate ran twice or never**"
    )
    big_once = (
        "every candidate exactly once" if big["every_candidate_exactly_once"] else "**a candidate ran twice or never**"
    )
    latency = burst["submit_latency"]

    def reads(stats: dict) -> str:
        verdict = "" if stats["p95_ms"] < 200 else ": **misses the target**"
        quantiles = f"p50 {num(stats['p50_ms'], 0)} / **p95 {num(stats['p95_ms'], 0)}** / p99 {num(stats['p99_ms'], 0)}"
        return f"{stats['errors']} errors, {quantiles} ms{verdict}"

    rows = [
        [
            f"{burst['submitted']} searches submitted at the same instant",
            f"{burst['accepted']}/{burst['submitted']} accepted (201), {burst['distinct_ids']} distinct ids, "
            f"{burst['errors']} errors; submission latency p50 {num(latency['p50_ms'], 0)} / p95 "
            f"{num(latency['p95_ms'], 0)} ms; all {burst['submitted']} searches completed in "
            f"{num(burst['seconds_until_all_completed'], 1)} s, {once}",
        ],
        [
            f"One search of {big['trials']:,} trials",
            f"completed in {num(big['seconds_to_complete'], 0)} s ({num(big['trials_per_s'], 0)} trials/s) under read "
            f"load, {big_once}, {big['reads_while_running']['errors']} errors",
        ],
        [
            f"20 readers (250 ms pause) on the {big['trials']:,}-trial search once complete",
            reads(big["reads_when_complete"]),
        ],
        [f"same, while it runs at {num(big['trials_per_s'], 0)} trials/s", reads(big["reads_while_running"])],
    ]
    return table(["Case", "Measured"], rows)


@part("search_load.completed_p95", "search_load.json")
def search_load_completed_p95() -> str:
    return num(results("search_load.json")["big_search"]["reads_when_complete"]["p95_ms"], 0)


@part("search_load.trials_per_s", "search_load.json")
def search_load_trials_per_s() -> str:
    return num(results("search_load.json")["big_search"]["trials_per_s"], 0)


# -- RELIABILITY.md: one engine, API replicas ----------------------------------------------------------------

STORES = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}
REPLICA_SETUPS = {  # read_replicas.py's setups, as the table names them
    "one server": "one server (it runs the engine)",
    "two replicas": "two `--no-engine` replicas beside it, round-robin",
}
NOT_SERVERS = ("ray", "load generator")  # read_replicas.py's CPU parts that serve no reads


@part("read_replicas", "read_replicas.json")
def read_replicas_table() -> str:
    rows = []
    for backend, summary in results("read_replicas.json")["backends"].items():
        ratio = summary["ratio_two_replicas_over_one_server"]
        for setup, label in REPLICA_SETUPS.items():
            stats, cores = summary[setup], summary[setup]["cpu_cores"]
            servers = sum(used for name, used in cores.items() if name not in NOT_SERVERS)
            against = "1×"
            if setup == "two replicas":
                against = f"**{num(ratio['requests_per_s'])}×** the requests/s, {num(ratio['p95_ms'])}× the p95"
            rows.append(
                [
                    STORES[backend],
                    label,
                    num(stats["requests_per_s"], 0),
                    str(stats["errors"]),
                    latencies(stats),
                    f"{num(servers)} / {num(cores['ray'])} / {num(cores['load generator'])}",
                    against,
                ]
            )
    header = ["Store", "Reads served by", "Requests/s", "Errors", "p50 / p95 / p99 (ms)"]
    return table([*header, "CPU cores: servers / Ray / load generator", "Against one server"], rows)


@part("read_replicas.cores", "read_replicas.json")
def read_replicas_cores() -> str:
    """The CPU the servers used in each setup: one server is held to about a core by its GIL."""
    alone, together = [], []
    for backend, summary in results("read_replicas.json")["backends"].items():
        one, two = summary["one server"]["cpu_cores"], summary["two replicas"]["cpu_cores"]
        alone.append(f"{num(one['engine'])} ({STORES[backend]})")
        together.append(num(sum(used for name, used in two.items() if name not in (*NOT_SERVERS, "engine"))))
    return (
        f"serving alone, the engine's server used {' and '.join(alone)} cores; the two replicas used "
        f"{' and '.join(together)} together"
    )


@part("read_replicas.setup", "read_replicas.json")
def read_replicas_setup() -> str:
    data = results("read_replicas.json")
    settings, load = data["settings"], data["load_average_1min"]
    return (
        f"{settings['clients']} clients that never pause, {settings['rounds']} alternating measurements of "
        f"{num(settings['seconds'], 0)} s per setup; the machine's load average was {num(load['before'], 1)} "
        f"before and {num(load['after'], 1)} after"
    )


@part("hostile_input", "hostile_input.json")
def hostile_input_table() -> str:
    """Per case, what each store's server answered: status and field, size, time, rows stored, and the slowest
    ``/api/health`` answer meanwhile."""
    by_case: dict[str, dict[str, dict]] = {}
    for row in results("hostile_input.json")["rows"]:
        by_case.setdefault(row["case"], {})[row["store"]] = row
    rows = []
    for case, stores in by_case.items():
        answers = [stores[store] for store in STORES if store in stores]
        if "loc" not in answers[0]:  # the closing check: a valid spec is still taken
            rows.append([case, " / ".join(str(a["status"]) for a in answers), "", "", "", ""])
            continue
        stored = {tuple(a["stored"]) for a in answers}
        rows.append(
            [
                case,
                " / ".join(f"{a['status']} `{a['loc']}`" for a in answers),
                " / ".join(size(a["answer_bytes"]) for a in answers),
                " / ".join(num(1000 * a["seconds"], 0) for a in answers),
                "nothing" if stored == {(0, 0)} else f"**{sorted(stored)}**",
                " / ".join(num(a["health_max_ms"], 0) for a in answers) if answers[0]["heavy"] else "",
            ]
        )
    header = ["Case", "Answer: status, field (SQLite / PostgreSQL)", "Answer size", "Time (ms)", "Stored"]
    return table([*header, "Slowest `/api/health` meanwhile (ms), heaviest bodies"], rows)


@part("hostile_input.tracebacks", "hostile_input.json")
def hostile_input_tracebacks() -> str:
    data = results("hostile_input.json")
    logs = {row["store"] for row in data["rows"] if row.get("traceback_in_log")}
    verdict = "no traceback in either server's log" if not logs else f"**a traceback in the log** ({', '.join(logs)})"
    return f"{verdict}; the machine's load average was {num(data['machine']['load_average_1min'], 1)}"


# -- rendering and checking ----------------------------------------------------------------------------------


def rendered(name: str, kind: str) -> str:
    """The marked body for part ``name``: a table on lines of its own, a figure inline."""
    text = PARTS[name].render()
    return f"\n{text}\n" if kind == "table" else text


def sources_of(name: str) -> str:
    return ", ".join(f"bench/results/{source}" for source in PARTS[name].sources)


def render(text: str) -> tuple[str, list[str]]:
    """``text`` with every marked part re-rendered, and a line for each part that differed or is unknown."""
    problems: list[str] = []

    def replace(match: re.Match) -> str:
        name, kind = match["name"], match["kind"]
        if name not in PARTS:
            problems.append(f"{kind} {name}: no such part in bench/report.py")
            return match[0]
        try:
            body = rendered(name, kind)
        except (KeyError, OSError) as exc:  # the results file lacks what the part needs
            problems.append(f"{kind} {name} cannot be rendered from {sources_of(name)}: {type(exc).__name__} {exc}")
            return match[0]
        if body != match["body"]:
            problems.append(f"{kind} {name} differs from {sources_of(name)}")
        return match["open"] + body + match["close"]

    return MARKED.sub(replace, text), problems


def unplaced(texts: list[str]) -> list[str]:
    """Parts that no document shows: a figure computed for nothing is a figure someone forgot to place."""
    placed = {match["name"] for text in texts for match in MARKED.finditer(text)}
    return [f"part {name} is placed in no document" for name in PARTS if name not in placed]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 if any part differs from its source")
    args = p.parse_args()
    texts = {path: path.read_text() for path in DOCUMENTS}
    problems = unplaced(list(texts.values()))
    for path, text in texts.items():
        new_text, differences = render(text)
        problems += [f"{path.name}: {line}" for line in differences]
        if not args.check and new_text != text:
            path.write_text(new_text)
    if not problems:
        return
    if not args.check:  # what was re-rendered, and what could not be
        print("\n".join(problems).replace(" differs from ", " re-rendered from "))
        return
    print("\n".join(problems), file=sys.stderr)
    print("run `python bench/report.py` to re-render them from bench/results/", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
    main()
