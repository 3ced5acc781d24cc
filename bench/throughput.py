"""Trainer tokens/s against a plain PyTorch GPT loop of the same shape, side by side in one process.

The baseline is a nanoGPT-style loop written here from scratch: the same architecture (pre-norm RMSNorm,
QK-norm, 1/d_head attention through scaled_dot_product_attention, GELU MLP, untied unembedding), one AdamW
parameter group, the same batch sampler, no schedule, no reports, no divergence checks. The two alternate
run by run so that drift of the machine hits both; the ratio of medians is the trainer's overhead.

    python bench/throughput.py                       # CPU: width 128, depth 4, seq 128, batch 16
    python bench/throughput.py --device cuda --width 512 --depth 8 --seq-len 512 --batch-size 32 --compile
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from trainer import TrainConfig, run_trial
from trainer.data import BUILTIN_STDLIB, load_corpus, sample_batch


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


def plain_loop(args: argparse.Namespace, device: torch.device) -> float:
    """Tokens per second of the plain loop over ``args.steps`` steps (after ``args.warmup`` untimed ones)."""
    torch.manual_seed(0)
    model = PlainGPT(args.width, args.depth, 16).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1, fused=device.type == "cuda")
    forward = torch.compile(model) if args.compile else model
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    )
    tokens = load_corpus(BUILTIN_STDLIB).train
    elapsed = 0.0
    for step in range(args.warmup + args.steps):
        tick = time.perf_counter()
        x, y = sample_batch(tokens, args.batch_size, args.seq_len, seed=0, step=step)
        with autocast:
            logits = forward(x.to(device)).float()
        loss = F.cross_entropy(logits.view(-1, 256), y.to(device).view(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss.item()  # the trainer also reads each step's loss (its curve and divergence check)
        if step >= args.warmup:
            elapsed += time.perf_counter() - tick
    return args.steps * args.batch_size * args.seq_len / elapsed


def trainer_loop(args: argparse.Namespace) -> float:
    config = TrainConfig.model_validate(
        {
            "model": {"width": args.width, "depth": args.depth, "head_dim": 16, "seq_len": args.seq_len},
            "training": {
                "batch_size": args.batch_size,
                "steps": args.warmup + args.steps,
                "eval_every": args.warmup + args.steps,  # one evaluation, at the end, outside the timing
                "eval_batches": 1,
                "device": args.device,
                "compile": "on" if args.compile else "off",
            },
            "base_hps": {"lr": 1e-3},
        }
    )
    result = run_trial(config)
    assert result.status == "succeeded", result.reason
    return result.tokens_per_s  # over all steps: a slight handicap, its warm-up steps are timed too


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "throughput.json")
    args = p.parse_args()
    device = torch.device(args.device)
    plain, ours = [], []
    for i in range(args.repeats):
        plain.append(plain_loop(args, device))
        ours.append(trainer_loop(args))
        print(f"repeat {i}: plain {plain[-1]:,.0f} tokens/s, trainer {ours[-1]:,.0f} tokens/s", flush=True)
    summary = {
        "shape": {k: getattr(args, k) for k in ("width", "depth", "seq_len", "batch_size", "steps")},
        "device": args.device,
        "compile": args.compile,
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "plain_tokens_per_s": statistics.median(plain),
        "trainer_tokens_per_s": statistics.median(ours),
        "ratio_plain_over_trainer": statistics.median(plain) / statistics.median(ours),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
