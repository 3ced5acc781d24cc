"""Coordinate check: are activation and update sizes independent of width?

Trains a few steps at several widths from the same base shape and measures, for every module type on a
fixed batch, the RMS of the module's output (its activation size) and the RMS of the change of that output
since initialisation (its update size). Under a parameterisation that transfers, both stay flat as the width
grows; under SP the hidden and output updates grow with the width.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from trainer.config import TrainConfig
from trainer.data import load_corpus, sample_batch
from trainer.hparams import Multipliers, apply_to_model, materialise
from trainer.model import GPT, Tagged
from trainer.parameterisation import Parameterisation


@dataclass(frozen=True)
class CoordRecord:
    width: int
    step: int
    module_type: str
    activation: float  # RMS of the module's output, averaged over layers
    update: float  # RMS of (output now - output at init), averaged over layers


def coord_check(
    config: TrainConfig,
    widths: Sequence[int],
    *,
    steps: int = 3,
    seed: int = 0,
    parameterisation: Parameterisation | None = None,
) -> list[CoordRecord]:
    """Train ``steps`` constant-LR steps at each width (base shape: ``config``'s own) and record sizes.

    ``parameterisation`` overrides the config's, e.g. with a deliberately broken one in a test.
    """
    config = config.with_base_shape_pinned()
    param = parameterisation or config.parameterisation.to_parameterisation()
    corpus = load_corpus(config.training.data, vocab_size=config.model.vocab_size)
    t, seq_len = config.training, config.model.seq_len
    probe, _ = sample_batch(corpus.val, t.batch_size, seq_len, seed=seed, step=10**6)
    records = []
    for width in widths:
        cfg = config.model_copy(update={"model": config.model.model_copy(update={"width": width})})
        torch.manual_seed(seed)
        model = GPT(cfg.model)
        hps = materialise(cfg.base_hps, Multipliers(), param, cfg.base_shape(), cfg.shape())
        optimizer = torch.optim.AdamW(apply_to_model(model, hps))
        initial = _module_outputs(model, probe)
        for step in range(1, steps + 1):
            x, y = sample_batch(corpus.train, t.batch_size, seq_len, seed=seed, step=step)
            loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            now = _module_outputs(model, probe)
            for module_type in now:
                pairs = list(zip(now[module_type], initial[module_type], strict=True))
                records.append(
                    CoordRecord(
                        width=width,
                        step=step,
                        module_type=module_type,
                        activation=sum(_rms(a) for a, _ in pairs) / len(pairs),
                        update=sum(_rms(a - b) for a, b in pairs) / len(pairs),
                    )
                )
    return records


@torch.no_grad()
def _module_outputs(model: GPT, x: torch.Tensor) -> dict[str, list[torch.Tensor]]:
    """The output of every tagged module on ``x``, grouped by module type (one entry per layer).

    The unembedding's entry is the logits, after any forward logit multiplier the parameterisation uses.
    """
    outputs: dict[str, list[torch.Tensor]] = defaultdict(list)
    hooks = [
        module.register_forward_hook(lambda m, _, out: outputs[m.module_type].append(out.detach().clone()))
        for module in model.modules()
        if isinstance(module, Tagged) and module is not model.unembedding
    ]
    try:
        outputs["unembedding"].append(model(x))
    finally:
        for hook in hooks:
            hook.remove()
    return outputs


def _rms(t: torch.Tensor) -> float:
    return t.float().pow(2).mean().sqrt().item()


def growth(records: Sequence[CoordRecord], module_type: str, metric: str = "update", step: int | None = None) -> float:
    """Ratio of ``metric`` at the widest to the narrowest width for one module type (at the last step)."""
    step = step or max(r.step for r in records)
    by_width = {r.width: getattr(r, metric) for r in records if r.module_type == module_type and r.step == step}
    return by_width[max(by_width)] / by_width[min(by_width)]


def plot_coord_check(records: Sequence[CoordRecord], path: str | Path, title: str = "") -> None:
    """One panel per module type: activation and update RMS against width (log-log), one line per step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    module_types = list(dict.fromkeys(r.module_type for r in records))
    steps = sorted({r.step for r in records})
    cols = 5
    rows = -(-len(module_types) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.8 * rows), squeeze=False)
    for ax, module_type in zip(axes.flat, module_types, strict=False):
        for step in steps:
            pts = sorted((r.width, r.update) for r in records if r.module_type == module_type and r.step == step)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=f"update, step {step}")
        pts = sorted((r.width, r.activation) for r in records if r.module_type == module_type and r.step == steps[-1])
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "k--", label="activation")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        values = [v for r in records if r.module_type == module_type for v in (r.activation, r.update) if v > 0]
        ax.set_ylim(min(values) / 4, max(values) * 4)  # at least a decade: flat looks flat, growth looks like growth
        ax.set_title(module_type, fontsize=9)
        ax.set_xlabel("width")
        ax.set_ylabel("RMS")
    for ax in list(axes.flat)[len(module_types) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=6)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
