"""The README's Python example runs as written and does what it says."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs():
    (block,) = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    namespace: dict = {}
    exec(compile(block, str(README), "exec"), namespace)
    # m_D / m_B = (1e8 / 61,440) / (64 / 16) times the proxy's 60 steps
    assert namespace["steps"] == round(100_000_000 / 61_440 / 4 * 60)
    hps = namespace["hps"]
    # mlp_down: 2^1 × base LR × m_N^-1 × sqrt(m_B) × m_D^-0.3 (the default duration exponent); m_N = 8
    s = 4**0.5 * (100_000_000 / 61_440) ** -0.3
    assert hps.group("mlp_down", 0).lr == pytest.approx(0.01 * 2 / 8 * s)
    assert sum(len(g["params"]) for g in namespace["optimizer"].param_groups) == len(
        list(namespace["model"].parameters())
    )
