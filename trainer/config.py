"""The training configuration: the ``model``, ``training``, ``parameterisation`` and ``base_hps`` sections.

Each section is defined once, with its defaults and bounds: ``model`` is ``trainer.model.ModelConfig``,
``base_hps`` is ``trainer.hparams.BaseHPs``, shapes are ``trainer.parameterisation.Shape`` and the
parameterisation's defaults are ``Parameterisation``'s. A search spec is this configuration plus its search
sections. Unknown keys and impossible values are rejected with an error naming the field.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, GetPydanticSchema, field_validator, model_validator
from pydantic_core import core_schema

from trainer.data import DataError, DataSource
from trainer.hparams import BaseHPs, MaterialisedHPs, Multipliers, materialise
from trainer.model import MAX_DEPTH, MAX_WIDTH, ModelConfig
from trainer.parameterisation import Parameterisation, ParameterisationName, Shape
from trainer.schedule import Schedule

# Hard bounds of a run's budget. With the model's, a run's token count (steps × batch_size × seq_len) stays
# within int64, and its steps within a 32-bit count.
MAX_BATCH_SIZE = 1_000_000
MAX_STEPS = 10_000_000
MAX_SEED = 2**31 - 1  # a 32-bit signed integer: what every RNG and every integer column holds
MAX_TOKENS = 2**63 - 1  # int64, as the store counts a trial's tokens


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class ShapeFields(Section):
    """A ``Shape`` as a config writes it, each dimension bounded."""

    width: int = Field(gt=0, le=MAX_WIDTH)
    depth: int = Field(gt=0, le=MAX_DEPTH)
    batch_size: int = Field(gt=0, le=MAX_BATCH_SIZE)
    tokens: int = Field(gt=0, le=MAX_TOKENS)


def _shape_schema(source: Any, handler: Any) -> core_schema.CoreSchema:
    """Validate a mapping as ``ShapeFields`` (so an error names the dimension, e.g. ``.width``), keep a
    ``Shape`` as it is, and give a ``Shape``."""
    fields = handler.generate_schema(ShapeFields)

    def validate(value: Any, inner: core_schema.ValidatorFunctionWrapHandler) -> Shape:
        return value if isinstance(value, Shape) else Shape(**inner(value).model_dump())

    def serialise(shape: Shape) -> ShapeFields:
        return ShapeFields.model_construct(**asdict(shape))

    serialisation = core_schema.plain_serializer_function_ser_schema(serialise, return_schema=fields)
    return core_schema.no_info_wrap_validator_function(validate, fields, serialization=serialisation)


BoundedShape = Annotated[Shape, GetPydanticSchema(_shape_schema)]


class TrainingSection(Section):
    batch_size: int = Field(16, gt=0, le=MAX_BATCH_SIZE, description="Sequences per optimiser step.")
    steps: int = Field(60, gt=0, le=MAX_STEPS, description="Optimiser steps.")
    warmup_steps: int = Field(0, ge=0, description="Linear warm-up steps before the cosine decay.")
    lr_floor: float = Field(0.1, ge=0, le=1, description="Final LR as a fraction of the peak.")
    data: str = Field(
        "builtin:python-stdlib",
        max_length=4096,
        description="builtin:python-stdlib, text:PATH or tokens:PATH[:dtype], where a tokens: PATH may be a folder "
        "holding nanoGPT's train.bin and val.bin (a server resolves a relative PATH against its data root).",
    )
    val_fraction: float = Field(
        0.05,
        gt=0,
        lt=1,
        description="Share of a user corpus held out for validation; a tokens: folder's val.bin is its own.",
    )
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d{1,3})?)$", description="auto, cpu, cuda or cuda:N.")
    seed: int = Field(0, ge=0, le=MAX_SEED)
    z_loss: float = Field(0.0, ge=0, description="Coefficient of the z-loss (log-partition squared).")
    grad_clip: float = Field(0.0, ge=0, description="Global gradient-norm clip; 0 disables it.")
    eval_every: int = Field(
        0, ge=0, le=MAX_STEPS, description="Steps between evaluations; 0 evaluates ~10 times per run."
    )
    eval_batches: int = Field(4, gt=0, le=10_000)
    divergence_factor: float = Field(3.0, gt=1, description="Loss above this times the first loss is divergence.")
    compile: Literal["auto", "on", "off"] = Field("auto", description="torch.compile: auto means on CUDA only.")

    @field_validator("data")
    @classmethod
    def _known_source(cls, data: str) -> str:
        if "\x00" in data:
            raise ValueError("must not contain a NUL character")
        try:
            DataSource.parse(data)
        except DataError as exc:
            raise ValueError(str(exc)) from None
        return data

    @property
    def schedule(self) -> Schedule:
        """The LR schedule these steps train with."""
        return Schedule(steps=self.steps, warmup_steps=self.warmup_steps, lr_floor=self.lr_floor)

    @property
    def eval_interval(self) -> int:
        """Steps between evaluations (``eval_every``, or about ten per run); the last step is evaluated too."""
        return self.eval_every or max(1, self.steps // 10)

    @model_validator(mode="after")
    def _warmup_fits(self) -> TrainingSection:
        if self.warmup_steps > self.steps:
            raise ValueError(f"training.warmup_steps ({self.warmup_steps}) exceeds training.steps ({self.steps})")
        return self


_DEFAULT_PARAMETERISATION = Parameterisation()


class ParameterisationSection(Section):
    name: ParameterisationName = _DEFAULT_PARAMETERISATION.name
    alpha: float = Field(
        _DEFAULT_PARAMETERISATION.alpha, ge=0.5, le=1.0, description="Depth exponent: 1 is CompleteP, 0.5 depth-μP."
    )
    duration_exponent: float = Field(
        _DEFAULT_PARAMETERISATION.duration_exponent,
        ge=0,
        le=1,
        description="Power of 1/m_D (token budget) on LR, WD and ε; batch always scales them by √m_B.",
    )
    decay_norm_gains: bool = Field(
        _DEFAULT_PARAMETERISATION.decay_norm_gains,
        description="Apply weight decay to the norm gains (norm_attn, norm_mlp, q_norm, k_norm, final_norm); "
        "off gives them none, as CompleteP's code does.",
    )
    base_shape: BoundedShape | None = Field(
        None, description="Shape the base HPs were tuned at; defaults to this config's own shape."
    )

    def to_parameterisation(self) -> Parameterisation:
        return Parameterisation(self.name, self.alpha, self.duration_exponent, self.decay_norm_gains)


class TrainConfig(Section):
    """One training run: a model, its budget, its parameterisation and its base HPs."""

    model: ModelConfig = ModelConfig()
    training: TrainingSection = TrainingSection()
    parameterisation: ParameterisationSection = ParameterisationSection()
    base_hps: BaseHPs = BaseHPs()

    def shape(self) -> Shape:
        t = self.training
        return Shape(self.model.width, self.model.depth, t.batch_size, t.steps * t.batch_size * self.model.seq_len)

    def base_shape(self) -> Shape:
        return self.parameterisation.base_shape or self.shape()

    def materialise(self, multipliers: Multipliers) -> MaterialisedHPs:
        """The base HPs times ``multipliers``, carried from the base shape to this config's shape."""
        return materialise(
            self.base_hps, multipliers, self.parameterisation.to_parameterisation(), self.base_shape(), self.shape()
        )

    def with_base_shape_pinned(self) -> TrainConfig:
        """This config with its own shape recorded as the base shape (if none is set)."""
        if self.parameterisation.base_shape is not None:
            return self
        pinned = self.parameterisation.model_copy(update={"base_shape": self.shape()})
        return self.model_copy(update={"parameterisation": pinned})
