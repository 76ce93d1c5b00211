"""DoRA equal to PEFT's (peft.LoraConfig(use_dora=True)) on transformers' GPT-2, both ways, within 1e-5.

A tiny random GPT-2 is written with transformers and loaded into our GPTModel (attention="fused", so
each of our layers is one of GPT-2's Conv1D layers: DoRA normalises whole rows of one weight).
"""

import pytest
import torch

from gpt.weights import gpt2_module_names, load_gpt2
from lora import LoraConfig
from peft_methods.dora import LinearWithDoRA, apply_dora, dora_parameter_count, export_peft_dora, import_peft_dora

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

TARGETS_OURS = ("qkv", "ff_in", "ff_out")  # att.qkv = c_attn, ff.layers.0 = c_fc, ff.layers.2 = mlp.c_proj
TARGETS_PEFT = ["c_attn", "c_fc", "mlp.c_proj"]


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=64))
    path = tmp_path_factory.mktemp("tiny-gpt2")
    hf.save_pretrained(path)
    return path


def _ids():
    return torch.randint(0, 50257, (2, 12), generator=torch.Generator().manual_seed(0))


def _perturb(params, seed=1):
    """Random non-zero B and a magnitude away from ||W||: otherwise DoRA computes the base model."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in params:
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
            elif "lora_magnitude_vector" in name:
                p.mul_(1 + 0.3 * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("attention", ["fused", "separate"])
@pytest.mark.parametrize("use_rslora", [False, True])
def test_peft_dora_imports_with_equal_logits(tmp_path, monkeypatch, gpt2_dir, use_rslora, attention):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hf = transformers.GPT2LMHeadModel.from_pretrained(gpt2_dir).eval()
    cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS_PEFT, use_dora=True, fan_in_fan_out=True,
                          use_rslora=use_rslora)
    theirs = peft.get_peft_model(hf, cfg).eval()
    _perturb(theirs.named_parameters())
    theirs.save_pretrained(tmp_path / "peft")
    x = _ids()
    with torch.no_grad():
        expected = theirs(x).logits
    ours = load_gpt2(gpt2_dir, attention=attention).eval()
    with torch.no_grad():
        assert (ours(x) - expected).abs().max() > 1e-2  # the adapter does something
    import_peft_dora(ours, tmp_path / "peft", gpt2_module_names(ours.cfg))
    with torch.no_grad():
        torch.testing.assert_close(ours(x), expected, rtol=0, atol=1e-5)
    # c_attn is one DoRA layer on the fused qkv, or three (one per third) on W_query, W_key, W_value
    assert sum(isinstance(m, LinearWithDoRA) for m in ours.modules()) == (6 if attention == "fused" else 10)
    assert not any(p.requires_grad for p in ours.parameters())


@pytest.mark.parametrize("attention,targets", [
    ("fused", TARGETS_OURS),
    # queries and values only: c_attn exports at rank 8 (block-diagonal B), the key third keeps its base norms
    ("separate", ("query", "value", "ff_out")),
])
def test_our_dora_exports_to_peft_with_equal_logits(tmp_path, monkeypatch, gpt2_dir, attention, targets):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ours = load_gpt2(gpt2_dir, attention=attention).eval()
    apply_dora(ours, LoraConfig(rank=4, alpha=8, targets=targets, scaling="alpha/sqrt(r)"))
    _perturb(ours.named_parameters())
    x = _ids()
    with torch.no_grad():
        expected = ours(x)
    export_peft_dora(ours, tmp_path / "peft", gpt2_module_names(ours.cfg), base_model_name_or_path=str(gpt2_dir))
    hf = transformers.GPT2LMHeadModel.from_pretrained(gpt2_dir).eval()
    with torch.no_grad():
        assert (hf(x).logits - expected).abs().max() > 1e-2
    theirs = peft.PeftModel.from_pretrained(hf, tmp_path / "peft").eval()
    assert theirs.peft_config["default"].use_dora
    assert theirs.peft_config["default"].rank_pattern == ({} if attention == "fused" else
                                                          {f"transformer.h.{i}.attn.c_attn": 8 for i in range(2)})
    with torch.no_grad():
        torch.testing.assert_close(theirs(x).logits, expected, rtol=0, atol=1e-5)


def test_dora_trains_like_peft_one_step(monkeypatch, gpt2_dir):
    """Same gradients as PEFT (the detached norm): one SGD step from equal weights gives equal logits."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hf = transformers.GPT2LMHeadModel.from_pretrained(gpt2_dir).eval()
    theirs = peft.get_peft_model(hf, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"], use_dora=True,
                                                     fan_in_fan_out=True))
    _perturb(theirs.named_parameters())
    ours = load_gpt2(gpt2_dir, attention="fused").eval()
    apply_dora(ours, LoraConfig(rank=4, alpha=8, targets=("qkv",)))
    names = gpt2_module_names(ours.cfg)
    with torch.no_grad():
        for i in range(2):
            peft_layer = theirs.base_model.model.transformer.h[i].attn.c_attn
            layer = ours.get_submodule(names[f"transformer.h.{i}.attn.c_attn"])
            layer.lora.lora_A.copy_(peft_layer.lora_A["default"].weight.T)
            layer.lora.lora_B.copy_(peft_layer.lora_B["default"].weight.T)
            layer.lora_magnitude_vector.copy_(peft_layer.lora_magnitude_vector["default"].weight)
    x = _ids()
    with torch.no_grad():
        before = ours(x)
    weights = torch.randn(2, 12, 50257, generator=torch.Generator().manual_seed(2))  # a loss with large gradients
    for model, logits in ((theirs, lambda m: m(x).logits), (ours, lambda m: m(x))):
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
        (logits(model) * weights).sum().backward()
        opt.step()
    with torch.no_grad():
        after = ours(x)
        assert (after - before).abs().max() > 1e-2  # the step moved the model
        torch.testing.assert_close(after, theirs(x).logits, rtol=0, atol=1e-5)


def test_dora_trainable_count_equals_peft(monkeypatch, gpt2_dir):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hf = transformers.GPT2LMHeadModel.from_pretrained(gpt2_dir)
    theirs = peft.get_peft_model(hf, peft.LoraConfig(r=4, target_modules=TARGETS_PEFT, use_dora=True,
                                                     fan_in_fan_out=True))
    trainable, _ = theirs.get_nb_trainable_parameters()
    ours = apply_dora(load_gpt2(gpt2_dir, attention="fused"), LoraConfig(rank=4, targets=TARGETS_OURS))
    n = sum(p.numel() for p in ours.parameters() if p.requires_grad)
    # per block: c_attn 32 -> 96, c_fc 32 -> 128, c_proj 128 -> 32; two blocks
    by_hand = 2 * (dora_parameter_count(32, 96, 4) + dora_parameter_count(32, 128, 4)
                   + dora_parameter_count(128, 32, 4))
    assert n == trainable == by_hand == 2 * ((4 * 128 + 96) + (4 * 160 + 128) + (4 * 160 + 32)) == 4096


def test_each_import_points_to_the_other(tmp_path, monkeypatch, gpt2_dir):
    from lora import import_peft_adapter

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for use_dora in (True, False):
        hf = transformers.GPT2LMHeadModel.from_pretrained(gpt2_dir)
        peft.get_peft_model(hf, peft.LoraConfig(r=4, target_modules=["c_fc"], use_dora=use_dora,
                                                fan_in_fan_out=True)).save_pretrained(tmp_path / str(use_dora))
    ours = load_gpt2(gpt2_dir, attention="fused")
    with pytest.raises(ValueError, match="load it with peft_methods.import_peft_dora"):
        import_peft_adapter(ours, tmp_path / "True", gpt2_module_names(ours.cfg))
    with pytest.raises(ValueError, match="not a DoRA adapter"):
        import_peft_dora(ours, tmp_path / "False", gpt2_module_names(ours.cfg))
    assert not any(isinstance(m, LinearWithDoRA) for m in ours.modules())
