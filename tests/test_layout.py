"""Per-module HPs on models other than this project's GPT (trainer.layout): Hugging Face Llama, Qwen3 and GPT-2
and a nanoGPT-style model built here, every group checked against Table 1 of arXiv 2512.22382 as worked out
below, not against the code; the folded residual and logit multipliers checked against explicit ones."""

from __future__ import annotations

import math
import re
import subprocess
import sys
import warnings
from collections.abc import Callable
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trainer import GPT, ModelConfig
from trainer.export import EXPORT_FORMAT, TunedHPs
from trainer.hparams import BaseHPs, Multipliers, apply_to_model, clip_grad_norm_, materialise
from trainer.layout import Layout, Rule, preset
from trainer.parameterisation import Parameterisation, Shape
from trainer.transfer import apply_export

BASE = Shape(width=32, depth=1, batch_size=8, tokens=100_000)
TARGET = Shape(width=64, depth=2, batch_size=16, tokens=400_000)  # m_N = 2, m_L = 2, m_B = 2, m_D = 4
PARAMETERISATION = Parameterisation("completed", alpha=1.0, duration_exponent=0.5)
BASE_HPS = BaseHPs(lr=0.01, init_std=0.02, weight_decay=0.1, beta1=0.9, beta2=0.95, eps=1e-8)
MULTIPLIERS = Multipliers(
    module={
        "embedding": {"init_std": 1.0},
        "attn_q": {"init_std": -0.5},  # per slice of a fused q|k|v weight
        "mlp_up": {"eps": 2.0, "beta1": 1.0},
        "mlp_down": {"lr": 1.0},
        "norm_attn": {"lr": 0.5},
        "q_norm": {"lr": -1.0},
    },
    residual={"attn": -1.0, "mlp": 0.5},
)
QKV = ("attn_q", "attn_k", "attn_v")


def export(multipliers: Multipliers = MULTIPLIERS, parameterisation: Parameterisation = PARAMETERISATION) -> dict:
    """An export's sections that ``apply_export`` reads: the format, what the search found, the target shape."""
    tuned = TunedHPs(
        parameterisation=parameterisation,
        base_shape=BASE,
        base_hps=BASE_HPS,
        seq_len=64,
        vocab_size=256,
        head_dim=16,
        multipliers=multipliers,
    )
    return {"format": EXPORT_FORMAT, "base": tuned.to_dict(), "target": {"shape": vars(TARGET)}}


def by_hand(module_type: str, kind: str) -> dict[str, float]:
    """Table 1 at TARGET (α = 1: hidden LR × m_L^0, in-block ε × 1/m_L; s = √(m_B/m_D); 1 − β × m_B/m_D) for
    BASE_HPS × MULTIPLIERS. A bias takes its weight's multipliers, the row of the vectors beside it, no decay
    and zero init; the residual multipliers r = 2^mult · m_L^-1 fold into attn_out and mlp_down as init × r,
    LR × r, ε ÷ r, weight decay ÷ r."""
    m_n, m_l, s = 2.0, 2.0, 0.5**0.5
    rows = {  # (init std, LR, ε, weight decay) factors
        "embedding": (1, s, 1 / (m_n * s), s),
        "hidden weight": (m_n**-0.5, s / m_n, 1 / (m_l * m_n * s), m_n * s),
        "hidden vector": (1, s, 1 / (m_l * m_n * s), 0),  # norm gains are not decayed by default
        "qk norm": (1, s, 1 / (m_l * s), 0),
        "final norm": (1, s, 1 / s, 0),
        "unembedding": (1 / m_n, s / m_n, 1 / s, m_n * s),
    }
    row = {"embedding": "embedding", "unembedding": "unembedding", "final_norm": "final norm"}.get(module_type)
    if row is None:
        row = "qk norm" if module_type in ("q_norm", "k_norm") else "hidden vector"
        row = "hidden weight" if module_type.startswith(("attn", "mlp")) and kind == "weight" else row
    init, lr, eps, wd = rows[row]
    mult = {hp: 2.0 ** MULTIPLIERS.module.get(module_type, {}).get(hp, 0.0) for hp in BaseHPs.model_fields}
    r = {"attn_out": 2**-1 / m_l, "mlp_down": 2**0.5 / m_l}.get(module_type, 1.0)
    return {
        "init_std": 0.0 if kind == "bias" else 0.02 * init * mult["init_std"] * r,
        "lr": 0.01 * lr * mult["lr"] * r,
        "eps": 1e-8 * eps * mult["eps"] / r,
        "weight_decay": 0.0 if kind == "bias" else 0.1 * wd * mult["weight_decay"] / r,
        "beta1": 1 - 0.1 * 0.5 * mult["beta1"],
        "beta2": 1 - 0.05 * 0.5 * mult["beta2"],
    }


class NanoGPT(nn.Module):
    """Karpathy's nanoGPT ``model.py`` cut to its parameters and forward (no dropout), plus branch multipliers
    for the folding test (1: nanoGPT's own forward)."""

    def __init__(
        self, vocab_size: int = 256, block_size: int = 64, n_layer: int = 2, n_head: int = 4, n_embd: int = 64
    ):
        super().__init__()
        self.config = SimpleNamespace(vocab_size=vocab_size, block_size=block_size, n_head=n_head, n_embd=n_embd)
        blocks = nn.ModuleList(NanoBlock(n_embd, n_head) for _ in range(n_layer))
        wte, wpe = nn.Embedding(vocab_size, n_embd), nn.Embedding(block_size, n_embd)
        self.transformer = nn.ModuleDict({"wte": wte, "wpe": wpe, "h": blocks, "ln_f": nn.LayerNorm(n_embd)})
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # tied, as in nanoGPT

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.transformer.wte(idx) + self.transformer.wpe(torch.arange(idx.shape[1]))
        for block in self.transformer.h:
            x = block(x)
        return self.lm_head(self.transformer.ln_f(x))


class NanoBlock(nn.Module):
    def __init__(self, n_embd: int, n_head: int) -> None:
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(n_embd), nn.LayerNorm(n_embd)
        self.attn, self.n_head = nn.Module(), n_head
        self.attn.c_attn, self.attn.c_proj = nn.Linear(n_embd, 3 * n_embd), nn.Linear(n_embd, n_embd)
        self.mlp = nn.Module()
        self.mlp.c_fc, self.mlp.c_proj = nn.Linear(n_embd, 4 * n_embd), nn.Linear(4 * n_embd, n_embd)
        self.residual_attn = self.residual_mlp = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = (z.view(b, t, self.n_head, -1).transpose(1, 2) for z in self.attn.c_attn(self.ln_1(x)).split(c, 2))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, c)
        x = x + self.residual_attn * self.attn.c_proj(y)
        return x + self.residual_mlp * self.mlp.c_proj(F.gelu(self.mlp.c_fc(self.ln_2(x))))


def llama(**changes: int) -> nn.Module:
    transformers = pytest.importorskip("transformers")
    sizes = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4}
    sizes |= {"num_key_value_heads": 2, "vocab_size": 256, "max_position_embeddings": 64} | changes
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**sizes))


def qwen3() -> nn.Module:
    transformers = pytest.importorskip("transformers")
    sizes = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4}
    sizes |= {"num_key_value_heads": 2, "vocab_size": 256, "max_position_embeddings": 64, "head_dim": 16}
    return transformers.Qwen3ForCausalLM(transformers.Qwen3Config(**sizes))


def gpt2() -> nn.Module:
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(
        n_embd=64, n_layer=2, n_head=4, vocab_size=256, n_positions=64, bos_token_id=None, eos_token_id=None
    )
    return transformers.GPT2LMHeadModel(config)


# Each model's parameters by module path (block index as N): module type(s), as the model's authors named them.
LLAMA_TYPES = {
    "model.embed_tokens": "embedding",
    "model.layers.N.input_layernorm": "norm_attn",
    "model.layers.N.self_attn.q_proj": "attn_q",
    "model.layers.N.self_attn.k_proj": "attn_k",
    "model.layers.N.self_attn.v_proj": "attn_v",
    "model.layers.N.self_attn.q_norm": "q_norm",
    "model.layers.N.self_attn.k_norm": "k_norm",
    "model.layers.N.self_attn.o_proj": "attn_out",
    "model.layers.N.post_attention_layernorm": "norm_mlp",
    "model.layers.N.mlp.gate_proj": "mlp_up",
    "model.layers.N.mlp.up_proj": "mlp_up",
    "model.layers.N.mlp.down_proj": "mlp_down",
    "model.norm": "final_norm",
    "lm_head": "unembedding",
}
GPT2_TYPES = {
    "transformer.wte": "embedding",
    "transformer.wpe": "embedding",
    "transformer.h.N.ln_1": "norm_attn",
    "transformer.h.N.attn.c_attn": QKV,
    "transformer.h.N.attn.c_proj": "attn_out",
    "transformer.h.N.ln_2": "norm_mlp",
    "transformer.h.N.mlp.c_fc": "mlp_up",
    "transformer.h.N.mlp.c_proj": "mlp_down",
    "transformer.ln_f": "final_norm",
}
NORMS = ("norm_attn", "norm_mlp", "q_norm", "k_norm", "final_norm")
MODELS = {  # builder, layout, module types by path, the fused dimension, tied
    "hf-llama": (llama, "hf-llama", LLAMA_TYPES, None, False),
    "hf-qwen3": (qwen3, "hf-llama", LLAMA_TYPES, None, False),
    "hf-gpt2": (gpt2, "hf-gpt2", GPT2_TYPES, -1, True),
    "nanogpt": (NanoGPT, "nanogpt", GPT2_TYPES, 0, True),
}


@pytest.mark.parametrize("which", MODELS)
def test_every_parameter_gets_the_hps_of_its_module_type_by_the_rules(which):
    build, layout, types, fused_dim, tied = MODELS[which]
    model = build()
    torch.manual_seed(0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        groups = apply_export(model, export(), layout=layout)
    tied_warnings = [w for w in caught if "is tied to lm_head.weight" in str(w.message)]
    assert len(tied_warnings) == tied, [str(w.message) for w in caught]

    grouped = [p for g in groups for p in g["params"]]
    assert len(grouped) == len({id(p) for p in grouped}) == len(list(model.parameters()))
    assert {id(p) for p in grouped} == {id(p) for p in model.parameters()}
    for group in groups:
        for name, param in zip(group["names"], group["params"], strict=True):
            path, _, suffix = re.sub(r"\.\d+\.", ".N.", name).rpartition(".")
            module_types = types[path] if isinstance(types[path], tuple) else (types[path],)
            kind = "bias" if suffix == "bias" else "gain" if module_types[0] in NORMS else "weight"
            expected = [by_hand(m, kind) for m in module_types]
            applied = {"lr": group["lr"], "eps": group["eps"], "weight_decay": group["weight_decay"]}
            applied |= dict(zip(("beta1", "beta2"), group["betas"], strict=True))
            for slice_hps in expected:
                assert applied == pytest.approx({hp: slice_hps[hp] for hp in applied}, rel=1e-12), name
            slices = param.detach().chunk(len(expected), dim=fused_dim) if fused_dim is not None else (param,)
            for values, slice_hps in zip(slices, expected, strict=True):
                if kind == "bias":
                    assert torch.equal(values, torch.zeros_like(values)), name
                elif kind == "gain":
                    assert torch.equal(values, torch.ones_like(values)), name
                else:
                    assert values.std().item() == pytest.approx(slice_hps["init_std"], rel=0.1), name
                    assert abs(values.mean().item()) < 4 * slice_hps["init_std"] / values.numel() ** 0.5, name
    if tied:
        assert ("unembedding", None) not in {key for g in groups for key in g["modules"]}
    torch.optim.AdamW(groups)  # a valid optimiser


@pytest.mark.parametrize(
    ("which", "dims"),
    [("hf-llama", (64, 2, 256, 16, 64)), ("hf-gpt2", (64, 2, 256, 16, 64)), ("nanogpt", (64, 2, 256, 16, 64))],
)
def test_the_layout_reads_the_models_dimensions(which, dims):
    build, layout, *_ = MODELS[which]
    found = preset(layout).match(build()).dims
    assert (found.width, found.depth, found.vocab_size, found.head_dim, found.seq_len) == dims
    assert preset(layout, seq_len=128, head_dim=8).match(build()).dims.seq_len == 128


def losses(
    model: nn.Module, groups: list[dict], clip: Callable[[list[dict]], torch.Tensor] | None = None
) -> list[float]:
    """20 AdamW steps on a learnable sequence (each token the last plus one), clipping with ``clip``."""
    optimizer = torch.optim.AdamW(groups)
    generator = torch.Generator().manual_seed(1)
    found = []
    for _ in range(20):
        tokens = (torch.randint(0, 256, (4, 1), generator=generator) + torch.arange(17)) % 256
        loss = F.cross_entropy(model(tokens[:, :-1]).flatten(0, 1), tokens[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        if clip is not None:
            assert clip(optimizer.param_groups) > MAX_NORM  # it clips at every step
        optimizer.step()
        found.append(loss.item())
    return found


MAX_NORM = 0.05
# Big enough to matter in every step: ε near √v, a per-step decay of 1e-3.
FOLD_HPS = BaseHPs(lr=0.01, init_std=0.02, weight_decay=0.1, beta1=0.9, beta2=0.95, eps=1e-5)
FAR_FROM_ONE = Multipliers(residual={"attn": -1.0, "mlp": math.log2(6)})  # × m_L^-1 = 1/2: r = 0.25 and 3


@pytest.mark.parametrize("clipped", [False, True])
def test_folded_residual_and_logit_multipliers_train_as_the_explicit_ones(clipped):
    """CompleteP from width 8 to 32 (logit multiplier 1/4), depth 1 to 2, in float64 over 20 AdamW steps; clipped
    by the global gradient norm (torch's on the explicit model, the folded groups' own on the folded one)."""
    hps = materialise(
        FOLD_HPS, FAR_FROM_ONE, Parameterisation("completep"), Shape(8, 1, 4, 1000), Shape(32, 2, 4, 1000)
    )
    assert (hps.residual_attn, hps.residual_mlp, hps.logit) == pytest.approx((0.25, 3.0, 0.25), rel=1e-12)
    cfg = ModelConfig(width=32, depth=2, head_dim=16, seq_len=16)
    explicit, folded = GPT(cfg).double(), GPT(cfg).double()
    torch.manual_seed(0)
    explicit_groups = apply_to_model(explicit, hps)
    torch.manual_seed(0)
    folded_groups = apply_to_model(folded, hps, layout=preset("gpt", set_multipliers=None))
    assert (folded.blocks[1].residual_attn, folded.blocks[1].residual_mlp, folded.logit_multiplier) == (1.0, 1.0, 1.0)
    assert explicit.blocks[1].residual_mlp == 3.0
    torch.testing.assert_close(folded.blocks[1].mlp.down.weight, 3.0 * explicit.blocks[1].mlp.down.weight)
    torch.testing.assert_close(folded.unembedding.weight, 0.25 * explicit.unembedding.weight)
    clip_explicit = (
        (lambda groups: torch.nn.utils.clip_grad_norm_(explicit.parameters(), MAX_NORM)) if clipped else None
    )
    clip_folded = (lambda groups: clip_grad_norm_(groups, MAX_NORM)) if clipped else None
    explicit_losses = losses(explicit, explicit_groups, clip_explicit)
    folded_losses = losses(folded, folded_groups, clip_folded)
    assert folded_losses == pytest.approx(explicit_losses, rel=1e-10, abs=0)
    assert explicit_losses[-1] < explicit_losses[0] - 0.1  # it learnt


def test_folded_residual_multipliers_carry_the_projection_biases_too():
    """nanoGPT (biases on every projection, a fused q|k|v, tied embeddings) with branch multipliers of its own
    against the same multipliers folded in, Complete(d)P, float64, 20 AdamW steps."""

    def set_branches(model: nn.Module, residual_attn: float, residual_mlp: float, logit: float) -> None:
        assert logit == 1.0  # Complete(d)P has none
        for block in model.transformer.h:
            block.residual_attn, block.residual_mlp = residual_attn, residual_mlp

    hps = materialise(FOLD_HPS, FAR_FROM_ONE, PARAMETERISATION, Shape(16, 1, 4, 1000), Shape(32, 2, 4, 1000))
    assert (hps.residual_attn, hps.residual_mlp) == pytest.approx((0.25, 3.0), rel=1e-12)
    explicit, folded = (NanoGPT(block_size=16, n_head=2, n_embd=32).double() for _ in range(2))
    with pytest.warns(UserWarning, match="tied"):
        torch.manual_seed(0)
        explicit_groups = apply_to_model(explicit, hps, layout=preset("nanogpt", set_multipliers=set_branches))
        torch.manual_seed(0)
        folded_groups = apply_to_model(folded, hps, layout="nanogpt")
    assert explicit.transformer.h[0].residual_attn == 0.25 and folded.transformer.h[0].residual_attn == 1.0
    explicit_losses, folded_losses = losses(explicit, explicit_groups), losses(folded, folded_groups)
    assert folded_losses == pytest.approx(explicit_losses, rel=1e-10, abs=0)
    assert not torch.equal(folded.transformer.h[0].attn.c_proj.bias, torch.zeros(32, dtype=torch.float64))
    torch.testing.assert_close(
        folded.transformer.h[0].attn.c_proj.bias, 0.25 * explicit.transformer.h[0].attn.c_proj.bias
    )


@pytest.mark.parametrize(
    ("changes", "field", "found"),
    [({"vocab_size": 300}, "vocab_size", 300), ({"max_position_embeddings": 128}, "seq_len", 128),
     ({"num_attention_heads": 2}, "head_dim", 32)],
)  # fmt: skip
def test_a_model_the_export_was_not_tuned_for_is_refused_unless_told(changes, field, found):
    model = llama(**changes)
    with pytest.raises(ValueError, match=f"the model's {field} is {found}, .* {field} "):
        apply_export(model, export(), layout="hf-llama")
    assert apply_export(model, export(), layout="hf-llama", check_shape=False)


def test_an_export_written_before_head_dim_was_recorded_does_not_check_it():
    old = export()
    del old["base"]["head_dim"]
    assert apply_export(llama(num_attention_heads=2), old, layout="hf-llama")


def test_a_model_without_a_context_length_is_refused_until_told_one():
    model = NanoGPT()
    del model.config.block_size
    with pytest.raises(ValueError, match="could not read the model's seq_len"):
        apply_export(model, export(), layout="nanogpt")
    with pytest.warns(UserWarning, match="tied"):
        assert apply_export(model, export(), layout=preset("nanogpt", seq_len=64))


def test_parameters_placed_by_no_rule_or_by_two_are_named():
    model = NanoGPT()
    model.transformer.h[1].attn.gate = nn.Parameter(torch.zeros(64))
    with pytest.raises(ValueError, match=r"unmatched: transformer\.h\.1\.attn\.gate$"):
        apply_export(model, export(), layout="nanogpt")
    twice = preset("nanogpt", rules=(*preset("nanogpt").rules, Rule(r"lm_head\.weight", "embedding")))
    with pytest.raises(ValueError, match=r"matched by more than one rule: lm_head\.weight \('lm_head"):
        apply_export(NanoGPT(), export(), layout=twice)


@pytest.mark.filterwarnings("ignore:transformer.wte.weight is tied")
def test_a_fused_weight_whose_module_types_differ_is_refused_or_averaged_when_told():
    differing = Multipliers(module={"attn_k": {"lr": 1.0}})
    with pytest.raises(ValueError, match=r"transformer\.h\.0\.attn\.c_attn\.weight fuses attn_q\+attn_k\+attn_v.*lr "):
        apply_export(NanoGPT(), export(differing), layout="nanogpt")
    with pytest.warns(UserWarning, match="geometric mean of lr"):
        groups = apply_export(NanoGPT(), export(differing), layout=preset("nanogpt", fused="geometric_mean"))
    qkv = next(g for g in groups if "transformer.h.0.attn.c_attn.weight" in g["names"])
    assert qkv["lr"] == pytest.approx(by_hand("attn_q", "weight")["lr"] * 2 ** (1 / 3), rel=1e-12)


def test_a_fused_weight_splits_into_equal_slices_and_a_shared_one_has_one_place():
    fc = Rule(r"transformer\.h\.(?P<layer>\d+)\.mlp\.c_fc\.(?:weight|bias)", ("mlp_up",) * 3)
    thirds = preset("nanogpt", rules=(*(r for r in preset("nanogpt").rules if "c_fc" not in r.pattern), fc))
    with pytest.raises(
        ValueError, match=r"transformer\.h\.0\.mlp\.c_fc\.weight of shape \(256, 64\) cannot be split into 3"
    ):
        thirds.match(NanoGPT())
    model = NanoGPT()
    model.transformer.h[1].mlp.c_fc = model.transformer.h[0].mlp.c_fc  # one MLP input in two blocks
    with pytest.raises(ValueError, match=r"shared under names placed differently: transformer\.h\.0\.mlp\.c_fc"):
        preset("nanogpt").match(model)


@pytest.mark.parametrize(
    ("tied_as", "name", "not_applied"),
    [("embedding", "transformer.wte.weight", "unembedding"), ("unembedding", "lm_head.weight", "embedding")],
)
def test_a_tied_embedding_gets_the_hps_of_the_module_type_it_is_told(tied_as, name, not_applied):
    model = NanoGPT()
    with pytest.warns(UserWarning, match=f"gets the {tied_as}'s HPs; the {not_applied}'s .* are not applied"):
        groups = apply_export(model, export(), layout=preset("nanogpt", tied_as=tied_as))
    tied = next(g for g in groups if name in g["names"])
    assert (tied["lr"], tied["eps"], tied["weight_decay"]) == pytest.approx(
        tuple(by_hand(tied_as, "weight")[hp] for hp in ("lr", "eps", "weight_decay")), rel=1e-12
    )
    assert (tied_as, None) in tied["modules"] and (not_applied, None) not in tied["modules"]
    assert model.lm_head.weight.std().item() == pytest.approx(by_hand(tied_as, "weight")["init_std"], rel=0.1)


def test_a_logit_multiplier_cannot_be_folded_into_a_tied_unembedding():
    completep = export(Multipliers(), Parameterisation("completep"))  # 64 over a base width of 32: logit 1/2
    with pytest.raises(ValueError, match=r"tied to lm_head\.weight: the logit multiplier 0\.5 cannot be folded"):
        apply_export(NanoGPT(), completep, layout="nanogpt")


def test_a_model_needs_a_layout_unless_it_is_this_projects_gpt():
    with pytest.raises(ValueError, match="a NanoGPT needs a layout: pass layout= one of 'gpt', 'hf-llama'"):
        apply_export(NanoGPT(), export())
    with pytest.raises(ValueError, match="unknown layout 'llama'; presets: gpt, hf-llama, hf-gpt2, nanogpt"):
        apply_export(NanoGPT(), export(), layout="llama")


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        (lambda: Rule(r"blocks\.\d+\.ffn\.weight", "ffn"), "unknown module type"),
        (lambda: Rule(r"blocks\.\d+\.mlp\.weight", "mlp_up"), "captures the block index"),
        (lambda: Rule(r"head\.weight", ("embedding", "attn_q")), "inside and outside the blocks"),
        (lambda: Rule(r"(", "embedding"), "not a regular expression"),
        (lambda: Layout("x", (), fused="mean"), "Layout.fused"),
    ],
)
def test_bad_rules_name_the_problem(rule, message):
    with pytest.raises(ValueError, match=message):
        rule()


def test_the_layout_module_imports_without_transformers():
    blocked = "import sys; sys.modules['transformers'] = None; import trainer.layout, trainer.transfer"
    subprocess.run([sys.executable, "-c", blocked], check=True)
