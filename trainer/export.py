"""The export format: what a search found, and its HPs at a target shape by the Complete(d)P rules.

An export is plain JSON (``EXPORT_SCHEMA`` describes it). Its ``base`` section (``TunedHPs``) is what the search
found: the global base HPs, the shape they were tuned at, the parameterisation and the per-module log2
multipliers, each parsed by the same class a training config uses. Its ``target`` section materialises them
for one target shape, for readers that only want the numbers, with a ``warnings`` line for every module
type whose β the rules pushed out of [0, 1) and that was capped. ``export_document`` writes an export from
plain values; ``load_export`` reads one back (``trainer.transfer.apply_export`` re-materialises it for any model).
An export written before ``parameterisation.decay_norm_gains`` or ``duration_exponent`` existed reads as what it
meant then: norm gains decayed, exponent 1/2.
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

from trainer.config import Section, TrainConfig
from trainer.hparams import BaseHPs, MaterialisedHPs, Multipliers, materialise
from trainer.parameterisation import Parameterisation, Shape

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


@dataclass(frozen=True)
class Export:
    """An export read back: what the search found, and the shape its ``target`` section was written for."""

    tuned: TunedHPs
    target_shape: Shape


def export_document(tuned: TunedHPs, target: Shape, *, losses: Sequence[float], provenance: Mapping[str, Any]) -> dict:
    """The export of ``tuned`` for ``target``; ``losses`` are the replicates' final losses, ``provenance`` says
    which search and candidate found it (the package version and creation time are added here)."""
    return {
        "format": EXPORT_FORMAT,
        "provenance": {**provenance, "package_version": version(PACKAGE), "created": datetime.now(UTC).isoformat()},
        "base": tuned.to_dict(),
        "loss": {
            "mean": statistics.fmean(losses),
            "std": statistics.stdev(losses) if len(losses) > 1 else None,
            "replicates": len(losses),
            "values": list(losses),
        },
        "target": target_section(tuned, target),
    }


def target_section(tuned: TunedHPs, target: Shape) -> dict:
    """Every parameter group's LR, init std, ε, weight decay, β1 and β2 at ``target``, plus the forward
    multipliers, the number of steps (``target.tokens`` in batches of ``target.batch_size`` sequences) and
    ``warnings``, one per module type and β that was capped (empty when none was)."""
    hps = tuned.materialise(target)
    return {
        "shape": vars(target),
        "steps": max(1, round(target.tokens / (target.batch_size * tuned.seq_len))),
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
    return Export(tuned, _SHAPE.validate_python(target) if target is not None else tuned.base_shape)


_SHAPE = TypeAdapter(Shape)


def _linear(multipliers: dict) -> dict:
    return {
        "module": {m: {h: 2.0**v for h, v in hps.items()} for m, hps in multipliers["module"].items()},
        "depth": {h: [2.0**v for v in values] for h, values in multipliers["depth"].items()},
        "residual": {b: 2.0**v for b, v in multipliers["residual"].items()},
    }
