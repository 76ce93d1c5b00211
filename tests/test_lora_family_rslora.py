"""rsLoRA: LoraConfig(scaling="alpha/sqrt(r)") is PEFT's use_rslora=True at the same r and lora_alpha.

(tests/test_lora_peft.py also imports a use_rslora adapter and exports an alpha/sqrt(r) one; here the two
configs are compared directly, the same factors copied into both, no conversion in between.)"""

import math

import pytest
import torch

from gpt.weights import gpt2_module_names, load_gpt2
from lora import LoraConfig, apply_lora

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=64))
    path = tmp_path_factory.mktemp("tiny-gpt2")
    hf.save_pretrained(path)
    return path


@pytest.mark.parametrize("scaling,use_rslora", [("alpha/sqrt(r)", True), ("alpha/r", False)])
def test_rslora_equals_peft_use_rslora(monkeypatch, gpt2_dir, scaling, use_rslora):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hf = transformers.GPT2LMHeadModel.from_pretrained(gpt2_dir).eval()
    theirs = peft.get_peft_model(hf, peft.LoraConfig(r=16, lora_alpha=8, target_modules=["c_attn", "c_fc"],
                                                     fan_in_fan_out=True, use_rslora=use_rslora)).eval()
    ours = load_gpt2(gpt2_dir, attention="fused").eval()
    apply_lora(ours, LoraConfig(rank=16, alpha=8, targets=("qkv", "ff_in"), scaling=scaling))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for hf_name, mine in gpt2_module_names(ours.cfg).items():
            if not hf_name.endswith(("c_attn", "c_fc")):
                continue
            peft_layer, branch = theirs.base_model.model.get_submodule(hf_name), ours.get_submodule(mine).lora["default"]
            peft_layer.lora_B["default"].weight.copy_(torch.randn(peft_layer.lora_B["default"].weight.shape, generator=g))
            branch.lora_A.copy_(peft_layer.lora_A["default"].weight.T)
            branch.lora_B.copy_(peft_layer.lora_B["default"].weight.T)
            assert branch.scale == peft_layer.scaling["default"] == (8 / math.sqrt(16) if use_rslora else 8 / 16)
    x = torch.randint(0, 50257, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x).logits, rtol=0, atol=1e-5)


def test_rslora_is_not_plain_lora(gpt2_dir):
    """At r = 16 the rsLoRA update is sqrt(16) = 4 times plain LoRA's (the planted-bug control of the test above)."""
    assert LoraConfig(rank=16, alpha=8, scaling="alpha/sqrt(r)").scale == 4 * LoraConfig(rank=16, alpha=8).scale == 2.0
