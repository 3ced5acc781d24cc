"""Transfer: a search's export applied to a model of any width and depth of the trainer's family.

The export's ``base`` section is re-materialised for the model it is given (``trainer.export`` owns the format).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from trainer.export import load_export
from trainer.hparams import apply_to_model
from trainer.model import GPT
from trainer.parameterisation import Shape


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
    loaded = load_export(export)
    shape = Shape(
        width=model.cfg.width,
        depth=model.cfg.depth,
        batch_size=batch_size or loaded.target_shape.batch_size,
        tokens=tokens or loaded.target_shape.tokens,
    )
    return apply_to_model(model, loaded.tuned.materialise(shape), reinitialise=reinitialise)
