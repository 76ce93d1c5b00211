"""QLoRA: NF4 levels, block-wise quantization with double quantization (against bitsandbytes when it
runs, and against the QLoRA paper's published levels always), LoRA on a 4-bit base equal to PEFT's
LoRA on the same dequantized GPT-2, and the bytes the base takes.

bitsandbytes 0.50 runs on a CPU: quantize_4bit / dequantize_4bit, and transformers' 4-bit GPT-2
(BitsAndBytesConfig) too. But its bnb.nn.Linear4bit forward on a CPU differs from F.linear with its own
dequantized weight by about 2e-3 (measured on the tiny GPT-2 below: a lower-precision matmul), so the
PEFT comparison puts the dequantized NF4 weights into transformers' float Conv1D layers and holds
PEFT's LoRA on top to 1e-5, rather than running PEFT on bnb's 4-bit layers."""

import copy
import math

import pytest
import torch
from torch import nn

from gpt.weights import gpt2_module_names, load_gpt2
from lora import LoraConfig, apply_lora, export_peft_adapter, merge_lora
from lora.nf4 import dequantize_nf4, dynamic_map, nf4_levels, quantize_nf4
from lora.qlora import Linear4bit, base_nbytes, dequantize_base, quantize_base

# Appendix E of Dettmers et al. 2023 (arXiv:2305.14314): the NF4 data type's 16 values.
PAPER_NF4 = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
             -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
             0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
             0.7229568362236023, 1.0]


def _bnb():
    try:
        import bitsandbytes.functional as F

        F.quantize_4bit(torch.randn(64, 4), blocksize=64, quant_type="nf4")  # it may import but not run on CPU
        return F
    except Exception as e:  # noqa: BLE001  (any failure means: no bitsandbytes on this machine)
        pytest.skip(f"bitsandbytes does not run here ({type(e).__name__}: {e}); the paper's table is tested instead")


def test_nf4_levels_are_the_papers():
    levels = nf4_levels()
    assert levels.shape == (16,) and levels.dtype == torch.float32
    assert levels[7] == 0.0 and levels[0] == -1.0 and levels[-1] == 1.0  # an exact zero, [-1, 1]
    assert (levels.diff() > 0).all()
    # The paper prints them from a float32 computation; ours is float64 rounded once: within 2e-7.
    torch.testing.assert_close(levels, torch.tensor(PAPER_NF4), rtol=0, atol=2e-7)


def test_nf4_levels_equal_bitsandbytes():
    F = _bnb()
    from bitsandbytes.backends.default.ops import _get_4bit_code

    torch.testing.assert_close(nf4_levels(), _get_4bit_code("nf4", torch.device("cpu")), rtol=0, atol=2e-7)
    torch.testing.assert_close(dynamic_map(), F.create_dynamic_map(), rtol=0, atol=0)


@pytest.mark.parametrize("shape", [(300, 77), (128, 256)])  # 23,100 weights: a short last block
def test_round_trip_equals_bitsandbytes(shape):
    F = _bnb()
    w = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    # Without double quantization: identical codes and constants, same dequantized weights.
    q, state = F.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=False)
    ours = quantize_nf4(w, double_quant=False)
    assert torch.equal(q.view(-1), ours.codes)
    torch.testing.assert_close(ours.absmax, state.absmax, rtol=0, atol=0)
    torch.testing.assert_close(dequantize_nf4(ours), F.dequantize_4bit(q, state), rtol=0, atol=1e-6)
    # With double quantization (8-bit absmax in blocks of 256, the paper's setting).
    q, state = F.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=True)
    ours = quantize_nf4(w, double_quant=True)
    assert torch.equal(q.view(-1), ours.codes)
    assert state.state2.blocksize == 256 and ours.absmax.dtype == torch.uint8
    torch.testing.assert_close(ours.offset, state.offset, rtol=0, atol=1e-6)
    torch.testing.assert_close(ours.absmax2, state.state2.absmax, rtol=0, atol=0)
    # bitsandbytes' C kernel rounds an absmax constant that lies almost halfway between two 8-bit
    # levels to the other one now and then (3 of 362 here); ours always takes the nearest.
    differ = ours.absmax.int() != state.absmax.int()
    assert (ours.absmax.int() - state.absmax.int()).abs().max() <= 1 and differ.float().mean() < 0.01
    torch.testing.assert_close(dequantize_nf4(ours), F.dequantize_4bit(q, state), rtol=0, atol=1e-3)


def test_double_quant_storage_by_value():
    w = torch.randn(256, 256, generator=torch.Generator().manual_seed(0))  # 65,536 weights, 1,024 blocks
    single, double = quantize_nf4(w, double_quant=False), quantize_nf4(w)
    assert single.nbytes() == 32768 + 1024 * 4  # 4 bits per weight + one float32 per 64
    assert double.nbytes() == 32768 + 1024 + 4 * 4 + 4  # + one uint8 per 64, float32 per 256*64, the offset
    bits_per_weight = 8 * (double.nbytes() - 32768) / w.numel()
    assert math.isclose(bits_per_weight, 8 / 64 + 32 / (64 * 256) + 32 / w.numel())  # the paper's 0.127 bits
    # error of the 8-bit constants is small next to that of the 4-bit codes
    err_single = (dequantize_nf4(single) - w).pow(2).mean().sqrt()
    err_double = (dequantize_nf4(double) - w).pow(2).mean().sqrt()
    assert err_double < 1.01 * err_single < 0.1


def test_round_trip_error_on_gpt_mini(gpt_mini_base):
    """Relative Frobenius error of NF4 + double quantization over gpt-mini's linear layers (not the head)."""
    num = den = 0.0
    for name, m in gpt_mini_base.named_modules():
        if isinstance(m, nn.Linear) and not name.endswith("out_head"):
            w = m.weight.detach()
            num += (dequantize_nf4(quantize_nf4(w)) - w).pow(2).sum().item()
            den += w.pow(2).sum().item()
    assert 0.085 < math.sqrt(num / den) < 0.10  # measured 0.0921


def test_base_bytes_on_gpt_mini(gpt_mini_base):
    model = copy.deepcopy(gpt_mini_base)
    assert base_nbytes(model) == 70_663_168  # 17,665,792 float32 numbers (the head is tied to the embedding)
    assert base_nbytes(model, torch.bfloat16) == 35_331_584
    quantize_base(model)
    assert sum(isinstance(m, Linear4bit) for m in model.modules()) == 6 * 6  # 6 blocks x (q, k, v, out, ff in, ff out)
    assert base_nbytes(model) == 54_223_120  # the 4,727,808 linear numbers: 18.9 MB -> 2.47 MB in NF4
    assert 70_663_168 - 54_223_120 == 18_911_232 - 2_471_184


@pytest.fixture(scope="module")
def gpt_mini_base():
    from gpt.pretrained import load_base

    return load_base("data/gpt-mini").eval()


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    torch.manual_seed(0)
    transformers = pytest.importorskip("transformers")
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=64))
    path = tmp_path_factory.mktemp("tiny-gpt2")
    hf.save_pretrained(path)
    return path


def test_qlora_equals_peft_lora_on_the_dequantized_base(tmp_path, monkeypatch, gpt2_dir):
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ours = quantize_base(load_gpt2(gpt2_dir, attention="fused").eval())
    # PEFT's LoRA on every Conv1D: ours on the whole qkv projection (not per slice), out_proj and ff
    apply_lora(ours, LoraConfig(rank=4, alpha=8, targets=("qkv", "out_proj", "ff")))
    trainable = {n for n, p in ours.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)  # the 4-bit base has no parameters to train
    with torch.no_grad():
        for name, p in ours.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5)
    x = torch.randint(0, 50257, (2, 12), generator=torch.Generator().manual_seed(0))
    expected = ours(x)
    expected.logsumexp(-1).mean().backward()  # gradients reach A and B through the dequantized weight
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in ours.named_parameters() if n in trainable)

    # transformers' GPT-2 with each Conv1D weight replaced by our dequantized NF4 weight, PEFT LoRA on top
    hf = transformers.GPT2LMHeadModel.from_pretrained(gpt2_dir).eval()
    names = gpt2_module_names(ours.cfg)
    with torch.no_grad():
        for theirs, mine in names.items():
            layer = ours.get_submodule(mine)
            base = getattr(layer, "linear", layer)
            if isinstance(base, Linear4bit):
                hf.get_submodule(theirs).weight.copy_(base.weight.T)  # Conv1D stores (d_in, d_out)
    export_peft_adapter(ours, tmp_path / "peft", names)
    theirs = peft.PeftModel.from_pretrained(hf, tmp_path / "peft", is_trainable=True).eval()
    # per block: c_attn 64 -> 192, attn.c_proj 64 -> 64, c_fc 64 -> 256, mlp.c_proj 256 -> 64; two blocks
    assert sum(p.numel() for n, p in ours.named_parameters() if n in trainable) == \
        theirs.get_nb_trainable_parameters()[0] == 2 * 4 * (256 + 128 + 320 + 320) == 8192
    with torch.no_grad():
        torch.testing.assert_close(theirs(x).logits, expected, rtol=0, atol=1e-5)
        # and that base differs from the float one: the comparison is on the 4-bit weights
        float_hf = transformers.GPT2LMHeadModel.from_pretrained(gpt2_dir).eval()
        assert (peft.PeftModel.from_pretrained(float_hf, tmp_path / "peft")(x).logits - expected).abs().max() > 1e-4


def test_merge_into_a_4bit_base_is_refused_and_dequantize_restores_float():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32))
    quantize_base(model, targets=("0",))
    apply_lora(model, LoraConfig(rank=2, targets=("0",)))
    with pytest.raises(ValueError, match="4-bit base"):
        merge_lora(model)
    x = torch.randn(3, 64)
    before = model(x)
    dequantize_base(model)
    assert type(model[0].linear) is nn.Linear
    torch.testing.assert_close(model(x), before, rtol=0, atol=1e-6)
    merge_lora(model)
    torch.testing.assert_close(model(x), before, rtol=0, atol=1e-5)


def test_training_keeps_only_the_4bit_codes_between_the_passes():
    """Between forward and backward, autograd holds no float copy of the weight (the planted bug: F.linear on the
    dequantized weight saves it, the whole float base alive in training); the input's gradient is still the one
    of a float layer with the dequantized weight, and a trainable bias still gets its gradient."""
    torch.manual_seed(0)
    layer = Linear4bit(nn.Linear(64, 48))
    layer.bias.requires_grad_(True)
    x = torch.randn(5, 64, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(tuple(t.shape)) or t, lambda t: t):
        y = layer(x)
    assert (48, 64) not in saved and (64, 48) not in saved, saved
    y.pow(2).sum().backward()

    ref = nn.Linear(64, 48)
    with torch.no_grad():
        ref.weight.copy_(layer.weight)
        ref.bias.copy_(layer.bias)
    x_ref = x.detach().clone().requires_grad_(True)
    ref(x_ref).pow(2).sum().backward()
    torch.testing.assert_close(y, ref(x_ref), rtol=0, atol=1e-6)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=0, atol=1e-5)
    torch.testing.assert_close(layer.bias.grad, ref.bias.grad, rtol=0, atol=1e-5)
