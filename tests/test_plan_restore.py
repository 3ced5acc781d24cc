"""A search plan read back by another process (a restarted controller) asks what the uninterrupted one would."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from hpo_service.engine.plan import SearchPlan
from hpo_service.engine.policy import Outcome
from hpo_service.spec import SearchSpec
from hpo_service.statuses import TrialStatus
from tests.controller import ROOT

# In a fresh process (its own hash salt): read a plan, tell its phase losses that depend on each candidate only,
# ask the next phase, and write the plan back.
CONTINUE = """
import sys
from hpo_service.engine.plan import SearchPlan
from tests.test_plan_restore import tell_and_ask
plan = SearchPlan.loads(sys.stdin.buffer.read())
tell_and_ask(plan)
sys.stdout.buffer.write(plan.dumps())
"""


def spec(optimizer: str) -> SearchSpec:
    return SearchSpec.model_validate(
        {
            "name": "restore",
            "search_space": {"modules": ["attn_q", "attn_out", "mlp_up", "mlp_down", "unembedding"], "hps": ["lr"]},
            "optimizer": {"name": optimizer, "population": 4, "generations": 4, "seed": 7},
        }
    )


def tell_and_ask(plan: SearchPlan) -> list[list[float]]:
    """Tell the current phase a loss that is a function of each candidate, then ask the next phase."""
    losses = [3.0 + sum((v - 0.3) ** 2 for v in c.vector) for c in plan.phase.candidates]
    plan.tell([[Outcome(TrialStatus.SUCCEEDED, loss)] for loss in losses])
    return [c.vector for c in plan.ask().candidates]


@pytest.mark.parametrize("optimizer", ["cma", "diagonal_cma"])  # the optimizers whose state holds hashes
def test_a_plan_restarted_in_other_processes_asks_what_the_uninterrupted_plan_asks(optimizer):
    uninterrupted = SearchPlan(spec(optimizer))
    uninterrupted.ask()
    state = uninterrupted.dumps()
    for _ in range(3):  # each generation told and asked by a process with another hash salt
        tell_and_ask(uninterrupted)
    for hash_seed in ("1", "2", "3"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(ROOT)}
        state = subprocess.run(
            [sys.executable, "-c", CONTINUE], input=state, capture_output=True, env=env, cwd=ROOT, check=True
        ).stdout
    restarted = SearchPlan.loads(state)
    assert restarted.generation == uninterrupted.generation == 3
    assert [c.vector for c in restarted.phase.candidates] == [c.vector for c in uninterrupted.phase.candidates]
