"""Bottleneck adapters, prefix tuning and DoRA: identity at initialisation, exact parameter
counts, and outputs equal to a computation written out by hand."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gpt.config import GPTConfig
from gpt.model import GPTModel
from gpt.params import count_parameters
from peft_methods.bottleneck_adapter import (BottleneckAdapter, ModuleWithAdapter, apply_bottleneck_adapters,
                                     bottleneck_adapters, bottleneck_parameter_count, remove_bottleneck_adapters)
from lora.config import LoraConfig
from peft_methods.dora import LinearWithDoRA, apply_dora, dora_parameter_count, merge_dora
from peft_methods.prefix_tuning import apply_prefix_tuning, context_left, init_prefix_from_tokens, prefix_parameter_count
from conftest import make_tiny_gpt

CFG = GPTConfig.from_preset("gpt-tiny", drop_rate=0.0)  # d=32, 2 layers, 4 heads, context 64
HEAD_PARAMS = 32 * 2 + 2  # the 2-class head: weight + bias


def tiny_classifier(**overrides) -> GPTModel:
    return make_tiny_gpt(None, classes=2, drop_rate=0.0, **overrides).eval()  # CFG's model; tests/conftest.py


def token_ids(b=2, T=10, seed=0):
    return torch.randint(0, CFG.vocab_size, (b, T), generator=torch.Generator().manual_seed(seed))


def _randomize(module: nn.Module, seed: int = 1, std: float = 0.1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)


# ----------------------------------------------------------------------------- bottleneck adapters

def test_fresh_bottleneck_adapters_leave_the_output_exactly_unchanged():
    model = tiny_classifier()
    x = token_ids()
    before = model(x)
    apply_bottleneck_adapters(model, bottleneck=8)
    assert torch.equal(model(x), before)  # up-projection is zero: h + 0 == h exactly


def test_bottleneck_adapter_trainable_count_is_exact():
    model = tiny_classifier()
    total_before = count_parameters(model)
    apply_bottleneck_adapters(model, bottleneck=8)
    per_adapter = 2 * 32 * 8 + 8 + 32  # down (32*8 + 8) + up (8*32 + 32) = 552
    assert bottleneck_parameter_count(32, 8, 4) == 4 * per_adapter == 2208
    assert len(bottleneck_adapters(model)) == 4  # att and ff of 2 blocks
    assert count_parameters(model, trainable_only=True) == 2208 + HEAD_PARAMS
    assert count_parameters(model) == total_before + 2208
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"trf_blocks.{i}.{s}.adapter.{l}.{w}" for i in range(2) for s in ("att", "ff")
                         for l in ("down", "up") for w in ("weight", "bias")} | {"out_head.weight", "out_head.bias"}


def test_bottleneck_adapter_sits_after_the_sublayer_before_the_residual():
    model = tiny_classifier()
    apply_bottleneck_adapters(model, bottleneck=8)
    for _, adapter in bottleneck_adapters(model):
        _randomize(adapter)
    block = model.trf_blocks[0]
    x = torch.randn(2, 5, 32)
    att, ff = block.att.module, block.ff.module

    def adapter(a, h):
        return h + a.up(F.gelu(a.down(h)))

    h = x + adapter(block.att.adapter, att(block.norm1(x)))
    expected = h + adapter(block.ff.adapter, ff(block.norm2(h)))
    torch.testing.assert_close(block(x), expected, atol=1e-6, rtol=1e-6)


def test_bottleneck_adapters_train_only_themselves_and_the_head():
    model = tiny_classifier().train()
    apply_bottleneck_adapters(model, bottleneck=4)
    F.cross_entropy(model(token_ids())[:, -1], torch.tensor([0, 1])).backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, name
        else:
            assert p.grad is None, name
    # B = 0 at the start, but the up-projection's gradient is not zero: it can learn.
    assert model.trf_blocks[1].ff.adapter.up.weight.grad.abs().sum() > 0


def test_remove_bottleneck_adapters_restores_the_base():
    model = tiny_classifier()
    x = token_ids()
    before = model(x)
    apply_bottleneck_adapters(model, bottleneck=8)
    for _, a in bottleneck_adapters(model):
        _randomize(a)
    assert not torch.allclose(model(x), before)
    remove_bottleneck_adapters(model)
    assert not any(isinstance(m, (ModuleWithAdapter, BottleneckAdapter)) for m in model.modules())
    assert torch.equal(model(x), before)


@pytest.mark.parametrize("kwargs, message", [
    (dict(bottleneck=64), "wider"),
    (dict(bottleneck=0), "positive"),
    (dict(bottleneck=8, targets=("nope",)), "no module name ends with"),
    (dict(bottleneck=8, modules_to_save=("head_that_is_not_there",)), "match no module"),
])
def test_bottleneck_adapter_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        apply_bottleneck_adapters(tiny_classifier(), **kwargs)


def test_bottleneck_adapters_cannot_be_applied_twice():
    model = apply_bottleneck_adapters(tiny_classifier(), bottleneck=8)
    with pytest.raises(ValueError, match="already"):
        apply_bottleneck_adapters(model, bottleneck=8)


# ----------------------------------------------------------------------------- prefix tuning

def _manual_prefix_forward(model, ids, prefix):
    """The model's forward written out: positions shifted by P, P extra keys/values per layer, a
    causal mask that lets every query see all P prefix positions. prefix: (L, 2, H, P, hd)."""
    b, T = ids.shape
    P = prefix.shape[3]
    H, hd = CFG.n_heads, CFG.emb_dim // CFG.n_heads
    x = model.tok_emb(ids) + model.pos_emb.embedding.weight[P:P + T]  # positions P .. P+T-1
    for i, block in enumerate(model.trf_blocks):
        att = block.att.att
        h = block.norm1(x)

        def heads(t):
            return t.view(b, T, H, hd).transpose(1, 2)  # (b, H, T, hd)

        q, k, v = heads(att.W_query(h)), heads(att.W_key(h)), heads(att.W_value(h))
        k = torch.cat([prefix[i, 0].expand(b, H, P, hd), k], dim=2)  # (b, H, P+T, hd)
        v = torch.cat([prefix[i, 1].expand(b, H, P, hd), v], dim=2)
        scores = q @ k.transpose(-2, -1) / math.sqrt(hd)  # (b, H, T, P+T)
        allowed = torch.zeros(T, P + T, dtype=torch.bool)
        for t in range(T):
            allowed[t, : P + t + 1] = True  # the whole prefix, and real tokens 0..t
        weights = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
        context = (weights @ v).transpose(1, 2).reshape(b, T, CFG.emb_dim)
        x = x + att.out_proj(context)
        x = x + block.ff(block.norm2(x))
    return model.out_head(model.final_norm(x))


@pytest.mark.parametrize("sdpa", [True, False])
def test_prefix_tuning_equals_a_manual_computation(sdpa):
    model = tiny_classifier(sdpa=sdpa)
    apply_prefix_tuning(model, n_prefix=5)
    _randomize(model.prefix_encoder, std=1.0)  # large enough to change the attention clearly
    ids = token_ids(T=12)
    expected = _manual_prefix_forward(model, ids, model.prefix_encoder.prefix)
    torch.testing.assert_close(model(ids), expected, atol=1e-5, rtol=1e-5)


def test_prefix_tuning_with_mlp_reparametrisation_equals_a_manual_computation():
    model = tiny_classifier()
    apply_prefix_tuning(model, n_prefix=3, reparametrize=True, hidden=16)
    _randomize(model.prefix_encoder, std=0.5)
    enc = model.prefix_encoder
    # The MLP by hand: (P, d) -> tanh(Linear) -> Linear -> (P, L, 2, H, hd) -> (L, 2, H, P, hd).
    out = enc.mlp[2](torch.tanh(enc.mlp[0](enc.embedding)))
    prefix = out.view(3, 2, 2, 4, 8).permute(1, 2, 3, 0, 4)
    torch.testing.assert_close(enc.all_kv(), prefix)
    for layer in range(2):  # the per-layer slice of the output projection gives the same numbers
        k, v = enc.layer_kv(layer, batch_size=2)
        torch.testing.assert_close(k, prefix[layer, 0].expand(2, 4, 3, 8), atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(v, prefix[layer, 1].expand(2, 4, 3, 8), atol=1e-6, rtol=1e-6)
    ids = token_ids(T=7)
    torch.testing.assert_close(model(ids), _manual_prefix_forward(model, ids, prefix), atol=1e-5, rtol=1e-5)


def test_a_zero_prefix_still_changes_the_output():
    """Unlike LoRA (B = 0) or adapters (up = 0), prefix tuning has no identity initialisation:
    zero keys score 0 against every query, so the prefix still takes a share of each softmax
    and the real tokens' weights shrink (values of zero add nothing, but they dilute); and the
    input now sits at positions P, P+1, ... ."""
    model = tiny_classifier()
    ids = token_ids()
    before = model(ids)
    apply_prefix_tuning(model, n_prefix=4, modules_to_save=())
    with torch.no_grad():
        model.prefix_encoder.prefix.zero_()
    after = model(ids)
    assert not torch.allclose(after, before, atol=1e-4)
    torch.testing.assert_close(after, _manual_prefix_forward(model, ids, model.prefix_encoder.prefix),
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("attention", ["separate", "fused"])
def test_a_prefix_from_tokens_is_the_kv_cache_of_that_prompt(attention):
    """Initialised from P real tokens, the prefixed model computes what the base model computes
    for the input placed after those tokens (Li & Liang's initialisation; a prefix IS a prompt's
    keys and values)."""
    import copy

    base = tiny_classifier(attention=attention)
    model = apply_prefix_tuning(copy.deepcopy(base), n_prefix=5)
    prompt, ids = token_ids(b=1, T=5, seed=7), token_ids(b=2, T=9, seed=8)
    init_prefix_from_tokens(model, prompt[0].tolist())
    expected = base(torch.cat([prompt.expand(2, 5), ids], dim=1))[:, 5:]  # the input's positions
    torch.testing.assert_close(model(ids), expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="exactly 5 token ids"):
        init_prefix_from_tokens(model, [1, 2, 3])


def test_prefix_tuning_trainable_counts_are_exact():
    model = apply_prefix_tuning(tiny_classifier(), n_prefix=5)
    assert prefix_parameter_count(2, 32, 5) == 2 * 2 * 5 * 32 == 640
    assert count_parameters(model, trainable_only=True) == 640 + HEAD_PARAMS
    model = apply_prefix_tuning(tiny_classifier(), n_prefix=5, reparametrize=True, hidden=16)
    # embedding 5*32 + Linear(32, 16) + Linear(16, 2*2*32)
    expected = 5 * 32 + (32 * 16 + 16) + (16 * 128 + 128)
    assert prefix_parameter_count(2, 32, 5, reparametrize=True, hidden=16) == expected == 2864
    assert count_parameters(model, trainable_only=True) == expected + HEAD_PARAMS


def test_prefix_tuning_eats_context():
    model = apply_prefix_tuning(tiny_classifier(), n_prefix=10)
    assert context_left(model) == 64 - 10
    assert context_left(tiny_classifier()) == 64
    model(token_ids(T=54))  # exactly what is left: fine
    with pytest.raises(ValueError, match="prefix tuning with 10 prefix tokens leaves only 54"):
        model(token_ids(T=55))


def test_prefix_tuning_gradients_reach_only_the_prefix_and_the_head():
    model = apply_prefix_tuning(tiny_classifier().train(), n_prefix=4)
    F.cross_entropy(model(token_ids())[:, -1], torch.tensor([1, 0])).backward()
    assert model.prefix_encoder.prefix.grad.abs().sum() > 0
    assert {n for n, p in model.named_parameters() if p.grad is not None} == {
        "prefix_encoder.prefix", "out_head.weight", "out_head.bias"}


@pytest.mark.parametrize("n_prefix", [0, 64, -1])
def test_prefix_tuning_bad_lengths(n_prefix):
    with pytest.raises(ValueError, match="prefix"):
        apply_prefix_tuning(tiny_classifier(), n_prefix=n_prefix)


# ----------------------------------------------------------------------------- DoRA

def test_fresh_dora_leaves_the_output_unchanged():
    model = tiny_classifier()
    x = token_ids()
    before = model(x)
    apply_dora(model, LoraConfig(rank=4, alpha=8, targets=("query", "value", "ff")))
    # m / ||W + 0|| is exactly 1; only (x W^T + b) - b + b rounds.
    torch.testing.assert_close(model(x), before, atol=1e-6, rtol=1e-6)


def test_dora_trainable_count_is_exact():
    model = apply_dora(tiny_classifier(), LoraConfig(rank=4, alpha=8, targets=("query", "value"),
                                                     modules_to_save=("out_head",)))
    per_layer = dora_parameter_count(32, 32, 4)  # A 32*4 + B 4*32 + magnitude 32
    assert per_layer == 4 * (32 + 32) + 32 == 288
    assert count_parameters(model, trainable_only=True) == 2 * 2 * 288 + HEAD_PARAMS


def test_dora_layer_equals_the_formula_and_its_merge():
    torch.manual_seed(0)
    linear = nn.Linear(16, 12)
    layer = LinearWithDoRA(linear, rank=3, alpha=6)
    with torch.no_grad():
        layer.lora.lora_B.normal_(0, 0.3)
        layer.magnitude.mul_(torch.linspace(0.5, 1.5, 12))
    x = torch.randn(5, 16)
    s = 6 / 3
    V = linear.weight + s * (layer.lora.lora_A @ layer.lora.lora_B).T  # (d_out, d_in)
    W_prime = layer.magnitude.unsqueeze(1) * V / V.norm(dim=1, keepdim=True)
    expected = x @ W_prime.T + linear.bias
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(layer.merged_linear()(x), expected, atol=1e-5, rtol=1e-5)


def test_dora_gradients_reach_magnitude_and_both_matrices():
    layer = LinearWithDoRA(nn.Linear(8, 6), rank=2, alpha=2)
    layer(torch.randn(4, 8)).square().sum().backward()
    assert layer.magnitude.grad is not None and layer.magnitude.grad.abs().sum() > 0
    assert layer.lora.lora_B.grad.abs().sum() > 0  # B = 0, but its gradient is not
    assert layer.linear.weight.grad is None  # frozen


def test_merge_dora_keeps_the_function():
    model = apply_dora(tiny_classifier(), LoraConfig(rank=4, alpha=8, targets=("query", "value")))
    for m in model.modules():
        if isinstance(m, LinearWithDoRA):
            _randomize(m.lora, std=0.2)
    x = token_ids()
    before = model(x)
    merge_dora(model)
    assert not any(isinstance(m, LinearWithDoRA) for m in model.modules())
    torch.testing.assert_close(model(x), before, atol=1e-5, rtol=1e-5)


def test_dora_refuses_fused_qkv_slices():
    with pytest.raises(ValueError, match="fused"):
        apply_dora(tiny_classifier(attention="fused"), LoraConfig(rank=2, targets=("query", "value")))
