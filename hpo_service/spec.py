"""The search spec: a training configuration plus what to search, with which optimizer, on what resources.

A spec is JSON or YAML. Unknown keys and impossible values are rejected with an error naming the field. The
search space is a flat vector of log2 multipliers (see ``SearchSpace.coordinates``), 0 meaning the base HPs.
"""

from __future__ import annotations

import hashlib
import json
from typing import Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from hpo_service.engine.entrypoints import ENTRYPOINT
from trainer.config import MAX_SEED, BoundedShape, Section, TrainConfig
from trainer.hparams import HP_NAMES, INIT_STD_MODULE_TYPES, RESIDUAL_BRANCHES, Multipliers
from trainer.model import BLOCK_MODULE_TYPES, MODULE_TYPES

OptimizerName = Literal["cma", "diagonal_cma", "de", "oneplusone", "ngopt", "random", "trust_region"]
MIN_POPULATION = {"cma": 2, "diagonal_cma": 2, "de": 4}  # recombination needs parents (DE: three others)
MAX_TRIALS = 1_000_000  # population × generations × replicates: a search larger than this is a typo


class SearchSpace(Section):
    """Which per-module log2 multipliers the optimizer moves, and within which bounds."""

    modules: Literal["all"] | list[str] = Field("all", description="'all' or a list of module types.")
    hps: list[str] = Field(default_factory=lambda: ["lr", "init_std", "weight_decay"], min_length=1)
    log2_bounds: tuple[float, float] = Field((-3.0, 3.0), description="[low, high] of every log2 multiplier.")
    per_depth: bool = Field(False, description="Also search one multiplier per block and HP (type × depth).")
    residual: bool = Field(False, description="Also search the attention and MLP residual-branch multipliers.")
    tied: bool = Field(
        False,
        description="One multiplier per HP shared by all the listed modules: a search of the global HPs, the "
        "usual first step before a per-module search around its result.",
    )

    @model_validator(mode="after")
    def _tied_is_global(self) -> SearchSpace:
        if self.tied and (self.per_depth or self.residual):
            raise ValueError("tied (global) multipliers cannot be combined with per_depth or residual")
        return self

    @field_validator("modules")
    @classmethod
    def _known_modules(cls, modules: str | list[str]) -> str | list[str]:
        if isinstance(modules, list):
            if not modules:
                raise ValueError("list at least one module type, or 'all'")
            unknown = [m for m in modules if m not in MODULE_TYPES]
            if unknown:
                raise ValueError(f"unknown module types {unknown}; known: {', '.join(MODULE_TYPES)}")
            if len(set(modules)) != len(modules):
                raise ValueError("module types are listed more than once")
        return modules

    @field_validator("hps")
    @classmethod
    def _known_hps(cls, hps: list[str]) -> list[str]:
        unknown = [h for h in hps if h not in HP_NAMES]
        if unknown:
            raise ValueError(f"unknown hyperparameters {unknown}; known: {', '.join(HP_NAMES)}")
        if len(set(hps)) != len(hps):
            raise ValueError("hyperparameters are listed more than once")
        return hps

    @field_validator("log2_bounds")
    @classmethod
    def _ordered_bounds(cls, bounds: tuple[float, float]) -> tuple[float, float]:
        low, high = bounds
        if not low < high:
            raise ValueError(f"low ({low}) must be below high ({high})")
        if not low <= 0 <= high:
            raise ValueError(f"bounds [{low}, {high}] must contain 0, the base HPs the search starts from")
        if max(-low, high) > 30:
            raise ValueError("bounds beyond ±30 octaves are not hyperparameters")
        return bounds

    def module_types(self) -> tuple[str, ...]:
        return MODULE_TYPES if self.modules == "all" else tuple(self.modules)

    def coordinates(self, depth: int) -> list[str]:
        """Names of the vector's entries: ``module.<type>.<hp>``, ``depth.<hp>.<layer>``, ``residual.<branch>``.

        The init std of norm gains is not searched: gains start at one whatever it is. A tied space has one
        ``global.<hp>`` entry per HP.
        """
        if self.tied:
            return [f"global.{h}" for h in self.hps]
        names = [
            f"module.{m}.{h}"
            for m in self.module_types()
            for h in self.hps
            if h != "init_std" or m in INIT_STD_MODULE_TYPES
        ]
        if self.per_depth and any(m in BLOCK_MODULE_TYPES for m in self.module_types()):
            names += [f"depth.{h}.{layer}" for h in self.hps for layer in range(depth)]
        if self.residual:
            names += [f"residual.{b}" for b in RESIDUAL_BRANCHES]
        return names

    def multipliers(self, vector: list[float], depth: int) -> Multipliers:
        """The ``Multipliers`` a vector (in ``coordinates`` order) stands for."""
        names = self.coordinates(depth)
        if len(vector) != len(names):
            raise ValueError(f"vector has {len(vector)} entries, the space has {len(names)}")
        module: dict[str, dict[str, float]] = {}
        per_layer: dict[str, list[float]] = {}
        residual: dict[str, float] = {}
        for name, value in zip(names, vector, strict=True):
            kind, *rest = name.split(".")
            if kind == "global":
                for m in self.module_types():
                    if rest[0] != "init_std" or m in INIT_STD_MODULE_TYPES:
                        module.setdefault(m, {})[rest[0]] = float(value)
            elif kind == "module":
                module.setdefault(rest[0], {})[rest[1]] = float(value)
            elif kind == "depth":
                per_layer.setdefault(rest[0], []).append(float(value))
            else:
                residual[rest[0]] = float(value)
        return Multipliers(module=module, depth={h: tuple(v) for h, v in per_layer.items()}, residual=residual)


class OptimizerSection(Section):
    name: OptimizerName = Field("cma", description="Nevergrad optimizer, or 'trust_region' (the paper's search).")
    population: int = Field(6, gt=0, le=10_000, description="Candidates asked per generation.")
    generations: int = Field(3, gt=0, le=100_000)
    seed: int = Field(0, ge=0, le=2**32 - 1)
    replicates: int = Field(1, gt=0, le=16, description="Training seeds per candidate; its loss is their mean.")
    sigma: float = Field(1.0, gt=0, le=10, description="Initial step size in octaves (log2 units).")

    @model_validator(mode="after")
    def _population_fits_the_optimizer(self) -> OptimizerSection:
        least = MIN_POPULATION.get(self.name, 1)
        if self.population < least:
            raise ValueError(f"optimizer.population must be at least {least} for {self.name}")
        return self


class ExecutionSection(Section):
    parallel: int = Field(2, gt=0, le=4096, description="Trials of this search in flight at once.")
    cpus_per_trial: float = Field(1.0, gt=0, le=1024)
    gpus_per_trial: float = Field(0.0, ge=0, le=64, description="Fractions share a GPU between trials.")
    max_retries: int = Field(1, ge=0, le=10, description="Re-runs of a candidate whose worker died.")
    timeout_s: float = Field(3600.0, gt=0, le=7 * 24 * 3600, description="Wall-clock limit of one trial.")
    trial: str | None = Field(
        None,
        max_length=300,
        description="'package.module:function' to train each trial instead of the built-in trainer; "
        "only names the server allows (hpo serve --allow-trial).",
    )

    @field_validator("trial")
    @classmethod
    def _entrypoint_form(cls, trial: str | None) -> str | None:
        if trial is not None and not ENTRYPOINT.match(trial):
            raise ValueError(f"{trial!r} is not of the form 'package.module:function'")
        return trial


class SearchSpec(TrainConfig):
    """A training configuration (the proxy's) plus what to search, with which optimizer, on what resources."""

    name: str = Field(min_length=1, max_length=200, description="Surrounding whitespace is stripped.")
    search_space: SearchSpace = SearchSpace()
    optimizer: OptimizerSection = OptimizerSection()
    execution: ExecutionSection = ExecutionSection()
    export_targets: list[BoundedShape] = Field(default_factory=list, max_length=64)

    @field_validator("name")
    @classmethod
    def _named(cls, name: str) -> str:
        if "\x00" in name:
            raise ValueError("must not contain a NUL character")
        if not name.strip():
            raise ValueError("must not be blank")
        return name.strip()

    @model_validator(mode="after")
    def _sane_budget(self) -> SearchSpec:
        o = self.optimizer
        if o.population * o.generations * o.replicates > MAX_TRIALS:
            raise ValueError(
                f"optimizer: population × generations × replicates is "
                f"{o.population * o.generations * o.replicates:,}, above the limit of {MAX_TRIALS:,} trials"
            )
        return self

    @model_validator(mode="after")
    def _trial_seeds_fit(self) -> SearchSpec:
        """Replicate r of a candidate trains with seed ``training.seed + r``: the last must be a valid seed too."""
        last = self.training.seed + self.optimizer.replicates - 1
        if last > MAX_SEED:
            message = f"with {self.optimizer.replicates} replicates the trials' seeds reach {last}, above {MAX_SEED}"
            raise field_error(("training", "seed"), message, self.training.seed)
        return self

    def train_config(self) -> TrainConfig:
        """The proxy's training configuration, with the base shape pinned to the proxy's own shape."""
        sections = {section: getattr(self, section) for section in TrainConfig.model_fields}
        return TrainConfig(**sections).with_base_shape_pinned()

    def dimension(self) -> int:
        return len(self.search_space.coordinates(self.model.depth))

    def multipliers(self, vector: list[float]) -> Multipliers:
        return self.search_space.multipliers(vector, self.model.depth)

    def digest(self) -> str:
        """SHA-256 of the canonical JSON of the spec (defaults filled in): the provenance of a result."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


def field_error(loc: tuple[str | int, ...], message: str, value: object) -> ValidationError:
    """A validation error at ``loc`` (relative to the model being validated), for a check across fields."""
    error = InitErrorDetails(type=PydanticCustomError("value_error", message), loc=loc, input=value)
    return ValidationError.from_exception_data("SearchSpec", [error])


# What a search spec adds to a training configuration (`hpo train` reads a spec past them).
SEARCH_SECTIONS = tuple(field for field in SearchSpec.model_fields if field not in TrainConfig.model_fields)
