"""Per-module hyperparameters: log2 multipliers around global base values, materialised for a shape.

The value of hyperparameter h for a parameter of module type m in layer ℓ, at a target shape, is

    base[h] · 2^(module[m][h]) · 2^(depth[h](ℓ/L)) · rule[group(m)][h](base shape → target shape)

where ``rule`` is the parameterisation's scaling (``trainer.parameterisation``) and the depth factor is the
paper's type × depth factorisation, linearly interpolated in ℓ/L when the depth changes. β1 and β2 are
multiplied through 1 − β and capped to [0, 1 − 1e-6]; ``MaterialisedHPs.capped`` names every capped β. Norm
gains get no weight decay unless the parameterisation's ``decay_norm_gains`` is on. The residual-branch
multiplier r of each block kind is a log2 multiplier too. Biases (the proxy has none; other models do) get
their weight's multipliers and β, the scaling of a vector and no weight decay (``trainer.layout`` says why).

``apply_to_model`` applies them to any model a ``trainer.layout.Layout`` describes: re-initialised weights
and AdamW groups, with the forward multipliers set on the model or folded into its parameters (``fold``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from trainer.layout import Layout, Matched, resolve
from trainer.model import BLOCK_MODULE_TYPES, MODEL_MODULE_TYPES, MODULE_TYPES
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
# A bias scales as a vector: a norm's bias as its gain, a matrix's bias as the vectors beside it.
BIAS_SCALING_GROUP = {
    m: SCALING_GROUP[m] if m in NORM_GAIN_MODULE_TYPES else "final_norm" if m in MODEL_MODULE_TYPES else "hidden_vector"
    for m in MODULE_TYPES
}
OPTIMISER_HPS = ("lr", "weight_decay", "beta1", "beta2", "eps")  # what one AdamW group holds


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
    ``biases`` holds, per group, what a bias of that module type gets (zero init std and weight decay).
    """

    groups: tuple[GroupHPs, ...]
    residual_attn: float
    residual_mlp: float
    logit: float
    steps_multiplier: float
    capped: tuple[str, ...] = ()
    biases: tuple[GroupHPs, ...] = ()

    def group(self, module_type: str, layer: int | None = None) -> GroupHPs:
        return _find(self.groups, module_type, layer)

    def bias(self, module_type: str, layer: int | None = None) -> GroupHPs:
        return _find(self.biases, module_type, layer)


def _find(groups: tuple[GroupHPs, ...], module_type: str, layer: int | None) -> GroupHPs:
    for g in groups:
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
    biases: list[GroupHPs] = []
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
            vector = scaling.groups[BIAS_SCALING_GROUP[module_type]]
            biases.append(
                replace(
                    groups[-1],
                    lr=base.lr * factor["lr"] * vector.lr,
                    init_std=0.0,
                    weight_decay=0.0,
                    eps=base.eps * factor["eps"] * vector.eps,
                )
            )
    return MaterialisedHPs(
        groups=tuple(groups),
        residual_attn=scaling.residual * 2.0 ** multipliers.residual.get("attn", 0.0),
        residual_mlp=scaling.residual * 2.0 ** multipliers.residual.get("mlp", 0.0),
        logit=scaling.logit,
        steps_multiplier=scaling.steps,
        capped=tuple(_describe_caps(module_type, hp, found, depth) for (module_type, hp), found in caps.items()),
        biases=tuple(biases),
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


def apply_to_model(
    model: nn.Module, hps: MaterialisedHPs, *, layout: Layout | str | None = None, reinitialise: bool = True
) -> list[dict]:
    """Optionally re-initialise ``model``, set or fold its forward multipliers, and return AdamW groups.

    ``layout`` (a ``trainer.layout.Layout`` or a preset's name; None for this project's ``GPT``) places every
    parameter. Weights are drawn from N(0, init_std²) of their group (a fused weight slice by slice), norm
    gains are reset to one and biases to zero, in the model's parameter order, so a seeded generator gives the
    same weights every time. Where the layout cannot set the model's residual and logit multipliers they are
    folded into the parameters (``fold``; clip gradients with ``clip_grad_norm_``, which reads each group's
    ``"grad_scale"``, the multiplier folded into it). Parameters with equal settings share a group, which
    lists its (module type, layer) pairs under ``"modules"``, those of its biases under ``"biases"`` and its
    parameters' names under ``"names"``.
    """
    layout = resolve(model, layout)
    matched = layout.match(model)
    depth = 1 + max(g.layer for g in hps.groups if g.layer is not None)
    if matched.dims.depth != depth:
        raise ValueError(f"the HPs were materialised for depth {depth}, the model has depth {matched.dims.depth}")
    folds: dict[str, float] = {}
    if layout.set_multipliers is not None:
        layout.set_multipliers(model, hps.residual_attn, hps.residual_mlp, hps.logit)
    else:
        folds = {"attn_out": hps.residual_attn, "mlp_down": hps.residual_mlp, "unembedding": hps.logit}
    placed = []
    for p in matched.params:  # a loop, not a comprehension: the warnings' stack level is the caller's
        placed.append((p, _slices(p, hps, folds)))
    if reinitialise:
        for p, slices in placed:
            _initialise(p, slices)
    # Groups with equal settings are merged: fewer, larger groups keep the optimiser step cheap. They are built
    # in the HPs' order of module types and layers (weights, then biases), so a model's groups keep their order.
    order = {(g.module_type, g.layer, False): i for i, g in enumerate(hps.groups)}
    order |= {(g.module_type, g.layer, True): len(order) + i for i, g in enumerate(hps.biases)}
    merged: dict[tuple[float, ...], dict] = {}
    for p, slices in sorted(placed, key=lambda item: order[item[0].slices[0], item[0].layer, item[0].is_bias]):
        settings = _settings(p, slices, layout.fused)
        grad_scale = _geometric_mean([folds.get(m, 1.0) for m in p.slices], of_one_minus=False)
        lr, weight_decay, beta1, beta2, eps = settings
        group = merged.setdefault(
            (*settings, grad_scale),
            {
                "params": [],
                "lr": lr,
                "weight_decay": weight_decay,
                "betas": (beta1, beta2),
                "eps": eps,
                "grad_scale": grad_scale,
                "modules": [],
                "biases": [],
                "names": [],
            },
        )
        group["params"].append(p.param)
        group["names"].append(p.name)
        listed = group["biases" if p.is_bias else "modules"]
        listed.extend(key for key in dict.fromkeys((m, p.layer) for m in p.slices) if key not in listed)
    return list(merged.values())


@torch.no_grad()
def clip_grad_norm_(param_groups: Iterable[Mapping], max_norm: float) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_`` for the groups ``apply_to_model`` returns (or an optimiser's
    ``param_groups``), exact under folding: each group's gradient norm is multiplied by its ``"grad_scale"``,
    the multiplier folded into it, which gives the norm the model with explicit multipliers would see (its
    gradients are grad_scale × the folded ones). One coefficient then scales every gradient in both runs, which
    leaves them equal (``fold``). Returns that norm."""
    groups = [g for g in param_groups if any(p.grad is not None for p in g["params"])]
    norms = [
        g.get("grad_scale", 1.0)
        * torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in g["params"] if p.grad is not None]))
        for g in groups
    ]
    total = torch.linalg.vector_norm(torch.stack(norms))
    coefficient = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for g in groups:
        for p in g["params"]:
            if p.grad is not None:
                p.grad.mul_(coefficient)
    return total


def fold(g: GroupHPs, r: float) -> GroupHPs:
    """The HPs of a parameter whose output a forward multiplier ``r`` > 0 scaled, with ``r`` folded into it.

    Scaling a branch's output by r is, under AdamW, the same as init × r, LR × r, ε ÷ r and weight decay ÷ r
    on the projection that writes it (weight and bias); the βs are unchanged. Proof: PyTorch's AdamW steps a
    parameter θ with gradient g as θ ← θ(1 − ηλ), then θ ← θ − η·(m/c₁)/(√(v/c₂) + ε), with m, v the EMAs of g
    and g² (from zero) and c₁, c₂ their bias corrections. The explicit model computes r·(Wx + b); the folded one
    W′x + b′. Suppose W′ = rW and b′ = rb after step t − 1 (at t = 0 by the init × r) and every other parameter
    agrees. Then both models compute the same function, so with G the gradient of the loss with respect to the
    effective weight rW = W′, the explicit gradient is g = rG and the folded one g′ = G, hence m = r·m′ and
    v = r²·v′. The explicit step gives W ← W(1 − ηλ) − η(r·m′/c₁)/(r√(v′/c₂) + ε)
    = W(1 − ηλ) − η(m′/c₁)/(√(v′/c₂) + ε/r); times r:
    rW ← rW(1 − ηλ) − rη(m′/c₁)/(√(v′/c₂) + ε/r), which is the folded step W′ ← W′(1 − η′λ′) − η′(m′/c₁)/(√(v′/c₂)
    + ε′) exactly when η′ = rη, ε′ = ε/r and η′λ′ = ηλ, i.e. λ′ = λ/r. The same holds for b. So the two runs
    stay equal at every step (up to rounding), whatever LR schedule multiplies η and η′ alike. Global
    gradient-norm clipping must measure rG, not G: ``clip_grad_norm_`` does. Not covered: a projection also
    used elsewhere (tied). The logit multiplier folds into the unembedding the same way.
    """
    if r == 1.0:
        return g
    return replace(g, lr=g.lr * r, init_std=g.init_std * r, eps=g.eps / r, weight_decay=g.weight_decay / r)


def _slices(p: Matched, hps: MaterialisedHPs, folds: Mapping[str, float]) -> list[GroupHPs]:
    """The HPs of each slice of ``p`` (one unless fused), with the forward multipliers folded in."""
    if p.tied is not None:
        logit = folds.get("unembedding", 1.0)
        if logit != 1.0:
            raise ValueError(
                f"{p.name} is tied to {p.tied_name}: the logit multiplier {logit:.6g} cannot be folded into it "
                "without scaling the embedding too; untie them, or give the model a logit multiplier of its own "
                "(Layout.set_multipliers)"
            )
        other = hps.group(p.tied)
        warnings.warn(
            f"{p.name} is tied to {p.tied_name}: it gets the {p.slices[0]}'s HPs; the {p.tied}'s (init std "
            f"{other.init_std:.6g}, lr {other.lr:.6g}, eps {other.eps:.6g}, weight decay {other.weight_decay:.6g}) "
            "are not applied. Untie them for exact transfer.",
            stacklevel=3,
        )
    lookup = hps.bias if p.is_bias else hps.group
    return [fold(lookup(m, p.layer), folds.get(m, 1.0)) for m in p.slices]


def _settings(p: Matched, slices: list[GroupHPs], policy: str) -> tuple[float, ...]:
    """One AdamW group's (lr, weight decay, β1, β2, ε) for ``p``: its slices' values, which must be equal unless
    ``policy`` is ``geometric_mean``."""
    values = {hp: [getattr(g, hp) for g in slices] for hp in OPTIMISER_HPS}
    differing = [hp for hp, found in values.items() if len(set(found)) > 1]
    if differing:
        listed = "; ".join(
            f"{hp} " + ", ".join(f"{g.module_type} {getattr(g, hp):.6g}" for g in slices) for hp in differing
        )
        fused = "+".join(p.slices)
        if policy == "equal":
            raise ValueError(
                f"{p.name} fuses {fused}, whose HPs differ ({listed}), and one AdamW group holds one value: split "
                "the parameter, or use a layout with fused='geometric_mean'"
            )
        warnings.warn(f"{p.name} fuses {fused}: the geometric mean of {listed} is applied", stacklevel=3)
    return tuple(_geometric_mean(values[hp], of_one_minus=hp.startswith("beta")) for hp in OPTIMISER_HPS)


def _geometric_mean(values: list[float], *, of_one_minus: bool) -> float:
    if len(set(values)) == 1:
        return values[0]
    if of_one_minus:
        return 1.0 - _geometric_mean([1.0 - v for v in values], of_one_minus=False)
    return math.exp(sum(math.log(v) for v in values) / len(values))


@torch.no_grad()
def _initialise(p: Matched, slices: list[GroupHPs]) -> None:
    parts = p.param.chunk(len(slices), dim=p.split_dim) if len(slices) > 1 else (p.param,)
    for part, g in zip(parts, slices, strict=True):
        if p.is_bias:
            part.zero_()
        elif g.module_type in NORM_GAIN_MODULE_TYPES:
            part.fill_(1.0)
        else:
            part.normal_(mean=0.0, std=g.init_std)
