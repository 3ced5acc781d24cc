"""Transfer: a search's export applied to any model a layout describes, at the model's own width and depth.

The export's ``base`` section is re-materialised for the model it is given (``trainer.export`` owns the format,
``trainer.layout`` how a model's parameters map to module types).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from trainer.export import TunedHPs, load_export
from trainer.hparams import apply_to_model
from trainer.layout import Layout, ModelDims, resolve
from trainer.parameterisation import Shape

# What the export's HPs assume of the model beyond width and depth (an export that predates head_dim: unchecked).
CHECKED_FIELDS = ("vocab_size", "seq_len", "head_dim")


def apply_export(
    model: nn.Module,
    export: str | Path | Mapping[str, Any],
    *,
    layout: Layout | str | None = None,
    batch_size: int | None = None,
    tokens: int | None = None,
    reinitialise: bool = True,
    check_shape: bool = True,
) -> list[dict]:
    """Re-initialise ``model`` and return its AdamW groups (pass them to ``torch.optim.AdamW``).

    ``layout`` places the model's parameters: a ``trainer.layout.Layout``, a preset's name (``gpt``,
    ``hf-llama``, ``hf-gpt2``, ``nanogpt``), or None for this project's ``GPT``. The HPs are the export's base
    HPs and multipliers, carried from the base shape to the model's width and depth and to
    ``batch_size``/``tokens`` (default: those of the export's target). A model whose vocabulary, context
    length or head dimension differs from the export's is refused unless ``check_shape`` is off.
    """
    loaded = load_export(export)
    layout = resolve(model, layout)
    dims = layout.match(model).dims
    if check_shape:
        _check_shape(dims, loaded.tuned)
    shape = Shape(
        width=dims.width,
        depth=dims.depth,
        batch_size=batch_size or loaded.target_shape.batch_size,
        tokens=tokens or loaded.target_shape.tokens,
    )
    return apply_to_model(model, loaded.tuned.materialise(shape), layout=layout, reinitialise=reinitialise)


def _check_shape(dims: ModelDims, tuned: TunedHPs) -> None:
    for field in CHECKED_FIELDS:
        found, expected = getattr(dims, field), getattr(tuned, field)
        if expected is None:
            continue
        if found is None:
            raise ValueError(
                f"could not read the model's {field}: give it to the layout (trainer.layout.preset(name, "
                f"{field}=...)), or pass check_shape=False"
            )
        if found != expected:
            raise ValueError(
                f"the model's {field} is {found}, the export's HPs were tuned at {field} {expected}; "
                "pass check_shape=False to apply them anyway"
            )
