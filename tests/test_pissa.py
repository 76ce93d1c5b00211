"""PiSSA (apply_pissa) equal to PEFT's init_lora_weights="pissa" on transformers' GPT-2.

Singular vectors are defined up to sign, so what is compared is what does not depend on it: the
update s * B A, the residual weight left in the frozen layer, and the model's output (equal to the
base model's at initialisation)."""

import pytest
import torch

from gpt.weights import gpt2_module_names, load_gpt2
from lora import LoraConfig
from lora.pissa import apply_pissa

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=64))
    path = tmp_path_factory.mktemp("tiny-gpt2")
    hf.save_pretrained(path)
    return path


@pytest.mark.parametrize("use_rslora", [False, True])
def test_pissa_equals_peft(monkeypatch, gpt2_dir, use_rslora):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    x = torch.randint(0, 50257, (2, 12), generator=torch.Generator().manual_seed(0))
    hf = transformers.GPT2LMHeadModel.from_pretrained(gpt2_dir).eval()
    with torch.no_grad():
        base_logits = hf(x).logits
    theirs = peft.get_peft_model(hf, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn", "c_fc"],
                                                     init_lora_weights="pissa", fan_in_fan_out=True,
                                                     use_rslora=use_rslora)).eval()
    ours = load_gpt2(gpt2_dir, attention="fused").eval()
    apply_pissa(ours, LoraConfig(rank=4, alpha=8, targets=("qkv", "ff_in"),
                                 scaling="alpha/sqrt(r)" if use_rslora else "alpha/r"))
    names = gpt2_module_names(ours.cfg)
    for i in range(2):
        for hf_name in (f"transformer.h.{i}.attn.c_attn", f"transformer.h.{i}.mlp.c_fc"):
            peft_layer = theirs.base_model.model.get_submodule(hf_name)
            mine = ours.get_submodule(names[hf_name])
            s = peft_layer.scaling["default"]
            assert s == mine.lora["default"].scale
            theirs_update = s * peft_layer.lora_B["default"].weight @ peft_layer.lora_A["default"].weight  # (d_out, d_in)
            torch.testing.assert_close(mine.lora["default"].delta_weight().T, theirs_update, rtol=0, atol=1e-5)
            # the residual W - s B A in the frozen layer (Conv1D stores it (d_in, d_out))
            torch.testing.assert_close(mine.linear.weight, peft_layer.base_layer.weight.T, rtol=0, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), base_logits, rtol=0, atol=1e-5)  # the base model's output at init
        torch.testing.assert_close(theirs(x).logits, base_logits, rtol=0, atol=1e-5)


def test_pissa_keeps_the_top_singular_values_in_the_adapter(gpt2_dir):
    ours = load_gpt2(gpt2_dir, attention="fused")
    W = ours.trf_blocks[0].att.qkv.weight.detach().clone()  # (96, 32)
    apply_pissa(ours, LoraConfig(rank=4, alpha=8, targets=("qkv",)))
    layer = ours.trf_blocks[0].att.qkv
    S = torch.linalg.svdvals(W)
    torch.testing.assert_close(torch.linalg.svdvals(layer.lora["default"].delta_weight())[:4], S[:4], rtol=1e-5, atol=0)
    torch.testing.assert_close(torch.linalg.svdvals(layer.linear.weight)[:28], S[4:], rtol=1e-4, atol=1e-6)
    # the update is not zero at init (plain LoRA's is): PiSSA starts from W's principal part
    assert layer.lora["default"].lora_B.abs().max() > 0.1


def test_pissa_trainable_count_equals_peft(monkeypatch, gpt2_dir):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hf = transformers.GPT2LMHeadModel.from_pretrained(gpt2_dir)
    theirs = peft.get_peft_model(hf, peft.LoraConfig(r=4, target_modules=["c_attn", "c_fc"], init_lora_weights="pissa",
                                                     fan_in_fan_out=True))
    ours = apply_pissa(load_gpt2(gpt2_dir, attention="fused"), LoraConfig(rank=4, targets=("qkv", "ff_in")))
    n = sum(p.numel() for p in ours.parameters() if p.requires_grad)
    assert n == theirs.get_nb_trainable_parameters()[0] == 2 * 4 * ((32 + 96) + (32 + 128)) == 2304


def test_pissa_refuses_a_fused_slice(gpt2_dir):
    ours = load_gpt2(gpt2_dir, attention="fused")
    with pytest.raises(ValueError, match="whole linear layers"):
        apply_pissa(ours, LoraConfig(rank=4, targets=("query", "value")))
    assert not any("lora" in n for n, _ in ours.named_parameters())  # refused before anything changed
