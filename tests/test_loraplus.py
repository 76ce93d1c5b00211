"""LoRA+ (lora.loraplus.create_loraplus_optimizer): the same parameter groups, learning rates and weight
decays as peft.optimizers.create_loraplus_optimizer on the same GPT-2 (LoRA on attention, feed-forward
and the token embedding, and a trained final LayerNorm)."""

import pytest
import torch

from gpt.weights import gpt2_module_names, load_gpt2
from lora import LoraConfig, apply_lora
from lora.loraplus import create_loraplus_optimizer, loraplus_parameter_groups

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")
from peft.optimizers import create_loraplus_optimizer as peft_create_loraplus_optimizer  # noqa: E402

KW = dict(lr=2e-4, loraplus_lr_ratio=16.0, loraplus_lr_embedding=3e-6, loraplus_weight_decay=0.01)


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=64))
    path = tmp_path_factory.mktemp("tiny-gpt2")
    hf.save_pretrained(path)
    return path


def _peft_key(name: str) -> tuple[str, str]:
    """'base_model.model.transformer.h.0.attn.c_attn.lora_A.default.weight' -> ('transformer.h.0.attn.c_attn', 'A')."""
    name = name.removeprefix("base_model.model.")
    for marker, kind in ((".lora_A.", "A"), (".lora_B.", "B"), (".lora_embedding_A.", "A"), (".lora_embedding_B.", "B"),
                         (".modules_to_save.default.", None)):
        if marker in name:
            module, rest = name.split(marker)
            return module, kind or rest
    raise AssertionError(name)


def _our_key(name: str, theirs_of: dict) -> tuple[str, str]:
    """'trf_blocks.0.att.qkv.lora.default.lora_A' -> ('transformer.h.0.attn.c_attn', 'A'); LayerNorm scale/shift
    are GPT-2's weight/bias."""
    if ".lora.default." in name:
        module, leaf = name.split(".lora.default.")
        return theirs_of[module], leaf[-1]
    module, leaf = name.split(".modules_to_save.default.")
    return theirs_of[module], {"scale": "weight", "shift": "bias"}[leaf]


def _groups_as_keys(groups, key):
    return [({key(n) for n in names}, lr, wd) for names, lr, wd in groups]


def test_loraplus_groups_equal_peft(monkeypatch, gpt2_dir):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hf = transformers.GPT2LMHeadModel.from_pretrained(gpt2_dir)
    theirs = peft.get_peft_model(hf, peft.LoraConfig(r=4, target_modules=["c_attn", "c_fc", "wte"],
                                                     modules_to_save=["ln_f"], fan_in_fan_out=True))
    peft_opt = peft_create_loraplus_optimizer(theirs, torch.optim.AdamW, **KW)
    names_of = {id(p): n for n, p in theirs.named_parameters()}
    peft_groups = [([names_of[id(p)] for p in g["params"]], g["lr"], g["weight_decay"]) for g in peft_opt.param_groups]

    ours = load_gpt2(gpt2_dir, attention="fused")
    apply_lora(ours, LoraConfig(rank=4, targets=("qkv", "ff_in", "tok_emb"), modules_to_save=("final_norm",)))
    opt = create_loraplus_optimizer(ours, torch.optim.AdamW, **KW)
    our_names = {id(p): n for n, p in ours.named_parameters()}
    our_groups = [([our_names[id(p)] for p in g["params"]], g["lr"], g["weight_decay"]) for g in opt.param_groups]

    theirs_of = {v: k for k, v in gpt2_module_names(ours.cfg).items()}
    expected = _groups_as_keys(peft_groups, _peft_key)
    assert _groups_as_keys(our_groups, lambda n: _our_key(n, theirs_of)) == expected
    # by value: A at lr, the embedding's LoRA at its own rate, B at 16 lr, the LayerNorm copy without decay
    assert [(len(keys), lr, wd) for keys, lr, wd in expected] == [
        (4, 2e-4, 0.01), (2, 3e-6, 0.01), (4, 2e-4 * 16, 0.01), (2, 2e-4 * 16, 0.0)]
    assert {k for k, _, _ in [expected[1]] for k in k} == {("transformer.wte", "A"), ("transformer.wte", "B")}


def test_loraplus_b_learns_ratio_times_faster(gpt2_dir):
    """One SGD step: each B moves lambda times the step it would take at A's rate."""
    ours = load_gpt2(gpt2_dir, attention="fused")
    apply_lora(ours, LoraConfig(rank=4, targets=("qkv",)))
    groups = loraplus_parameter_groups(ours, lr=0.1, loraplus_lr_ratio=8.0)
    assert [g["name"] for g in groups] == ["A", "embedding", "B", "B_no_decay"]
    assert [len(g["params"]) for g in groups] == [2, 0, 2, 0]
    assert all("lora_A" in n for n in groups[0]["param_names"]) and all("lora_B" in n for n in groups[2]["param_names"])
    assert groups[2]["lr"] == 8.0 * groups[0]["lr"] == 0.8


def test_loraplus_refuses_bad_input(gpt2_dir):
    ours = load_gpt2(gpt2_dir, attention="fused")
    with pytest.raises(ValueError, match="no trainable parameters"):
        loraplus_parameter_groups(ours.requires_grad_(False), lr=1e-3, loraplus_lr_ratio=16)
    apply_lora(ours, LoraConfig(rank=4, targets=("qkv",)))
    with pytest.raises(ValueError, match="loraplus_lr_ratio must be a positive number"):
        loraplus_parameter_groups(ours, lr=1e-3, loraplus_lr_ratio=0)
