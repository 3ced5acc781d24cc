"""Trainer tokens/s against a plain PyTorch GPT loop of the same shape, side by side in one process.

The baseline is a nanoGPT-style loop written here from scratch: the same architecture (pre-norm RMSNorm,
QK-norm, 1/d_head attention through scaled_dot_product_attention, GELU MLP, untied unembedding), one AdamW
parameter group, the same batch sampler, no schedule, no reports, no divergence checks. Both loops are timed
the same way: each runs ``--warmup`` + ``--steps`` + 1 steps, reads the mean loss back to the host at the
trainer's log points (every step below 400 steps), and its rate is taken between the host syncs that end
step ``--warmup`` and step ``--warmup + --steps``, so neither counts its warm-up or the trainer's final
evaluation. The two alternate run by run so that drift of the machine hits both; each is reported as the
median, minimum and maximum over ``--repeats``, and the ratio both as the ratio of medians and per pair.

    python bench/throughput.py                       # CPU: width 128, depth 4, seq 128, batch 16
    python bench/throughput.py --device cuda --width 512 --depth 8 --seq-len 512 --batch-size 32 --compile
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from trainer import TrainConfig, run_trial
from trainer.data import BUILTIN_STDLIB, load_corpus, sample_batch
from trainer.train import CURVE_POINTS


class PlainBlock(nn.Module):
    def __init__(self, width: int, head_dim: int) -> None:
        super().__init__()
        self.heads, self.head_dim = width // head_dim, head_dim
        self.n1, self.n2 = nn.RMSNorm(width, eps=1e-6), nn.RMSNorm(width, eps=1e-6)
        self.qn, self.kn = nn.RMSNorm(head_dim, eps=1e-6), nn.RMSNorm(head_dim, eps=1e-6)
        self.qkv = nn.ModuleList(nn.Linear(width, width, bias=False) for _ in range(3))
        self.proj = nn.Linear(width, width, bias=False)
        self.up, self.down = nn.Linear(width, 4 * width, bias=False), nn.Linear(4 * width, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, w = x.shape
        h = self.n1(x)
        q, k, v = (lin(h).view(b, t, self.heads, self.head_dim) for lin in self.qkv)
        q, k, v = self.qn(q).transpose(1, 2), self.kn(k).transpose(1, 2), v.transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=1 / self.head_dim)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, w))
        return x + self.down(F.gelu(self.up(self.n2(x))))


class PlainGPT(nn.Module):
    def __init__(self, width: int, depth: int, head_dim: int) -> None:
        super().__init__()
        self.emb = nn.Embedding(256, width)
        self.blocks = nn.Sequential(*(PlainBlock(width, head_dim) for _ in range(depth)))
        self.norm = nn.RMSNorm(width, eps=1e-6)
        self.head = nn.Linear(width, 256, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.blocks(self.emb(idx))))


def total_steps(args: argparse.Namespace) -> int:
    """Steps each loop runs: the warm-up, the timed steps, and one more so the trainer's final evaluation
    falls after the timed window."""
    return args.warmup + args.steps + 1


def log_every(args: argparse.Namespace) -> int:
    """The trainer's host-sync cadence for a run of ``total_steps`` (``trainer.train``'s rule)."""
    return max(1, total_steps(args) // CURVE_POINTS)


def tokens_per_s(marks: dict[int, float], args: argparse.Namespace) -> float:
    """The rate between the host syncs that end step ``warmup`` and step ``warmup + steps``."""
    elapsed = marks[args.warmup + args.steps] - marks[args.warmup]
    return args.steps * args.batch_size * args.seq_len / elapsed


def plain_loop(args: argparse.Namespace, device: torch.device) -> float:
    """Tokens per second of the plain loop, syncing to the host where the trainer does."""
    torch.manual_seed(0)
    model = PlainGPT(args.width, args.depth, 16).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1, fused=device.type == "cuda")
    forward = torch.compile(model) if args.compile else model
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    )
    tokens = load_corpus(BUILTIN_STDLIB).train
    total, every = total_steps(args), log_every(args)
    pending: list[torch.Tensor] = []
    marks: dict[int, float] = {}
    for step in range(total):
        x, y = sample_batch(tokens, args.batch_size, args.seq_len, seed=0, step=step)
        with autocast:
            logits = forward(x.to(device)).float()
        loss = F.cross_entropy(logits.view(-1, 256), y.to(device).view(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        pending.append(loss.detach())
        done = step + 1
        if done % every == 0 or done == total:
            torch.stack(pending).mean().item()  # the trainer's one host sync per log point
            pending.clear()
            marks[done] = time.perf_counter()
    return tokens_per_s(marks, args)


def trainer_loop(args: argparse.Namespace) -> float:
    """Tokens per second of ``run_trial``, timed from its progress reports (one per log point, after its sync)."""
    total = total_steps(args)
    config = TrainConfig.model_validate(
        {
            "model": {"width": args.width, "depth": args.depth, "head_dim": 16, "seq_len": args.seq_len},
            "training": {
                "batch_size": args.batch_size,
                "steps": total,
                "eval_every": total,  # one evaluation, after the last step, outside the timed window
                "eval_batches": 1,
                "device": args.device,
                "compile": "on" if args.compile else "off",
            },
            "base_hps": {"lr": 1e-3},
        }
    )
    marks: dict[int, float] = {}
    result = run_trial(config, report=lambda step, _metrics: marks.__setitem__(step, time.perf_counter()))
    assert result.status == "succeeded", result.reason
    return tokens_per_s(marks, args)


def spread(values: list[float]) -> dict:
    """Every value, and their median, minimum, maximum and sample standard deviation."""
    return {
        "values": values,
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
    }


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=60, help="timed steps per run")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps before them")
    p.add_argument("--repeats", type=int, default=9, help="runs of each loop, alternating")
    p.add_argument("--device", default="cpu")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "throughput.json")
    args = p.parse_args()
    every = log_every(args)
    if args.warmup % every or args.steps % every:
        p.error(f"--warmup and --steps must be multiples of the trainer's log interval ({every} steps here)")
    return args


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    load_before = os.getloadavg()[0]
    plain, ours = [], []
    for i in range(args.repeats):
        plain.append(plain_loop(args, device))
        ours.append(trainer_loop(args))
        print(f"repeat {i}: plain {plain[-1]:,.0f} tokens/s, trainer {ours[-1]:,.0f} tokens/s", flush=True)
    summary = {
        "shape": {k: getattr(args, k) for k in ("width", "depth", "seq_len", "batch_size", "steps", "warmup")},
        "repeats": args.repeats,
        "host_sync_every_steps": log_every(args),
        "device": args.device,
        "compile": args.compile,
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "load_average_1min": [load_before, os.getloadavg()[0]],
        "torch": torch.__version__,
        "plain_tokens_per_s": spread(plain),
        "trainer_tokens_per_s": spread(ours),
        "ratio_plain_over_trainer": statistics.median(plain) / statistics.median(ours),
        "ratio_plain_over_trainer_per_repeat": spread([a / b for a, b in zip(plain, ours, strict=True)]),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
