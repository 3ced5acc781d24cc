"""The transformer: tags, shapes, causality and forward multipliers."""

import pytest
import torch

from trainer.model import BLOCK_MODULE_TYPES, GPT, MODULE_TYPES, ModelConfig


def test_every_parameter_is_tagged_with_a_known_module_type_and_layer():
    model = GPT(ModelConfig(width=64, depth=3, head_dim=16))
    tagged = model.tagged_parameters()
    assert len(tagged) == len(list(model.parameters()))
    assert {tag.module_type for _, _, tag in tagged} == set(MODULE_TYPES)
    layers = {tag.layer for _, _, tag in tagged if tag.module_type == "mlp_down"}
    assert layers == {0, 1, 2}
    assert {tag.layer for _, _, tag in tagged if tag.module_type in ("embedding", "unembedding")} == {None}


def test_the_block_module_types_are_those_the_model_tags_with_a_layer():
    tagged = GPT(ModelConfig(width=32, depth=2, head_dim=16)).tagged_parameters()
    layers = {m: {tag.layer for _, _, tag in tagged if tag.module_type == m} for m in MODULE_TYPES}
    assert len(set(MODULE_TYPES)) == len(MODULE_TYPES) and set(BLOCK_MODULE_TYPES) <= set(MODULE_TYPES)
    for module_type, seen in layers.items():
        assert seen == ({0, 1} if module_type in BLOCK_MODULE_TYPES else {None}), module_type


def test_width_grows_by_heads_at_fixed_head_dim_and_qk_gains_are_shared():
    narrow, wide = GPT(ModelConfig(width=32, head_dim=16)), GPT(ModelConfig(width=128, head_dim=16))
    assert (narrow.cfg.n_heads, wide.cfg.n_heads) == (2, 8)
    assert wide.blocks[0].attn.q_norm.weight.shape == (16,)
    with pytest.raises(ValueError, match=r"multiple of model\.head_dim"):
        ModelConfig(width=40, head_dim=16)
    with pytest.raises(ValueError, match="greater than 0"):
        ModelConfig(depth=0)


def test_logits_are_causal():
    torch.manual_seed(0)
    model = GPT(ModelConfig(width=32, depth=2, head_dim=16, seq_len=16))
    x = torch.randint(0, 256, (2, 16))
    y = x.clone()
    y[:, 10:] = torch.randint(0, 256, (2, 6))
    with torch.no_grad():
        assert model(x).shape == (2, 16, 256)
        assert torch.allclose(model(x)[:, :10], model(y)[:, :10], atol=1e-6)
        assert not torch.allclose(model(x)[:, 10:], model(y)[:, 10:])


def test_forward_multipliers_scale_the_branches_and_the_logits():
    torch.manual_seed(0)
    model = GPT(ModelConfig(width=32, depth=1, head_dim=16))
    x = torch.randint(0, 256, (1, 8))
    with torch.no_grad():
        base = model(x)
        model.set_forward_multipliers(residual_attn=1.0, residual_mlp=1.0, logit=0.25)
        assert torch.allclose(model(x), 0.25 * base, atol=1e-6)
        model.set_forward_multipliers(residual_attn=0.0, residual_mlp=0.0, logit=1.0)
        embed_only = model.unembedding(model.final_norm(model.embedding(x)))
        assert torch.allclose(model(x), embed_only, atol=1e-6)
