"""The torch device of the GPU Ray assigned a trial.

Ray gives each GPU task the ids of its GPUs (``get_accelerator_ids()["GPU"]``) and, unless the node runs with
``RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES``, sets the task's ``CUDA_VISIBLE_DEVICES`` to exactly those ids;
with it set, the ids are a subset of the ``CUDA_VISIBLE_DEVICES`` the node started with (all of its GPUs when
none). CUDA numbers the devices a process sees from 0 in ``CUDA_VISIBLE_DEVICES`` order, so the torch device is
``cuda:<position of the assigned id in CUDA_VISIBLE_DEVICES>``, or ``cuda:<id>`` when the variable is unset.
A task that was assigned no GPU runs on the CPU, even on a node that has GPUs.
"""

from __future__ import annotations

from collections.abc import Sequence

VISIBLE_DEVICES = "CUDA_VISIBLE_DEVICES"


def assigned_device(gpu_ids: Sequence[str | int], visible_devices: str | None) -> str:
    """``cpu``, or ``cuda:N`` for the first of ``gpu_ids`` (a trial trains on one device) among
    ``visible_devices`` (the process's ``CUDA_VISIBLE_DEVICES``; None when unset)."""
    if not gpu_ids:
        return "cpu"
    first = str(gpu_ids[0]).strip()
    if visible_devices is None:
        if not first.isdigit():
            raise ValueError(f"gpu_ids: {first!r} is not a device index, and {VISIBLE_DEVICES} is unset")
        return f"cuda:{int(first)}"
    visible = [device.strip() for device in visible_devices.split(",")]
    if first not in visible:
        raise ValueError(f"gpu_ids: GPU {first!r} is not among {VISIBLE_DEVICES}={visible_devices!r}")
    return f"cuda:{visible.index(first)}"
