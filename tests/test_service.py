"""The user's path through the controller: `hpo serve`, `hpo submit`, `hpo status`, over real HTTP."""

from __future__ import annotations

import subprocess
import sys

from sqlalchemy import func, select

from hpo_service.store.database import database_url, make_engine, session_factory
from hpo_service.store.models import ProgressPoint, Trial
from tests.controller import ROOT, Controller


def hpo(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hpo_service.cli", *args], capture_output=True, text=True, cwd=ROOT)


def test_serve_and_submit_run_the_example_search_to_completion(tmp_path):
    db = database_url(str(tmp_path / "hpo.db"))
    controller = Controller(db, tmp_path / "controller.log").start()
    try:
        submitted = hpo("submit", "examples/tiny.yaml", "--server", controller.url)
        assert submitted.returncode == 0, submitted.stderr
        search_id = int(submitted.stdout.strip().splitlines()[-1])
        search = controller.wait_for(
            search_id, lambda s, trials: s["status"] not in ("queued", "running"), timeout_s=300, interval_s=1
        )
        status = hpo("status", str(search_id), "--server", controller.url)
    finally:
        controller.stop()

    assert search["status"] == "completed"
    assert search["generations_completed"] == search["generations"] == 3
    assert search["trials"]["succeeded"] == 18 and search["best_loss"] < 3.5
    assert status.returncode == 0 and "completed" in status.stdout
    sessions = session_factory(make_engine(db))
    with sessions() as session:
        trials = session.scalars(select(Trial).where(Trial.search_id == search_id)).all()
        assert {t.status for t in trials} == {"succeeded"}
        points = dict(
            session.execute(select(ProgressPoint.trial_id, func.count()).group_by(ProgressPoint.trial_id)).all()
        )
    assert all(points.get(t.id, 0) == 60 for t in trials)  # every trial has its learning curve, a point a step


def test_cli_errors_are_one_line(tmp_path):
    unreachable = hpo("status", "1", "--server", "http://127.0.0.1:9")
    assert unreachable.returncode == 2
    assert unreachable.stderr.startswith("hpo: error: cannot reach the controller")
    assert len(unreachable.stderr.strip().splitlines()) == 1
    missing = hpo("submit", str(tmp_path / "absent.yaml"))
    assert missing.returncode == 2 and "cannot read" in missing.stderr
