"""Scaling rules of the supported parameterisations, as pure functions.

Given the shape a set of hyperparameters was tuned at (the *base*) and the shape they are applied at (the
*target*), each parameterisation returns the factor by which every base hyperparameter of every parameter
group is multiplied. The Complete(d)P rules are Table 1 of Mlodozeniec et al. (arXiv 2512.22382); see
``shared/reference/completed-p.md``. Nothing here imports torch.

Weight-decay convention: PyTorch ``AdamW``, where the decay applied per step is ``lr * weight_decay * W``
("coupled" to the LR). Under this convention the η·λ product of hidden and unembedding weights is
width-independent. With decoupled decay, λ would have to scale with the square of the LR factor instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

ParameterisationName = Literal["sp", "mup", "completep", "completed"]
PARAMETERISATIONS: tuple[ParameterisationName, ...] = ("sp", "mup", "completep", "completed")
LEGACY_DEFAULTS = {"decay_norm_gains": True, "duration_exponent": 0.5}  # before each field existed

# The parameter groups the scaling table distinguishes. Every module type of a model maps to one of them.
SCALING_GROUPS = ("embedding", "hidden_weight", "hidden_vector", "qk_norm", "final_norm", "unembedding")

WEIGHT_DECAY_CONVENTION = "pytorch-adamw: per-step decay = lr * weight_decay * W"


@dataclass(frozen=True)
class Shape:
    """The dimensions hyperparameters transfer across. ``batch_size`` counts sequences of a fixed length."""

    width: int
    depth: int
    batch_size: int
    tokens: int

    def __post_init__(self) -> None:
        for field in ("width", "depth", "batch_size", "tokens"):
            if getattr(self, field) <= 0:
                raise ValueError(f"Shape.{field} must be positive, got {getattr(self, field)}")


@dataclass(frozen=True)
class GroupScaling:
    """Multipliers applied to the base hyperparameters of one parameter group.

    ``init_std`` multiplies the standard deviation (the square root of the table's variance factor);
    ``one_minus_beta1``/``one_minus_beta2`` multiply ``1 - beta``.
    """

    init_std: float
    lr: float
    eps: float
    weight_decay: float
    one_minus_beta1: float
    one_minus_beta2: float


@dataclass(frozen=True)
class Scaling:
    """Everything a parameterisation changes between a base and a target shape."""

    groups: dict[str, GroupScaling]
    residual: float  # forward multiplier on each residual branch, m_L^-alpha
    logit: float  # forward multiplier on the logits (only CompleteP's code uses one)
    steps: float  # m_D / m_B


@dataclass(frozen=True)
class Parameterisation:
    """A named parameterisation with its depth exponent α, its duration exponent and its norm-gain decay.

    LR, weight decay and ε scale with s = √m_B · m_D^-``duration_exponent``: batch always by √m_B, the token
    budget by its own exponent, 0.3 by default (the paper's is 1/2, where s = √(m_B/m_D); other suites fit ~0.3
    for LR against tokens, and 0.3 carried HPs to 4× the tokens better than 1/2 on every seed in
    ``bench/duration_exponent.py``). The betas always scale 1 − β by m_B/m_D, so their EMA horizon stays a fixed
    fraction of the run.
    ``decay_norm_gains`` off (the default, as in CompleteP's code) gives every norm gain zero weight decay;
    ``trainer.hparams.materialise``, which knows the module types, applies it.
    """

    name: ParameterisationName = "completed"
    alpha: float = 1.0
    duration_exponent: float = 0.3
    decay_norm_gains: bool = False

    def __post_init__(self) -> None:
        if self.name not in PARAMETERISATIONS:
            raise ValueError(f"unknown parameterisation {self.name!r}; choose one of {PARAMETERISATIONS}")
        if not 0.5 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must lie in [0.5, 1], got {self.alpha}")
        if not 0.0 <= self.duration_exponent <= 1.0:
            raise ValueError(f"duration_exponent must lie in [0, 1], got {self.duration_exponent}")

    @staticmethod
    def as_written(fields: Mapping[str, object]) -> dict[str, object]:
        """A parameterisation as a record (stored spec, export) wrote it, with the fields it predates filled in
        with what they meant then: norm gains were decayed and the duration exponent was the paper's 1/2."""
        return {**LEGACY_DEFAULTS, **fields}

    def scaling(self, base: Shape, target: Shape) -> Scaling:
        """The multipliers that carry base hyperparameters from ``base`` to ``target``."""
        return _RULES[self.name](self, base, target)


def _ratios(base: Shape, target: Shape) -> tuple[float, float, float, float]:
    return (
        target.width / base.width,
        target.depth / base.depth,
        target.batch_size / base.batch_size,
        target.tokens / base.tokens,
    )


def _unscaled(base: Shape, target: Shape) -> Scaling:
    _, _, m_b, m_d = _ratios(base, target)
    one = GroupScaling(1.0, 1.0, 1.0, 1.0, 1.0, 1.0)
    return Scaling({g: one for g in SCALING_GROUPS}, residual=1.0, logit=1.0, steps=m_d / m_b)


def _sp(p: Parameterisation, base: Shape, target: Shape) -> Scaling:
    return _unscaled(base, target)


def _mup(p: Parameterisation, base: Shape, target: Shape) -> Scaling:
    """μP for Adam, width only, in the form without a logit multiplier."""
    m_n, _, m_b, m_d = _ratios(base, target)
    unscaled = GroupScaling(1.0, 1.0, 1.0, 1.0, 1.0, 1.0)
    hidden = GroupScaling(m_n**-0.5, 1 / m_n, 1.0, 1.0, 1.0, 1.0)
    readout = GroupScaling(1 / m_n, 1 / m_n, 1.0, 1.0, 1.0, 1.0)
    groups = {g: unscaled for g in SCALING_GROUPS}
    groups.update(hidden_weight=hidden, unembedding=readout)
    return Scaling(groups, residual=1.0, logit=1.0, steps=m_d / m_b)


def _completed(p: Parameterisation, base: Shape, target: Shape) -> Scaling:
    """Complete(d)P, Table 1 of arXiv 2512.22382, row by row."""
    m_n, m_l, m_b, m_d = _ratios(base, target)
    a = p.alpha
    s = m_b**0.5 * m_d**-p.duration_exponent  # the paper's sqrt(m_B / m_D) at duration_exponent 1/2
    beta = m_b / m_d
    depth_lr = m_l ** (a - 1)
    depth_eps = m_l**-a
    groups = {
        "embedding": GroupScaling(1.0, s, 1 / (m_n * s), s, beta, beta),
        "hidden_weight": GroupScaling(m_n**-0.5, depth_lr * s / m_n, depth_eps / (m_n * s), m_n * s, beta, beta),
        "hidden_vector": GroupScaling(1.0, depth_lr * s, depth_eps / (m_n * s), s, beta, beta),
        "qk_norm": GroupScaling(1.0, depth_lr * s, depth_eps / s, s, beta, beta),
        "final_norm": GroupScaling(1.0, s, 1 / s, s, beta, beta),
        "unembedding": GroupScaling(1 / m_n, s / m_n, 1 / s, m_n * s, beta, beta),
    }
    return Scaling(groups, residual=m_l**-a, logit=1.0, steps=m_d / m_b)


def _completep(p: Parameterisation, base: Shape, target: Shape) -> Scaling:
    """CompleteP (Dey et al., arXiv 2505.01618) as its public code implements it.

    Width and depth only: batch size and duration change nothing but the step count. Where it differs from
    Complete(d)P: one ε for the embedding (no 1/m_N), the QK-norm gains' ε scaled like the other in-block
    vectors (with 1/m_N), and a 1/m_N forward multiplier on the logits, with the unembedding's init and LR
    left unscaled in exchange (the abc-symmetry of Adam).
    """
    m_n, m_l, m_b, m_d = _ratios(base, target)
    a = p.alpha
    depth_lr = m_l ** (a - 1)
    depth_eps = m_l**-a
    one = GroupScaling(1.0, 1.0, 1.0, 1.0, 1.0, 1.0)
    in_block_vector = GroupScaling(1.0, depth_lr, depth_eps / m_n, 1.0, 1.0, 1.0)
    groups = {
        "embedding": one,
        "hidden_weight": GroupScaling(m_n**-0.5, depth_lr / m_n, depth_eps / m_n, m_n, 1.0, 1.0),
        "hidden_vector": in_block_vector,
        "qk_norm": in_block_vector,
        "final_norm": one,
        "unembedding": one,
    }
    return Scaling(groups, residual=m_l**-a, logit=1 / m_n, steps=m_d / m_b)


_RULES = {"sp": _sp, "mup": _mup, "completep": _completep, "completed": _completed}
