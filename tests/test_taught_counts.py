"""Every parameter count the chapters and README teach, asserted in the fast tier (`-m "not slow"`).

Each count is taken twice where the project can: on paper (gpt.params / lora.counts, the formulas the
chapters show) and from a built model (count_parameters). The models are built on the meta device:
shapes without memory or random numbers, so GPT-2 124M and gpt-mini are counted in milliseconds. The
training runs that print these numbers in the notebooks are slower tests (tests/test_chapter_scripts.py,
tests/test_notebooks.py); these keep the numbers checked when those are left out.
"""

import pytest
import torch
from torch import nn

from classify.model import add_classification_head, set_trainable
from gpt import GPTConfig, GPTModel, count_parameters
from lora import LoraConfig, apply_lora, lora_parameter_count, lora_trainable_count, replace_linear_with_lora

GPT2 = GPTConfig.from_preset("gpt2-small")  # the book's 124M config: untied head, no qkv bias
MINI = GPTConfig.from_preset("gpt-mini")  # d = 256, 6 blocks, tied: chapters 4 and 7-9's base
ALL_LINEAR = ("all-linear",)  # q, k, v, out_proj and both feed-forward layers of every block


def meta(cfg: GPTConfig, classes: int | None = None) -> GPTModel:
    with torch.device("meta"):
        model = GPTModel(cfg)
        if classes:
            add_classification_head(model, classes)
    return model


def trainable(model: nn.Module) -> int:
    return count_parameters(model, trainable_only=True)


def lora_on(cfg: GPTConfig, lora_cfg: LoraConfig) -> int:
    """Trainable parameters of `cfg` with a 2-class head and `lora_cfg`, checked on paper against the model."""
    model = meta(cfg, 2)
    with torch.device("meta"):
        apply_lora(model, lora_cfg)
    built = trainable(model)
    head_trained = "out_head" in lora_cfg.modules_to_save
    on_paper = lora_trainable_count(cfg, lora_cfg, 2, True) if head_trained else None
    assert on_paper in (None, built), (on_paper, built)
    return built


# ----------------------------------------------------------------------------- chapter 3 and README

def test_chapter_3_gpt2_small_163m_and_124m():
    assert count_parameters(meta(GPT2)) == 163_009_536  # untied head
    assert count_parameters(meta(GPT2.replace(tie_weights=True))) == 124_412_160  # 38,597,376 fewer
    assert count_parameters(meta(GPT2.replace(tie_weights=True, qkv_bias=True))) == 124_439_808  # as released
    assert 163_009_536 - 124_412_160 == 50_257 * 768 == 38_597_376
    assert 124_439_808 - 124_412_160 == 12 * 3 * 768 == 27_648


def test_chapter_3_per_module_counts():
    model = meta(GPT2)
    block = model.trf_blocks[0]
    assert count_parameters(block.att) == 4 * 768**2 + 768 == 2_360_064  # W_q, W_k, W_v, out_proj (+ its bias)
    assert count_parameters(block.ff) == 8 * 768**2 + 5 * 768 == 4_722_432  # twice the attention layer
    assert count_parameters(meta(GPT2.replace(qkv_bias=True)).trf_blocks[0].att) == 2_360_064 + 2_304
    assert count_parameters(model.tok_emb) == count_parameters(model.out_head) == 38_597_376
    assert count_parameters(model.pos_emb) == 1024 * 768


def test_chapter_3_gpt2_medium():
    medium = GPTConfig.from_preset("gpt2-medium")
    assert count_parameters(meta(medium)) == 406_212_608
    assert count_parameters(meta(medium.replace(tie_weights=True, qkv_bias=True))) == 354_823_168


# ----------------------------------------------------------------------------- chapter 4

def test_chapter_4_gpt_tiny_embedding():
    tiny = meta(GPTConfig.from_preset("gpt-tiny"))
    assert count_parameters(tiny.tok_emb) == 50_257 * 32 == 1_608_224
    assert round(count_parameters(tiny) / 1e6, 1) == 1.6


# ----------------------------------------------------------------------------- chapter 5

def test_chapter_5_low_rank_counts():
    assert lora_parameter_count(512, 64, 8) == 4_608 and 512 * 64 == 32_768
    assert lora_parameter_count(768, 768, 8) == 12_288 and 768 * 768 == 589_824
    assert round(count_parameters(meta(MINI).out_head) / 1e6, 1) == 12.9  # gpt-mini's output layer (tied)


# ----------------------------------------------------------------------------- chapter 6

def test_chapter_6_query_value_on_gpt2_124m():
    cfg = GPT2.replace(tie_weights=True, qkv_bias=True)
    for attention in ("separate", "fused"):
        model = meta(cfg.replace(attention=attention))
        with torch.device("meta"):
            apply_lora(model, LoraConfig(rank=8, alpha=16, targets=("query", "value")))
        assert trainable(model) == 12 * 2 * 8 * (768 + 768) == 294_912


def test_chapter_6_the_books_replace_linear_with_lora():
    model = meta(GPT2.replace(tie_weights=True, qkv_bias=True), 2)  # the book's 768 -> 2 spam head
    model.requires_grad_(False)
    with torch.device("meta"), pytest.warns(UserWarning, match="12,320 parameters exceed the layer's 1,536 weights"):
        replace_linear_with_lora(model, rank=16, alpha=16)  # the head: rank 16 > 2, as the book does
    assert trainable(model) == 2_666_528
    assert lora_parameter_count(768, 2, 16) == 16 * (768 + 2) == 12_320 and 768 * 2 == 1_536


# ----------------------------------------------------------------------------- chapter 7

def test_chapter_7_full_last_block_and_lora():
    counts = {}
    for method in ("full", "last-block"):
        model = meta(MINI, 2)
        set_trainable(model, method)
        counts[method] = trainable(model)
    assert counts == {"full": 17_666_306, "last-block": 790_018}
    assert count_parameters(meta(MINI)) == 17_665_792  # gpt-mini with its LM head (tied): 514 fewer than the classifier
    assert lora_on(MINI, LoraConfig(rank=16, alpha=16, targets=ALL_LINEAR, modules_to_save=("out_head",))) == 442_882
    assert 17_666_306 // 442_882 == 39  # "40 times more": 39.9


@pytest.mark.parametrize("rank, expected", [(1, 28_162), (16, 442_882), (32, 885_250)])
def test_chapter_7_rank_sweep(rank, expected):
    lora_cfg = LoraConfig(rank=rank, alpha=16, targets=ALL_LINEAR, modules_to_save=("out_head",))
    assert lora_on(MINI, lora_cfg) == expected == 27_648 * rank + 514


# ----------------------------------------------------------------------------- chapter 8

def test_chapter_8_spam_and_sentiment_adapters():
    linear = LoraConfig(rank=8, alpha=16, targets=ALL_LINEAR, modules_to_save=("out_head",))
    embedding = LoraConfig(rank=8, alpha=16, targets=(*ALL_LINEAR, "tok_emb"), modules_to_save=("out_head",))
    assert lora_on(MINI, linear) == 221_698
    assert lora_on(MINI, embedding) == 625_802 == 221_698 + 404_104
    assert 8 * (50_257 + 256) == 404_104


# ----------------------------------------------------------------------------- chapter 9

def test_chapter_9_query_value_sweep_and_the_frozen_head():
    qv = dict(alpha=16, targets=("query", "value"), modules_to_save=("out_head",))
    assert lora_on(MINI, LoraConfig(rank=1, **qv)) == 6_658
    assert lora_on(MINI, LoraConfig(rank=64, **qv)) == 393_730
    # The head left frozen (chapter 9's mistake): only the LoRA matrices train, 514 fewer.
    assert lora_on(MINI, LoraConfig(rank=16, alpha=16, targets=ALL_LINEAR)) == 442_368 == 442_882 - 514


@pytest.mark.parametrize("targets, rank", [(("query",), 36), (("value",), 36), (("query", "value"), 18),
                                           (("query", "key", "value", "out_proj"), 9), (ALL_LINEAR, 4)])
def test_chapter_9_fixed_budget_of_18432_per_block(targets, rank):
    lora_only = lora_on(MINI, LoraConfig(rank=rank, alpha=16, targets=targets))  # the head frozen: LoRA alone
    assert lora_only == MINI.n_layers * 18_432
