"""The LoRA layers on their own: initialisation, the forward formula, scaling, fused qkv, bad input."""

import math

import pytest
import torch
from torch import nn

from gpt import FusedMultiHeadAttention, MultiHeadAttention, fuse_qkv
from lora import FusedQKVWithLoRA, LinearWithLoRA, LoraConfig, LoRALayer, QKVLoRALayer


def _randomise_B(module):
    # B starts at zero (no effect); give it values so the branch is visible in the output.
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("lora_B"):
                p.normal_(std=0.5)


def test_lora_layer_init_shapes_and_names():
    layer = LoRALayer(64, 16, rank=4, alpha=8)
    assert [n for n, _ in layer.named_parameters()] == ["lora_A", "lora_B"]
    assert layer.lora_A.shape == (64, 4) and layer.lora_B.shape == (4, 16)
    assert layer.A is layer.lora_A and layer.B is layer.lora_B  # the book's names
    assert torch.count_nonzero(layer.lora_B) == 0
    # Initialised like nn.Linear(64, 4).weight: uniform in +-1/sqrt(fan_in) with fan_in = d_in = 64.
    bound = 1 / math.sqrt(64)
    assert layer.lora_A.abs().max() <= bound
    assert layer.lora_A.abs().max() > 0.9 * bound
    assert layer.scale == 8 / 4


def test_lora_layer_forward_is_scale_x_A_B():
    layer = LoRALayer(12, 10, rank=3, alpha=6)
    _randomise_B(layer)
    x = torch.randn(2, 5, 12)
    expected = 2.0 * (x @ layer.lora_A @ layer.lora_B)
    torch.testing.assert_close(layer(x), expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(x @ layer.delta_weight(), expected, rtol=1e-5, atol=1e-6)


def test_fresh_linear_with_lora_equals_base_exactly():
    linear = nn.Linear(16, 24)
    wrapped = LinearWithLoRA(linear, rank=4, alpha=8)
    x = torch.randn(3, 7, 16)
    assert torch.equal(wrapped(x), linear(x))
    assert not linear.weight.requires_grad and not linear.bias.requires_grad  # frozen base
    assert wrapped.lora["default"].lora_A.requires_grad


def test_linear_with_lora_formula_and_counts():
    linear = nn.Linear(768, 768)
    wrapped = LinearWithLoRA(linear, rank=16, alpha=16)
    assert sum(p.numel() for p in wrapped.parameters() if p.requires_grad) == 16 * (768 + 768) == 24_576
    assert sum(p.numel() for p in wrapped.parameters() if not p.requires_grad) == 590_592

    small = LinearWithLoRA(nn.Linear(8, 6), rank=2, alpha=3)
    _randomise_B(small)
    x = torch.randn(4, 8)
    branch = small.lora["default"]
    expected = x @ small.linear.weight.T + small.linear.bias + (3 / 2) * (x @ branch.lora_A @ branch.lora_B)
    torch.testing.assert_close(small(x), expected, rtol=1e-6, atol=1e-6)


def test_freeze_base_false_leaves_requires_grad_alone():
    linear = nn.Linear(8, 8)
    LinearWithLoRA(linear, rank=2, alpha=2, freeze_base=False)
    assert linear.weight.requires_grad


@pytest.mark.parametrize("scaling,factor", [("alpha/r", 16 / 16), ("alpha/sqrt(r)", 16 / 4), ("alpha", 16)])
def test_scaling_conventions(scaling, factor):
    # r=16, alpha=16: alpha/r -> 1, rsLoRA alpha/sqrt(r) -> 4, the book's first printing alpha -> 16.
    torch.manual_seed(0)
    reference = LoRALayer(32, 32, rank=16, alpha=16, scaling="alpha/r")
    _randomise_B(reference)
    layer = LoRALayer(32, 32, rank=16, alpha=16, scaling=scaling)
    layer.load_state_dict(reference.state_dict())
    x = torch.randn(5, 32)
    assert layer.scale == factor
    torch.testing.assert_close(layer(x), factor * reference(x), rtol=1e-5, atol=1e-6)


def test_first_printing_update_is_16x_alpha_over_r():
    cfg_book = LoraConfig(rank=16, alpha=16, scaling="alpha")
    cfg_now = LoraConfig(rank=16, alpha=16, scaling="alpha/r")
    assert cfg_book.scale / cfg_now.scale == 16
    assert LoraConfig(rank=8, alpha=16).scale == 2.0


@pytest.mark.parametrize("kwargs,message", [
    (dict(rank=0), "rank must be a positive integer"),
    (dict(rank=-3), "rank must be a positive integer"),
    (dict(rank=9), r"rank 9 is larger than min\(d_in=16, d_out=8\)"),
    (dict(alpha=-1.0), "alpha must be a finite number >= 0"),
    (dict(dropout=1.0), r"dropout must be in \[0, 1\)"),
    (dict(dropout=-0.1), r"dropout must be in \[0, 1\)"),
    (dict(scaling="alpha/r^2"), "unknown LoRA scaling"),
])
def test_bad_hyperparameters_are_clear_errors(kwargs, message):
    args = dict(rank=4, alpha=8.0, dropout=0.0, scaling="alpha/r") | kwargs
    with pytest.raises(ValueError, match=message):
        LinearWithLoRA(nn.Linear(16, 8), **args)
    if "rank" not in kwargs or kwargs["rank"] <= 0:
        with pytest.raises(ValueError, match=message):
            LoraConfig(**args)


def test_rank_must_be_an_int():
    with pytest.raises(TypeError, match="rank must be an int"):
        LoRALayer(8, 8, rank=2.0, alpha=1)


def test_lora_cannot_wrap_lora_or_a_non_linear():
    wrapped = LinearWithLoRA(nn.Linear(8, 8), rank=2, alpha=2)
    with pytest.raises(ValueError, match="applied twice"):
        LinearWithLoRA(wrapped, rank=2, alpha=2)
    with pytest.raises(ValueError, match="already applied to this layer"):
        wrapped.add_adapter("default", rank=2, alpha=2)
    with pytest.raises(TypeError, match="nn.Linear"):
        LinearWithLoRA(nn.Embedding(10, 8), rank=2, alpha=2)


def test_dropout_only_in_training():
    layer = LinearWithLoRA(nn.Linear(16, 16), rank=4, alpha=4, dropout=0.5)
    _randomise_B(layer)
    x = torch.randn(8, 16)
    layer.eval()
    assert torch.equal(layer(x), layer(x))
    layer.train()
    torch.manual_seed(1)
    a = layer(x)
    torch.manual_seed(2)
    b = layer(x)
    assert not torch.equal(a, b)


def test_bf16_base_fp32_adapter():
    # Adapters stay fp32 on a bf16 base (tiny updates would round away); the output is bf16.
    linear = nn.Linear(32, 32).to(torch.bfloat16)
    wrapped = LinearWithLoRA(linear, rank=4, alpha=8)
    _randomise_B(wrapped)
    assert wrapped.lora["default"].lora_A.dtype == torch.float32
    x = torch.randn(3, 32, dtype=torch.bfloat16)
    y = wrapped(x)
    assert y.dtype == torch.bfloat16
    b = wrapped.lora["default"]
    expected = x.float() @ linear.weight.float().T + linear.bias.float() + 2 * (x.float() @ b.lora_A @ b.lora_B)
    torch.testing.assert_close(y.float(), expected, rtol=2e-2, atol=2e-2)
    y.float().sum().backward()
    assert b.lora_B.grad is not None and b.lora_B.grad.dtype == torch.float32


def test_fused_qkv_parameters_and_shapes():
    fused = FusedQKVWithLoRA(nn.Linear(32, 3 * 24), rank=4, alpha=8, enable=(True, False, True))
    branch = fused.lora["default"]
    assert branch.lora_A.shape == (32, 2 * 4)  # (d_in, n * r)
    assert branch.lora_B.shape == (2, 4, 24)  # one (r, d) block per enabled projection
    assert sum(p.numel() for p in branch.parameters()) == 2 * 4 * (32 + 24)
    assert branch.enabled_slots == (0, 2)


@pytest.mark.parametrize("enable", [(True, False, True), (True, True, True), (False, True, False)])
@pytest.mark.parametrize("qkv_bias", [False, True])
def test_fused_equals_separate_attention(enable, qkv_bias):
    # d_in != d_out on purpose. Separate LoRA on the enabled projections == fused LoRA with the
    # same A, B blocks.
    torch.manual_seed(0)
    sep = MultiHeadAttention(d_in=20, d_out=24, context_length=16, dropout=0.0, num_heads=4, qkv_bias=qkv_bias)
    fused = fuse_qkv(sep)
    for p in [*sep.parameters(), *fused.parameters()]:
        p.requires_grad_(False)
    names = [n for n, e in zip(("W_query", "W_key", "W_value"), enable) if e]
    for n in names:
        setattr(sep, n, LinearWithLoRA(getattr(sep, n), rank=3, alpha=6))
        _randomise_B(getattr(sep, n))
    fused.qkv = FusedQKVWithLoRA(fused.qkv, rank=3, alpha=6, enable=enable)
    branch = fused.qkv.lora["default"]
    with torch.no_grad():
        branch.lora_A.copy_(torch.cat([getattr(sep, n).lora["default"].lora_A for n in names], dim=1))
        branch.lora_B.copy_(torch.stack([getattr(sep, n).lora["default"].lora_B for n in names]))
    x = torch.randn(2, 9, 20)
    torch.testing.assert_close(fused(x), sep(x), rtol=0, atol=1e-6)
    # Same gradients too (the fused forward adds into the output slices in place).
    w = torch.randn(2, 9, 24)
    xs, xf = x.clone().requires_grad_(), x.clone().requires_grad_()
    (sep(xs) * w).sum().backward()
    (fused(xf) * w).sum().backward()
    torch.testing.assert_close(xf.grad, xs.grad, rtol=0, atol=1e-6)
    torch.testing.assert_close(branch.lora_B.grad,
                               torch.stack([getattr(sep, n).lora["default"].lora_B.grad for n in names]),
                               rtol=0, atol=1e-5)
    torch.testing.assert_close(branch.lora_A.grad,
                               torch.cat([getattr(sep, n).lora["default"].lora_A.grad for n in names], dim=1),
                               rtol=0, atol=1e-5)
    assert sum(p.numel() for p in fused.parameters() if p.requires_grad) == \
        sum(p.numel() for p in sep.parameters() if p.requires_grad) == len(names) * 3 * (20 + 24)


def test_fused_forward_never_builds_the_full_update(monkeypatch):
    fused = FusedQKVWithLoRA(nn.Linear(16, 48), rank=2, alpha=2, enable=(True, False, True))
    _randomise_B(fused)

    def forbidden(self):
        raise AssertionError("forward built the d x 3d update")

    monkeypatch.setattr(QKVLoRALayer, "delta_weight", forbidden)
    y = fused(torch.randn(2, 3, 16))
    y.sum().backward()
    assert fused.lora["default"].lora_B.grad is not None
    # The key slice is untouched by a (q, v) adapter; the query and value slices are not.
    x = torch.randn(2, 3, 16)
    assert torch.equal(fused(x)[..., 16:32], fused.linear(x)[..., 16:32])
    assert not torch.allclose(fused(x)[..., :16], fused.linear(x)[..., :16])


def test_fused_rejects_bad_enable_and_width():
    with pytest.raises(ValueError, match="at least one True"):
        FusedQKVWithLoRA(nn.Linear(8, 24), rank=2, alpha=2, enable=(False, False, False))
    with pytest.raises(ValueError, match="divisible by 3"):
        FusedQKVWithLoRA(nn.Linear(8, 25), rank=2, alpha=2)
    with pytest.raises(ValueError, match=r"rank 9 is larger than min\(d_in=8, d_out=8\)"):
        FusedQKVWithLoRA(nn.Linear(8, 24), rank=9, alpha=2)


def test_fused_attention_module_works_with_wrapped_qkv():
    attn = FusedMultiHeadAttention(d_in=16, d_out=16, context_length=8, dropout=0.0, num_heads=2)
    x = torch.randn(1, 5, 16)
    before = attn(x)
    attn.qkv = FusedQKVWithLoRA(attn.qkv, rank=2, alpha=4)
    assert torch.equal(attn(x), before)
