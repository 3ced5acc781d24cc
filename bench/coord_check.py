"""Coordinate check across an 8x width range for each parameterisation: plots and growth factors.

python bench/coord_check.py      # ~1 minute on 2 cores; writes bench/results/coord_check_*.png and .json
"""

from __future__ import annotations

import json
from pathlib import Path

from trainer.config import TrainConfig
from trainer.coord_check import coord_check, growth, plot_coord_check
from trainer.model import MODULE_TYPES

WIDTHS = (32, 64, 128, 256)
OUT = Path(__file__).parent / "results"


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    summary = {}
    for name in ("completed", "completep", "mup", "sp"):
        config = TrainConfig.model_validate(
            {
                "model": {"width": WIDTHS[0], "depth": 2, "head_dim": 16, "seq_len": 32},
                "training": {"batch_size": 8},
                "parameterisation": {"name": name},
            }
        )
        records = coord_check(config, WIDTHS, steps=3)
        plot_coord_check(records, OUT / f"coord_check_{name}.png", f"{name}: RMS vs width after 1-3 steps")
        summary[name] = {
            m: {"update": round(growth(records, m), 3), "activation": round(growth(records, m, "activation"), 3)}
            for m in MODULE_TYPES
        }
    (OUT / "coord_check.json").write_text(json.dumps({"widths": WIDTHS, "growth_256_over_32": summary}, indent=2))
    for name, growths in summary.items():
        worst = max(growths.items(), key=lambda kv: abs(kv[1]["update"] - 1))
        print(f"{name:10s} largest update growth 32->256: {worst[0]} x{worst[1]['update']}")


if __name__ == "__main__":
    main()
