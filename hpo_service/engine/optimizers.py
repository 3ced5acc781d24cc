"""The policies that propose candidates: Nevergrad's optimizers, and the paper's trust-region random search.

Every optimizer works on a box of log2 multipliers, starts at 0 (the base HPs) and is asked one population per
generation. Diverged and failed trials are told the **penalty** ``max(worst finite loss so far, ln V) + 1``
(V the vocabulary size, ln V the loss of a uniform predictor): worse than anything seen, finite, and
deterministic given the store, so that a resumed search is told exactly what an uninterrupted one would be.
"""

from __future__ import annotations

import math

import nevergrad as ng
import numpy as np
from nevergrad.optimization import base

from hpo_service.spec import OptimizerSection, SearchSpace, SearchSpec


def build_optimizer(spec: SearchSpec) -> base.Optimizer:
    """A fresh optimizer for ``spec``'s top-level search space and optimizer."""
    return build_stage_optimizer(spec.search_space, spec.optimizer, spec.model.depth)


def build_stage_optimizer(search_space: SearchSpace, o: OptimizerSection, depth: int) -> base.Optimizer:
    """A fresh optimizer over ``search_space`` (at ``depth`` blocks): its parametrization seeded, its population
    the section's."""
    dimension = len(search_space.coordinates(depth))
    low, high = search_space.log2_bounds
    space = ng.p.Array(init=np.zeros(dimension), lower=low, upper=high).set_mutation(sigma=o.sigma)
    space.random_state = np.random.RandomState(o.seed)
    budget = o.population * o.generations
    # Nevergrad shrinks CMA's first step in a fully bounded space (×0.3, or ×0.15 from 18 dimensions); undone so
    # that CMA's initial step is ``sigma`` octaves, as the spec says, not a sixth of it.
    scale = 1 / (0.3 if dimension < 18 else 0.15)
    factories = {
        "cma": lambda: ng.optimizers.ParametrizedCMA(popsize=o.population, scale=scale),
        "diagonal_cma": lambda: ng.optimizers.ParametrizedCMA(popsize=o.population, diagonal=True, scale=scale),
        "de": lambda: ng.optimizers.DifferentialEvolution(popsize=o.population, crossover="twopoints"),
        "oneplusone": lambda: ng.optimizers.OnePlusOne,
        "ngopt": lambda: ng.optimizers.NGOpt,
        "random": lambda: ng.optimizers.RandomSearch,
        "trust_region": lambda: TrustRegionSearch,
    }
    return factories[o.name]()(parametrization=space, budget=budget, num_workers=o.population)


def penalty(worst_loss: float | None, vocab_size: int) -> float:
    """What a diverged or failed candidate is told (see the module docstring)."""
    floor = math.log(vocab_size)
    return max(floor, worst_loss if worst_loss is not None else floor) + 1.0


class TrustRegionSearch(base.Optimizer):
    """Random search in a box around the incumbent, the box growing on success and shrinking on failure.

    This is the local search the Complete(d)P paper used for per-module multipliers: starting from a known
    stable point (the base HPs) keeps it away from the divergence cliffs a global search falls over. The first
    candidate is the incumbent itself, so the base HPs are always measured. The box's half-width starts at
    the parametrization's sigma, doubles when a generation improves on the incumbent and halves otherwise,
    within [sigma/16, 4·sigma].
    """

    def __init__(self, parametrization: ng.p.Array, budget: int | None = None, num_workers: int = 1) -> None:
        super().__init__(parametrization, budget=budget, num_workers=num_workers)
        self.sigma = float(parametrization.sigma.value)
        self.radius = self.sigma
        self.centre = np.asarray(parametrization.value, dtype=float)
        self.centre_loss = math.inf
        self.low, self.high = (np.asarray(b, dtype=float) for b in parametrization.bounds)
        self._generation: list[tuple[np.ndarray, float]] = []

    def _internal_ask_candidate(self) -> ng.p.Parameter:
        if self.num_ask == 0:
            point = self.centre
        else:
            offset = self._rng.uniform(-self.radius, self.radius, size=self.centre.shape)
            point = np.clip(self.centre + offset, self.low, self.high)
        return self.parametrization.spawn_child(new_value=point)

    def _internal_tell_candidate(self, candidate: ng.p.Parameter, loss: float) -> None:
        self._generation.append((np.asarray(candidate.value, dtype=float), float(loss)))
        if len(self._generation) < self.num_workers:
            return
        point, best = min(self._generation, key=lambda pair: pair[1])
        if best < self.centre_loss:
            self.centre, self.centre_loss = point, best
            self.radius = min(2 * self.radius, 4 * self.sigma)
        else:
            self.radius = max(self.radius / 2, self.sigma / 16)
        self._generation = []

    def _internal_tell_not_asked(self, candidate: ng.p.Parameter, loss: float) -> None:
        self._internal_tell_candidate(candidate, loss)
