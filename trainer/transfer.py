"""The export: a search's best per-module HPs, and their values at a target shape by the Complete(d)P rules.

An export is plain JSON (``EXPORT_SCHEMA`` describes it). Its ``base`` section is what the search found: the
global base HPs, the shape they were tuned at, the parameterisation and the per-module log2 multipliers. Its
``target`` section materialises them for one target shape, for readers that only want the numbers.
``apply_export`` needs only the ``base`` section: it re-materialises for whatever model it is given.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from trainer.hparams import BaseHPs, MaterialisedHPs, Multipliers, apply_to_model, materialise
from trainer.model import GPT
from trainer.parameterisation import Parameterisation, Shape

EXPORT_FORMAT = "completedp-hpo.export/1"
EXPORT_SCHEMA = Path(__file__).with_name("export.schema.json")


def target_section(base: Mapping[str, Any], target: Shape, seq_len: int) -> dict:
    """Every parameter group's LR, init std, ε, weight decay, β1 and β2 at ``target``, plus the forward
    multipliers and the number of steps (``target.tokens`` in batches of ``target.batch_size`` sequences)."""
    hps = _materialise(base, target)
    return {
        "shape": vars(target),
        "steps": max(1, round(target.tokens / (target.batch_size * seq_len))),
        "residual_multipliers": {"attn": hps.residual_attn, "mlp": hps.residual_mlp},
        "logit_multiplier": hps.logit,
        "groups": [
            {
                "module_type": g.module_type,
                "layer": g.layer,
                "lr": g.lr,
                "init_std": g.init_std,
                "eps": g.eps,
                "weight_decay": g.weight_decay,
                "beta1": g.beta1,
                "beta2": g.beta2,
            }
            for g in hps.groups
        ],
    }


def load_export(export: str | Path | Mapping[str, Any]) -> dict:
    """An export from a file path or a mapping, checked for the parts ``apply_export`` needs."""
    data = json.loads(Path(export).read_text()) if isinstance(export, str | Path) else dict(export)
    if data.get("format") != EXPORT_FORMAT:
        raise ValueError(f"not a {EXPORT_FORMAT} export (format: {data.get('format')!r})")
    missing = {"base_hps", "base_shape", "parameterisation", "multipliers"} - set(data.get("base", {}))
    if missing:
        raise ValueError(f"the export's base section lacks {sorted(missing)}")
    return data


def apply_export(
    model: GPT,
    export: str | Path | Mapping[str, Any],
    *,
    batch_size: int | None = None,
    tokens: int | None = None,
    reinitialise: bool = True,
) -> list[dict]:
    """Re-initialise ``model`` (any width and depth of the trainer's family) and return its AdamW groups.

    The HPs are the export's base HPs and multipliers, carried from the base shape to the model's width and
    depth and to ``batch_size``/``tokens`` (default: those of the export's target). Pass the groups to
    ``torch.optim.AdamW``.
    """
    data = load_export(export)
    target_shape = data.get("target", {}).get("shape", data["base"]["base_shape"])
    shape = Shape(
        width=model.cfg.width,
        depth=model.cfg.depth,
        batch_size=batch_size or target_shape["batch_size"],
        tokens=tokens or target_shape["tokens"],
    )
    return apply_to_model(model, _materialise(data["base"], shape), reinitialise=reinitialise)


def _materialise(base: Mapping[str, Any], target: Shape) -> MaterialisedHPs:
    p = base["parameterisation"]
    return materialise(
        BaseHPs(**base["base_hps"]),
        Multipliers.from_dict(base["multipliers"]),
        Parameterisation(p["name"], p.get("alpha", 1.0), p.get("duration_exponent", 0.5)),
        Shape(**base["base_shape"]),
        target,
    )
