"""The search spec: a training configuration plus what to search, with which optimizer, on what resources.

A spec is JSON or YAML. Unknown keys and impossible values are rejected with an error naming the field. The
search space is a flat vector of log2 multipliers (see ``SearchSpace.coordinates``), 0 meaning the base HPs.
"""

from __future__ import annotations

import hashlib
import json
from typing import Literal

from pydantic import ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from hpo_service.engine.entrypoints import ENTRYPOINT
from trainer.config import MAX_BATCH_SIZE, MAX_SEED, MAX_TOKENS, BoundedShape, Section, TrainConfig
from trainer.hparams import HP_NAMES, INIT_STD_MODULE_TYPES, RESIDUAL_BRANCHES, Multipliers
from trainer.model import BLOCK_MODULE_TYPES, MAX_DEPTH, MAX_WIDTH, MODULE_TYPES

FRESH_SEED_STRIDE = 100_000  # fresh seeds of phase k (re-evaluation of stage k, then validation) start here × (k+1)
MAX_STAGES = 16
VALIDATION_PHASE = MAX_STAGES  # the transfer check's fresh seeds follow every stage's
ARM_NAMES = ("per-module", "global", "base")
ArmName = Literal["per-module", "global", "base"]
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
    asynchronous: bool = Field(
        False,
        description="Ask the next generation as soon as a worker is free and the last one has nothing left to "
        "dispatch, so that no worker waits for the last one's slowest trial; its candidates are drawn before the "
        "last generation is told (as every asynchronous evolution strategy does).",
    )

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


class StageSection(Section):
    """One stage of a staged search: its own space and optimizer, centred on the previous stage's choice."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    search_space: SearchSpace = SearchSpace()
    optimizer: OptimizerSection = OptimizerSection()


class SelectionSection(Section):
    """Fresh-seed selection: a stage's ``top`` candidates by search-time loss are re-trained on ``seeds`` new seeds,
    and the best mean is chosen. ``top: 0`` chooses the best search-time loss, as a search without stages does."""

    top: int = Field(3, ge=0, le=64, description="Candidates re-trained on fresh seeds; 0 turns selection off.")
    seeds: int = Field(2, gt=0, le=16, description="Fresh seeds per re-trained candidate.")


class EarlyStoppingSection(Section):
    """Stop a search trial whose validation curve is hopeless, judged at an evaluation step against the curves
    of the same stage's other search trials at that step (``hpo_service.early_stopping``).

    ``median``: stop when the trial's loss is above the ``percentile`` of the others' losses at that step.
    ``successive_halving``: rungs at ``min_fraction`` × ``reduction_factor``^k of the steps; at each rung only
    the best 1/``reduction_factor`` of the trials that reached it go on (asynchronous, as ASHA).
    Neither judges before ``min_fraction`` of the steps, nor against fewer than ``min_trials`` other curves.
    Re-evaluations and transfer checks always train to their end."""

    rule: Literal["none", "median", "successive_halving"] = "none"
    percentile: float = Field(50.0, gt=0, lt=100, description="median: the percentile a trial must not exceed.")
    reduction_factor: int = Field(3, ge=2, le=16, description="successive_halving: keep 1 in this many per rung.")
    min_fraction: float = Field(0.25, gt=0, lt=1, description="No trial is judged before this fraction of its steps.")
    min_trials: int = Field(4, ge=1, le=10_000, description="Curves at a step needed before any trial is judged.")


class TargetSection(Section):
    """A shape to check the result at; what is not named stays at the proxy's shape."""

    width: int | None = Field(None, gt=0, le=MAX_WIDTH)
    depth: int | None = Field(None, gt=0, le=MAX_DEPTH)
    batch_size: int | None = Field(None, gt=0, le=MAX_BATCH_SIZE)
    tokens: int | None = Field(None, gt=0, le=MAX_TOKENS)
    tokens_multiplier: int | None = Field(None, gt=0, le=1_000_000, description="Tokens as a multiple of the proxy's.")

    @model_validator(mode="after")
    def _names_something(self) -> TargetSection:
        if not self.model_fields_set:
            raise ValueError("name at least one of width, depth, batch_size, tokens, tokens_multiplier")
        if self.tokens is not None and self.tokens_multiplier is not None:
            raise ValueError("give tokens or tokens_multiplier, not both")
        return self

    def label(self) -> str:
        """``width=128 depth=4``: the target as the API and the dashboard name it."""
        return " ".join(f"{k}={v}" for k, v in self.model_dump(exclude_none=True).items())


class ValidateSection(Section):
    """The transfer check after the last stage: each arm trained at each target with ``seeds`` fresh seeds."""

    targets: list[TargetSection] = Field(min_length=1, max_length=16)
    seeds: int = Field(3, gt=0, le=16, description="Fresh seeds per arm and target.")
    arms: list[ArmName] = Field(
        list(ARM_NAMES),
        min_length=1,
        description="Arms to train: the result (per-module, or global when the last stage is tied), the global "
        "stage's choice and the base HPs; an arm the search does not have is skipped.",
    )

    @field_validator("arms")
    @classmethod
    def _distinct(cls, arms: list[str]) -> list[str]:
        if len(set(arms)) != len(arms):
            raise ValueError("arms are listed more than once")
        return arms


class StartFrom(Section):
    """Where the first stage is centred: another search's chosen HPs, or an export's multipliers."""

    search: int | None = Field(None, gt=0, le=2**31 - 1, description="A search of this server with a result.")
    export: dict | None = Field(None, description="An export document (hpo submit reads a file path given here).")

    @model_validator(mode="after")
    def _one_source(self) -> StartFrom:
        if (self.search is None) == (self.export is None):
            raise ValueError("give exactly one of search or export")
        return self


class SearchSpec(TrainConfig):
    """A training configuration (the proxy's) plus what to search, with which optimizer, on what resources."""

    model_config = ConfigDict(**Section.model_config, serialize_by_alias=True, validate_by_name=True)

    name: str = Field(min_length=1, max_length=200, description="Surrounding whitespace is stripped.")
    search_space: SearchSpace = SearchSpace()
    optimizer: OptimizerSection = OptimizerSection()
    execution: ExecutionSection = ExecutionSection()
    export_targets: list[BoundedShape] = Field(default_factory=list, max_length=64)
    stages: list[StageSection] | None = Field(
        None,
        min_length=1,
        max_length=MAX_STAGES,
        description="Stages searched in turn, each centred on the last's choice.",
    )
    selection: SelectionSection | None = Field(
        None, description="Fresh-seed selection; on by default (top 3, 2 seeds) with stages or validate."
    )
    validate_: ValidateSection | None = Field(None, alias="validate")
    start_from: StartFrom | None = None
    early_stopping: EarlyStoppingSection | None = Field(None, description="Off unless given (rule none).")

    @field_validator("name")
    @classmethod
    def _named(cls, name: str) -> str:
        if "\x00" in name:
            raise ValueError("must not contain a NUL character")
        if not name.strip():
            raise ValueError("must not be blank")
        return name.strip()

    @model_validator(mode="after")
    def _stages_own_their_search(self) -> SearchSpec:
        if self.stages is None:
            return self
        given = {"search_space", "optimizer"} & self.model_fields_set
        if given:
            raise field_error(
                (sorted(given)[0],), "with stages, each stage gives its own search_space and optimizer", None
            )
        names = [stage.name for stage in self.stages]
        if len(set(names)) != len(names):
            raise field_error(("stages",), f"stage names must differ, got {names}", names)
        return self

    @model_validator(mode="after")
    def _cma_has_two_dimensions(self) -> SearchSpec:
        """Nevergrad's CMA needs an extra package (fcmaes) on a one-dimensional space: refused here rather than
        failing when the search starts."""
        for i, (_, space, optimizer) in enumerate(self.plan_stages()):
            if optimizer.name in ("cma", "diagonal_cma") and len(space.coordinates(self.model.depth)) < 2:
                loc = ("optimizer", "name") if self.stages is None else ("stages", i, "optimizer", "name")
                message = f"{optimizer.name} needs at least two searched multipliers; this space has one"
                raise field_error(loc, message + " (choose oneplusone, de, random or trust_region)", optimizer.name)
        return self

    @model_validator(mode="after")
    def _sane_budget(self) -> SearchSpec:
        total = sum(o.population * o.generations * o.replicates for _, _, o in self.plan_stages())
        if total > MAX_TRIALS:
            raise ValueError(
                f"optimizer: population × generations × replicates is {total:,}, above the limit of {MAX_TRIALS:,} "
                "trials"
            )
        return self

    @model_validator(mode="after")
    def _trial_seeds_fit(self) -> SearchSpec:
        """Replicate r of a candidate trains with seed ``training.seed + r``, and fresh seeds lie above every
        stage's (``fresh_seeds``): the last must be a valid seed too."""
        replicates = max(o.replicates for _, _, o in self.plan_stages())
        last = self.training.seed + replicates - 1
        if self.validate_ is not None:
            last = max(self.fresh_seeds(VALIDATION_PHASE, self.validate_.seeds))
        elif self.selection_section().top:
            last = max(self.fresh_seeds(len(self.plan_stages()) - 1, self.selection_section().seeds))
        if last > MAX_SEED:
            message = f"the trials' seeds would reach {last}, above {MAX_SEED}"
            raise field_error(("training", "seed"), message, self.training.seed)
        return self

    @model_validator(mode="after")
    def _targets_are_trainable(self) -> SearchSpec:
        if self.validate_ is not None:
            for i, target in enumerate(self.validate_.targets):
                try:
                    self.target_config(target)
                except ValidationError as exc:
                    first = exc.errors()[0]
                    where = ".".join(str(part) for part in first["loc"])
                    message = f"this target is not a trainable model ({where}: {first['msg']})"
                    value = target.model_dump(exclude_none=True)
                    raise field_error(("validate", "targets", i), message, value) from None
        return self

    def plan_stages(self) -> list[tuple[str, SearchSpace, OptimizerSection]]:
        """``(name, search_space, optimizer)`` of each stage; a spec without stages has one, named ``search``."""
        if self.stages is None:
            return [("search", self.search_space, self.optimizer)]
        return [(stage.name, stage.search_space, stage.optimizer) for stage in self.stages]

    def selection_section(self) -> SelectionSection:
        """The fresh-seed selection in force: as given, else on for staged or validated searches, else off."""
        if self.selection is not None:
            return self.selection
        return SelectionSection() if self.stages is not None or self.validate_ is not None else SelectionSection(top=0)

    def fresh_seeds(self, phase: int, count: int) -> list[int]:
        """Seeds never used by a search trial: phase k < ``VALIDATION_PHASE`` re-evaluates stage k; the validation
        phase's are the same whatever the stages, so that two searches' checks train on the same seeds."""
        first = self.training.seed + FRESH_SEED_STRIDE * (phase + 1)
        return list(range(first, first + count))

    def target_config(self, target: TargetSection) -> TrainConfig:
        """The proxy's configuration at ``target``'s shape, with the proxy as its base shape, so that its HPs
        are the proxy's carried over by the parameterisation's rules. Steps follow from the tokens and the
        batch size; warm-up keeps its fraction of the run."""
        proxy = self.train_config()
        t = proxy.training
        batch_size = target.batch_size or t.batch_size
        tokens = target.tokens or proxy.shape().tokens * (target.tokens_multiplier or 1)
        steps = max(1, round(tokens / (batch_size * proxy.model.seq_len)))
        model = proxy.model.model_dump() | {
            "width": target.width or proxy.model.width,
            "depth": target.depth or proxy.model.depth,
        }
        training = t.model_dump() | {
            "batch_size": batch_size,
            "steps": steps,
            "warmup_steps": round(t.warmup_steps * steps / t.steps),
            "eval_every": max(1, steps // 20),  # the speed-up is read from these points
        }
        return TrainConfig.model_validate({**proxy.model_dump(), "model": model, "training": training})

    def train_config(self) -> TrainConfig:
        """The proxy's training configuration, with the base shape pinned to the proxy's own shape."""
        sections = {section: getattr(self, section) for section in TrainConfig.model_fields}
        return TrainConfig(**sections).with_base_shape_pinned()

    def dimension(self) -> int:
        """Entries of the top-level search space's vector (a spec without stages)."""
        return len(self.search_space.coordinates(self.model.depth))

    def multipliers(self, vector: list[float]) -> Multipliers:
        """The ``Multipliers`` a top-level search-space vector stands for."""
        return self.search_space.multipliers(vector, self.model.depth)

    def stopping(self) -> EarlyStoppingSection | None:
        """The early-stopping rule, unless there is none."""
        section = self.early_stopping
        return section if section is not None and section.rule != "none" else None

    def to_json(self) -> dict:
        """The spec as stored, defaults filled in; the staged-search and early-stopping sections and asynchronous
        generations only where given, so that a spec without them reads (and hashes) as it did before they
        existed; with stages, no top-level search."""
        unset = {name for name in STAGED_SECTIONS if getattr(self, name) is None}
        if self.stages is not None:  # each stage has its own
            unset |= {"search_space", "optimizer"}
        stored = self.model_dump(mode="json", exclude=unset)
        for optimizer in [stored.get("optimizer"), *(stage["optimizer"] for stage in stored.get("stages") or [])]:
            if optimizer is not None and not optimizer["asynchronous"]:
                del optimizer["asynchronous"]  # absent reads as synchronous, as every spec before the option did
        return stored

    def digest(self) -> str:
        """SHA-256 of the canonical JSON of the spec (defaults filled in): the provenance of a result."""
        canonical = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


def field_error(loc: tuple[str | int, ...], message: str, value: object) -> ValidationError:
    """A validation error at ``loc`` (relative to the model being validated), for a check across fields."""
    error = InitErrorDetails(type=PydanticCustomError("value_error", message), loc=loc, input=value)
    return ValidationError.from_exception_data("SearchSpec", [error])


STAGED_SECTIONS = ("stages", "selection", "validate_", "start_from", "early_stopping")
# What a search spec adds to a training configuration (`hpo train` reads a spec past them).
SEARCH_SECTIONS = tuple(
    info.alias or name for name, info in SearchSpec.model_fields.items() if name not in TrainConfig.model_fields
)
