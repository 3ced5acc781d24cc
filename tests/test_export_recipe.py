"""A real tiny search on nanoGPT's train.bin/val.bin, trained through the engine's own path, exports its recipe:
the schedule at the target's steps, the clip, the z-loss and the data the server stored."""

from __future__ import annotations

import json

import jsonschema
import numpy as np
import pytest
from fastapi.testclient import TestClient

from hpo_service.api.app import create_app
from hpo_service.api.settings import settings_of
from hpo_service.engine.executor import Finished, train_trial
from hpo_service.engine.records import record_all
from hpo_service.engine.runner import SearchRunner
from hpo_service.store.database import transaction
from hpo_service.store.models import Search
from trainer.data import load_corpus
from trainer.export import EXPORT_SCHEMA, load_export
from trainer.parameterisation import Shape
from trainer.schedule import Schedule

TRAINING = {"batch_size": 4, "steps": 20, "warmup_steps": 3, "lr_floor": 0.2, "grad_clip": 1.0, "z_loss": 1e-4,
            "data": "tokens:owt", "device": "cpu", "eval_batches": 1}  # fmt: skip
SPEC = {
    "name": "recipe",
    "model": {"width": 32, "depth": 1, "head_dim": 16, "seq_len": 16},
    "training": TRAINING,
    "search_space": {"modules": ["mlp_up"], "hps": ["lr"]},
    "optimizer": {"name": "random", "population": 2, "generations": 1},
}
TARGET = Shape(width=64, depth=1, batch_size=8, tokens=20_000)  # m_D = 20,000 / 1,280, m_B = 2


@pytest.fixture
def rooted(db_url, tmp_path):
    root = tmp_path / "data"
    (root / "owt").mkdir(parents=True)
    rng = np.random.default_rng(0)
    rng.integers(0, 256, 20_000).astype(np.uint16).tofile(root / "owt" / "train.bin")
    rng.integers(0, 256, 2_000).astype(np.uint16).tofile(root / "owt" / "val.bin")
    with TestClient(create_app(db_url, run_engine=False, data_roots=[str(root)])) as client:
        yield client, root


def test_a_real_searchs_export_carries_its_recipe_at_the_target(rooted):
    client, root = rooted
    response = client.post("/api/searches", json=SPEC)
    assert response.status_code == 201, response.text
    search_id = response.json()["id"]
    sessions = settings_of(client.app).sessions
    with transaction(sessions) as session:
        runner = SearchRunner.load(session, session.get(Search, search_id))
        dispatched = runner.pending(session, 2)
    results = [Finished(d.trial_id, train_trial(d.payload, lambda step, metrics: None)) for d in dispatched]
    assert [r.result["status"] for r in results] == ["succeeded"] * 2
    fingerprint = load_corpus(f"tokens:{root / 'owt'}").fingerprint  # trained on train.bin and val.bin
    assert [r.result["corpus"] for r in results] == [fingerprint] * 2
    with transaction(sessions) as session:
        record_all(session, results)
    with transaction(sessions) as session:
        assert runner.advance(session)

    response = client.get(f"/api/searches/{search_id}/export", params=vars(TARGET))
    assert response.status_code == 200, response.text
    export = response.json()
    jsonschema.validate(export, json.loads(EXPORT_SCHEMA.read_text()))
    stored = {"grad_clip": 1.0, "z_loss": 1e-4, "data": f"tokens:{root / 'owt'}", "val_fraction": 0.05}
    assert export["recipe"] == {
        "schedule": {"kind": "linear_warmup_cosine", "steps": 20, "warmup_steps": 3, "lr_floor": 0.2},
        **stored,
    }
    m_d, m_b = 20_000 / (20 * 4 * 16), 8 / 4
    steps = round(20 * m_d / m_b)  # 156.25: the proxy's steps × m_D / m_B
    assert steps == round(20 * load_export(export).tuned.materialise(TARGET).steps_multiplier) == 156
    assert export["target"]["steps"] == steps
    warmup = round(3 * steps / 20)  # 23.4: the proxy's warm-up fraction of the run
    assert export["target"]["recipe"] == {
        "schedule": {"kind": "linear_warmup_cosine", "steps": steps, "warmup_steps": warmup, "lr_floor": 0.2},
        **stored,
    }
    assert load_export(export).schedule == Schedule(steps=156, warmup_steps=23, lr_floor=0.2)
