"""SIGKILL the controller mid-search, start it again: the search carries on from the optimizer's saved state.

The reference is the same search run without interruption. On the CPU a trial is bitwise reproducible and
the optimizer is seeded, so a correctly resumed search proposes *exactly* the reference's candidates in every
generation; a fresh optimizer would start again from generation 0's proposals.
"""

from __future__ import annotations

import time

import pytest
from sqlalchemy import select

from hpo_service.engine.commands import Commands
from hpo_service.engine.engine import Engine
from hpo_service.engine.executor import RayExecutor
from hpo_service.spec import SearchSpec
from hpo_service.store.database import database_url, make_engine, session_factory, upgrade
from hpo_service.store.models import Search, Trial
from tests.controller import Controller

SPEC = {
    "name": "resume",
    "model": {"width": 32, "depth": 1, "head_dim": 16, "seq_len": 32},
    "training": {"batch_size": 4, "steps": 60, "warmup_steps": 5, "device": "cpu"},
    "search_space": {"modules": ["attn_q", "attn_out", "mlp_up", "mlp_down", "unembedding"], "hps": ["lr"]},
    "optimizer": {"name": "cma", "population": 4, "generations": 3, "seed": 7},
    "execution": {"parallel": 2, "max_retries": 0, "timeout_s": 120},
}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, local_ray) -> dict[tuple[int, int], tuple[list[float], float]]:
    """(generation, index) -> (vector, loss) of the search run in one go."""
    url = database_url(str(tmp_path_factory.mktemp("reference") / "hpo.db"))
    upgrade(url)
    sessions = session_factory(make_engine(url))
    search = Commands(sessions).create(SearchSpec.model_validate(SPEC))
    engine = Engine(sessions)
    engine.executor = RayExecutor()
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        engine.turn()
        with sessions() as session:
            if session.get(Search, search.id).status == "completed":
                trials = session.scalars(select(Trial).where(Trial.search_id == search.id)).all()
                return {(t.generation, t.index): (t.vector, t.loss) for t in trials}
    pytest.fail("the reference search did not complete")


def test_a_killed_controller_resumes_the_search_exactly(db_url, reference, tmp_path):
    controller = Controller(db_url, tmp_path / "controller.log").start()
    try:
        search_id = controller.post("/api/searches", SPEC).json()["id"]
        # kill while generation 1 is training: generation 0 told, generation 1 asked and snapshotted
        controller.wait_for(
            search_id, lambda s, trials: any(t["generation"] == 1 and t["status"] == "running" for t in trials)
        )
        controller.kill()
        assert controller.process.poll() is not None

        sessions = session_factory(make_engine(db_url))
        with sessions() as session:
            interrupted = {t.id for t in session.scalars(select(Trial).where(Trial.status == "running"))}
        assert interrupted, "some trials were running when the controller died"

        controller.start()
        final = controller.wait_for(search_id, lambda s, trials: s["status"] in ("completed", "failed"))
        assert final["status"] == "completed", final
        trials = controller.get(f"/api/searches/{search_id}/trials", limit=1000)["trials"]
    finally:
        controller.stop()

    population, generations = SPEC["optimizer"]["population"], SPEC["optimizer"]["generations"]
    keys = [(t["generation"], t["index"]) for t in trials]
    assert len(keys) == len(set(keys)) == population * generations  # every candidate exactly once
    assert all(t["status"] == "succeeded" for t in trials)
    for t in trials:  # the same candidates, the same losses, as the uninterrupted search
        vector, loss = reference[(t["generation"], t["index"])]
        assert t["vector"] == pytest.approx(vector, abs=1e-12)
        assert t["loss"] == pytest.approx(loss, rel=1e-9)
    rerun = [t for t in trials if t["id"] in interrupted]
    assert rerun and all(t["attempts"] == 1 for t in rerun)  # re-run, and the interruption is not held against it
