"""A model's layout: which of this project's module types, and which block, each of its parameters belongs to.

A ``Layout`` is a list of rules, regular expressions that must match a whole name from
``model.named_parameters(remove_duplicate=False)``; a named group ``(?P<layer>\\d+)`` captures the block
index, and a rule for a block module type must have one (a rule outside the blocks must not). Every name must
match exactly one rule: an unmatched or doubly matched name is an error listing them all. ``PRESETS`` holds
``gpt`` (this project's ``GPT``), ``hf-llama`` (Hugging Face Llama, and the models laid out like it: Mistral,
Qwen2, Qwen3 with its QK-norms), ``hf-gpt2`` (Hugging Face GPT-2) and ``nanogpt`` (Karpathy's nanoGPT
``model.py``). Nothing here imports ``transformers``: Hugging Face models are read by their names and their
``config`` attributes alone.

What a parameter is, and what it gets (``trainer.hparams.apply_to_model`` applies it):

* **Kinds.** A name ending in ``.bias`` is a bias; any other parameter of a norm module type is a norm gain;
  the rest are weights, drawn from N(0, init_std²) of their module type. Gains start at one.
* **Biases** start at zero and are never decayed. They take their weight's per-module multipliers and β,
  and scale across widths and depths as vectors (Table 1's hidden-vector row in the blocks, its final-norm row
  outside), not as their matrix: under μP a bias is vector-like (each entry moves one output coordinate by
  Θ(LR) whatever the width), so the matrix's 1/m_N LR would freeze it in a wide model. At the base width and
  depth this is exactly the weight's LR, ε and β. The proxy has no biases, so no search tuned them.
* **Position embeddings** are ``embedding``: an input weight fed a one-hot vector, like the token embedding,
  which μP and Complete(d)P treat alike.
* **Fused weights** (GPT-2's Conv1D ``c_attn`` [in, 3·out], nanoGPT's Linear ``c_attn`` [3·out, in]) are one
  rule naming several module types: the parameter is split into equal slices along ``split_dim``, one per
  type in order. Each slice is initialised with its own type's std, exactly. One AdamW group holds one LR, ε,
  weight decay and β per parameter, so those must be equal for every slice: by default (``fused="equal"``)
  differing values are an error naming the parameter and the HPs, because a silent compromise would apply
  HPs the search never evaluated. ``fused="geometric_mean"`` applies instead the geometric mean of each (of
  1 − β for the βs: the midpoint in the search's own log space) and warns. Split the parameter for exact HPs.
  Llama's gated MLP needs no fusing: ``gate_proj`` and ``up_proj`` are both ``mlp_up``.
* **Tied embeddings** (GPT-2's and nanoGPT's ``wte`` = ``lm_head``): a parameter reached under an
  ``embedding`` and an ``unembedding`` name gets the HPs of ``tied_as`` (default ``embedding``, which is how
  GPT-2 and nanoGPT initialise it), with a warning naming what was not applied. Its width scaling is then the
  embedding's, not the unembedding's 1/m_N, so transfer across width is not what the rules intend: untie it
  for exact transfer. A logit multiplier other than one cannot be folded into a tied parameter: an error.
* **Residual and logit multipliers**: where the model has its own (``set_multipliers``, as ``gpt`` does)
  they are set on it; otherwise they are folded exactly into the projection that writes each branch
  (``attn_out``, ``mlp_down``) and into the unembedding (the proof is in ``trainer.hparams.fold``); clip
  gradients with ``trainer.hparams.clip_grad_norm_``, which measures the norm the unfolded model would see.
* **Dimensions.** Width and vocabulary come from the unembedding weight ([vocab, width], as ``nn.Linear``
  stores it), depth from the block indices matched (they must run 0…L−1). ``head_dim`` and ``seq_len`` come
  from the layout's own fields when given, otherwise from ``model.config`` (or ``model.cfg``): ``head_dim``
  or ``hidden_size // num_attention_heads`` (``n_embd // n_head``); ``seq_len``, ``max_position_embeddings``,
  ``n_positions`` or ``block_size``, the context the model is built for.

What transfers, and what does not: the rules carry the export's HPs exactly across width, depth, batch size and
tokens, but the values are the ones the search found on this project's proxy: pre-norm RMSNorm blocks with
QK-norm, attention logits scaled by 1/d_head, a GELU MLP, untied embeddings. Hugging Face models and nanoGPT
scale attention by 1/√d_head; only Qwen3 of the presets has QK-norm; Llama's MLP is gated (SiLU); GPT-2 and
nanoGPT use LayerNorm with biases and tie their embeddings. At a fixed head dimension (width grown by adding
heads, as the proxy does) 1/d_head and 1/√d_head differ by a constant, so the scaling across width is
unchanged, but the q/k HPs were tuned at another logit scale and may no longer be the best; a model whose head
dimension grows with width leaves μP's attention scaling altogether (1/√d_head is not width-stable). Module
types the model lacks (QK-norm gains in Llama) are not applied. A post-norm model, or one whose branches end in
something other than a linear map, is outside what the proxy tuned. The closer the proxy is to your model, the
more the HPs are worth.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Literal

from torch import nn

from trainer.model import BLOCK_MODULE_TYPES, GPT, MODULE_TYPES

FUSED_POLICIES = ("equal", "geometric_mean")
SetMultipliers = Callable[[nn.Module, float, float, float], None]  # (model, residual_attn, residual_mlp, logit)


@dataclass(frozen=True)
class Rule:
    """Parameters whose whole name matches ``pattern`` belong to ``module_type``; a tuple of module types is a
    fused parameter, split into that many equal slices along ``split_dim``."""

    pattern: str
    module_type: str | tuple[str, ...]
    split_dim: int = 0
    regex: re.Pattern = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        try:
            regex = re.compile(self.pattern)
        except re.error as exc:
            raise ValueError(f"rule pattern {self.pattern!r} is not a regular expression: {exc}") from None
        object.__setattr__(self, "regex", regex)
        types = self.module_types
        unknown = [m for m in types if m not in MODULE_TYPES]
        if unknown or not types:
            raise ValueError(f"rule {self.pattern!r}: unknown module type {unknown}; known: {', '.join(MODULE_TYPES)}")
        in_blocks = {m in BLOCK_MODULE_TYPES for m in types}
        if len(in_blocks) > 1:
            raise ValueError(f"rule {self.pattern!r} fuses module types inside and outside the blocks: {types}")
        if in_blocks.pop() != ("layer" in regex.groupindex):
            raise ValueError(
                f"rule {self.pattern!r}: a rule for a block module type captures the block index as (?P<layer>...),"
                " and a rule outside the blocks does not"
            )

    @property
    def module_types(self) -> tuple[str, ...]:
        return (self.module_type,) if isinstance(self.module_type, str) else tuple(self.module_type)


@dataclass(frozen=True)
class Matched:
    """One parameter as the layout places it: ``slices`` are its module types, one per equal slice along
    ``split_dim`` (a single one unless fused); ``tied`` is the module type of a tied name whose HPs it does
    not get (None unless tied)."""

    name: str
    param: nn.Parameter
    slices: tuple[str, ...]
    layer: int | None
    split_dim: int
    is_bias: bool
    tied: str | None = None
    tied_name: str | None = None


@dataclass(frozen=True)
class ModelDims:
    """The model's dimensions as the layout reads them; None where it could not find one."""

    width: int
    depth: int
    vocab_size: int
    head_dim: int | None
    seq_len: int | None


@dataclass(frozen=True)
class MatchedModel:
    params: tuple[Matched, ...]  # each parameter once, in the model's order
    dims: ModelDims


@dataclass(frozen=True)
class Layout:
    """How a model's parameters map to module types and blocks, and how to apply HPs where one group cannot
    hold what the export says (fused and tied parameters). ``set_multipliers`` sets the model's own residual
    and logit multipliers; without it they are folded into the parameters. ``head_dim`` and ``seq_len``
    override what the model's config says."""

    name: str
    rules: tuple[Rule, ...]
    tied_as: Literal["embedding", "unembedding"] = "embedding"
    fused: Literal["equal", "geometric_mean"] = "equal"
    set_multipliers: SetMultipliers | None = None
    head_dim: int | None = None
    seq_len: int | None = None

    def __post_init__(self) -> None:
        if self.tied_as not in ("embedding", "unembedding"):
            raise ValueError(f"Layout.tied_as must be 'embedding' or 'unembedding', got {self.tied_as!r}")
        if self.fused not in FUSED_POLICIES:
            raise ValueError(f"Layout.fused must be one of {FUSED_POLICIES}, got {self.fused!r}")

    def match(self, model: nn.Module) -> MatchedModel:
        """Every parameter of ``model`` placed by the rules, and the model's dimensions."""
        by_param: dict[int, list[tuple[str, Rule, int | None]]] = {}
        params: dict[int, nn.Parameter] = {}
        unmatched, doubly = [], []
        for name, param in model.named_parameters(remove_duplicate=False):
            hits = [(rule, m) for rule in self.rules if (m := rule.regex.fullmatch(name))]
            if not hits:
                unmatched.append(name)
            elif len(hits) > 1:
                doubly.append(f"{name} ({', '.join(repr(rule.pattern) for rule, _ in hits)})")
            else:
                rule, m = hits[0]
                layer = int(m.group("layer")) if "layer" in rule.regex.groupindex else None
                by_param.setdefault(id(param), []).append((name, rule, layer))
                params[id(param)] = param
        if unmatched or doubly:
            problems = [f"unmatched: {', '.join(unmatched)}"] * bool(unmatched)
            problems += [f"matched by more than one rule: {'; '.join(doubly)}"] * bool(doubly)
            raise ValueError(f"layout {self.name!r} does not place every parameter once: " + "; ".join(problems))
        matched = tuple(self._place(params[key], names) for key, names in by_param.items())
        return MatchedModel(matched, self._dims(model, by_param, params))

    def _place(self, param: nn.Parameter, names: list[tuple[str, Rule, int | None]]) -> Matched:
        name, rule, layer = names[0]
        places = {(r.module_types, lay) for _, r, lay in names}
        is_bias = name.endswith(".bias")
        if len(places) == 1:
            slices = len(rule.module_types)
            if slices > 1 and (
                not -param.dim() <= rule.split_dim < param.dim() or param.shape[rule.split_dim] % slices
            ):
                raise ValueError(
                    f"{name} of shape {tuple(param.shape)} cannot be split into {slices} equal slices along dimension "
                    f"{rule.split_dim} for {'+'.join(rule.module_types)}"
                )
            return Matched(name, param, rule.module_types, layer, rule.split_dim, is_bias)
        if places == {(("embedding",), None), (("unembedding",), None)}:
            other = "unembedding" if self.tied_as == "embedding" else "embedding"
            tied_name = next(n for n, r, _ in names if r.module_types == (other,))
            first = next(n for n, r, _ in names if r.module_types == (self.tied_as,))
            return Matched(first, param, (self.tied_as,), None, 0, is_bias, tied=other, tied_name=tied_name)
        listed = ", ".join(
            f"{n} as {'+'.join(r.module_types)}" + (f" of block {lay}" if lay is not None else "")
            for n, r, lay in names
        )
        raise ValueError(f"one parameter is shared under names placed differently: {listed}")

    def _dims(
        self, model: nn.Module, by_param: dict[int, list[tuple[str, Rule, int | None]]], params: dict[int, nn.Parameter]
    ) -> ModelDims:
        unembedding = [
            (name, params[key])
            for key, names in by_param.items()
            for name, rule, _ in names
            if rule.module_types == ("unembedding",) and not name.endswith(".bias")
        ]
        if len(unembedding) != 1 or unembedding[0][1].dim() != 2:
            found = ", ".join(name for name, _ in unembedding) or "none"
            raise ValueError(
                f"layout {self.name!r}: width and vocabulary are read from one [vocab, width] unembedding weight; "
                f"found {found}"
            )
        vocab_size, width = unembedding[0][1].shape
        layers = sorted({layer for names in by_param.values() for _, _, layer in names if layer is not None})
        if not layers or layers != list(range(len(layers))):
            raise ValueError(f"layout {self.name!r}: the block indices matched must run 0…L−1, found {layers}")
        config = _config(model)
        return ModelDims(
            width=width,
            depth=len(layers),
            vocab_size=vocab_size,
            head_dim=self.head_dim or _head_dim(config),
            seq_len=self.seq_len
            or _first_int(config, "seq_len", "max_position_embeddings", "n_positions", "block_size"),
        )


def _config(model: nn.Module) -> object:
    config = getattr(model, "config", None)
    return config if config is not None else getattr(model, "cfg", None)


def _first_int(config: object, *names: str) -> int | None:
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def _head_dim(config: object) -> int | None:
    head_dim = _first_int(config, "head_dim")
    if head_dim is not None:
        return head_dim
    hidden, heads = _first_int(config, "hidden_size", "n_embd"), _first_int(config, "num_attention_heads", "n_head")
    return hidden // heads if hidden and heads else None


def _rules(prefix: str, mapping: dict[str, str | tuple[str, ...]], split_dim: int = 0) -> tuple[Rule, ...]:
    """One rule per module path under ``prefix`` (with the block index where the prefix has ``{layer}``),
    for its weight and its bias."""
    head = re.escape(prefix).replace(re.escape("{layer}"), r"(?P<layer>\d+)")
    return tuple(
        Rule(
            rf"{head}{re.escape(path)}\.(?:weight|bias)",
            module_type,
            split_dim if isinstance(module_type, tuple) else 0,
        )
        for path, module_type in mapping.items()
    )


def _set_gpt_multipliers(model: nn.Module, residual_attn: float, residual_mlp: float, logit: float) -> None:
    model.set_forward_multipliers(residual_attn, residual_mlp, logit)


QKV = ("attn_q", "attn_k", "attn_v")
_GPT2_STYLE = {
    "ln_1": "norm_attn",
    "attn.c_attn": QKV,
    "attn.c_proj": "attn_out",
    "ln_2": "norm_mlp",
    "mlp.c_fc": "mlp_up",
    "mlp.c_proj": "mlp_down",
}
_GPT2_OUTSIDE = _rules(
    "",
    {
        "transformer.wte": "embedding",
        "transformer.wpe": "embedding",
        "transformer.ln_f": "final_norm",
        "lm_head": "unembedding",
    },
)

PRESETS: dict[str, Layout] = {
    "gpt": Layout(
        "gpt",
        _rules("", {"embedding": "embedding", "final_norm": "final_norm", "unembedding": "unembedding"})
        + _rules(
            "blocks.{layer}.",
            {
                "norm_attn": "norm_attn",
                "attn.q": "attn_q",
                "attn.k": "attn_k",
                "attn.v": "attn_v",
                "attn.q_norm": "q_norm",
                "attn.k_norm": "k_norm",
                "attn.out": "attn_out",
                "norm_mlp": "norm_mlp",
                "mlp.up": "mlp_up",
                "mlp.down": "mlp_down",
            },
        ),
        set_multipliers=_set_gpt_multipliers,
    ),
    "hf-llama": Layout(
        "hf-llama",
        _rules("", {"model.embed_tokens": "embedding", "model.norm": "final_norm", "lm_head": "unembedding"})
        + _rules(
            "model.layers.{layer}.",
            {
                "input_layernorm": "norm_attn",
                "self_attn.q_proj": "attn_q",
                "self_attn.k_proj": "attn_k",
                "self_attn.v_proj": "attn_v",
                "self_attn.q_norm": "q_norm",
                "self_attn.k_norm": "k_norm",
                "self_attn.o_proj": "attn_out",
                "post_attention_layernorm": "norm_mlp",
                "mlp.gate_proj": "mlp_up",
                "mlp.up_proj": "mlp_up",
                "mlp.down_proj": "mlp_down",
            },
        ),
    ),
    # Conv1D stores [in, out]: the fused q|k|v columns are the last dimension (of the bias too).
    "hf-gpt2": Layout(
        "hf-gpt2",
        _GPT2_OUTSIDE + _rules("transformer.h.{layer}.", _GPT2_STYLE, -1),
    ),
    # nn.Linear stores [out, in]: the fused q|k|v rows are the first dimension.
    "nanogpt": Layout(
        "nanogpt",
        _GPT2_OUTSIDE + _rules("transformer.h.{layer}.", _GPT2_STYLE, 0),
    ),
}


def preset(name: str, **changes: object) -> Layout:
    """The preset ``name``, with ``changes`` to its fields (e.g. ``fused="geometric_mean"``, ``seq_len=1024``)."""
    if name not in PRESETS:
        raise ValueError(f"unknown layout {name!r}; presets: {', '.join(PRESETS)}")
    return replace(PRESETS[name], **changes)


def resolve(model: nn.Module, layout: Layout | str | None) -> Layout:
    """``layout`` as a ``Layout``: a preset's name, or None for this project's ``GPT``."""
    if isinstance(layout, Layout):
        return layout
    if layout is not None:
        return preset(layout)
    if isinstance(model, GPT):
        return PRESETS["gpt"]
    raise ValueError(
        f"a {type(model).__name__} needs a layout: pass layout= one of {', '.join(map(repr, PRESETS))} "
        "or a trainer.layout.Layout of your own"
    )
