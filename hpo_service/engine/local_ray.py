"""The controller's own Ray, when no ``RAY_ADDRESS`` names a cluster: one node on loopback, stopped with the engine.

Where a Ray node listens follows from its node address. Given 127.0.0.1, the GCS, the raylet (node and object
manager), every worker's gRPC server (the progress inbox's too), the runtime-env agent and the dashboard agent
(its gRPC and HTTP servers and the metrics export, which only ``ray[default]`` starts) all bind to 127.0.0.1, and
the dashboard's API server binds to ``dashboard_host``. But Ray swaps a loopback node address for the machine's
routable one unless its cluster switch (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER``) is off, and it reads that switch
when it is imported; ``start`` turns it off while Ray starts, for this process through the constant Ray reads at
each lookup and for the processes Ray starts through their environment. A cluster is never started here: it
binds where its operator started it.

Ray's processes are started with ``PR_SET_PDEATHSIG``, which ties them to the *thread* that started them: they
are SIGKILLed when it ends. Killed that way, the raylet's agents take a minute to give up on the dead GCS; so the
thread that calls ``start`` calls ``stop`` before it ends, which stops the raylet with SIGTERM first, and with it
its workers and agents. If the server is SIGKILLed, its Ray processes are killed with it; the workers, each in a
process group of its own, exit within seconds of losing their raylet.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import ray
from ray._private import ray_constants

LOOPBACK = "127.0.0.1"
CLUSTER_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def start(num_cpus: int | None = None) -> None:
    """Start a new single-node Ray that only this machine can reach, and connect to it as its driver.

    Always a new one: ``ray.init()`` alone would join whatever cluster ``ray start`` last started here.
    """
    with _loopback_node(), _no_native_trace_on_sigterm():
        ray.init(
            address="local",
            num_cpus=num_cpus,
            include_dashboard=False,
            dashboard_host=LOOPBACK,
            log_to_driver=False,
            namespace="hpo",
        )


def stop() -> None:
    """Stop the Ray ``start`` started and wait for its processes: each gets SIGTERM (the raylet first, which stops
    its workers and agents), then SIGKILL if it is still there a second later."""
    ray.shutdown(wait_for_processes=True)


@contextlib.contextmanager
def _loopback_node() -> Iterator[None]:
    previous_env, previous_switch = os.environ.get(CLUSTER_SWITCH), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[CLUSTER_SWITCH], ray_constants.ENABLE_RAY_CLUSTER = "0", False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = previous_switch
        if previous_env is None:
            del os.environ[CLUSTER_SWITCH]
        else:
            os.environ[CLUSTER_SWITCH] = previous_env


@contextlib.contextmanager
def _no_native_trace_on_sigterm() -> Iterator[None]:
    """The driver's core worker would install Abseil's failure signal handler, which prints a native stack trace
    for SIGTERM too (a plain request to stop) before passing it on. Without it a crash still gets Python's
    traceback (Ray enables ``faulthandler``); the processes Ray starts keep theirs, in their own logs."""
    previous = ray_constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER
    ray_constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER = True
    try:
        yield
    finally:
        ray_constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER = previous
