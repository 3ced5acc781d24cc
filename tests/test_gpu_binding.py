"""Every trial runs on the device Ray assigned it: a GPU trial in a process of its own, told its torch device.

Ray is real here, with two GPUs it is told the node has (none exists: Ray assigns them and sets
``CUDA_VISIBLE_DEVICES`` all the same); it runs in a process of its own, apart from the tests' shared Ray.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hpo_service.engine.devices import assigned_device
from hpo_service.engine.executor import train_trial

ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "model": {"width": 32, "depth": 1, "head_dim": 16, "seq_len": 16},
    "training": {"batch_size": 2, "steps": 2, "warmup_steps": 1, "eval_batches": 1},
}
MULTIPLIERS = {"module": {}}
SEQUENTIAL_TRIALS = """
import json, ray
from hpo_service.engine.executor import Finished, RayExecutor, Resources
from tests.trial_fns import where_it_ran

ray.init(address="local", num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False)
executor, results = RayExecutor(trial_fn=where_it_ran), []
for trial_id, gpus in enumerate([1, 1, 1, 0, 0]):  # one at a time: an idle worker is there to be reused
    executor.submit(trial_id, {}, Resources(cpus=1, gpus=gpus))
    while not (done := [e for e in executor.poll(1.0) if isinstance(e, Finished)]):
        pass
    results.append({"gpus": gpus, **done[0].result})
executor.close()
ray.shutdown()
print(json.dumps(results))
"""


@pytest.mark.parametrize(
    ("gpu_ids", "visible", "device"),
    [
        ([], None, "cpu"),  # no GPU assigned: the CPU, whatever the node has
        ([], "0,1", "cpu"),
        (["3"], "3", "cuda:0"),  # Ray set CUDA_VISIBLE_DEVICES to the assignment (its default)
        (["1", "2"], "1,2", "cuda:0"),  # several: the trial trains on the first
        (["3"], "2,3", "cuda:1"),  # RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES, the node started with 2,3
        (["3"], None, "cuda:3"),  # ... the node started with every GPU visible
        ([3], "2, 3", "cuda:1"),
        (["GPU-5d1c"], "GPU-9a0e,GPU-5d1c", "cuda:1"),  # devices named by UUID
    ],
)
def test_the_device_is_the_assigned_gpu_among_the_visible_ones(gpu_ids, visible, device):
    assert assigned_device(gpu_ids, visible) == device


@pytest.mark.parametrize(("gpu_ids", "visible"), [(["3"], "0,1"), (["3"], ""), (["GPU-5d1c"], None)])
def test_an_assignment_the_process_cannot_see_is_refused(gpu_ids, visible):
    with pytest.raises(ValueError, match="gpu_ids"):
        assigned_device(gpu_ids, visible)


def test_the_built_in_trial_trains_on_the_assigned_device_unless_its_config_names_one():
    assigned = {"multipliers": MULTIPLIERS, "device": "cuda:7"}  # no such device here: it fails where it is used
    on_auto = train_trial({**assigned, "config": TINY}, lambda step, metrics: None)
    assert on_auto["status"] == "failed" and "cuda" in on_auto["reason"].lower(), on_auto

    on_cpu = {**TINY, "training": {**TINY["training"], "device": "cpu"}}
    named = train_trial({**assigned, "config": on_cpu}, lambda step, metrics: None)
    assert named["status"] == "succeeded" and named["device"] == "cpu", named


def test_each_gpu_trial_runs_in_a_fresh_process_on_its_assigned_gpu():
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    run = subprocess.run(
        [sys.executable, "-c", SEQUENTIAL_TRIALS], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads(run.stdout.splitlines()[-1])
    assert all(r["status"] == "succeeded" for r in results), results

    on_gpus = [r for r in results if r["gpus"]]
    assert len({r["pid"] for r in on_gpus}) == len(on_gpus), f"a process ran two GPU trials: {on_gpus}"
    for r in on_gpus:
        assert len(r["gpu_ids"]) == 1 and r["visible"] == r["gpu_ids"][0], r  # Ray's binding, as documented
        assert r["device"] == "cuda:0", r
    assert all(r["device"] == "cpu" and r["gpu_ids"] == [] for r in results if not r["gpus"]), results
