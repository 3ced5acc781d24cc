"""The training configuration: the ``model``, ``training``, ``parameterisation`` and ``base_hps`` sections.

A search spec carries the same sections, so every search spec is also a valid training configuration.
Unknown keys and impossible values are rejected with an error naming the field.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from trainer.hparams import BaseHPs, MaterialisedHPs, Multipliers, materialise
from trainer.model import ModelConfig
from trainer.parameterisation import Parameterisation, ParameterisationName, Shape


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSection(Section):
    width: int = Field(64, gt=0, description="Residual-stream width; a multiple of head_dim.")
    depth: int = Field(2, gt=0, description="Number of transformer blocks.")
    head_dim: int = Field(16, gt=0, description="Dimension of each attention head (fixed as width grows).")
    seq_len: int = Field(64, gt=0, description="Context length in tokens.")
    vocab_size: int = Field(256, gt=1, le=2**32, description="256 for the byte-level corpora.")
    mlp_ratio: int = Field(4, gt=0)

    @model_validator(mode="after")
    def _heads_divide_width(self) -> ModelSection:
        if self.width % self.head_dim:
            raise ValueError(f"model.width ({self.width}) must be a multiple of model.head_dim ({self.head_dim})")
        return self

    def to_model_config(self) -> ModelConfig:
        return ModelConfig(**self.model_dump())


class TrainingSection(Section):
    batch_size: int = Field(16, gt=0, description="Sequences per optimiser step.")
    steps: int = Field(60, gt=0, description="Optimiser steps.")
    warmup_steps: int = Field(0, ge=0, description="Linear warm-up steps before the cosine decay.")
    lr_floor: float = Field(0.1, ge=0, le=1, description="Final LR as a fraction of the peak.")
    data: str = Field("builtin:python-stdlib", description="builtin:python-stdlib, text:PATH or tokens:PATH[:dtype].")
    val_fraction: float = Field(0.05, gt=0, lt=1, description="Share of a user corpus held out for validation.")
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$", description="auto, cpu, cuda or cuda:N.")
    seed: int = Field(0, ge=0)
    z_loss: float = Field(0.0, ge=0, description="Coefficient of the z-loss (log-partition squared).")
    grad_clip: float = Field(0.0, ge=0, description="Global gradient-norm clip; 0 disables it.")
    eval_every: int = Field(0, ge=0, description="Steps between evaluations; 0 evaluates ~10 times per run.")
    eval_batches: int = Field(4, gt=0)
    divergence_factor: float = Field(3.0, gt=1, description="Loss above this times the first loss is divergence.")
    compile: Literal["auto", "on", "off"] = Field("auto", description="torch.compile: auto means on CUDA only.")

    @model_validator(mode="after")
    def _warmup_fits(self) -> TrainingSection:
        if self.warmup_steps > self.steps:
            raise ValueError(f"training.warmup_steps ({self.warmup_steps}) exceeds training.steps ({self.steps})")
        return self


class ShapeSection(Section):
    width: int = Field(gt=0)
    depth: int = Field(gt=0)
    batch_size: int = Field(gt=0)
    tokens: int = Field(gt=0)

    def to_shape(self) -> Shape:
        return Shape(**self.model_dump())


class ParameterisationSection(Section):
    name: ParameterisationName = "completed"
    alpha: float = Field(1.0, ge=0.5, le=1.0, description="Depth exponent: 1 is CompleteP, 0.5 depth-μP.")
    duration_exponent: float = Field(0.5, ge=0, le=1, description="Power of m_B/m_D on LR, WD and ε.")
    base_shape: ShapeSection | None = Field(
        None, description="Shape the base HPs were tuned at; defaults to this config's own shape."
    )

    def to_parameterisation(self) -> Parameterisation:
        return Parameterisation(self.name, self.alpha, self.duration_exponent)


class BaseHPsSection(Section):
    lr: float = Field(0.01, gt=0)
    init_std: float = Field(0.02, gt=0)
    weight_decay: float = Field(0.1, ge=0)
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.95, ge=0, lt=1)
    eps: float = Field(1e-8, gt=0)

    def to_base_hps(self) -> BaseHPs:
        return BaseHPs(**self.model_dump())


class TrainConfig(Section):
    """One training run: a model, its budget, its parameterisation and its base HPs."""

    model: ModelSection = ModelSection()
    training: TrainingSection = TrainingSection()
    parameterisation: ParameterisationSection = ParameterisationSection()
    base_hps: BaseHPsSection = BaseHPsSection()

    def shape(self) -> Shape:
        t = self.training
        return Shape(self.model.width, self.model.depth, t.batch_size, t.steps * t.batch_size * self.model.seq_len)

    def base_shape(self) -> Shape:
        base = self.parameterisation.base_shape
        return base.to_shape() if base is not None else self.shape()

    def materialise(self, multipliers: Multipliers) -> MaterialisedHPs:
        """The base HPs times ``multipliers``, carried from the base shape to this config's shape."""
        return materialise(
            self.base_hps.to_base_hps(),
            multipliers,
            self.parameterisation.to_parameterisation(),
            self.base_shape(),
            self.shape(),
        )

    def with_base_shape_pinned(self) -> TrainConfig:
        """This config with its own shape recorded as the base shape (if none is set)."""
        if self.parameterisation.base_shape is not None:
            return self
        pinned = ShapeSection(**vars(self.shape()))
        return self.model_copy(
            update={"parameterisation": self.parameterisation.model_copy(update={"base_shape": pinned})}
        )
