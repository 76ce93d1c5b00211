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


# ---- Pinned by value (each test kills mutants of lora/layers.py that the tests above let through) ----


def test_lora_layer_initial_values_at_a_fixed_seed():
    """A is exactly nn.Linear(d_in, r)'s default draw, uniform(-1/sqrt(d_in), +1/sqrt(d_in)) = +-1/8 at
    d_in=64, taken from the global generator; B is exactly zero. Same rule for the fused qkv branch."""
    torch.manual_seed(7)
    layer = LoRALayer(64, 16, rank=4, alpha=8)
    torch.manual_seed(7)
    assert torch.equal(layer.lora_A, torch.empty(64, 4).uniform_(-1 / 8, 1 / 8))
    assert torch.equal(layer.lora_B, torch.zeros(4, 16))
    torch.manual_seed(7)
    qkv = QKVLoRALayer(16, 6, rank=3, alpha=8, enable=(True, True, False))
    torch.manual_seed(7)
    assert torch.equal(qkv.lora_A, torch.empty(16, 2 * 3).uniform_(-1 / 4, 1 / 4))
    assert torch.equal(qkv.lora_B, torch.zeros(2, 3, 6))


def test_qkv_layer_defaults_and_scaling_rules():
    """QKVLoRALayer's defaults: no dropout, scale alpha / r; each scaling rule gives its own factor."""
    layer = QKVLoRALayer(8, 6, rank=4, alpha=8)
    assert layer.scale == 2.0 and layer.enable == (True, False, True) and layer.enabled_slots == (0, 2)
    assert isinstance(layer.dropout, nn.Identity)
    assert QKVLoRALayer(8, 6, rank=4, alpha=8, scaling="alpha").scale == 8.0
    assert QKVLoRALayer(8, 6, rank=4, alpha=8, scaling="alpha/sqrt(r)").scale == 4.0


def test_branch_reprs():
    """What print(model) shows for a branch: shapes, rank, alpha (%g), scaling, and the dropout module
    (Identity when dropout is 0, so a reader sees at once that none runs)."""
    assert repr(LoRALayer(8, 6, rank=2, alpha=3)) == (
        "LoRALayer(\n  d_in=8, d_out=6, rank=2, alpha=3, scaling='alpha/r'\n  (dropout): Identity()\n)")
    assert repr(LoRALayer(8, 6, rank=2, alpha=2.5, dropout=0.1, scaling="alpha")) == (
        "LoRALayer(\n  d_in=8, d_out=6, rank=2, alpha=2.5, scaling='alpha'\n"
        "  (dropout): Dropout(p=0.1, inplace=False)\n)")
    assert repr(QKVLoRALayer(8, 6, rank=2, alpha=4, enable=(True, False, True))) == (
        "QKVLoRALayer(\n  d_in=8, d=6, enable=['query', 'value'], rank=2, alpha=4, scaling='alpha/r'\n"
        "  (dropout): Identity()\n)")
    assert repr(QKVLoRALayer(10, 6, rank=3, alpha=0.5, enable=(False, True, False), dropout=0.2,
                             scaling="alpha/sqrt(r)")) == (
        "QKVLoRALayer(\n  d_in=10, d=6, enable=['key'], rank=3, alpha=0.5, scaling='alpha/sqrt(r)'\n"
        "  (dropout): Dropout(p=0.2, inplace=False)\n)")
    assert repr(QKVLoRALayer(8, 6, rank=2, alpha=1, enable=(True, True, True))).startswith(
        "QKVLoRALayer(\n  d_in=8, d=6, enable=['query', 'key', 'value'], rank=2, alpha=1, scaling='alpha/r'\n")


def test_qkv_dropout_runs_in_training_only():
    """With dropout=0.5 the fused branch sees dropout(x) in training (the same mask F.dropout draws from the
    same seed) and x itself in eval mode."""
    layer = QKVLoRALayer(8, 6, rank=2, alpha=4, enable=(True, True, False), dropout=0.5)
    _randomise_B(layer)
    x = torch.randn(3, 8)
    A, B = layer.lora_A, layer.lora_B

    def formula(inp):
        codes = inp @ A * 2.0
        return codes[:, :2] @ B[0], codes[:, 2:] @ B[1]

    layer.train()
    torch.manual_seed(3)
    out = layer(x)
    torch.manual_seed(3)
    expected = formula(nn.functional.dropout(x, 0.5, training=True))
    for got, want in zip(out, expected):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert not torch.allclose(out[0], formula(x)[0])  # the mask did drop something
    layer.eval()
    for got, want in zip(layer(x), formula(x)):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("make", [lambda **kw: LoRALayer(8, 6, rank=2, alpha=4, **kw),
                                  lambda **kw: QKVLoRALayer(8, 6, rank=2, alpha=4, **kw)],
                         ids=["LoRALayer", "QKVLoRALayer"])
def test_branches_live_on_the_given_device_and_dtype(make):
    """dtype=float64: both factors are float64 and a float32 input is cast to them, so the update equals
    the float64 formula to 1e-12; device='meta': both factors are on the meta device."""
    layer = make(dtype=torch.float64)
    assert layer.lora_A.dtype == torch.float64 and layer.lora_B.dtype == torch.float64
    _randomise_B(layer)
    x = torch.randn(3, 8)
    out = layer(x)
    out = out if isinstance(out, tuple) else (out,)
    B = layer.lora_B if layer.lora_B.dim() == 3 else layer.lora_B[None]
    codes = x.double() @ layer.lora_A * 2.0
    for j, got in enumerate(out):
        assert got.dtype == torch.float64
        torch.testing.assert_close(got, codes[:, 2 * j:2 * j + 2] @ B[j], rtol=0, atol=1e-12)
    meta = make(device="meta")
    assert meta.lora_A.is_meta and meta.lora_B.is_meta


def test_lora_layer_refuses_a_rank_that_is_not_low():
    """LoRALayer checks rank <= min(d_in, d_out) itself (check_rank=True by default) and names itself."""
    with pytest.raises(ValueError, match=r"^LoRA rank 5 is larger than min\(d_in=4, d_out=8\) = 4 for a "
                                         r"LoRALayer\(4 -> 8\): the update would not be low-rank"):
        LoRALayer(4, 8, rank=5, alpha=1)
    assert LoRALayer(4, 8, rank=5, alpha=1, check_rank=False).lora_A.shape == (4, 5)
    with pytest.raises(ValueError, match=r"^LoRA rank 5 is larger than min\(d_in=8, d_out=4\) = 4 for a fused "
                                         r"qkv projection \(8 -> 3 x 4\): "):
        QKVLoRALayer(8, 4, rank=5, alpha=1)


def test_rank_errors_name_the_layer():
    """A wrapper's rank refusal names the layer: its module name (layer_name) when it has one, otherwise
    its class, the base's class and its shape."""
    with pytest.raises(ValueError, match=r"^LoRA rank 7 is larger than min\(d_in=8, d_out=6\) = 6 for "
                                         r"LinearWithLoRA\(Linear 8 -> 6\): "):
        LinearWithLoRA(nn.Linear(8, 6), rank=2, alpha=2).add_adapter("b", rank=7, alpha=2)
    named = LinearWithLoRA(nn.Linear(8, 6), rank=2, alpha=2, layer_name="blocks.0.q")
    assert named.describe() == "blocks.0.q"
    with pytest.raises(ValueError, match=r"^LoRA rank 7 is larger than min\(d_in=8, d_out=6\) = 6 for blocks\.0\.q: "):
        named.add_adapter("b", rank=7, alpha=2)
    with pytest.raises(ValueError, match=r"^LoRA rank 7 is larger than min\(d_in=8, d_out=6\) = 6 for "
                                         r"FusedQKVWithLoRA\(Linear 8 -> 18\): "):
        FusedQKVWithLoRA(nn.Linear(8, 18), rank=2, alpha=2).add_adapter("b", rank=7, alpha=2)
    fused = FusedQKVWithLoRA(nn.Linear(8, 18), rank=2, alpha=2, layer_name="att.qkv")
    with pytest.raises(ValueError, match=r"^LoRA rank 7 is larger than min\(d_in=8, d_out=6\) = 6 for att\.qkv: "):
        fused.add_adapter("b", rank=7, alpha=2)
    # check_rank=False (the book's replace_linear_with_lora) lets a rank above min(d_in, d_out) through.
    assert LinearWithLoRA(nn.Linear(8, 2), rank=4, alpha=4, check_rank=False).lora["default"].lora_B.shape == (4, 2)


def test_adapter_names_are_checked():
    """An adapter name is a non-empty string without dots (it becomes part of parameter names)."""
    wrapped = LinearWithLoRA(nn.Linear(8, 8), rank=2, alpha=2)
    for bad, shown in [("", "''"), ("a.b", r"'a\.b'"), (3, "3")]:
        with pytest.raises(ValueError, match=rf"^adapter name must be a non-empty string without dots, got {shown}$"):
            wrapped.add_adapter(bad, rank=2, alpha=2)
    assert list(wrapped.lora) == ["default"]


def test_lora_cannot_wrap_lora_or_a_non_linear_messages():
    """The refusals of linear_dims name the offending type; a class called Conv1D without transformers'
    `nf` attribute is not taken for transformers' Conv1D."""
    wrapped = LinearWithLoRA(nn.Linear(8, 8), rank=2, alpha=2)
    with pytest.raises(ValueError, match=r"^this layer already has LoRA \(LinearWithLoRA\); LoRA cannot be applied "
                                         r"twice to one layer \(add another adapter by name instead\)$"):
        LinearWithLoRA(wrapped, rank=2, alpha=2)
    with pytest.raises(TypeError, match=r"^LoRA wraps nn\.Linear \(or transformers' Conv1D\) layers, got Embedding$"):
        LinearWithLoRA(nn.Embedding(10, 8), rank=2, alpha=2)

    class Conv1D(nn.Module):  # transformers' name, but no `nf`
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.zeros(4, 6))

    with pytest.raises(TypeError, match=r"^LoRA wraps nn\.Linear \(or transformers' Conv1D\) layers, got Conv1D$"):
        LinearWithLoRA(Conv1D(), rank=2, alpha=2)


def test_wrappers_freeze_the_base_by_default_and_share_the_given_registry():
    """freeze_base=True is the default of LoRAWrapper and FusedQKVWithLoRA; a registry passed in is the
    one the wrapper reads: disabling it there makes the forward the base layer's."""
    from lora import LoraAdapters, LoRAWrapper

    plain = nn.Linear(4, 4)
    LoRAWrapper(plain)
    assert not plain.weight.requires_grad and not plain.bias.requires_grad
    qkv = nn.Linear(8, 24)
    FusedQKVWithLoRA(qkv, rank=2, alpha=2)
    assert not qkv.weight.requires_grad and not qkv.bias.requires_grad
    kept = nn.Linear(8, 24)
    FusedQKVWithLoRA(kept, rank=2, alpha=2, freeze_base=False)
    assert kept.weight.requires_grad and kept.bias.requires_grad

    x = torch.randn(2, 8)
    for make in (LinearWithLoRA, FusedQKVWithLoRA):
        registry = LoraAdapters()
        wrapped = make(nn.Linear(8, 24), rank=2, alpha=2, registry=registry)
        assert registry.active == "default"
        _randomise_B(wrapped)
        assert not torch.allclose(wrapped(x), wrapped.linear(x))
        registry.disabled = True
        assert torch.equal(wrapped(x), wrapped.linear(x))


def test_fused_wrapper_widths_scaling_and_defaults():
    """A fused qkv output only needs a width divisible by 3 (9 -> three slices of 3); scaling reaches the
    branch; add_adapter's defaults are no dropout and alpha / r."""
    fused = FusedQKVWithLoRA(nn.Linear(8, 9), rank=2, alpha=2)
    assert fused.d == 3 and fused.lora["default"].lora_B.shape == (2, 2, 3)
    with pytest.raises(ValueError, match=r"^a fused qkv projection has an output width divisible by 3, got 25$"):
        FusedQKVWithLoRA(nn.Linear(8, 25), rank=2, alpha=2)
    fused = FusedQKVWithLoRA(nn.Linear(8, 24), rank=4, alpha=3, scaling="alpha")
    assert fused.lora["default"].scale == 3.0
    assert fused.add_adapter("rs", rank=4, alpha=3, scaling="alpha/sqrt(r)").scale == 1.5
    plain = fused.add_adapter("plain", rank=4, alpha=8)
    assert plain.scale == 2.0 and isinstance(plain.dropout, nn.Identity)


def test_wrappers_build_branches_on_the_base_weights_device_and_dtype():
    """A branch is made on the base weight's device, in promote(base dtype, float32): float64 on a float64
    base (the update then matches the float64 formula to 1e-12), meta on a meta base."""
    x = torch.randn(3, 8, dtype=torch.float64)
    for make in (LinearWithLoRA, FusedQKVWithLoRA):
        wrapped = make(nn.Linear(8, 24, dtype=torch.float64), rank=2, alpha=4)
        for branch in (wrapped.lora["default"], wrapped.add_adapter("b", rank=2, alpha=4)):
            assert branch.lora_A.dtype == torch.float64 and branch.lora_B.dtype == torch.float64
        _randomise_B(wrapped)
        b = wrapped.lora["default"]
        if make is LinearWithLoRA:
            expected = wrapped.linear(x) + 2.0 * (x @ b.lora_A @ b.lora_B)
        else:
            expected = wrapped.linear(x).clone()
            expected[:, :8] += 2.0 * (x @ b.lora_A[:, :2] @ b.lora_B[0])
            expected[:, 16:] += 2.0 * (x @ b.lora_A[:, 2:] @ b.lora_B[1])
        torch.testing.assert_close(wrapped(x), expected, rtol=0, atol=1e-12)
        meta = make(nn.Linear(8, 24, device="meta"), rank=2, alpha=4)
        assert meta.lora["default"].lora_A.is_meta and meta.add_adapter("b", rank=2, alpha=4).lora_B.is_meta


def test_fused_merge_adds_exactly_the_enabled_slices_update():
    """merge adds scale * A_j @ B_j (transposed to nn.Linear's (3d, d_in) layout) to the rows of the query
    and value slices and nothing to the key rows; unmerge takes it out again (float64: to 1e-12)."""
    linear = nn.Linear(8, 3 * 6, dtype=torch.float64)
    fused = FusedQKVWithLoRA(linear, rank=2, alpha=3, enable=(True, False, True))
    _randomise_B(fused)
    b = fused.lora["default"]
    before = linear.weight.detach().clone()
    fused.merge("default")
    delta = linear.weight.detach() - before
    torch.testing.assert_close(delta[:6], (1.5 * b.lora_A[:, :2] @ b.lora_B[0]).T, rtol=0, atol=1e-12)
    assert torch.equal(delta[6:12], torch.zeros(6, 8, dtype=torch.float64))
    torch.testing.assert_close(delta[12:], (1.5 * b.lora_A[:, 2:] @ b.lora_B[1]).T, rtol=0, atol=1e-12)
    fused.unmerge("default")
    torch.testing.assert_close(linear.weight.detach(), before, rtol=0, atol=1e-12)
    # The update is built on the base weight's device (on a GPU a CPU-built update could not be added to
    # the weight); a meta-device base shows it without a GPU.
    meta = FusedQKVWithLoRA(nn.Linear(8, 24, device="meta"), rank=2, alpha=2)
    assert meta._weight_delta("default").is_meta
    meta.merge("default")
    assert meta.linear.weight.is_meta and meta.merged_adapters == ["default"]


def test_bf16_merge_and_forward_round_the_update_to_the_base_dtype_first():
    """On a bf16 base the fp32 update is rounded to bf16 and then added, in merge and in forward alike:
    the merged weight is exactly W + delta.to(bf16), the fused forward exactly y + update.to(bf16)."""
    torch.manual_seed(0)
    linear = nn.Linear(16, 16).to(torch.bfloat16)
    wrapped = LinearWithLoRA(linear, rank=4, alpha=8)
    _randomise_B(wrapped)
    b = wrapped.lora["default"]
    before = linear.weight.detach().clone()
    wrapped.merge("default")
    assert torch.equal(linear.weight.detach(), before + (2.0 * (b.lora_A @ b.lora_B)).T.to(torch.bfloat16))

    qkv = nn.Linear(16, 48).to(torch.bfloat16)
    fused = FusedQKVWithLoRA(qkv, rank=4, alpha=8, enable=(True, False, True))
    _randomise_B(fused)
    x = torch.randn(5, 16, dtype=torch.bfloat16)
    q_update, v_update = fused.lora["default"](x)
    expected = qkv(x)
    expected[:, :16] += q_update.to(torch.bfloat16)
    expected[:, 32:] += v_update.to(torch.bfloat16)
    assert torch.equal(fused(x), expected)
    before = qkv.weight.detach().clone()
    fused.merge("default")
    full = torch.zeros(48, 16)
    full[:16], full[32:] = fused.lora["default"].delta_weight().transpose(1, 2)
    assert torch.equal(qkv.weight.detach(), before + full.to(torch.bfloat16))
