"""The chapter 3 exercise solutions (solutions/ch03.py) give the stated answers, checked with real numbers."""

import pytest
import torch

from gpt import GPTConfig, GPTModel, count_parameters
from gpt.attention import MultiHeadAttention
from gpt.config import PRESETS
from solutions import ch03


def meta_count(cfg):
    with torch.device("meta"):  # shapes only: counting gpt2-xl allocates nothing
        return count_parameters(GPTModel(cfg))


def test_exercise_3_1_gpt2_medium():
    assert ch03.exercise_3_1(GPTConfig.from_preset("gpt2-medium")) == 406_212_608
    assert ch03.exercise_3_1(GPTConfig.from_preset("gpt2-medium", qkv_bias=True, tie_weights=True)) == 354_823_168


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("qkv_bias", [False, True])
@pytest.mark.parametrize("tie_weights", [False, True])
def test_exercise_3_1_formula_matches_every_preset(preset, qkv_bias, tie_weights):
    cfg = GPTConfig.from_preset(preset, qkv_bias=qkv_bias, tie_weights=tie_weights)
    assert ch03.exercise_3_1(cfg) == meta_count(cfg)


def test_exercise_3_2_parameter_count_for_12_heads_of_32():
    with torch.device("meta"):
        model = ch03.exercise_3_2(GPTConfig(), head_dim=32)
    assert count_parameters(model.trf_blocks[0].att) == 3 * 768 * 384 + 384 * 768 + 768 == 1_180_416
    # the rest of the model is unchanged: 12 layers x (2,360,064 - 1,180,416) fewer than GPT-2 small's 163,009,536
    assert count_parameters(model) == 163_009_536 - 12 * (2_360_064 - 1_180_416)


def test_exercise_3_2_forward_and_equivalence():
    cfg = GPTConfig.from_preset("gpt-tiny", drop_rate=0.0)  # emb_dim 32, 4 heads of 8
    torch.manual_seed(0)
    model = ch03.exercise_3_2(cfg, head_dim=4).eval()
    ids = torch.randint(0, cfg.vocab_size, (2, 7))
    with torch.no_grad():
        assert model(ids).shape == (2, 7, cfg.vocab_size)
    # head_dim = emb_dim / n_heads gives back the package's MultiHeadAttention, weight for weight
    wide = ch03.HeadDimAttention(32, num_heads=4, head_dim=8, context_length=64).eval()
    reference = MultiHeadAttention(32, 32, 64, 0.0, num_heads=4).eval()
    reference.load_state_dict(wide.state_dict())
    x = torch.randn(2, 7, 32)
    with torch.no_grad():
        torch.testing.assert_close(wide(x), reference(x))


def test_exercise_3_3_causal_and_dropout():
    result = ch03.exercise_3_3()
    assert result["change_before_t"] < 1e-6
    assert result["change_from_t"] > 1e-3
    assert result["train_passes_differ_by"] > 1e-3
    assert result["eval_passes_differ_by"] == 0.0


def test_exercise_3_4_gpt2_xl_memory():
    result = ch03.exercise_3_4()
    assert result["parameters"] == 1_557_611_200
    assert result["fp32_weights_gb"] == pytest.approx(6.2304448)
    assert result["bf16_weights_gb"] == pytest.approx(3.1152224)
    assert result["adamw_fp32_full_gb"] == pytest.approx(24.9217792)
    assert result["adamw_fp32_partial_gb"] == pytest.approx((4 + 12 * 0.01) * 1_557_611_200 / 1e9)
