"""The user's whole story over real HTTP: serve, submit, watch, export for a bigger model, apply, train it."""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import sys

import httpx
import jsonschema
import torch
import torch.nn.functional as F
from sqlalchemy import func, select

from hpo_service.store.database import database_url, open_database, session_factory
from hpo_service.store.models import ProgressPoint, Trial
from tests.controller import ROOT, Controller, free_port
from trainer import GPT, ModelConfig
from trainer.data import load_corpus, sample_batch
from trainer.export import EXPORT_SCHEMA
from trainer.transfer import apply_export


def hpo(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hpo_service.cli", *args], capture_output=True, text=True, cwd=ROOT, timeout=timeout
    )


def test_submit_watch_export_apply_and_train_the_transferred_model(tmp_path):
    db = database_url(str(tmp_path / "hpo.db"))
    controller = Controller(db, tmp_path / "controller.log").start()
    try:
        submitted = hpo("submit", "examples/tiny.yaml", "--server", controller.url)
        assert submitted.returncode == 0, submitted.stderr
        search_id = int(submitted.stdout.strip().splitlines()[-1])
        watched = hpo("watch", str(search_id), "--server", controller.url, "--interval", "0.5")
        status = hpo("status", str(search_id), "--server", controller.url)
        listed = hpo("list", "--server", controller.url)
        export_path = tmp_path / "best.json"
        exported = hpo("export", str(search_id), "-o", str(export_path), "--width", "256", "--depth", "4",
                       "--server", controller.url)  # fmt: skip
        search = controller.get(f"/api/searches/{search_id}")
        best_trial = controller.get(f"/api/searches/{search_id}/trials", sort="loss", limit=1)["trials"][0]
        detail = controller.get(f"/api/searches/{search_id}/trials/{best_trial['id']}")
    finally:
        controller.stop()

    # watch followed the search to its end, one line per generation, then the best candidates
    assert watched.returncode == 0, watched.stderr
    assert watched.stdout.count("generation ") == 3 and "completed" in watched.stdout
    assert "completed" in status.stdout and "tiny-demo" in listed.stdout
    assert search["generations_completed"] == 3 and search["trials"]["succeeded"] == 18
    assert len(detail["curve"]) == 60 and detail["curve"][-1]["val_loss"] == best_trial["loss"]

    # every trial ended with its curve in the store
    sessions = session_factory(open_database(db))
    with sessions() as session:
        trials = session.scalars(select(Trial).where(Trial.search_id == search_id)).all()
        points = dict(
            session.execute(select(ProgressPoint.trial_id, func.count()).group_by(ProgressPoint.trial_id)).all()
        )
    assert {t.status for t in trials} == {"succeeded"}
    assert all(points.get(t.id) == 60 for t in trials)

    # the export: valid, the best candidate, materialised for a 4x wider and 2x deeper target
    assert exported.returncode == 0, exported.stderr
    export = json.loads(export_path.read_text())
    jsonschema.validate(export, json.loads(EXPORT_SCHEMA.read_text()))
    assert export["loss"]["mean"] == search["best_loss"] == best_trial["loss"]
    assert export["target"]["shape"]["width"] == 256 and export["target"]["shape"]["depth"] == 4
    assert export["provenance"]["search_id"] == search_id

    # apply it to a model of that shape and train it for a few steps: it learns, it does not diverge
    torch.manual_seed(0)
    model = GPT(ModelConfig(width=256, depth=4, head_dim=16, seq_len=64))
    optimizer = torch.optim.AdamW(apply_export(model, export_path))
    corpus = load_corpus("builtin:python-stdlib", vocab_size=256, val_fraction=0.05)
    losses = []
    for step in range(8):
        x, y = sample_batch(corpus.train, 16, 64, seed=0, step=step)
        loss = F.cross_entropy(model(x).view(-1, 256), y.view(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0]


STAGED = """\
name: staged-e2e
model: {width: 32, depth: 1, head_dim: 16, seq_len: 32}
training: {batch_size: 4, steps: 8, warmup_steps: 1, device: cpu}
stages:
  - {name: global, search_space: {tied: true, hps: [lr]}, optimizer: {name: random, population: 2, generations: 1}}
  - {name: per-module, search_space: {modules: [mlp_up, unembedding], hps: [lr]},
     optimizer: {name: trust_region, population: 2, generations: 1, sigma: 0.5}}
selection: {top: 2, seeds: 1}
validate: {targets: [{width: 64, tokens_multiplier: 2}], seeds: 2}
execution: {parallel: 2, timeout_s: 300}
"""


def test_a_staged_search_with_a_transfer_check_runs_from_hpo_submit_to_its_export(db_url, tmp_path):
    """The staged recipe as a user runs it: submitted over HTTP, trained for real on Ray, on each store."""
    spec = tmp_path / "staged.yaml"
    spec.write_text(STAGED)
    controller = Controller(db_url, tmp_path / "controller.log").start()
    try:
        submitted = hpo("submit", str(spec), "--server", controller.url)
        assert submitted.returncode == 0, submitted.stderr
        search_id = int(submitted.stdout.strip().splitlines()[-1])
        watched = hpo("watch", str(search_id), "--server", controller.url, "--interval", "0.5", timeout=600)
        exported = hpo("export", str(search_id), "-o", str(tmp_path / "best.json"), "--server", controller.url)
        search = controller.get(f"/api/searches/{search_id}")
        validation = controller.get(f"/api/searches/{search_id}/validation")
        kinds = {
            kind: controller.get(f"/api/searches/{search_id}/trials", kind=kind)["total"]
            for kind in ("search", "reevaluation", "validation")
        }
    finally:
        controller.stop()

    assert watched.returncode == 0, watched.stderr
    assert search["status"] == "completed" and search["trials"]["succeeded"] == sum(kinds.values())
    assert kinds == {"search": 4, "reevaluation": 4, "validation": 6}  # 2 + 2; top 2 × 1 seed × 2; 3 arms × 2 seeds
    (entry,) = validation
    assert entry["target"]["width"] == 64 and entry["target"]["tokens"] == 2 * 8 * 4 * 32
    assert [(arm["name"], len(arm["losses"])) for arm in entry["arms"]] == [
        ("per-module", 2),
        ("global", 2),
        ("base", 2),
    ]
    assert "validation at width=64 tokens_multiplier=2:" in watched.stdout
    assert exported.returncode == 0, exported.stderr
    export = json.loads((tmp_path / "best.json").read_text())
    jsonschema.validate(export, json.loads(EXPORT_SCHEMA.read_text()))
    assert export["validation"]["recommendation"] == search["recommendation"]
    assert export["provenance"]["measured_on"] == "fresh seeds"


def test_cli_errors_are_one_line(tmp_path):
    unreachable = hpo("status", "1", "--server", "http://127.0.0.1:9")
    assert unreachable.returncode == 2
    assert unreachable.stderr.startswith("hpo: error: cannot reach the controller")
    assert len(unreachable.stderr.strip().splitlines()) == 1
    missing = hpo("submit", str(tmp_path / "absent.yaml"))
    assert missing.returncode == 2 and "cannot read" in missing.stderr


def test_hpo_run_serves_runs_the_spec_and_stops_on_ctrl_c(tmp_path):
    spec = tmp_path / "small.yaml"
    spec.write_text(
        "name: small\n"
        "model: {width: 32, depth: 1, head_dim: 16, seq_len: 32}\n"
        "training: {batch_size: 4, steps: 10, device: cpu}\n"
        "search_space: {modules: [mlp_up, unembedding], hps: [lr]}\n"
        "optimizer: {name: cma, population: 2, generations: 1}\n"
    )
    port = free_port()
    command = ["run", str(spec), "--port", str(port), "--db", str(tmp_path / "h.db")]
    process = subprocess.Popen(
        [sys.executable, "-m", "hpo_service.cli", *command],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        lines = []
        for line in process.stdout:
            lines.append(line)
            if line.startswith("export for a 4x wider"):
                break
        output = "".join(lines)
        assert f"http://127.0.0.1:{port}" in output and "generation   0" in output
        assert "--width 128 --depth 2" in output
        assert httpx.get(f"http://127.0.0.1:{port}/api/searches/1").json()["status"] == "completed"
        os.killpg(process.pid, signal.SIGINT)
        # stopping Ray takes seconds, more on a loaded 2-core machine; what it prints meanwhile is read, so that
        # a full pipe cannot keep it from exiting
        rest, _ = process.communicate(timeout=180)
        assert process.returncode == 130, rest[-2000:]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
