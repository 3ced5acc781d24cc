"""Search the per-module HPs of your own model: a trial function that trains a Hugging Face Llama.

Named in a spec, it replaces the built-in trainer: each trial builds a random-init ``LlamaForCausalLM`` from the
spec's ``model`` section (hidden_size = width, num_hidden_layers = depth, width / head_dim heads,
intermediate_size = mlp_ratio × width, vocab_size, max_position_embeddings = seq_len; nothing is downloaded) and
trains it as the built-in trainer trains its proxy: the candidate's HPs at the spec's shape (residual and logit
multipliers folded into the projections), AdamW, the LR schedule, data, batches, validation set, gradient
clipping and divergence rule, so the losses compare. Copy it and swap in your model and its layout
(``trainer.layout``) to tune your architecture rather than the proxy::

    model: {width: 64, depth: 2, head_dim: 16, seq_len: 64, vocab_size: 256}
    execution: {trial: "examples.hf_llama_trial:train"}

The server imports only trial functions it allows, and it and its Ray workers must import this module;
``examples`` is a folder of the checkout, not an installed package, so start the server from the checkout's root
with the root on ``PYTHONPATH`` (a local Ray's workers inherit it; ``HPO_ALLOWED_TRIALS`` does the same for
``hpo run``). On a cluster, put your copy in a package every node has installed. Needs ``pip install '.[hf]'``::

    PYTHONPATH=$PWD hpo serve --allow-trial 'examples.hf_llama_trial:*'

Apply the search's result with ``trainer.apply_export(model, "best.json", layout="hf-llama")``.
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
import transformers

from trainer import Multipliers, TrainConfig, TrialResult, apply_to_model, clip_grad_norm_
from trainer.data import eval_batches, load_corpus, sample_batch
from trainer.train import CURVE_POINTS, Report, resolve_device


def build_model(config: TrainConfig) -> transformers.LlamaForCausalLM:
    """A random-init Llama of the config's shape, with untied embeddings (the HPs tune them apart)."""
    m = config.model
    return transformers.LlamaForCausalLM(
        transformers.LlamaConfig(
            hidden_size=m.width,
            num_hidden_layers=m.depth,
            num_attention_heads=m.n_heads,
            num_key_value_heads=m.n_heads,
            intermediate_size=m.mlp_ratio * m.width,
            vocab_size=m.vocab_size,
            max_position_embeddings=m.seq_len,
            tie_word_embeddings=False,
            use_cache=False,
        )
    )


def train(payload: dict, report: Report) -> dict:
    """What ``execution.trial`` names: the payload's ``config``, ``multipliers`` and ``device`` (the one Ray
    assigned the trial, used where the config says ``auto``) in, a ``TrialResult`` as a dict out. An exception
    fails the trial, with its message as the reason."""
    config = TrainConfig.model_validate(payload["config"])
    device = payload.get("device") if config.training.device == "auto" else None
    return run(config, Multipliers.from_dict(payload["multipliers"]), report, device).to_dict()


def run(config: TrainConfig, multipliers: Multipliers, report: Report, device: str | None = None) -> TrialResult:
    """Train the Llama with the HPs ``multipliers`` give at the config's shape, on ``device`` (default: the
    config's ``training.device``). ``report(step, metrics)`` gets
    the train loss every few steps and the validation loss at each evaluation; when it answers True (the
    service's early-stopping rule) the run ends ``stopped``. A non-finite loss, or one above
    ``divergence_factor`` times the first, ends it ``diverged``."""
    start, t, seq_len = time.perf_counter(), config.training, config.model.seq_len
    device, schedule = resolve_device(device or t.device), t.schedule
    corpus = load_corpus(t.data, vocab_size=config.model.vocab_size, val_fraction=t.val_fraction)
    val_set = eval_batches(corpus, t.batch_size, seq_len, t.eval_batches)
    torch.manual_seed(t.seed)
    model = build_model(config)
    groups = apply_to_model(model, config.materialise(multipliers), layout="hf-llama")  # re-initialises it
    model.to(device)
    optimizer = torch.optim.AdamW(groups)
    peaks = [group["lr"] for group in optimizer.param_groups]

    def loss(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-entropy, and the objective to differentiate (with the z-loss, if the config has one)."""
        logits = model(input_ids=x.to(device)).logits.flatten(0, 1).float()
        ce = F.cross_entropy(logits, y.to(device).flatten())
        return ce, (ce + t.z_loss * torch.logsumexp(logits, -1).pow(2).mean() if t.z_loss else ce)

    @torch.no_grad()
    def evaluate() -> float:
        model.eval()
        value = sum(loss(x, y)[0].item() for x, y in val_set) / len(val_set)
        model.train()
        return value

    result = TrialResult("succeeded", device=str(device), corpus=corpus.fingerprint)
    log_every, first = max(1, t.steps // CURVE_POINTS), None
    for step in range(t.steps):
        for group, peak in zip(optimizer.param_groups, peaks, strict=True):
            group["lr"] = schedule.lr_at(step, peak)
        ce, objective = loss(*sample_batch(corpus.train, t.batch_size, seq_len, t.seed, step))
        optimizer.zero_grad(set_to_none=True)
        objective.backward()
        if t.grad_clip:
            clip_grad_norm_(optimizer.param_groups, t.grad_clip)  # the norm the unfolded model would have
        optimizer.step()
        done, train_loss = step + 1, ce.item()
        result.steps, result.tokens, result.final_train_loss = done, done * t.batch_size * seq_len, train_loss
        first = train_loss if first is None else first
        if not math.isfinite(train_loss) or train_loss > t.divergence_factor * first:
            result.status, result.reason = "diverged", f"train loss {train_loss:.4g} at step {done}"
            break
        if done % log_every and done != t.steps:
            continue
        result.train_curve.append((done, train_loss))
        metrics = {"train_loss": train_loss}
        if done % t.eval_interval == 0 or done == t.steps:
            metrics["val_loss"] = result.final_val_loss = evaluate()
            result.eval_curve.append((done, result.final_val_loss))
            if not math.isfinite(result.final_val_loss):
                result.status, result.reason = "diverged", f"validation loss {result.final_val_loss} at step {done}"
                break
        if report(done, metrics) and done < t.steps:
            result.status, result.reason = "stopped", f"stopped by the early-stopping rule at step {done}"
            break
    if result.status == "diverged":
        result.final_val_loss = None
    result.wall_time_s = time.perf_counter() - start
    result.tokens_per_s = result.tokens / result.wall_time_s
    return result
