"""The export format: what a search found, and its HPs at a target shape by the Complete(d)P rules.

An export is plain JSON (``EXPORT_SCHEMA`` describes it). Its ``base`` section (``TunedHPs``) is what the search
found: the global base HPs, the shape they were tuned at, the parameterisation and the per-module log2
multipliers, each parsed by the same class a training config uses. Its ``target`` section materialises them
for one target shape, for readers that only want the numbers, with a ``warnings`` line for every module
type whose β the rules pushed out of [0, 1) and that was capped. Its ``recipe`` section (``Recipe``) is how the
proxy trained beside its HPs: the LR schedule, gradient clipping, z-loss and data; ``target.recipe`` is the same
at the target's steps, with the warm-up kept at its fraction of the run. ``export_document`` writes an export
from plain values; ``load_export`` reads one back (``trainer.transfer.apply_export`` re-materialises it for any
model, ``Export.schedule`` gives the target's LR schedule). An export written before
``parameterisation.decay_norm_gains`` or ``duration_exponent`` existed reads as what it meant then: norm gains
decayed, exponent 1/2; one written before ``recipe`` existed reads without one.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

from pydantic import Field, TypeAdapter, field_validator

from trainer.config import Section, TrainConfig, TrainingSection
from trainer.hparams import BaseHPs, MaterialisedHPs, Multipliers, materialise
from trainer.parameterisation import Parameterisation, Shape
from trainer.schedule import Schedule

EXPORT_FORMAT = "completedp-hpo.export/1"
EXPORT_SCHEMA = Path(__file__).with_name("export.schema.json")
PACKAGE = "completedp-hpo"  # the distribution whose version an export records


class TunedHPs(Section):
    """An export's ``base`` section: what a search found, enough to materialise its HPs at any shape."""

    parameterisation: Parameterisation
    base_shape: Shape
    base_hps: BaseHPs
    seq_len: int = Field(gt=0)
    vocab_size: int = Field(gt=1)
    head_dim: int | None = Field(None, gt=0, description="None in an export written before it was recorded.")
    multipliers: Multipliers

    @field_validator("parameterisation", mode="before")
    @classmethod
    def _old_exports_mean_what_they_meant(cls, parameterisation: object) -> object:
        """A written parameterisation without a field predates it (``Parameterisation.as_written``)."""
        if isinstance(parameterisation, Mapping):
            return Parameterisation.as_written(parameterisation)
        return parameterisation

    @field_validator("multipliers", mode="before")
    @classmethod
    def _parse_multipliers(cls, multipliers: object) -> object:
        return Multipliers.from_dict(multipliers) if isinstance(multipliers, Mapping) else multipliers

    @classmethod
    def found_with(cls, config: TrainConfig, multipliers: Multipliers) -> TunedHPs:
        """What a search of ``config`` (its proxy) found: ``multipliers`` on its base HPs at its base shape."""
        return cls(
            parameterisation=config.parameterisation.to_parameterisation(),
            base_shape=config.base_shape(),
            base_hps=config.base_hps,
            seq_len=config.model.seq_len,
            vocab_size=config.model.vocab_size,
            head_dim=config.model.head_dim,
            multipliers=multipliers,
        )

    @classmethod
    def from_dict(cls, base: Mapping[str, Any]) -> TunedHPs:
        """The ``base`` section read back; ``multipliers_linear`` is derived from ``multipliers``, so not read."""
        return cls.model_validate({k: v for k, v in base.items() if k != "multipliers_linear"})

    def to_dict(self) -> dict:
        multipliers = self.multipliers.to_dict()
        return {
            **self.model_dump(mode="json", exclude={"multipliers"}),
            "multipliers": multipliers,
            "multipliers_linear": _linear(multipliers),
        }

    def materialise(self, target: Shape) -> MaterialisedHPs:
        """Every parameter group's HPs at ``target``: base HPs × multipliers × the parameterisation's rules."""
        return materialise(self.base_hps, self.multipliers, self.parameterisation, self.base_shape, target)

    def steps_at(self, target: Shape) -> int:
        """Optimiser steps at ``target``: its tokens in batches of ``batch_size`` sequences of ``seq_len``, which
        is the base shape's steps × m_D / m_B (``MaterialisedHPs.steps_multiplier``)."""
        return max(1, round(target.tokens / (target.batch_size * self.seq_len)))


class Recipe(Section):
    """How the proxy trained beside its HPs: what a training loop of one's own needs to train the same way.
    At another shape (``at_steps``) the schedule is stretched to its steps, the warm-up keeping its fraction of
    the run (``Schedule.stretched``); the rest is kept, as the rules scale neither the clip nor the z-loss."""

    schedule: Schedule
    grad_clip: float = Field(ge=0, description="Global gradient-norm clip; 0: none.")
    z_loss: float = Field(ge=0, description="Coefficient of the z-loss (log-partition squared) added to the loss.")
    data: str = Field(description="The data source, as trainer.data names it (a path as the server stored it).")
    val_fraction: float = Field(gt=0, lt=1, description="Share held out for validation; not a tokens: folder's.")

    @classmethod
    def of(cls, training: TrainingSection) -> Recipe:
        """The recipe of a configuration's ``training`` section."""
        return cls(
            schedule=training.schedule,
            grad_clip=training.grad_clip,
            z_loss=training.z_loss,
            data=training.data,
            val_fraction=training.val_fraction,
        )

    def at_steps(self, steps: int) -> Recipe:
        """The same recipe over ``steps`` optimiser steps."""
        return self.model_copy(update={"schedule": self.schedule.stretched(steps)})


@dataclass(frozen=True)
class Export:
    """An export read back: what the search found, the shape its ``target`` section was written for, and how
    the proxy trained (``recipe``; None in an export written before it was recorded)."""

    tuned: TunedHPs
    target_shape: Shape
    recipe: Recipe | None = None

    @property
    def schedule(self) -> Schedule:
        """The LR schedule at the target: the proxy's, stretched to the target's steps. For another budget,
        ``recipe.schedule.stretched(steps)``."""
        if self.recipe is None:
            raise ValueError("this export holds no recipe (it was written before exports recorded one); export again")
        return self.recipe.schedule.stretched(self.tuned.steps_at(self.target_shape))


def export_document(
    tuned: TunedHPs, target: Shape, *, recipe: Recipe, losses: Sequence[float], provenance: Mapping[str, Any]
) -> dict:
    """The export of ``tuned``, trained by ``recipe``, for ``target``; ``losses`` are the replicates' final
    losses, ``provenance`` says which search and candidate found it (the package version and creation time are
    added here)."""
    return {
        "format": EXPORT_FORMAT,
        "provenance": {**provenance, "package_version": version(PACKAGE), "created": datetime.now(UTC).isoformat()},
        "base": tuned.to_dict(),
        "recipe": recipe.model_dump(mode="json"),
        "loss": {
            "mean": statistics.fmean(losses),
            "std": statistics.stdev(losses) if len(losses) > 1 else None,
            "replicates": len(losses),
            "values": list(losses),
        },
        "target": target_section(tuned, target, recipe),
    }


def target_section(tuned: TunedHPs, target: Shape, recipe: Recipe) -> dict:
    """Every parameter group's LR, init std, ε, weight decay, β1 and β2 at ``target``, plus the forward
    multipliers, the number of steps (``TunedHPs.steps_at``), the recipe at those steps and ``warnings``, one
    per module type and β that was capped (empty when none was)."""
    hps = tuned.materialise(target)
    steps = tuned.steps_at(target)
    return {
        "shape": vars(target),
        "steps": steps,
        "recipe": recipe.at_steps(steps).model_dump(mode="json"),
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
        "warnings": list(hps.capped),
    }


def load_export(export: str | Path | Mapping[str, Any]) -> Export:
    """An export from a file path or a mapping: its format checked and its ``base`` section parsed."""
    data = json.loads(Path(export).read_text()) if isinstance(export, str | Path) else dict(export)
    if data.get("format") != EXPORT_FORMAT:
        raise ValueError(f"not a {EXPORT_FORMAT} export (format: {data.get('format')!r})")
    tuned = TunedHPs.from_dict(data.get("base") or {})
    target = (data.get("target") or {}).get("shape")
    recipe = Recipe.model_validate(data["recipe"]) if data.get("recipe") is not None else None
    return Export(tuned, _SHAPE.validate_python(target) if target is not None else tuned.base_shape, recipe)


_SHAPE = TypeAdapter(Shape)


def _linear(multipliers: dict) -> dict:
    return {
        "module": {m: {h: 2.0**v for h, v in hps.items()} for m, hps in multipliers["module"].items()},
        "depth": {h: [2.0**v for v in values] for h, values in multipliers["depth"].items()},
        "residual": {b: 2.0**v for b, v in multipliers["residual"].items()},
    }
