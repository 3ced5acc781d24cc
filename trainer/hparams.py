"""Per-module hyperparameters: log2 multipliers around global base values, materialised for a shape.

The value of hyperparameter h for a parameter of module type m in layer ℓ, at a target shape, is

    base[h] · 2^(module[m][h]) · 2^(depth[h](ℓ/L)) · rule[group(m)][h](base shape → target shape)

where ``rule`` is the parameterisation's scaling (``trainer.parameterisation``) and the depth factor is the
paper's type × depth factorisation, linearly interpolated in ℓ/L when the depth changes. β1 and β2 are
multiplied through 1 − β and capped to [0, 1 − 1e-6]; ``MaterialisedHPs.capped`` names every capped β. Norm
gains get no weight decay unless the parameterisation's ``decay_norm_gains`` is on. The residual-branch
multiplier r of each block kind is a log2 multiplier too.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from trainer.model import BLOCK_MODULE_TYPES, GPT, MODULE_TYPES
from trainer.parameterisation import Parameterisation, Shape

RESIDUAL_BRANCHES = ("attn", "mlp")
MAX_BETA = 1.0 - 1e-6

SCALING_GROUP = {
    "embedding": "embedding",
    **{m: "hidden_weight" for m in ("attn_q", "attn_k", "attn_v", "attn_out", "mlp_up", "mlp_down")},
    "norm_attn": "hidden_vector",
    "norm_mlp": "hidden_vector",
    "q_norm": "qk_norm",
    "k_norm": "qk_norm",
    "final_norm": "final_norm",
    "unembedding": "unembedding",
}
NORM_GAIN_MODULE_TYPES = tuple(
    m for m in MODULE_TYPES if SCALING_GROUP[m] in ("hidden_vector", "qk_norm", "final_norm")
)
# Norm gains start at one: the init-std hyperparameter only applies to weight matrices.
INIT_STD_MODULE_TYPES = tuple(m for m in MODULE_TYPES if m not in NORM_GAIN_MODULE_TYPES)


class BaseHPs(BaseModel):
    """The global hyperparameters, as tuned at the base shape. Checked when built, so it is also the
    ``base_hps`` section of a training config and of an export."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    lr: float = Field(0.01, gt=0)
    init_std: float = Field(0.02, gt=0)
    weight_decay: float = Field(0.1, ge=0)
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.95, ge=0, lt=1)
    eps: float = Field(1e-8, gt=0)


HP_NAMES = tuple(BaseHPs.model_fields)  # the tunable hyperparameters


@dataclass(frozen=True)
class Multipliers:
    """Log2 multipliers on the base HPs: per module type, per layer (at the tuned depth) and per residual branch.

    Anything absent is 0 (a multiplier of one), so ``Multipliers()`` means "the global HPs".
    """

    module: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    depth: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    residual: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for module_type, hps in self.module.items():
            if module_type not in MODULE_TYPES:
                raise ValueError(f"unknown module type {module_type!r}; known: {', '.join(MODULE_TYPES)}")
            _check_hp_names(hps, f"module {module_type!r}")
        _check_hp_names(self.depth, "depth")
        for branch in self.residual:
            if branch not in RESIDUAL_BRANCHES:
                raise ValueError(f"unknown residual branch {branch!r}; known: {', '.join(RESIDUAL_BRANCHES)}")

    @classmethod
    def from_dict(cls, data: Mapping) -> Multipliers:
        unknown = set(data) - {"module", "depth", "residual"}
        if unknown:
            raise ValueError(f"unknown multiplier sections {sorted(unknown)}; known: module, depth, residual")
        return cls(
            module={m: dict(h) for m, h in data.get("module", {}).items()},
            depth={h: tuple(float(v) for v in values) for h, values in data.get("depth", {}).items()},
            residual=dict(data.get("residual", {})),
        )

    def to_dict(self) -> dict:
        return {
            "module": {m: dict(h) for m, h in self.module.items()},
            "depth": {h: list(v) for h, v in self.depth.items()},
            "residual": dict(self.residual),
        }

    def log2(self, module_type: str, hp: str, layer: int | None, depth: int) -> float:
        """The summed log2 multiplier of one HP for one module type at ``layer`` of a ``depth``-block model."""
        total = self.module.get(module_type, {}).get(hp, 0.0)
        per_layer = self.depth.get(hp)
        if per_layer and layer is not None and module_type in BLOCK_MODULE_TYPES:
            total += interpolate_depth(per_layer, layer, depth)
        return total


def _check_hp_names(names: Iterable[str], where: str) -> None:
    for hp in names:
        if hp not in HP_NAMES:
            raise ValueError(f"unknown hyperparameter {hp!r} in {where}; known: {', '.join(HP_NAMES)}")


def interpolate_depth(per_layer: tuple[float, ...] | list[float], layer: int, depth: int) -> float:
    """Per-layer values tuned at ``len(per_layer)`` blocks, read at block ``layer`` of ``depth``, linear in ℓ/L."""
    tuned_centres = (np.arange(len(per_layer)) + 0.5) / len(per_layer)
    return float(np.interp((layer + 0.5) / depth, tuned_centres, per_layer))


@dataclass(frozen=True)
class GroupHPs:
    """Materialised optimiser and init settings of the parameters of one module type in one layer."""

    module_type: str
    layer: int | None
    lr: float
    init_std: float
    weight_decay: float
    beta1: float
    beta2: float
    eps: float


@dataclass(frozen=True)
class MaterialisedHPs:
    """Concrete values for one model shape: per-group HPs and the forward multipliers.

    ``capped`` says, once per module type and β, where 1 − (1 − β)·factor left [0, 1 − 1e-6] and was capped.
    """

    groups: tuple[GroupHPs, ...]
    residual_attn: float
    residual_mlp: float
    logit: float
    steps_multiplier: float
    capped: tuple[str, ...] = ()

    def group(self, module_type: str, layer: int | None = None) -> GroupHPs:
        for g in self.groups:
            if g.module_type == module_type and g.layer == layer:
                return g
        raise KeyError((module_type, layer))


def materialise(
    base: BaseHPs,
    multipliers: Multipliers,
    parameterisation: Parameterisation,
    base_shape: Shape,
    target_shape: Shape,
) -> MaterialisedHPs:
    """Base HPs × per-module multipliers × the parameterisation's rules, for every group of the target model."""
    scaling = parameterisation.scaling(base_shape, target_shape)
    depth = target_shape.depth
    groups: list[GroupHPs] = []
    caps: dict[tuple[str, str], list[_ScaledBeta]] = {}
    for module_type in MODULE_TYPES:
        rule = scaling.groups[SCALING_GROUP[module_type]]
        decays = parameterisation.decay_norm_gains or module_type not in NORM_GAIN_MODULE_TYPES
        layers: list[int | None] = list(range(depth)) if module_type in BLOCK_MODULE_TYPES else [None]
        for layer in layers:
            factor = {hp: 2.0 ** multipliers.log2(module_type, hp, layer, depth) for hp in HP_NAMES}
            betas = {
                "beta1": _ScaledBeta(base.beta1, factor["beta1"] * rule.one_minus_beta1),
                "beta2": _ScaledBeta(base.beta2, factor["beta2"] * rule.one_minus_beta2),
            }
            for hp, beta in betas.items():
                if beta.is_capped:
                    caps.setdefault((module_type, hp), []).append(beta)
            groups.append(
                GroupHPs(
                    module_type=module_type,
                    layer=layer,
                    lr=base.lr * factor["lr"] * rule.lr,
                    init_std=base.init_std * factor["init_std"] * rule.init_std,
                    weight_decay=base.weight_decay * factor["weight_decay"] * rule.weight_decay if decays else 0.0,
                    beta1=betas["beta1"].value,
                    beta2=betas["beta2"].value,
                    eps=base.eps * factor["eps"] * rule.eps,
                )
            )
    return MaterialisedHPs(
        groups=tuple(groups),
        residual_attn=scaling.residual * 2.0 ** multipliers.residual.get("attn", 0.0),
        residual_mlp=scaling.residual * 2.0 ** multipliers.residual.get("mlp", 0.0),
        logit=scaling.logit,
        steps_multiplier=scaling.steps,
        capped=tuple(_describe_caps(module_type, hp, found, depth) for (module_type, hp), found in caps.items()),
    )


@dataclass(frozen=True)
class _ScaledBeta:
    """A base β with its 1 − β multiplied by ``factor``: ``raw`` as the rule gives it, ``value`` as applied."""

    base: float
    factor: float

    @property
    def raw(self) -> float:
        return 1.0 - (1.0 - self.base) * self.factor

    @property
    def value(self) -> float:
        return min(max(self.raw, 0.0), MAX_BETA)

    @property
    def is_capped(self) -> bool:
        return self.value != self.raw


def _describe_caps(module_type: str, hp: str, caps: list[_ScaledBeta], depth: int) -> str:
    """One line for the capped ``hp`` of ``module_type``, quoting its most extreme layer."""
    worst = max(caps, key=lambda beta: abs(beta.raw - beta.value))
    where = f" ({len(caps)} of {depth} layers)" if module_type in BLOCK_MODULE_TYPES else ""
    scaled = f"1-β scaled ×{worst.factor:.3g} gives β={worst.raw:.6g}"
    return f"{module_type}.{hp}{where}: {scaled}, capped at {worst.value:.6g}"


def apply_to_model(model: GPT, hps: MaterialisedHPs, *, reinitialise: bool = True) -> list[dict]:
    """Set the model's forward multipliers, optionally re-initialise its weights, and return AdamW groups.

    Each group lists the (module type, layer) pairs it holds under ``"modules"``.

    Weights are drawn from N(0, init_std²) of their group (in the model's parameter order, so a seeded
    generator gives the same weights every time); norm gains are reset to one.
    """
    by_key = {(g.module_type, g.layer): g for g in hps.groups}
    tagged = model.tagged_parameters()
    params: dict[tuple[str, int | None], list[nn.Parameter]] = {}
    for _, param, tag in tagged:
        params.setdefault((tag.module_type, tag.layer), []).append(param)
    if set(params) != set(by_key):
        depth = 1 + max(g.layer for g in hps.groups if g.layer is not None)
        raise ValueError(f"the HPs were materialised for depth {depth}, the model has depth {model.cfg.depth}")
    model.set_forward_multipliers(hps.residual_attn, hps.residual_mlp, hps.logit)
    if reinitialise:
        for _, param, tag in tagged:
            _initialise(param, tag.module_type, by_key[(tag.module_type, tag.layer)].init_std)
    # Groups with equal settings are merged: fewer, larger groups keep the optimiser step cheap.
    merged: dict[tuple[float, ...], dict] = {}
    for key, g in by_key.items():
        settings = (g.lr, g.weight_decay, g.beta1, g.beta2, g.eps)
        group = merged.setdefault(
            settings,
            {"params": [], "lr": g.lr, "weight_decay": g.weight_decay, "betas": (g.beta1, g.beta2), "eps": g.eps},
        )
        group["params"].extend(params[key])
        group.setdefault("modules", []).append(key)
    return list(merged.values())


def _initialise(param: nn.Parameter, module_type: str, std: float) -> None:
    if module_type in INIT_STD_MODULE_TYPES:
        nn.init.normal_(param, mean=0.0, std=std)
    else:
        nn.init.ones_(param)
