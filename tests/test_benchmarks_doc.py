"""BENCHMARKS.md and RELIABILITY.md say what ``bench/results/`` holds: every marked table and figure re-renders
to the same text with ``bench/report.py``, so a figure edited by hand, or a results file re-written without
re-rendering the documents, fails here."""

from __future__ import annotations

import re
import subprocess
import sys

from bench.report import ROOT, render

BENCHMARKS = ROOT / "BENCHMARKS.md"


def test_every_table_and_figure_matches_its_results_file() -> None:
    check = subprocess.run(
        [sys.executable, "bench/report.py", "--check"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert check.returncode == 0, check.stderr


def test_a_figure_edited_by_hand_is_named_with_its_source() -> None:
    text = BENCHMARKS.read_text()
    row_start = text.index("| ours (engine + Ray) |", text.index("<!-- table:engine_overhead -->"))
    row_end = text.index("\n", row_start)
    tenfold = re.sub(r"\*\*([\d,]+)\*\*", r"**\g<1>0**", text[row_start:row_end], count=1)  # ours' median ×10
    edited = text[:row_start] + tenfold + text[row_end:]

    rerendered, problems = render(edited)

    assert problems == ["table engine_overhead differs from bench/results/engine_overhead.json"]
    assert rerendered == text


def test_a_mark_without_a_part_is_reported() -> None:
    _, problems = render("Ours runs at <!-- fig:engine_overhead.nonexistent -->1<!-- /fig --> trials/s.")

    assert problems == ["fig engine_overhead.nonexistent: no such part in bench/report.py"]
