"""How large a search this server admits: the operator's limits on a spec's sizes, so that a typo (a width of
10^6) is a 422 at submission rather than trials that try to allocate terabytes.

The spec's models hold hard bounds, what the store and the trainer can represent at all; these limits are
smaller, sized for what one trial on one large machine could hold, and an operator raises (or lowers) them with
``hpo serve --limit NAME=VALUE`` or ``HPO_LIMITS="NAME=VALUE,..."``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

from hpo_service.spec import SearchSpec, TargetSection
from trainer.config import TrainConfig

Loc = tuple[str, ...]


class LimitError(ValueError):
    """A limit setting that names no limit or gives no positive whole number."""


@dataclass(frozen=True)
class SpecLimits:
    """The largest value of each size a spec may ask for. The defaults pass any model a single trial could
    train and refuse what no machine could hold."""

    width: int = 16_384  # wider than GPT-3 175B (12288)
    depth: int = 512  # four times the deepest published LLMs (~130 blocks)
    head_dim: int = 1_024  # heads are 64 to 256 wide
    seq_len: int = 131_072  # a 128k context
    vocab_size: int = 1_048_576  # four times the largest tokenizers (~256k)
    batch_size: int = 65_536  # sequences per step
    steps: int = 1_000_000  # a proxy trains for thousands
    params: int = 8_000_000_000  # 16 bytes each (fp32 weights, gradients, AdamW's moments): 128 GB, one H200
    activations: int = 2**32  # the residual stream a step keeps at fp32, 16 GiB: about a tenth of its memory

    @classmethod
    def parse(cls, settings: Iterable[str]) -> SpecLimits:
        """The defaults with ``NAME=VALUE`` settings applied (e.g. ``width=65536``, ``params=2e10``)."""
        changes = {}
        for setting in settings:
            name, _, value = setting.partition("=")
            name = name.strip()
            if name not in LIMITS:
                raise LimitError(f"unknown limit {name!r} in {setting!r}; limits: {', '.join(LIMITS)}")
            changes[name] = _count(value.strip(), setting)
        return replace(cls(), **changes)

    def violations(self, spec: SearchSpec) -> list[dict]:
        """Validation errors (``loc`` within the body) for each size of ``spec`` above its limit, and of each
        ``validate`` target's configuration (``SearchSpec.target_config``): a target trains too."""
        errors = [
            self._error(name, value, ("body", *limit.loc), limit.what)
            for name, limit in LIMITS.items()
            if (value := limit.measure(spec)) > getattr(self, name)
        ]
        for index, target in enumerate(spec.validate_.targets if spec.validate_ is not None else []):
            errors += self._target_violations(spec, index, target)
        return errors

    def _target_violations(self, spec: SearchSpec, index: int, target: TargetSection) -> list[dict]:
        """The sizes of target ``index`` above their limits; one the target leaves at the proxy's value is the
        proxy's error, not the target's."""
        config = spec.target_config(target)
        errors = []
        for name, limit in LIMITS.items():
            value = limit.measure(config)
            if value > getattr(self, name) and value != limit.measure(spec):
                loc = ("body", "validate", "targets", index, *_target_field(name, target))
                errors.append(
                    self._error(name, value, loc, f"validate.targets.{index} ({target.label()}): {limit.what}")
                )
        return errors

    def _error(self, name: str, value: int, loc: tuple[str | int, ...], what: str) -> dict:
        allowed = getattr(self, name)
        message = (
            f"{what} is {value:,}, above this server's limit of {allowed:,} (an operator raises it with "
            f"`hpo serve --limit {name}=N` or HPO_LIMITS={name}=N)"
        )
        return {"type": "limit", "loc": loc, "msg": message, "input": value}


@dataclass(frozen=True)
class Limit:
    loc: Loc  # the field an error names
    what: str  # the size, as an error says it
    measure: Callable[[TrainConfig], int]  # of the proxy's configuration, or of a validate target's


def _activations(config: TrainConfig) -> int:
    m = config.model
    return config.training.batch_size * m.seq_len * m.width * m.depth


def _target_field(name: str, target: TargetSection) -> tuple[str, ...]:
    """The target's field that sets the size ``name``; none (the target as a whole) for a size that several set
    (parameters: width and depth; activations: those and the batch size)."""
    if name in ("width", "depth", "batch_size"):
        return (name,)
    if name != "steps":
        return ()
    given = [field for field in ("tokens", "tokens_multiplier") if getattr(target, field) is not None]
    return (given[0],) if given else ("batch_size",)  # steps are the proxy's tokens over the target's batch


LIMITS = {
    "width": Limit(("model", "width"), "model.width", lambda s: s.model.width),
    "depth": Limit(("model", "depth"), "model.depth", lambda s: s.model.depth),
    "head_dim": Limit(("model", "head_dim"), "model.head_dim", lambda s: s.model.head_dim),
    "seq_len": Limit(("model", "seq_len"), "model.seq_len", lambda s: s.model.seq_len),
    "vocab_size": Limit(("model", "vocab_size"), "model.vocab_size", lambda s: s.model.vocab_size),
    "batch_size": Limit(("training", "batch_size"), "training.batch_size", lambda s: s.training.batch_size),
    "steps": Limit(("training", "steps"), "training.steps", lambda s: s.training.steps),
    "params": Limit(("model",), "the model's parameter count", lambda s: s.model.n_params),
    "activations": Limit(
        ("training", "batch_size"),
        "the activations a step keeps (batch_size × seq_len × width × depth)",
        _activations,
    ),
}


def _count(text: str, setting: str) -> int:
    """A positive whole number written as ``65536``, ``65_536`` or ``2e10``."""
    try:
        value = int(text)
    except ValueError:
        try:
            number = float(text)
        except ValueError:
            number = math.nan
        if not (math.isfinite(number) and number.is_integer()):
            raise LimitError(f"{setting!r}: the limit must be a whole number, e.g. 65536 or 2e10") from None
        value = int(number)
    if value <= 0:
        raise LimitError(f"{setting!r}: the limit must be positive")
    return value
