"""Our adapter, exported in PEFT's format, gives the same logits with peft + transformers' GPT-2.

A tiny random GPT-2 is written locally with transformers, loaded into our GPTModel, given LoRA
with random non-zero B, exported, and loaded with peft.PeftModel.from_pretrained (offline).
"""

import json

import pytest
import torch

from gpt.weights import gpt2_module_names, load_gpt2
from lora import LoraConfig, apply_lora, export_peft_adapter

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=64))
    path = tmp_path_factory.mktemp("tiny-gpt2")
    hf.save_pretrained(path)
    return path


@pytest.mark.parametrize("attention,targets,scaling,expected_targets,expected_ranks", [
    # PEFT's c_attn LoRA covers q, k and v: our fused LoRA with all three enabled, rank 3r on c_attn.
    ("fused", ("query", "key", "value"), "alpha/r", ["c_attn"], {"c_attn": 12}),
    # q and v only: the key rows of PEFT's B are zero; rank 2r.
    ("fused", ("query", "value"), "alpha/sqrt(r)", ["c_attn"], {"c_attn": 8}),
    # Separate W_query/W_value (and more layers) map onto the same fused c_attn.
    ("separate", ("query", "value", "out_proj", "ff"), "alpha", ["attn.c_proj", "c_attn", "c_fc", "mlp.c_proj"],
     {"c_attn": 8}),
    # A whole-layer LoRA on qkv is exactly PEFT's c_attn LoRA at the same rank.
    ("fused", ("qkv", "ff_in"), "alpha/r", ["c_attn", "c_fc"], {}),
])
def test_peft_loads_our_adapter_with_equal_logits(tmp_path, monkeypatch, gpt2_dir, attention, targets, scaling,
                                                  expected_targets, expected_ranks):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ours = load_gpt2(gpt2_dir, attention=attention)
    x = torch.randint(0, 50257, (2, 12), generator=torch.Generator().manual_seed(0))
    hf = transformers.GPT2LMHeadModel.from_pretrained(gpt2_dir).eval()
    torch.testing.assert_close(ours(x), hf(x).logits, rtol=0, atol=1e-5)  # same base to start with

    apply_lora(ours, LoraConfig(rank=4, alpha=8, targets=targets, scaling=scaling))
    with torch.no_grad():
        for name, p in ours.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5)
    expected = ours(x)
    assert (expected - hf(x).logits).abs().max() > 1e-2  # the adapter does something

    export_peft_adapter(ours, tmp_path / "peft", gpt2_module_names(ours.cfg), base_model_name_or_path=str(gpt2_dir))
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4 and config["fan_in_fan_out"] is True
    assert config["target_modules"] == expected_targets
    assert config["rank_pattern"] == expected_ranks

    peft_model = peft.PeftModel.from_pretrained(hf, tmp_path / "peft").eval()
    torch.testing.assert_close(peft_model(x).logits, expected, rtol=0, atol=1e-5)


def test_export_key_names_and_shapes(tmp_path, gpt2_dir):
    from safetensors.torch import load_file

    ours = load_gpt2(gpt2_dir, attention="fused")
    apply_lora(ours, LoraConfig(rank=4, alpha=8, targets=("query", "key", "value")))
    export_peft_adapter(ours, tmp_path / "peft", gpt2_module_names(ours.cfg))
    tensors = load_file(tmp_path / "peft" / "adapter_model.safetensors")
    assert {k: tuple(v.shape) for k, v in tensors.items()} == {
        f"base_model.model.transformer.h.{i}.attn.c_attn.lora_{ab}.weight": shape
        for i in range(2) for ab, shape in (("A", (12, 32)), ("B", (96, 12)))}


def test_export_refuses_a_classification_head(tmp_path, gpt2_dir):
    ours = load_gpt2(gpt2_dir)
    ours.out_head = torch.nn.Linear(32, 2)
    apply_lora(ours, LoraConfig(rank=2, targets=("query",), modules_to_save=("out_head",)))
    with pytest.raises(ValueError, match="a classification head does not"):
        export_peft_adapter(ours, tmp_path / "peft", gpt2_module_names(ours.cfg))
