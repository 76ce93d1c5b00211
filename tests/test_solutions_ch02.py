"""The chapter 2 exercise solutions (solutions/ch02.py) give the stated answers, checked with real numbers."""

import pytest
import torch

from gpt.attention import MultiHeadAttention
from solutions import ch02


def test_exercise_2_1_mask_hides_the_future():
    result = ch02.exercise_2_1()
    assert result["with_mask"] == 0.0  # exactly: position 0 never sees the changed token
    assert result["without_mask"] > 1e-2


def test_attention_without_mask_equals_explicit_softmax():
    torch.manual_seed(0)
    attn = MultiHeadAttention(8, 8, context_length=4, dropout=0.0, num_heads=2).eval()
    x = torch.randn(1, 4, 8)
    q, k, v = attn.project_qkv(x)
    weights = torch.softmax(q @ k.transpose(-2, -1) / 2.0, dim=-1)  # sqrt(head_dim = 4) = 2, no mask
    expected = attn.out_proj((weights @ v).transpose(1, 2).reshape(1, 4, 8))
    with torch.no_grad():
        torch.testing.assert_close(ch02.attention_without_mask(attn, x), expected, rtol=1e-5, atol=1e-6)


def test_exercise_2_2_attention_parameter_counts():
    result = ch02.exercise_2_2()
    assert result["without qkv bias"] == {"formula": 2_360_064, "separate": 2_360_064, "fused": 2_360_064}
    assert result["with qkv bias"] == {"formula": 2_362_368, "separate": 2_362_368, "fused": 2_362_368}


def test_exercise_2_3_single_head_is_one_head_multihead():
    single, multi = ch02.exercise_2_3()
    assert not hasattr(single, "out_proj") and multi.num_heads == 1
    assert ch02.difference_2_3() < 1e-6


def test_exercise_2_4_dot_product_variance():
    result = ch02.exercise_2_4()
    assert set(result) == {16, 64, 256}
    for d, (raw, scaled) in result.items():
        assert raw == pytest.approx(d, rel=0.05)  # 20,000 samples: a few percent of sampling error
        assert scaled == pytest.approx(1.0, rel=0.05)
        assert raw / scaled == pytest.approx(d, rel=1e-9)  # scaling by 1/sqrt(d) divides the variance by d
