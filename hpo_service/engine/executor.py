"""Running trials on Ray: one Ray task per trial, progress streamed back through a small inbox actor.

Ray places each task by the resources it asks for (``cpus_per_trial``, ``gpus_per_trial``); locally the
controller starts its own Ray on loopback (``local_ray``), ``RAY_ADDRESS`` joins a cluster. The executor only
runs things and reports what happened, as events; deciding what they mean (retry, fail, tell) is the engine's job.

Every trial runs on the device Ray assigned it. A GPU trial gets a worker process of its own (``max_calls=1``),
which exits when the trial ends: Ray reuses worker processes across tasks and sets ``CUDA_VISIBLE_DEVICES`` anew for
each, but CUDA reads it once, when a process first uses it, so a reused process would keep its first trial's GPU;
exiting also hands back everything the trial held on the GPU (CUDA context, torch's cached blocks, compiled
kernels), with nothing to empty by hand. Ray gives a remote function declared with GPUs this limit by default, but
the limit is fixed when the function is declared (``options`` cannot set it), and the trials here ask for their GPUs
through ``options``; so the GPU variant is declared with it. A fresh process costs seconds (importing torch;
compiling again, partly from Inductor's cache on disk) against a trial's minutes. Each trial's payload also carries
the torch ``device`` of that assignment (``devices.assigned_device``): ``cpu`` for a trial given no GPU, even on a
GPU node, where Ray leaves ``CUDA_VISIBLE_DEVICES`` as it is; the built-in trial trains there when its config says
``device: auto``.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import RayError, RayTaskError, TaskCancelledError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from hpo_service.engine import local_ray
from hpo_service.engine.devices import VISIBLE_DEVICES, assigned_device
from hpo_service.engine.entrypoints import TrialFn, load_trial

log = logging.getLogger(__name__)

PROGRESS_INTERVAL_S = 1.0  # a worker sends its progress at most this often
DRAIN_INTERVAL_S = 0.5  # the engine collects progress at most this often
BATCH_GRACE_S = 0.005
INBOX_TIMEOUT_S = 10.0  # a worker waits this long at most for the inbox's reply, then trains on


@dataclass(frozen=True)
class Started:
    trial_id: int
    node: str
    worker: str


@dataclass(frozen=True)
class Progress:
    trial_id: int
    points: list[tuple[int, dict[str, float]]]


@dataclass(frozen=True)
class Finished:
    trial_id: int
    result: dict  # trainer.TrialResult.to_dict()
    node: str | None = None
    worker: str | None = None
    streamed: bool = False  # progress points of this attempt were reported, and the full curve replaces them


@dataclass(frozen=True)
class Lost:
    """The worker running the trial died (process crash, node loss, out of memory): worth a retry."""

    trial_id: int
    reason: str


@dataclass(frozen=True)
class TimedOut:
    trial_id: int
    timeout_s: float


Event = Started | Progress | Finished | Lost | TimedOut


@dataclass(frozen=True)
class Resources:
    cpus: float = 1.0
    gpus: float = 0.0
    timeout_s: float = 3600.0


def train_trial(payload: dict, report: Callable[[int, dict[str, float]], None]) -> dict:
    """The built-in trial: ``trainer.run_trial`` on the payload's config and multipliers, on the payload's
    ``device`` (the one Ray assigned) where the config leaves the device to it (``auto``)."""
    from trainer import Multipliers, TrainConfig, run_trial

    config = TrainConfig.model_validate(payload["config"])
    if payload.get("device") and config.training.device == "auto":
        training = config.training.model_copy(update={"device": payload["device"]})
        config = config.model_copy(update={"training": training})
    return run_trial(config, Multipliers.from_dict(payload["multipliers"]), report).to_dict()


def spec_trial(payload: dict, report: Callable[[int, dict[str, float]], None]) -> dict:
    """The trial the spec names (``execution.trial``, allowed by the server at submission), else the built-in."""
    name = payload.get("trial")
    return (load_trial(name) if name else train_trial)(payload, report)


@ray.remote(num_cpus=0)
class ProgressInbox:
    """Collects the workers' progress messages until the engine drains them, and answers each with whether the
    engine asked that trial to stop."""

    def __init__(self) -> None:
        self.messages: list[tuple] = []
        self.stopping: set[int] = set()

    def push(self, message: tuple) -> bool:
        self.messages.append(message)
        return message[1] in self.stopping

    def drain(self) -> list[tuple]:
        messages, self.messages = self.messages, []
        return messages

    def stop(self, trial_ids: list[int]) -> None:
        self.stopping.update(trial_ids)

    def forget(self, trial_ids: list[int]) -> None:
        """The trials ended: a retry of one must not find an old request to stop."""
        self.stopping.difference_update(trial_ids)


_inboxes: dict[str, Any] = {}  # per worker process: the inbox handles it has looked up


def _run_on_worker(trial_fn: TrialFn, trial_id: int, payload: dict, inbox_name: str) -> tuple[dict, str, str]:
    context = ray.get_runtime_context()
    node, worker = context.get_node_id(), f"{socket.gethostname()}:{os.getpid()}"
    gpu_ids = context.get_accelerator_ids().get("GPU", [])
    payload = {**payload, "device": assigned_device(gpu_ids, os.environ.get(VISIBLE_DEVICES))}
    _send(inbox_name, ("started", trial_id, node, worker))
    buffered: list[tuple[int, dict[str, float]]] = []
    last_sent = time.monotonic()

    def report(step: int, metrics: dict[str, float]) -> bool:
        """Buffer the point; send the buffer at an evaluation (what early stopping judges) or once a second.
        True when the engine asked this trial to stop."""
        nonlocal last_sent
        buffered.append((step, dict(metrics)))
        if "val_loss" not in metrics and time.monotonic() - last_sent < PROGRESS_INTERVAL_S:
            return False
        stop = _send(inbox_name, ("progress", trial_id, buffered.copy()), answer=True)
        buffered.clear()
        last_sent = time.monotonic()
        return stop

    return trial_fn(payload, report), node, worker  # the final curves come with the result: no flush


def _send(inbox_name: str, message: tuple, answer: bool = False) -> bool:
    """Best effort: live progress is a convenience, and losing the inbox must never fail a trial. With
    ``answer``, waits for the inbox's reply: whether the trial is to stop."""
    try:
        if inbox_name not in _inboxes:  # a name travels with each task more cheaply than an actor handle
            _inboxes[inbox_name] = ray.get_actor(inbox_name)
        reply = _inboxes[inbox_name].push.remote(message)
        return bool(ray.get(reply, timeout=INBOX_TIMEOUT_S)) if answer else False
    except (ValueError, RayError):
        _inboxes.pop(inbox_name, None)
        return False


_remote_trial = ray.remote(max_retries=0)(_run_on_worker)
_remote_gpu_trial = ray.remote(max_retries=0, max_calls=1)(_run_on_worker)  # a process per GPU trial


@dataclass
class _InFlight:
    ref: ray.ObjectRef
    resources: Resources
    started: float | None = None  # monotonic time the worker began (queueing for resources is not timed)
    streamed: bool = False


@dataclass
class RayExecutor:
    """Submits trials as Ray tasks and turns what comes back into events."""

    trial_fn: TrialFn = spec_trial
    in_flight: dict[int, _InFlight] = field(default_factory=dict)
    last_drain: float = 0.0

    def __post_init__(self) -> None:
        self._open_inbox()
        self._tasks: dict[tuple[float, float], Any] = {}

    def _open_inbox(self) -> None:
        """The inbox lives on the controller's own node (the head, for a Ray client): the node most likely to
        stay up; trials look it up by name."""
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
        self.inbox_name = f"hpo-progress-{uuid.uuid4().hex}"
        self.inbox = ProgressInbox.options(name=self.inbox_name, scheduling_strategy=here).remote()

    def submit(self, trial_id: int, payload: dict, resources: Resources) -> None:
        key = (resources.cpus, resources.gpus)
        if key not in self._tasks:
            remote = _remote_gpu_trial if resources.gpus > 0 else _remote_trial
            self._tasks[key] = remote.options(num_cpus=resources.cpus, num_gpus=resources.gpus)
        ref = self._tasks[key].remote(self.trial_fn, trial_id, payload, self.inbox_name)
        self.in_flight[trial_id] = _InFlight(ref, resources)

    def close(self) -> None:
        """Stop every running trial and release the progress inbox (an actor, so a process of its own)."""
        self.cancel(list(self.in_flight))
        ray.kill(self.inbox)

    def tracks(self, trial_id: int) -> bool:
        return trial_id in self.in_flight

    def cancel(self, trial_ids: list[int]) -> None:
        """Stop these trials; they produce no further events."""
        for trial_id in trial_ids:
            flight = self.in_flight.pop(trial_id, None)
            if flight is not None:
                ray.cancel(flight.ref, force=True)
        self._forget(trial_ids)

    def stop(self, trial_ids: list[int]) -> None:
        """Ask these trials to end early: each learns it at its next progress report, and ends ``stopped`` with
        its curve so far (a trial function that ignores the answer trains on to its end)."""
        self.inbox.stop.remote(trial_ids)

    def _forget(self, trial_ids: list[int]) -> None:
        if trial_ids:
            self.inbox.forget.remote(trial_ids)

    def poll(self, wait_s: float = 0.0) -> list[Event]:
        """Events since the last poll, waiting up to ``wait_s`` for a trial to finish if none has."""
        events: list[Event] = []
        if time.monotonic() - self.last_drain >= DRAIN_INTERVAL_S:
            events += self._drain()
        refs = {flight.ref: trial_id for trial_id, flight in self.in_flight.items()}
        if refs:
            ready, _ = ray.wait(list(refs), num_returns=1, timeout=wait_s)
            if ready:  # a short grace lets results that arrive together be written together
                ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=BATCH_GRACE_S)
            for ref in ready:
                events.append(self._outcome(refs[ref], ref))
        elif wait_s:
            time.sleep(wait_s)
        events.extend(self._timeouts())
        return events

    def _outcome(self, trial_id: int, ref: ray.ObjectRef) -> Event:
        streamed = self.in_flight.pop(trial_id).streamed
        self._forget([trial_id])
        try:
            result, node, worker = ray.get(ref)
            return Finished(trial_id, result, node, worker, streamed)
        except RayTaskError as exc:  # the trial's own code raised: deterministic, not worth a retry
            cause = exc.cause if exc.cause is not None else exc
            return Finished(trial_id, {"status": "failed", "reason": f"{type(cause).__name__}: {cause}"})
        except TaskCancelledError:
            return Lost(trial_id, "the task was cancelled by Ray")
        except RayError as exc:
            return Lost(trial_id, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")

    def _drain(self) -> list[Event]:
        self.last_drain = time.monotonic()
        events: list[Event] = []
        try:
            messages = ray.get(self.inbox.drain.remote(), timeout=10)
        except RayError:  # the inbox's node was lost: open a new one (running trials stream to it no more)
            log.warning("executor: the progress inbox was lost; opening a new one")
            self._open_inbox()
            return events
        for message in messages:
            kind, trial_id, *rest = message
            if trial_id not in self.in_flight:
                continue  # a late message of a trial already finished or cancelled
            if kind == "started":
                self.in_flight[trial_id].started = time.monotonic()
                events.append(Started(trial_id, node=rest[0], worker=rest[1]))
            else:
                self.in_flight[trial_id].streamed = True
                events.append(Progress(trial_id, rest[0]))
        return events

    def _timeouts(self) -> list[Event]:
        now = time.monotonic()
        expired = [
            trial_id
            for trial_id, flight in self.in_flight.items()
            if flight.started is not None and now - flight.started > flight.resources.timeout_s
        ]
        events: list[Event] = []
        for trial_id in expired:
            timeout = self.in_flight[trial_id].resources.timeout_s
            self.cancel([trial_id])
            events.append(TimedOut(trial_id, timeout))
        return events


def ensure_ray(num_cpus: int | None = None) -> bool:
    """Join the cluster at ``RAY_ADDRESS``, or start a local Ray on loopback (``local_ray``), unless Ray is up.

    Returns whether this call connected, and so whether the caller should ``release_ray`` when it is done. A
    cluster binds where its operator started it; only a local Ray is kept to this machine.
    """
    if ray.is_initialized():
        return False
    address = os.environ.get("RAY_ADDRESS")
    if not address:
        local_ray.start(num_cpus)
    elif address.startswith("ray://"):  # Ray client: the controller is not a node of the cluster
        ray.init(address=address, namespace="hpo")
    else:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, namespace="hpo")
    return True


def release_ray() -> None:
    """Undo ``ensure_ray``: a local Ray stops with every process of it; a cluster stays up, this driver leaves."""
    if os.environ.get("RAY_ADDRESS"):
        ray.shutdown()
    else:
        local_ray.stop()
