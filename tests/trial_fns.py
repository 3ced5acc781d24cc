"""Trial functions with a known behaviour, for the engine tests: run by real Ray workers."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
from pathlib import Path

from hpo_service.engine.executor import train_trial


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


def paced_real(payload: dict, report) -> dict:
    """The real trainer after a 2 s pause: a window in which a test can kill the worker mid-trial."""
    time.sleep(2.0)
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
