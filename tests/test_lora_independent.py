"""lora/ stands on its own: it imports nothing of gpt/ and puts LoRA into any nn.Module by module name."""

import copy
import pkgutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import lora
from lora import (FusedQKVWithLoRA, LinearWithLoRA, LoraConfig, add_adapter, apply_lora, load_adapter,
                  lora_parameter_report, lora_trainable_count, merge_lora, registry_of, save_adapter,
                  set_active_adapter, unmerge_lora)

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_no_lora_module_imports_gpt():
    modules = sorted(f"lora.{m.name}" for m in pkgutil.iter_modules(lora.__path__))
    assert {"lora.apply", "lora.targets", "lora.merge", "lora.counts", "lora.peft_format"} <= set(modules)
    code = ("import importlib, sys\n"
            f"for name in {modules!r}: importlib.import_module(name)\n"
            "print(sorted(m for m in sys.modules if m == 'gpt' or m.startswith('gpt.')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", f"lora imported {out.stdout.strip()}"


class Toy(nn.Module):
    """Not a GPT: a projection, an activation and a head, with names of its own."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 6))
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        return self.head(self.body(x))


def test_lora_on_a_plain_sequential_by_name(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    x = torch.randn(5, 8)
    base = model(x)
    apply_lora(model, LoraConfig(rank=2, alpha=4, targets=("0", "2")))
    assert isinstance(model[0], LinearWithLoRA) and isinstance(model[2], LinearWithLoRA)
    assert lora_parameter_report(model)["trainable"] == 2 * (8 + 16) + 2 * (16 + 4) == 88
    torch.testing.assert_close(model(x), base, rtol=0, atol=0)  # B = 0: nothing changes yet
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_()
    # y = x W^T + b + (alpha / r) x A B, layer by layer
    def layer(i, x):
        wrapper = model[i]
        branch = wrapper.lora["default"]
        return x @ wrapper.linear.weight.T + wrapper.linear.bias + 2.0 * x @ branch.A @ branch.B

    expected = layer(2, torch.relu(layer(0, x)))
    torch.testing.assert_close(model(x), expected, rtol=0, atol=1e-5)
    merged = merge_lora(model)(x)
    torch.testing.assert_close(merged, expected, rtol=0, atol=1e-5)
    unmerge_lora(model)
    save_adapter(model, tmp_path / "toy")
    fresh = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    fresh.load_state_dict({k.replace(".linear.", "."): v for k, v in model.state_dict().items() if "lora" not in k})
    torch.testing.assert_close(load_adapter(fresh, tmp_path / "toy")(x), expected, rtol=0, atol=1e-5)


def test_lora_on_any_module_by_suffix_all_linear_and_modules_to_save():
    model = Toy()
    apply_lora(model, rank=2, alpha=2, targets="all-linear", modules_to_save=["head"])
    assert sorted(n for n, m in model.named_modules() if isinstance(m, LinearWithLoRA)) == ["body.0", "body.2"]
    assert lora_parameter_report(model)["trainable"] == 2 * (6 + 10) + 2 * (10 + 6) + (6 * 3 + 3)
    with pytest.raises(ValueError, match=r"unknown LoRA target 'W_query'.*named like \['body.0'"):
        apply_lora(Toy(), rank=2, targets="W_query")


def test_one_registry_per_model_shared_by_every_wrapper():
    model = Toy()
    add_adapter(model, "a", LoraConfig(rank=2, targets=("body.0", "body.2"), modules_to_save=("head",)))
    add_adapter(model, "b", LoraConfig(rank=3, targets=("body.0",)))
    registry = model.lora_adapters
    wrappers = [m for m in model.modules() if hasattr(m, "registry")]
    assert len(wrappers) == 3 and all(w.registry is registry for w in wrappers)
    assert sorted(registry) == ["a", "b"] and registry.active == "a"
    set_active_adapter(model, "b")  # one assignment; every layer reads it
    assert {w.active_adapter for w in wrappers} == {"b"}
    assert registry_of(model) is registry
    twin = copy.deepcopy(model)  # a copy gets its own registry, shared by its own wrappers
    assert twin.lora_adapters is not registry and twin.lora_adapters.active == "b"
    assert all(m.registry is twin.lora_adapters for m in twin.modules() if hasattr(m, "registry"))
    set_active_adapter(twin, "a")
    assert registry.active == "b"


def test_wrappers_made_by_hand_are_adopted_into_one_registry():
    model = nn.Sequential(LinearWithLoRA(nn.Linear(4, 4), rank=2, alpha=2), nn.Tanh(),
                          LinearWithLoRA(nn.Linear(4, 4), rank=2, alpha=2))
    assert model[0].registry is not model[2].registry
    registry = registry_of(model)
    assert model[0].registry is registry is model[2].registry and registry.active == "default"
    assert registry["default"].targets == ("0", "2") and registry["default"].rank == 2


@pytest.mark.parametrize("rank,message", [
    (0, r"LoRA rank must be a positive integer, got 0 for FusedQKVWithLoRA\(Linear 8 -> 24\)"),
    (9, r"LoRA rank 9 is larger than min\(d_in=8, d_out=8\) = 8 for FusedQKVWithLoRA\(Linear 8 -> 24\)"),
])
def test_fused_add_adapter_refuses_a_rank_naming_it_and_the_layer(rank, message):
    fused = FusedQKVWithLoRA(nn.Linear(8, 24), rank=2, alpha=2)
    with pytest.raises(ValueError, match=message):
        fused.add_adapter("other", rank=rank, alpha=2)
    assert list(fused.lora) == ["default"]
    model = nn.Sequential(nn.Linear(8, 24))
    with pytest.raises(ValueError, match=r"LoRA rank 9 is larger than .* for 0:"):  # the module's name
        apply_lora(model, rank=9, targets=("0",))


def test_counts_take_any_config_with_the_gpt_shapes():
    gpt2_small = SimpleNamespace(emb_dim=768, n_layers=12, vocab_size=50257)  # the attributes, no GPTConfig
    assert lora_trainable_count(gpt2_small, LoraConfig(rank=8, targets=("query", "value"))) == 294_912
    with pytest.raises(TypeError, match=r"integer \['n_layers'\]"):
        lora_trainable_count(SimpleNamespace(emb_dim=768, vocab_size=50257), LoraConfig(rank=8))
