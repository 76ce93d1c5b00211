"""VeRA (peft_methods.vera.apply_vera) equal to peft.VeraConfig on transformers' GPT-2: the same shared
matrices (drawn alike, and copied), equal logits within 1e-5, and PEFT's trainable-parameter count."""

import pytest
import torch

from gpt.weights import gpt2_module_names, load_gpt2
from peft_methods.vera import LinearWithVeRA, apply_vera, vera_parameter_count

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=64))
    path = tmp_path_factory.mktemp("tiny-gpt2")
    hf.save_pretrained(path)
    return path


def _peft_vera(gpt2_dir, r=8, seed=1):
    hf = transformers.GPT2LMHeadModel.from_pretrained(gpt2_dir).eval()
    model = peft.get_peft_model(hf, peft.VeraConfig(r=r, target_modules=["c_attn", "c_fc"], fan_in_fan_out=True,
                                                    projection_prng_key=7)).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "vera_lambda" in name:
                p.copy_(torch.randn(p.shape, generator=g))
    return model


def test_vera_equals_peft(monkeypatch, gpt2_dir):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    theirs = _peft_vera(gpt2_dir)
    x = torch.randint(0, 50257, (2, 12), generator=torch.Generator().manual_seed(0))
    ours = load_gpt2(gpt2_dir, attention="fused").eval()
    apply_vera(ours, rank=8, targets=("qkv", "ff_in"), projection_prng_key=7)
    shared = theirs.base_model.vera_A["default"], theirs.base_model.vera_B["default"]
    assert ours.vera_projections.vera_A.shape == shared[0].shape == (8, 32)  # d_in_max = 32
    assert ours.vera_projections.vera_B.shape == shared[1].shape == (128, 8)  # d_out_max = c_fc's 128
    # drawn like PEFT's (same generator and key): the same matrices even before copying
    torch.testing.assert_close(ours.vera_projections.vera_A, shared[0], rtol=0, atol=0)
    torch.testing.assert_close(ours.vera_projections.vera_B, shared[1], rtol=0, atol=0)
    with torch.no_grad():
        ours.vera_projections.vera_A.copy_(shared[0])
        ours.vera_projections.vera_B.copy_(shared[1])
        assert (ours(x) - theirs(x).logits).abs().max() > 1e-2  # their lambdas are not ours yet
        for hf_name, mine in gpt2_module_names(ours.cfg).items():
            layer = ours.get_submodule(mine) if isinstance(mine, str) else None
            if isinstance(layer, LinearWithVeRA):
                peft_layer = theirs.base_model.model.get_submodule(hf_name)
                layer.vera_lambda_d.copy_(peft_layer.vera_lambda_d["default"])
                layer.vera_lambda_b.copy_(peft_layer.vera_lambda_b["default"])
        torch.testing.assert_close(ours(x), theirs(x).logits, rtol=0, atol=1e-5)


def test_fresh_vera_is_the_base_model(gpt2_dir):
    ours = load_gpt2(gpt2_dir, attention="fused").eval()
    x = torch.randint(0, 50257, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = ours(x)
        apply_vera(ours, rank=8, targets=("qkv", "ff_in"))
        torch.testing.assert_close(ours(x), before, rtol=0, atol=0)  # lambda_b starts at 0
    layer = ours.trf_blocks[0].att.qkv
    assert torch.equal(layer.vera_lambda_d, torch.full((8,), 0.1))
    # the shared pair is stored once, as buffers: not trained, one copy in the state dict
    assert sum(k.endswith(("vera_A", "vera_B")) for k in ours.state_dict()) == 2


def test_vera_trainable_count_equals_peft(monkeypatch, gpt2_dir):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    theirs = _peft_vera(gpt2_dir, r=8)
    ours = apply_vera(load_gpt2(gpt2_dir, attention="fused"), rank=8, targets=("qkv", "ff_in"))
    n = sum(p.numel() for p in ours.parameters() if p.requires_grad)
    # per block: c_attn r + 96, c_fc r + 128; two blocks
    assert n == theirs.get_nb_trainable_parameters()[0] == vera_parameter_count([(32, 96), (32, 128)] * 2, 8) == 480
    trainable = {name.split(".")[-1] for name, p in ours.named_parameters() if p.requires_grad}
    assert trainable == {"vera_lambda_d", "vera_lambda_b"}


def test_vera_refuses_bad_input(gpt2_dir):
    ours = load_gpt2(gpt2_dir, attention="fused")
    with pytest.raises(ValueError, match="whole linear layers"):
        apply_vera(ours, rank=8, targets=("query", "value"))
    with pytest.raises(ValueError, match="positive integer"):
        apply_vera(ours, rank=0, targets=("qkv",))
    assert not hasattr(ours, "vera_projections")
