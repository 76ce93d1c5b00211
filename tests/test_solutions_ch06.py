"""The code solutions of chapter 6's exercises (solutions/ch06.py): LoRA layers."""

import math

import pytest

from solutions import ch06


def test_exercise_6_1_gpt2_medium_counts():
    out, built = ch06.exercise_6_1(), ch06.built_counts_6_1()
    assert out["query_value"] == built["qv_on_paper"] == built["qv_built"] == 786_432
    assert out["all_linear"] == built["all_linear_on_paper"] == built["all_linear_built"] == 7_079_938


def test_exercise_6_2_fused_qkv_is_a_block_diagonal_rank_3r_lora():
    out = ch06.exercise_6_2(d=32, r=4)
    assert out["max_diff"] < 1e-6
    assert out["fused_params"] == 3 * 4 * (32 + 32) == 768
    assert out["plain_rank_3r_params"] == 12 * (32 + 96) == 1_536


def test_exercise_6_3_bf16_round_trip_is_lossy_but_does_not_accumulate():
    out = {**ch06.exercise_6_3(), **{f"{k}_100_cycles": v for k, v in ch06.exercise_6_3(cycles=100).items()}}
    assert out["float32"] < 1e-7  # one float32 rounding of weights of size ~0.02
    assert out["bfloat16"] == pytest.approx(4.8828e-4, rel=1e-3)  # 2**-11: one bf16 step for weights in [0.0625, 0.125)
    assert out["bfloat16"] > 1_000 * out["float32"]
    # The answer says the error does not add up with every switch: 100 cycles leave what 1 cycle left.
    assert out["bfloat16_100_cycles"] == out["bfloat16"]
    assert out["float32_100_cycles"] == out["float32"]


def test_exercise_6_4_books_init_is_sqrt_d_over_r_wider():
    out = ch06.init_comparison_6_4(d_in=768, r=16)
    assert out["book_bound"] == 0.25
    assert out["linear_bound"] == pytest.approx(1 / math.sqrt(768))
    assert 0.24 < out["probe_abs_max"] <= 0.25  # torch's kaiming_uniform_ on (768, 16) really uses 1/sqrt(16)
    assert out["book_output_abs_max"] == out["linear_output_abs_max"] == 0.0  # B = 0: no change at the start
    assert out["book_grad_A_norm"] == out["linear_grad_A_norm"] == 0.0  # dL/dA is proportional to B
    assert out["grad_B_ratio"] == pytest.approx(math.sqrt(768 / 16), rel=1e-5)  # 6.93


def test_exercise_6_5_tied_head_lora_leaves_embedding_and_refuses_merge():
    out = ch06.exercise_6_5()
    assert out["embedding_unchanged"] is True
    assert out["still_tied"] is True
    assert out["logits_changed_by"] > 1e-3  # the step did train the adapter
    assert out["merge_error"] is not None and "tied" in out["merge_error"] and "tok_emb.weight" in out["merge_error"]
