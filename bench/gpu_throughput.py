"""GPU throughput and MFU of the trainer at the ~50M proxy, against a nanoGPT-style loop (issue 18).

Shape: width 512, depth 8, head_dim 64, seq_len 1024, batch 32, vocab 50304 (76.7M parameters, 50.9M of them
outside the input embedding), bf16 autocast on CUDA. The parts, in one process unless said:

- **eager** and **compiled**: the trainer (``trainer.train``, global HPs) against a nanoGPT-style loop written
  here: the same architecture (pre-norm RMSNorm, QK-norm, 1/d_head attention through
  scaled_dot_product_attention, GELU MLP, untied unembedding), its loss computed with its logits in one
  function under the same autocast and compiled with them, one fused AdamW group, the same batch sampler and
  pinned non-blocking copies, no schedule, no forward multipliers, no reports, no divergence checks. The two
  alternate run by run, ``--repeats`` times each.
- **param_groups**: the trainer with global HPs (equal settings merged: a few AdamW groups) against per-module
  and per-depth multipliers (distinct LRs for every module type and block: 10 × depth + 3 groups, 83 at depth
  8), alternating; compiled when ``compiled`` is among ``--modes``.
- **two_trials**: two processes each training the trainer on the same GPU at once, both starting their timed
  steps together (a barrier at the end of the warm-up); their summed tokens/s against one process's (the
  trainer's median in the same mode above).

Timing: every loop runs ``--warmup`` + ``--steps`` + 1 steps and reads its mean loss back to the host at the
trainer's log points (every step below 400 steps); its tokens/s is taken between the host syncs that end step
``--warmup`` and step ``--warmup + --steps`` (compiling and the trainer's one evaluation, after the last step,
fall outside). The trainer's own ``tokens_per_s`` (after its warm-up) is kept as ``reported_tokens_per_s``. Peak
memory is ``torch.cuda.max_memory_allocated`` over a run (null on the CPU).

MFU = tokens/s × FLOPs per token / peak FLOP/s, with FLOPs per token = 6·N + 12·L·T·d: N the parameters in
matmuls (all but the input embedding, a lookup: n_params − V·d), L the depth, T seq_len, d the width; 6 = 2
(forward) + 4 (backward) FLOPs per parameter per token, and 12·L·T·d the attention scores and weighted sum
(2·2·T·d per layer forward, ×3 with the backward), the whole T×T matrix counted as PaLM (Chowdhery et al. 2022,
app. B) and nanoGPT count it, though causal attention computes about half. At the proxy: 6 · 50.93M + 50.3M =
356 MFLOPs per token. Peak: bf16 dense tensor-core FLOP/s per GPU, chosen by the device's name (H100 SXM and
H200: 989 TFLOP/s; H100 NVL 835; H100 PCIe 756; A100 312), else ``--peak-tflops`` (which overrides); without
either MFU is null.

Targets (issue 18): MFU ≥ 40% at the proxy (≈ 1.1 M tokens/s on an H100 or H200), the trainer ≥ 0.95× the
nanoGPT loop's tokens/s, per-module groups costing ≤ 3% of the global trainer's tokens/s; ``target_met`` says
which were met (compiled figures where measured). No GPU figure exists yet: none was lent so far.

    python bench/gpu_throughput.py                 # on a GPU: bench/results/gpu_throughput.json
    python bench/gpu_throughput.py --smoke         # CPU, tiny shapes, a few steps: bench/work/ (10 s)

The smoke is eager unless ``--modes`` says otherwise: compiling costs a minute or more on a small CPU.
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing
import os
import platform
import queue
import statistics
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from throughput import spread  # bench/throughput.py, beside this script
from torch import nn

from trainer import Multipliers, TrainConfig
from trainer.data import BUILTIN_STDLIB, load_corpus, sample_batch
from trainer.model import MODULE_TYPES, ModelConfig
from trainer.train import CURVE_POINTS, _Run

ROOT = Path(__file__).resolve().parents[1]
MODES = ("eager", "compiled")
TARGETS = {"mfu": 0.40, "trainer_over_nanogpt": 0.95, "per_module_cost": 0.03}
# bf16 dense tensor-core TFLOP/s per GPU from NVIDIA's data sheets, by a substring of the lower-cased device
# name, most specific first.
PEAK_BF16_TFLOPS = (("h200", 989.0), ("h100 nvl", 835.0), ("h100 pcie", 756.0), ("h100", 989.0), ("a100", 312.0))
BARRIER_TIMEOUT_S = 1800.0  # the two trials' processes wait this long for each other (compiling both)


@dataclass(frozen=True)
class Shape:
    width: int
    depth: int
    head_dim: int
    seq_len: int
    batch_size: int
    vocab_size: int

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len

    def flops_per_token(self) -> float:
        """6·N + 12·L·T·d (the module docstring says why)."""
        matmul_params = ModelConfig(**self.model_section()).n_params - self.vocab_size * self.width
        return 6.0 * matmul_params + 12.0 * self.depth * self.seq_len * self.width

    def model_section(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "batch_size"}


PROXY = Shape(width=512, depth=8, head_dim=64, seq_len=1024, batch_size=32, vocab_size=50304)
SMOKE = Shape(width=32, depth=2, head_dim=16, seq_len=32, batch_size=4, vocab_size=512)


# -- the nanoGPT-style loop ---------------------------------------------------------------------------------------


class NanoBlock(nn.Module):
    def __init__(self, s: Shape) -> None:
        super().__init__()
        self.heads, self.head_dim = s.width // s.head_dim, s.head_dim
        self.n1, self.n2 = nn.RMSNorm(s.width, eps=1e-6), nn.RMSNorm(s.width, eps=1e-6)
        self.qn, self.kn = nn.RMSNorm(s.head_dim, eps=1e-6), nn.RMSNorm(s.head_dim, eps=1e-6)
        self.q, self.k, self.v = (nn.Linear(s.width, s.width, bias=False) for _ in range(3))
        self.proj = nn.Linear(s.width, s.width, bias=False)
        self.up, self.down = nn.Linear(s.width, 4 * s.width, bias=False), nn.Linear(4 * s.width, s.width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, w = x.shape
        h = self.n1(x)
        q, k, v = (lin(h).view(b, t, self.heads, self.head_dim) for lin in (self.q, self.k, self.v))
        q, k, v = self.qn(q).transpose(1, 2), self.kn(k).transpose(1, 2), v.transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=1 / self.head_dim)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, w))
        return x + self.down(F.gelu(self.up(self.n2(x))))


class NanoGPT(nn.Module):
    def __init__(self, s: Shape) -> None:
        super().__init__()
        self.emb = nn.Embedding(s.vocab_size, s.width)
        self.blocks = nn.Sequential(*(NanoBlock(s) for _ in range(s.depth)))
        self.norm = nn.RMSNorm(s.width, eps=1e-6)
        self.head = nn.Linear(s.width, s.vocab_size, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.blocks(self.emb(idx))))


def nano_loss(model: NanoGPT, x: torch.Tensor, y: torch.Tensor, bf16: bool) -> torch.Tensor:
    with torch.autocast(x.device.type, dtype=torch.bfloat16) if bf16 else nullcontext():
        logits = model(x)
    return F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.view(-1))


def nano_run(s: Shape, args: argparse.Namespace, compiled: bool) -> dict:
    """The nanoGPT-style loop's tokens/s and peak memory, syncing to the host where the trainer does."""
    device, cuda = torch.device(args.device), args.device.startswith("cuda")
    reset_peak_memory(device)
    torch.manual_seed(0)
    model = NanoGPT(s).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1, fused=cuda)
    loss_fn = torch.compile(nano_loss) if compiled else nano_loss
    tokens = load_corpus(BUILTIN_STDLIB, vocab_size=s.vocab_size).train
    total, every = total_steps(args), log_every(args)
    pending: list[torch.Tensor] = []
    marks: dict[int, float] = {}
    for step in range(total):
        x, y = sample_batch(tokens, s.batch_size, s.seq_len, seed=0, step=step)
        if cuda:
            x, y = x.pin_memory(), y.pin_memory()
        loss = loss_fn(model, x.to(device, non_blocking=True), y.to(device, non_blocking=True), cuda)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        pending.append(loss.detach())
        done = step + 1
        if done % every == 0 or done == total:
            torch.stack(pending).mean().item()  # the trainer's one host sync per log point
            pending.clear()
            marks[done] = time.perf_counter()
    return {"tokens_per_s": rate(marks, s, args), "peak_memory_gib": peak_memory_gib(device)}


# -- the trainer --------------------------------------------------------------------------------------------------


def per_module_multipliers(depth: int) -> Multipliers:
    """Small, distinct LR multipliers for every module type and block, so no two groups merge."""
    return Multipliers(
        module={m: {"lr": 0.01 * (i + 1)} for i, m in enumerate(MODULE_TYPES)},
        depth={"lr": tuple(0.001 * (layer + 1) for layer in range(depth))},
    )


def trainer_run(s: Shape, args: argparse.Namespace, compiled: bool, hps: Multipliers, barrier=None) -> dict:
    """The trainer's tokens/s (timed like the nanoGPT loop's, from its progress reports), its own reported
    tokens/s, its AdamW group count and peak memory. ``barrier``: waited on at the end of the warm-up."""
    total = total_steps(args)
    config = TrainConfig.model_validate(
        {
            "model": s.model_section(),
            "training": {
                "batch_size": s.batch_size,
                "steps": total,
                "eval_every": total,  # one evaluation, after the last step, outside the timed window
                "eval_batches": 1,
                "device": args.device,
                "compile": "on" if compiled else "off",
            },
        }
    )
    marks: dict[int, float] = {}

    def report(step: int, _metrics: dict) -> None:
        if barrier is not None and step == args.warmup:
            barrier.wait(BARRIER_TIMEOUT_S)
        marks[step] = time.perf_counter()

    device = torch.device(args.device)
    reset_peak_memory(device)
    run = _Run(config, hps, report)  # not run_trial: a bench wants the error raised, and the group count
    result = run.train()
    if result.status != "succeeded":
        raise RuntimeError(f"the trainer's run {result.status}: {result.reason}")
    return {
        "tokens_per_s": rate(marks, s, args),
        "reported_tokens_per_s": result.tokens_per_s,
        "groups": len(run.optimizer.param_groups),
        "peak_memory_gib": peak_memory_gib(device),
    }


def _two_trials_child(s: Shape, args: argparse.Namespace, compiled: bool, barrier, answers) -> None:
    if args.smoke:
        torch.set_num_threads(1)
    try:
        answers.put(trainer_run(s, args, compiled, Multipliers(), barrier))
    except Exception as exc:  # the other process must not wait for this one
        barrier.abort()
        answers.put({"error": f"{type(exc).__name__}: {exc}"})


def two_trials(s: Shape, args: argparse.Namespace, compiled: bool) -> list[dict]:
    """Each of two processes' trainer figures, trained at once on the one device."""
    context = multiprocessing.get_context("spawn")  # fork after CUDA started is unsafe
    barrier, answers = context.Barrier(2), context.Queue()
    processes = [context.Process(target=_two_trials_child, args=(s, args, compiled, barrier, answers)) for _ in "ab"]
    for process in processes:
        process.start()
    results: list[dict] = []
    while len(results) < len(processes):
        try:
            results.append(answers.get(timeout=5.0))
        except queue.Empty:
            died = [p.exitcode for p in processes if p.exitcode not in (None, 0)]
            if died:  # killed (out of memory, a crash) before it could answer
                barrier.abort()
                raise RuntimeError(f"two trials on one device: a process exited with code {died[0]}") from None
    for process in processes:
        process.join()
    errors = [r["error"] for r in results if "error" in r]
    if errors:
        raise RuntimeError(f"two trials on one device: {'; '.join(errors)}")
    return results


# -- measuring ----------------------------------------------------------------------------------------------------


def total_steps(args: argparse.Namespace) -> int:
    """The warm-up, the timed steps, and one more so the trainer's evaluation falls after the timed window."""
    return args.warmup + args.steps + 1


def log_every(args: argparse.Namespace) -> int:
    """The trainer's host-sync cadence for a run of ``total_steps`` (``trainer.train``'s rule)."""
    return max(1, total_steps(args) // CURVE_POINTS)


def rate(marks: dict[int, float], s: Shape, args: argparse.Namespace) -> float:
    """Tokens/s between the host syncs that end step ``warmup`` and step ``warmup + steps``."""
    return args.steps * s.tokens_per_step / (marks[args.warmup + args.steps] - marks[args.warmup])


def reset_peak_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def peak_tflops(args: argparse.Namespace) -> tuple[float | None, str]:
    """The peak bf16 TFLOP/s MFU is taken against, and where it came from."""
    if args.peak_tflops is not None:
        return args.peak_tflops, "--peak-tflops"
    if not args.device.startswith("cuda"):
        return None, "unknown: not a GPU (give --peak-tflops)"
    name = torch.cuda.get_device_name(torch.device(args.device)).lower()
    for key, tflops in PEAK_BF16_TFLOPS:
        if key in name:
            return tflops, f"bf16 dense, {key.upper()} data sheet"
    return None, f"unknown for {name!r} (give --peak-tflops)"


def summary(runs: list[dict], flops_per_token: float, peak: float | None) -> dict:
    """Tokens/s (spread), MFU of the median, the largest peak memory, and the trainer's extra figures."""
    tokens = spread([r["tokens_per_s"] for r in runs])
    out = {
        "tokens_per_s": tokens,
        "mfu": tokens["median"] * flops_per_token / (peak * 1e12) if peak else None,
        "peak_memory_gib": max(r["peak_memory_gib"] for r in runs) if runs[0]["peak_memory_gib"] is not None else None,
    }
    if "groups" in runs[0]:
        out["reported_tokens_per_s"] = spread([r["reported_tokens_per_s"] for r in runs])
        out["groups"] = runs[0]["groups"]
    return out


def alternate(
    first: Callable[[], dict], second: Callable[[], dict], repeats: int, label: str
) -> tuple[list[dict], list[dict]]:
    """``repeats`` runs of each of two callables, alternating so that drift of the machine hits both."""
    a, b = [], []
    for i in range(repeats):
        a.append(first())
        b.append(second())
        print(f"{label} {i}: {a[-1]['tokens_per_s']:,.0f} vs {b[-1]['tokens_per_s']:,.0f} tokens/s", flush=True)
    return a, b


def machine(device: str) -> dict:
    cuda = device.startswith("cuda")
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name(torch.device(device)) if cuda else platform.processor() or "cpu",
        "gpus": torch.cuda.device_count() if cuda else 0,
    }


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU, eager, a few steps; bench/work/")
    p.add_argument("--device", help="default: cuda when there is one (cpu with --smoke)")
    p.add_argument("--modes", nargs="+", choices=MODES, help="default: both (eager with --smoke)")
    p.add_argument("--steps", type=int, help="timed steps per run (default 50; 3 with --smoke)")
    p.add_argument("--warmup", type=int, help="untimed steps before them (default 10; 2 with --smoke)")
    p.add_argument("--repeats", type=int, help="runs of each loop, alternating (default 3; 1 with --smoke)")
    p.add_argument("--peak-tflops", type=float, help="peak bf16 TFLOP/s per GPU for MFU (default: by device name)")
    p.add_argument("--out", type=Path, help="default: bench/results/ on a GPU at full size, else bench/work/")
    args = p.parse_args()
    smoke = args.smoke
    args.device = args.device or ("cuda" if torch.cuda.is_available() and not smoke else "cpu")
    args.modes = args.modes or (["eager"] if smoke else list(MODES))
    args.steps = args.steps or (3 if smoke else 50)
    args.warmup = args.warmup or (2 if smoke else 10)
    args.repeats = args.repeats or (1 if smoke else 3)
    for name in ("steps", "warmup", "repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be 1 or more")
    if args.peak_tflops is not None and args.peak_tflops <= 0:
        p.error("--peak-tflops must be positive")
    every = log_every(args)
    if args.warmup % every or args.steps % every:
        p.error(f"--warmup and --steps must be multiples of the trainer's log interval ({every} steps here)")
    full_on_gpu = not smoke and args.device.startswith("cuda")
    args.out = args.out or ROOT / "bench" / ("results" if full_on_gpu else "work") / "gpu_throughput.json"
    return args


def main() -> None:
    args = parse_args()
    s = SMOKE if args.smoke else PROXY
    if args.smoke:
        torch.set_num_threads(1)
    if args.device.startswith("cuda"):
        torch.set_float32_matmul_precision("high")  # as the trainer sets it
    flops, (peak, peak_source) = s.flops_per_token(), peak_tflops(args)
    started = time.monotonic()
    results: dict = {}
    for mode in args.modes:
        compiled = mode == "compiled"
        nano, ours = alternate(
            partial(nano_run, s, args, compiled),
            partial(trainer_run, s, args, compiled, Multipliers()),
            args.repeats,
            mode,
        )
        results[mode] = {
            "nanogpt": summary(nano, flops, peak),
            "trainer": summary(ours, flops, peak),
            "trainer_over_nanogpt": statistics.median(r["tokens_per_s"] for r in ours)
            / statistics.median(r["tokens_per_s"] for r in nano),
            "trainer_over_nanogpt_per_repeat": spread(
                [a["tokens_per_s"] / b["tokens_per_s"] for a, b in zip(ours, nano, strict=True)]
            ),
        }
    mode = "compiled" if "compiled" in args.modes else "eager"
    compiled = mode == "compiled"
    glob, per_module = alternate(
        partial(trainer_run, s, args, compiled, Multipliers()),
        partial(trainer_run, s, args, compiled, per_module_multipliers(s.depth)),
        args.repeats,
        "groups",
    )
    results["param_groups"] = {
        "mode": mode,
        "global": summary(glob, flops, peak),
        "per_module": summary(per_module, flops, peak),
        "per_module_cost": 1
        - statistics.median(r["tokens_per_s"] for r in per_module) / statistics.median(r["tokens_per_s"] for r in glob),
    }
    reset_peak_memory(torch.device(args.device))
    pair = two_trials(s, args, compiled)
    single = results[mode]["trainer"]["tokens_per_s"]["median"]
    total = sum(r["tokens_per_s"] for r in pair)
    results["two_trials"] = {
        "mode": mode,
        "processes": pair,
        "total_tokens_per_s": total,
        "single_tokens_per_s": single,
        "total_over_single": total / single,
    }
    headline = results[mode]
    document = {
        "machine": machine(args.device),
        "settings": {
            "shape": asdict(s),
            "smoke": args.smoke,
            "device": args.device,
            "modes": args.modes,
            "autocast": "bf16" if args.device.startswith("cuda") else None,
            "steps": args.steps,
            "warmup": args.warmup,
            "repeats": args.repeats,
            "host_sync_every_steps": log_every(args),
            "flops_per_token": flops,
            "flops_formula": "6 * (n_params - vocab * width) + 12 * depth * seq_len * width",
            "peak_tflops": peak,
            "peak_source": peak_source,
        },
        "seconds": time.monotonic() - started,
        "targets": TARGETS,
        "target_met": {
            "mode": mode,
            "mfu": headline["trainer"]["mfu"] >= TARGETS["mfu"] if peak else None,
            "trainer_over_nanogpt": headline["trainer_over_nanogpt"] >= TARGETS["trainer_over_nanogpt"],
            "per_module_cost": results["param_groups"]["per_module_cost"] <= TARGETS["per_module_cost"],
        },
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=1) + "\n")
    print(json.dumps(document["target_met"], indent=1))


if __name__ == "__main__":
    main()
