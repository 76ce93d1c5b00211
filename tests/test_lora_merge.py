"""Merging LoRA into the base weights and taking it out again."""

import pytest
import torch
from torch import nn

from gpt import GPTConfig, GPTModel
from lora import (LinearWithLoRA, LoraConfig, LoRALayer, QKVLoRALayer, add_adapter, apply_lora, base_parameters,
                  disable_adapters, is_merged, merge_lora, set_active_adapter, unmerge_lora)


def lora_model(attention="separate", targets=("query", "key", "value", "out_proj", "ff"), rank=4, **overrides):
    torch.manual_seed(0)
    model = GPTModel(GPTConfig.from_preset("gpt-tiny", attention=attention, qkv_bias=True, drop_rate=0.0,
                                           **overrides)).eval()
    apply_lora(model, LoraConfig(rank=rank, alpha=8, targets=targets))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.3)
    return model


def tokens(T=16):
    return torch.randint(0, 50257, (2, T), generator=torch.Generator().manual_seed(0))


def base_weights(model):
    return {n: p.detach().clone() for n, p in base_parameters(model)}


@pytest.mark.parametrize("attention,targets", [
    ("separate", ("query", "key", "value", "out_proj", "ff")),
    ("fused", ("query", "value")),
    ("fused", ("key",)),
    ("fused", ("all-linear",)),
])
def test_merged_equals_unmerged_and_unmerge_restores(attention, targets):
    model = lora_model(attention, targets)
    x = tokens()
    before = base_weights(model)
    unmerged = model(x)
    merge_lora(model)
    assert is_merged(model)
    merged = model(x)
    torch.testing.assert_close(merged, unmerged, rtol=0, atol=1e-5)
    changed = [n for n, w in base_weights(model).items() if not torch.equal(w, before[n])]
    assert changed  # the update really went into the weights
    unmerge_lora(model)
    assert not is_merged(model)
    for n, w in base_weights(model).items():
        torch.testing.assert_close(w, before[n], rtol=0, atol=1e-6)
    torch.testing.assert_close(model(x), unmerged, rtol=0, atol=1e-5)


def test_merged_model_runs_no_lora_branch(monkeypatch):
    calls = []
    for cls in (LoRALayer, QKVLoRALayer):
        original = cls.forward
        monkeypatch.setattr(cls, "forward", lambda self, x, _f=original: calls.append(type(self)) or _f(self, x))
    for attention in ("separate", "fused"):
        model = lora_model(attention, ("query", "value", "ff"))
        calls.clear()
        model(tokens())
        assert len(calls) == 2 * (2 if attention == "separate" else 1) + 2 * 2
        merge_lora(model)
        calls.clear()
        model(tokens())
        assert calls == []


def test_merging_twice_is_refused():
    model = lora_model()
    merge_lora(model)
    w = model.trf_blocks[0].att.W_query.linear.weight.detach().clone()
    with pytest.raises(ValueError, match="already merged"):
        merge_lora(model)
    assert torch.equal(model.trf_blocks[0].att.W_query.linear.weight, w)  # nothing added twice
    unmerge_lora(model)
    with pytest.raises(ValueError, match="not merged"):
        unmerge_lora(model)


def test_merge_into_tied_head_is_refused():
    model = lora_model(targets=("query", "out_head"))  # gpt-tiny ties out_head to tok_emb
    emb = model.tok_emb.weight.detach().clone()
    with pytest.raises(ValueError, match=r"out_head: its weight is tied to \['tok_emb.weight'\]"):
        merge_lora(model)
    assert torch.equal(model.tok_emb.weight, emb)
    assert not is_merged(model)  # refused before touching any layer
    # An untied head merges fine.
    untied = lora_model(targets=("query", "out_head"), tie_weights=False)
    x = tokens()
    expected = untied(x)
    merge_lora(untied)
    torch.testing.assert_close(untied(x), expected, rtol=0, atol=1e-5)


def test_merge_and_named_adapters():
    model = lora_model(targets=("query",))
    add_adapter(model, "b", LoraConfig(rank=2, alpha=2, targets=("value",)))
    with pytest.raises(ValueError, match="only the active adapter can be merged"):
        merge_lora(model, "b")
    merge_lora(model)
    with pytest.raises(ValueError, match="merged into the base weights"):
        set_active_adapter(model, "b")
    with pytest.raises(ValueError, match="cannot be disabled"):
        disable_adapters(model)
    unmerge_lora(model)
    set_active_adapter(model, "b")
    merge_lora(model, "b")
    assert model.trf_blocks[0].att.W_value.merged_adapters == ["b"]
    assert model.trf_blocks[0].att.W_query.merged_adapters == []


def test_merge_in_bf16():
    model = lora_model(targets=("query", "value"))
    x = tokens()
    reference = model(x)
    model.to(torch.bfloat16)
    unmerged = model(x)
    merge_lora(model)
    merged = model(x)
    assert merged.dtype == torch.bfloat16
    torch.testing.assert_close(merged.float(), unmerged.float(), rtol=0, atol=0.1)
    torch.testing.assert_close(merged.float(), reference, rtol=0, atol=0.1)


def test_many_merge_cycles_drift_little():
    model = lora_model(targets=("query", "value"))
    before = base_weights(model)
    for _ in range(100):
        merge_lora(model)
        unmerge_lora(model)
    drift = max((w - before[n]).abs().max().item() for n, w in base_weights(model).items())
    assert drift <= 1e-6


def test_merge_without_adapter_is_an_error():
    with pytest.raises(ValueError, match="no LoRA adapter to merge"):
        merge_lora(nn.Linear(2, 2))


def test_merge_layers_put_in_by_hand():
    # LoRA layers built inline (as a chapter does) merge too, without apply_lora's bookkeeping.
    torch.manual_seed(0)
    model = nn.Sequential(LinearWithLoRA(nn.Linear(8, 8), rank=2, alpha=4), nn.ReLU(),
                          LinearWithLoRA(nn.Linear(8, 3), rank=2, alpha=4))
    with torch.no_grad():
        for layer in (model[0], model[2]):
            layer.lora["default"].lora_B.normal_()
    x = torch.randn(4, 8)
    expected = model(x)
    merge_lora(model)
    assert model[0].merged_adapters == ["default"] == model[2].merged_adapters
    torch.testing.assert_close(model(x), expected, rtol=0, atol=1e-5)
    unmerge_lora(model)
    torch.testing.assert_close(model(x), expected, rtol=0, atol=1e-5)


# ---- Pinned by value: the refusals' messages, the exact delta, and merging a wrapper that is the model ----


def test_merge_refusals_messages():
    """Each refusal of merge_lora / unmerge_lora says what is wrong and what to do, and changes no weight."""
    with pytest.raises(ValueError, match=r"^this model has no LoRA adapter to merge; apply_lora first$"):
        merge_lora(nn.Linear(2, 2))
    model = lora_model(targets=("query", "value"))
    w = model.trf_blocks[0].att.W_query.linear.weight.detach().clone()
    with disable_adapters(model):
        with pytest.raises(ValueError, match=r"^adapters are disabled \(disable_adapters\); enable them "
                                             r"before merging$"):
            merge_lora(model)
    assert torch.equal(model.trf_blocks[0].att.W_query.linear.weight, w)
    merge_lora(model)
    with pytest.raises(ValueError, match=r"^LoRA adapter 'default' is already merged \(e\.g\. into "
                                         r"trf_blocks\.0\.att\.W_query\); merging again would add the update twice\. "
                                         r"Call unmerge_lora\(model\) first$"):
        merge_lora(model)
    add_adapter(model, "b", LoraConfig(rank=2, alpha=2, targets=("key",)))
    # unmerge names the adapter it was asked for, not the active one
    with pytest.raises(ValueError, match=r"^no LoRA adapter named 'nope' on this model; adapters: \['b', 'default'\]$"):
        unmerge_lora(model, "nope")
    with pytest.raises(ValueError, match=r"^LoRA adapter 'b' is not merged; nothing to unmerge$"):
        unmerge_lora(model, "b")
    assert model.trf_blocks[0].att.W_query.merged_adapters == ["default"]  # still merged


def test_an_adapter_on_no_layer_is_refused():
    """"all-linear" on a model whose only linear layer is its output head selects no layer: refused before
    anything is wrapped (an adapter on nothing would train nothing); merging the untouched model is refused."""
    from collections import OrderedDict

    model = nn.Sequential(OrderedDict(out_head=nn.Linear(4, 2)))
    with pytest.raises(ValueError, match=r"^LoRA target 'all-linear' matched no linear layer in Sequential: it leaves "
                                         r"out the output head and modules_to_save \(\['out_head'\]\); name the layers"):
        apply_lora(model, LoraConfig(rank=2, targets="all-linear"))
    assert isinstance(model.out_head, nn.Linear)  # unchanged
    with pytest.raises(ValueError, match=r"^this model has no LoRA adapter to merge; apply_lora first$"):
        merge_lora(model)


def test_merge_a_wrapper_that_is_the_model_adds_exactly_scale_A_B():
    """merge_lora on a LinearWithLoRA itself (module name ""): W += scale * (A @ B)^T in nn.Linear's layout
    (float64: to 1e-12), unmerge_lora subtracts it again."""
    torch.manual_seed(0)
    wrapped = LinearWithLoRA(nn.Linear(8, 6, dtype=torch.float64), rank=2, alpha=3)
    b = wrapped.lora["default"]
    with torch.no_grad():
        b.lora_B.normal_()
    before = wrapped.linear.weight.detach().clone()
    merge_lora(wrapped)
    assert wrapped.merged_adapters == ["default"]
    torch.testing.assert_close(wrapped.linear.weight.detach() - before, 1.5 * (b.lora_A @ b.lora_B).T,
                               rtol=0, atol=1e-12)
    unmerge_lora(wrapped)
    torch.testing.assert_close(wrapped.linear.weight.detach(), before, rtol=0, atol=1e-12)
    # A weight tied inside the wrapper itself (here the bias is a view of the weight's first row) is
    # refused, naming "this layer" since the wrapper has no module name.
    tied = nn.Linear(4, 4)
    tied.bias = nn.Parameter(tied.weight.data[0])
    with pytest.raises(ValueError, match=r"^cannot merge LoRA into this layer: its weight is tied to "
                                         r"\['linear\.bias'\] "
                                         r"\(shared storage\); merging would silently change those too"):
        merge_lora(LinearWithLoRA(tied, rank=2, alpha=2))


def test_shared_with_on_meta_and_real_tensors():
    """shared_with lists the OTHER names of a parameter's storage: by identity on the meta device (no data
    pointers there), by data_ptr() otherwise; an untied parameter shares with nobody."""
    from lora.merge import shared_with

    for device in ("meta", "cpu"):
        model = nn.Sequential(nn.Embedding(10, 4, device=device), nn.Linear(4, 10, bias=False, device=device),
                              nn.Linear(4, 4, device=device))
        model[1].weight = model[0].weight
        assert shared_with(model, "1.weight") == ["0.weight"]
        assert shared_with(model, "0.weight") == ["1.weight"]
        assert shared_with(model, "2.weight") == []


def test_merge_into_a_4bit_base_is_refused_by_name():
    """A 4-bit base (lora/qlora.py) has no float weight to add into: merge_lora refuses, naming the layer
    ("this layer" for a bare wrapper) and the way out, and leaves everything unmerged."""
    from lora.qlora import Linear4bit, quantize_base

    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16))
    quantize_base(model, targets=("2",))
    apply_lora(model, LoraConfig(rank=2, targets=("0", "2")))
    with pytest.raises(ValueError, match=r"^cannot merge LoRA into 2: it is a 4-bit base; call "
                                         r"lora\.qlora\.dequantize_base\(model\) first$"):
        merge_lora(model)
    assert not is_merged(model)  # layer 0, a float one, was not merged either
    bare = LinearWithLoRA(Linear4bit(nn.Linear(64, 32)), rank=2, alpha=2)
    with pytest.raises(ValueError, match=r"^cannot merge LoRA into this layer: it is a 4-bit base; call "):
        merge_lora(bare)
    with pytest.raises(ValueError, match=r"^LinearWithLoRA\(Linear4bit 64 -> 32\) is a 4-bit base; merging would have "
                                         r"to re-quantize and lose the update's precision: dequantize_base\(model\) "
                                         r"first, then merge$"):
        bare.merge("default")
