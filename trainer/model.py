"""A decoder-only, pre-norm transformer whose every parameter is tagged with its module type and layer.

Read top to bottom like nanoGPT: RMSNorm gains, attention with QK-norm and a 1/d_head logit scale, a GELU
MLP, residual branches with forward multipliers, a final norm and an untied unembedding. Width grows by
adding heads at a fixed head dimension. How the weights are initialised and optimised is not decided here:
``trainer.hparams`` materialises it per module type and layer from the tags.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

NORM_EPS = 1e-6
# Hard bounds: what the trainer can represent at all (tensor sizes and token counts within int64), not what a
# machine can hold (a server admits less, by its operator's limits).
MAX_WIDTH = 2**20
MAX_DEPTH = 2**14
MAX_SEQ_LEN = 2**19
MAX_MLP_RATIO = 64


class ModelConfig(BaseModel):
    """The architecture. Checked when built, so it is also the ``model`` section of a training config."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    width: int = Field(64, gt=0, le=MAX_WIDTH, description="Residual-stream width; a multiple of head_dim.")
    depth: int = Field(2, gt=0, le=MAX_DEPTH, description="Number of transformer blocks.")
    head_dim: int = Field(
        16, gt=0, le=MAX_WIDTH, description="Dimension of each attention head (fixed as width grows)."
    )
    seq_len: int = Field(64, gt=0, le=MAX_SEQ_LEN, description="Context length in tokens.")
    vocab_size: int = Field(256, gt=1, le=2**32, description="256 for the byte-level corpora; uint32 ids at most.")
    mlp_ratio: int = Field(4, gt=0, le=MAX_MLP_RATIO, description="Hidden width of the MLP over the model's width.")

    @model_validator(mode="after")
    def _heads_divide_width(self) -> ModelConfig:
        if self.width % self.head_dim:
            raise ValueError(f"model.width ({self.width}) must be a multiple of model.head_dim ({self.head_dim})")
        return self

    @property
    def n_heads(self) -> int:
        return self.width // self.head_dim

    @property
    def n_params(self) -> int:
        """The number of parameters ``GPT(self)`` has, without building it."""
        w = self.width
        block = (4 + 2 * self.mlp_ratio) * w * w + 2 * w + 2 * self.head_dim
        return 2 * self.vocab_size * w + self.depth * block + w


@dataclass(frozen=True)
class ParamTag:
    """Which module type a parameter belongs to, and its block index (None outside the blocks)."""

    module_type: str
    layer: int | None


class Tagged:
    """Mixin marking a leaf module whose parameters all belong to one module type."""

    module_type: str


class TaggedLinear(nn.Linear, Tagged):
    def __init__(self, module_type: str, d_in: int, d_out: int) -> None:
        super().__init__(d_in, d_out, bias=False)
        self.module_type = module_type


class TaggedEmbedding(nn.Embedding, Tagged):
    def __init__(self, module_type: str, vocab_size: int, width: int) -> None:
        super().__init__(vocab_size, width)
        self.module_type = module_type


class RMSNorm(nn.Module, Tagged):
    """RMS normalisation over the last dimension with a learnt gain (initialised to one)."""

    def __init__(self, module_type: str, dim: int) -> None:
        super().__init__()
        self.module_type = module_type
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, self.weight.shape, self.weight, NORM_EPS)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_heads, self.head_dim = cfg.n_heads, cfg.head_dim
        self.q = TaggedLinear("attn_q", cfg.width, cfg.width)
        self.k = TaggedLinear("attn_k", cfg.width, cfg.width)
        self.v = TaggedLinear("attn_v", cfg.width, cfg.width)
        self.q_norm = RMSNorm("q_norm", cfg.head_dim)  # one gain vector shared by all heads
        self.k_norm = RMSNorm("k_norm", cfg.head_dim)
        self.out = TaggedLinear("attn_out", cfg.width, cfg.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, w = x.shape
        split = (b, t, self.n_heads, self.head_dim)
        q = self.q_norm(self.q(x).view(split)).transpose(1, 2)
        k = self.k_norm(self.k(x).view(split)).transpose(1, 2)
        v = self.v(x).view(split).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=1.0 / self.head_dim)
        return self.out(y.transpose(1, 2).reshape(b, t, w))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.up = TaggedLinear("mlp_up", cfg.width, cfg.mlp_ratio * cfg.width)
        self.down = TaggedLinear("mlp_down", cfg.mlp_ratio * cfg.width, cfg.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.gelu(self.up(x)))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.norm_attn = RMSNorm("norm_attn", cfg.width)
        self.attn = Attention(cfg)
        self.norm_mlp = RMSNorm("norm_mlp", cfg.width)
        self.mlp = MLP(cfg)
        # Forward multipliers of the two residual branches: m_L^-alpha times the tunable r of each branch.
        self.residual_attn = 1.0
        self.residual_mlp = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.residual_attn * self.attn(self.norm_attn(x))
        return x + self.residual_mlp * self.mlp(self.norm_mlp(x))


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embedding = TaggedEmbedding("embedding", cfg.vocab_size, cfg.width)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.final_norm = RMSNorm("final_norm", cfg.width)
        self.unembedding = TaggedLinear("unembedding", cfg.width, cfg.vocab_size)
        self.logit_multiplier = 1.0

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Logits of shape (batch, time, vocab) for token ids of shape (batch, time)."""
        x = self.embedding(idx)
        for block in self.blocks:
            x = block(x)
        return self.logit_multiplier * self.unembedding(self.final_norm(x))

    def set_forward_multipliers(self, residual_attn: float, residual_mlp: float, logit: float) -> None:
        """Set before compiling: the multipliers are plain floats, constants to ``torch.compile``."""
        for block in self.blocks:
            block.residual_attn, block.residual_mlp = residual_attn, residual_mlp
        self.logit_multiplier = logit

    def tagged_parameters(self) -> list[tuple[str, nn.Parameter, ParamTag]]:
        """Every parameter with its tag, in a deterministic order."""
        tagged = []
        for name, module in self.named_modules():
            if not isinstance(module, Tagged):
                continue
            layer = int(name.split(".")[1]) if name.startswith("blocks.") else None
            for pname, param in module.named_parameters(recurse=False):
                tagged.append((f"{name}.{pname}", param, ParamTag(module.module_type, layer)))
        return tagged


MODULE_TYPES = (
    "embedding",
    "attn_q",
    "attn_k",
    "attn_v",
    "attn_out",
    "mlp_up",
    "mlp_down",
    "norm_attn",
    "norm_mlp",
    "q_norm",
    "k_norm",
    "final_norm",
    "unembedding",
)
# The module types that occur once per model; all the others sit inside every residual block (one parameter
# group per block).
MODEL_MODULE_TYPES = ("embedding", "final_norm", "unembedding")
BLOCK_MODULE_TYPES = tuple(m for m in MODULE_TYPES if m not in MODEL_MODULE_TYPES)
