"""LoRA's parameter arithmetic, against the seeds' examples and the book's GPT-2 count."""

import pytest
import torch
from torch import nn

from gpt import GPTConfig, GPTModel, count_parameters
from lora import (LoraConfig, apply_lora, full_parameter_count, lora_parameter_count, lora_parameter_report,
                  lora_trainable_count, reduction, replace_linear_with_lora)


def test_seed_512x64_rank8():
    # "Reduces trainable parameters from 32,768 to 4,608 (86% reduction)": A 8x64 = 512, B 512x8 = 4,096.
    assert full_parameter_count(512, 64) == 32_768
    assert lora_parameter_count(512, 64, 8) == 4_608 == 8 * 64 + 512 * 8
    assert reduction(512, 64, 8) == 1 - 4608 / 32768
    assert round(100 * reduction(512, 64, 8)) == 86


def test_seed_100x100_rank1():
    assert full_parameter_count(100, 100) == 10_000
    assert lora_parameter_count(100, 100, 1) == 200


def test_seed_10x8_rank3():
    # 10 x 8 = 80 weights; 10 -> 3 (30) then 3 -> 8 (24): 54.
    assert full_parameter_count(10, 8) == 80
    assert lora_parameter_count(10, 8, 3) == 54


def test_reduction_turns_negative_when_rank_is_too_large():
    assert reduction(10, 8, 5) == pytest.approx(1 - 90 / 80)


@pytest.mark.parametrize("bad", [0, -1, 2.0, True])
def test_counts_reject_bad_sizes(bad):
    with pytest.raises(ValueError, match="positive integer"):
        lora_parameter_count(10, 8, bad)


@pytest.mark.parametrize("attention", ["separate", "fused"])
@pytest.mark.parametrize("targets,expected_per_block", [
    (("query", "value"), 2 * 4 * (32 + 32)),
    (("query", "key", "value", "out_proj"), 4 * 4 * (32 + 32)),
    (("ff",), 4 * (32 + 128) * 2),
    (("all-linear",), 4 * 4 * (32 + 32) + 2 * 4 * (32 + 128)),
])
def test_count_on_paper_equals_built_model(attention, targets, expected_per_block):
    gpt_cfg = GPTConfig.from_preset("gpt-tiny", attention=attention)
    lora_cfg = LoraConfig(rank=4, alpha=8, targets=targets)
    model = apply_lora(GPTModel(gpt_cfg), lora_cfg)
    assert lora_trainable_count(gpt_cfg, lora_cfg) == 2 * expected_per_block
    assert count_parameters(model, trainable_only=True) == 2 * expected_per_block


@pytest.mark.parametrize("lora_cfg,expected", [
    # all-linear skips the head; the head (32 * 2 + 2) is trained in full as a module to save.
    (LoraConfig(rank=2, targets="all-linear", modules_to_save=["out_head"]),
     2 * (4 * 2 * (32 + 32) + 2 * 2 * (32 + 128)) + 32 * 2 + 2),  # 2,370
    # LoRA on the 2-class head itself: 2 * (32 + 2).
    (LoraConfig(rank=2, targets=("query", "out_head")), 2 * 2 * (32 + 32) + 2 * (32 + 2)),  # 324
])
def test_count_on_paper_with_a_new_head(lora_cfg, expected):
    gpt_cfg = GPTConfig.from_preset("gpt-tiny")
    model = GPTModel(gpt_cfg)
    model.out_head = nn.Linear(32, 2)
    apply_lora(model, lora_cfg)
    assert lora_trainable_count(gpt_cfg, lora_cfg, head_out_features=2, head_bias=True) == expected
    assert count_parameters(model, trainable_only=True) == expected


def test_count_on_paper_rejects_module_suffixes():
    with pytest.raises(ValueError, match="aliases"):
        lora_trainable_count(GPTConfig.from_preset("gpt-tiny"), LoraConfig(targets=["W_query"]))


@pytest.mark.parametrize("attention", ["separate", "fused"])
def test_gpt2_124m_rank8_query_value_is_294912(attention):
    # The LoRA paper's choice (q and v) on GPT-2 124M: 12 blocks * 2 * 8 * (768 + 768).
    gpt_cfg = GPTConfig.from_preset("gpt2-small", qkv_bias=True, tie_weights=True, attention=attention)
    with torch.device("meta"):
        model = GPTModel(gpt_cfg)
    lora_cfg = LoraConfig(rank=8, alpha=16, targets=("query", "value"))
    apply_lora(model, lora_cfg)
    report = lora_parameter_report(model)
    assert report["trainable"] == report["lora"] == 294_912
    assert report["total"] == 124_439_808 + 294_912
    assert report["frozen"] == 124_439_808
    assert lora_trainable_count(gpt_cfg, lora_cfg) == 294_912


def test_book_gpt2_124m_every_linear_rank16_is_2666528():
    # The book (appendix E): GPT-2 124M with qkv bias, tied head replaced by a 2-class head,
    # everything frozen, then replace_linear_with_lora(model, rank=16, alpha=16).
    with torch.device("meta"):
        model = GPTModel(GPTConfig.from_preset("gpt2-small", qkv_bias=True, tie_weights=True))
        model.out_head = nn.Linear(768, 2)
    for p in model.parameters():
        p.requires_grad = False
    with pytest.warns(UserWarning, match=r"rank 16 > min\(d_in=768, d_out=2\) for out_head"):
        replace_linear_with_lora(model, rank=16, alpha=16)
    assert count_parameters(model, trainable_only=True) == 2_666_528
    # 12 blocks * (4 * 16 * (768 + 768) + 16 * (768 + 3072) * 2) + 16 * (768 + 2)
    assert 12 * (4 * 16 * 1536 + 2 * 16 * 3840) + 16 * 770 == 2_666_528
