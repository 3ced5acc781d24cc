"""Trial functions with a known behaviour, for the engine tests: run by real Ray workers."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import signal
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hpo_service.engine.entrypoints import TrialFn
from hpo_service.engine.executor import train_trial

EXECUTION_LOG = "HPO_TEST_EXECUTION_LOG"  # names the file the logged trials append to; Ray workers inherit it
PACE_S = 2.0  # paced_real's pause before it trains


def candidate_key(multipliers: dict, seed: int) -> str:
    """Names a candidate by what it trains (its multipliers and seed): the same in a payload and in the API."""
    return hashlib.sha256(json.dumps([multipliers, seed], sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Execution:
    """One run of a trial function on a worker, as the worker itself recorded it (not as the store says)."""

    key: str
    pid: int
    started: float  # time.time() on the worker
    finished: float | None  # None: the run never returned (its worker died)
    loss: float | None


def read_executions(path: Path) -> dict[str, list[Execution]]:
    """Every execution in the log, per candidate key, in the order they started."""
    starts: dict[str, dict] = {}
    finishes: dict[str, dict] = {}
    for line in (path.read_text() if path.exists() else "").split("\n")[:-1]:  # not a line still being written
        entry = json.loads(line)
        (starts if entry["event"] == "start" else finishes)[entry["execution"]] = entry
    executions: dict[str, list[Execution]] = {}
    for execution, start in sorted(starts.items(), key=lambda item: item[1]["time"]):
        finish = finishes.get(execution, {})
        executions.setdefault(start["key"], []).append(
            Execution(start["key"], start["pid"], start["time"], finish.get("time"), finish.get("loss"))
        )
    return executions


def _log(event: str, execution: str, key: str, **fields: object) -> None:
    """One line per event, in one append, so lines from concurrent workers never interleave."""
    path = os.environ.get(EXECUTION_LOG)
    if path:
        line = {"event": event, "execution": execution, "key": key, "pid": os.getpid(), "time": time.time(), **fields}
        descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(descriptor, (json.dumps(line) + "\n").encode())
        finally:
            os.close(descriptor)


def logged(trial_fn: TrialFn) -> TrialFn:
    """``trial_fn``, recording each start and each return in the file ``HPO_TEST_EXECUTION_LOG`` names."""

    @functools.wraps(trial_fn)
    def run(payload: dict, report: Callable[[int, dict[str, float]], None]) -> dict:
        execution, key = uuid.uuid4().hex, candidate_key(payload["multipliers"], payload["config"]["training"]["seed"])
        _log("start", execution, key)
        result = trial_fn(payload, report)
        _log("finish", execution, key, loss=result.get("final_val_loss"))
        return result

    return run


def synthetic(payload: dict, report) -> dict:
    """A bowl in the log2 multipliers around +0.5, and divergence when any LR multiplier exceeds 1.5 octaves."""
    values = [v for hps in payload["multipliers"]["module"].values() for v in hps.values()]
    lrs = [hps.get("lr", 0.0) for hps in payload["multipliers"]["module"].values()]
    report(1, {"train_loss": 3.0})
    if max(lrs, default=0.0) > 1.5:
        return {"status": "diverged", "final_train_loss": float("nan"), "reason": "synthetic cliff", "steps": 1}
    loss = 2.0 + sum((v - 0.5) ** 2 for v in values) / 10
    return {"status": "succeeded", "final_val_loss": loss, "final_train_loss": loss, "steps": 1,
            "train_curve": [(1, loss)], "eval_curve": [(1, loss)]}  # fmt: skip


def crash_once(marker_dir: str, payload: dict, report) -> dict:
    """The worker process dies the first time it meets a candidate; the second attempt trains it."""
    key = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
    marker = Path(marker_dir) / key
    if not marker.exists():
        marker.touch()
        os._exit(1)
    return synthetic(payload, report)


def always_crash(payload: dict, report) -> dict:
    os._exit(1)


def hang(payload: dict, report) -> dict:
    report(1, {"train_loss": 3.0})
    time.sleep(120)
    return synthetic(payload, report)


def slow_real(payload: dict, report) -> dict:
    """The real trainer, after a pause that leaves time to pause or cancel the search."""
    time.sleep(1.0)
    return train_trial(payload, report)


def reporting(payload: dict, report) -> dict:
    """Reports a point every 0.4 s for 4 s, then succeeds: long enough for progress to stream back."""
    for step in range(1, 11):
        report(step, {"train_loss": 4.0 - step / 10})
        time.sleep(0.4)
    return synthetic(payload, report)


@logged
def paced_real(payload: dict, report) -> dict:
    """The real trainer after a pause (a window in which a test can strike mid-trial), executions logged."""
    time.sleep(PACE_S)
    return train_trial(payload, report)


def raises(payload: dict, report) -> dict:
    report(1, {"train_loss": 3.0})
    raise ValueError("a bug in the trial code")


def out_of_memory(payload: dict, report) -> dict:
    """Asks the allocator for a petabyte: the allocator's own out-of-memory error, as on an undersized node."""
    import torch

    torch.empty(2**50, dtype=torch.uint8)
    return synthetic(payload, report)


def oom_killed_once(marker_dir: str, payload: dict, report) -> dict:
    """The first attempt is SIGKILLed, as the kernel's out-of-memory killer does; the retry trains."""
    key = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
    marker = Path(marker_dir) / key
    if not marker.exists():
        marker.touch()
        os.kill(os.getpid(), signal.SIGKILL)
    return synthetic(payload, report)


def raises_on_odd_seeds(payload: dict, report) -> dict:
    """``synthetic`` on even seeds, a bug on odd ones: with two replicates every candidate has one failed trial."""
    if payload["config"]["training"]["seed"] % 2:
        return raises(payload, report)
    return synthetic(payload, report)


def missing_file_but_seed_3(payload: dict, report) -> dict:
    """Fails for a missing file, except on seed 3, where it fails for another reason."""
    if payload["config"]["training"]["seed"] == 3:
        raise ValueError("a bug in the trial code")
    raise FileNotFoundError("[Errno 2] No such file or directory: 'corpus.txt'")


def diverges_or_raises(payload: dict, report) -> dict:
    """Diverges on even seeds and raises on odd ones: no trial succeeds, yet no generation fails entirely."""
    if payload["config"]["training"]["seed"] % 2:
        return raises(payload, report)
    return {"status": "diverged", "final_train_loss": float("nan"), "reason": "synthetic cliff", "steps": 1}


def fails_with_unstorable_text(payload: dict, report) -> dict:
    """Fails with a NUL byte (PostgreSQL refuses it) and a lone surrogate (not UTF-8; what ``surrogateescape``
    makes of an undecodable byte) in its reason."""
    return {"status": "failed", "reason": "bad\x00byte \udcff"}


def overflows_a_column_for_seed(bad_seed: int, payload: dict, report) -> dict:
    """``synthetic``, except that on ``bad_seed`` the result claims 2**64 steps: more than any integer column of
    either store holds, so that no store can write it."""
    result = synthetic(payload, report)
    return {**result, "steps": 2**64} if payload["config"]["training"]["seed"] == bad_seed else result


CURVE_STEP_S = 0.05  # curve's time per step


def bowl_loss(multipliers: dict) -> float:
    """synthetic's bowl, without its cliff: the final loss a candidate's curve falls to."""
    values = [v for hps in multipliers["module"].values() for v in hps.values()]
    return 2.0 + sum((v - 0.5) ** 2 for v in values) / 10


def curve(payload: dict, report) -> dict:
    """A learning curve falling linearly from bowl_loss + 2 to bowl_loss, CURVE_STEP_S a step, evaluated as the
    trainer evaluates; it ends ``stopped`` when ``report`` answers True, as the trainer does."""
    training = payload["config"]["training"]
    steps, every = training["steps"], training["eval_every"] or max(1, training["steps"] // 10)
    final = bowl_loss(payload["multipliers"])
    points = []
    for step in range(1, steps + 1):
        time.sleep(CURVE_STEP_S)
        loss = final + 2.0 * (1 - step / steps)
        if step % every and step != steps:
            continue
        points.append((step, loss))
        if report(step, {"train_loss": loss, "val_loss": loss}) and step < steps:
            return {"status": "stopped", "final_val_loss": loss, "steps": step, "train_curve": points,
                    "eval_curve": points, "reason": f"stopped at step {step}"}  # fmt: skip
    return {"status": "succeeded", "final_val_loss": final, "final_train_loss": final, "steps": steps,
            "train_curve": points, "eval_curve": points}  # fmt: skip


def where_it_ran(payload: dict, report) -> dict:
    """Succeeds at once, telling where it ran: the worker's process, the device in its payload, the GPUs Ray
    assigned it and the ``CUDA_VISIBLE_DEVICES`` Ray set for it."""
    import ray

    return {"status": "succeeded", "pid": os.getpid(), "device": payload["device"],
            "gpu_ids": ray.get_runtime_context().get_accelerator_ids().get("GPU", []),
            "visible": os.environ.get("CUDA_VISIBLE_DEVICES")}  # fmt: skip
