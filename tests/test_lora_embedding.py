"""LoRA on a token embedding (lora/layers.py EmbeddingWithLoRA): the one-hot reading of the update, PEFT's
initialisation, which rows train, counts, merging (and the refusal on a tied table), adapters that differ in
whether they carry it, and saving. PEFT's format for it, both ways: tests/test_lora_peft.py.
"""

import pytest
import torch
from torch import nn

from classify.model import add_classification_head
from gpt import GPTConfig, GPTModel
from lora import (EmbeddingWithLoRA, LinearWithLoRA, LoraConfig, add_adapter, apply_lora, load_adapter,
                  lora_parameter_report, merge_lora, save_adapter, set_active_adapter, unmerge_lora)
from lora.counts import lora_trainable_count

V, D, R = 50, 16, 4


def random_factors(layer, name="default", seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in (layer.lora[name].lora_A, layer.lora[name].lora_B):
            p.copy_(torch.randn(p.shape, generator=g))


def test_the_branch_is_the_linear_update_on_one_hot_inputs():
    torch.manual_seed(0)
    table = nn.Embedding(V, D)
    layer = EmbeddingWithLoRA(table, rank=R, alpha=8)
    random_factors(layer)
    ids = torch.tensor([[3, 0, 49, 3]])
    A, B = layer.lora["default"].lora_A, layer.lora["default"].lora_B
    one_hot = nn.functional.one_hot(ids, V).float()  # (1, 4, V)
    expected = table.weight[ids] + (8 / R) * one_hot @ A @ B  # scale alpha / r = 2
    torch.testing.assert_close(layer(ids), expected, rtol=0, atol=1e-5)
    assert layer.d_in == V and layer.d_out == D


def test_init_is_pefts_identity_and_only_rows_of_seen_tokens_train():
    torch.manual_seed(0)
    table = nn.Embedding(V, D)
    layer = EmbeddingWithLoRA(table, rank=R, alpha=8)
    A, B = layer.lora["default"].lora_A, layer.lora["default"].lora_B
    assert torch.count_nonzero(A) == 0 and torch.count_nonzero(B) == R * D  # A = 0, B ~ N(0, 1) (PEFT)
    ids = torch.tensor([[1, 7, 7, 30]])
    assert torch.equal(layer(ids), table(ids))  # a fresh adapter changes nothing
    assert not table.weight.requires_grad  # the table is frozen
    layer(ids).pow(2).sum().backward()
    rows_with_grad = torch.nonzero(A.grad.abs().sum(1)).flatten().tolist()
    assert rows_with_grad == [1, 7, 30]  # a token never seen keeps a zero row: its embedding stays the base's
    # (with the linear layers' init, A random and B = 0, every row of the table would move at once)


def test_all_linear_leaves_the_embedding_alone_and_the_name_selects_it():
    cfg = GPTConfig.from_preset("gpt-tiny")
    model = apply_lora(GPTModel(cfg), LoraConfig(rank=R, alpha=8, targets=("all-linear",)))
    assert isinstance(model.tok_emb, nn.Embedding) and not isinstance(model.tok_emb, EmbeddingWithLoRA)
    model = GPTModel(cfg)
    add_classification_head(model, 2)
    lcfg = LoraConfig(rank=R, alpha=8, targets=("all-linear", "tok_emb"), modules_to_save=("out_head",))
    apply_lora(model, lcfg)
    assert isinstance(model.tok_emb, EmbeddingWithLoRA) and isinstance(model.trf_blocks[0].att.W_query, LinearWithLoRA)
    assert not isinstance(model.pos_emb, EmbeddingWithLoRA)  # only the embedding named
    trainable = lora_parameter_report(model)["trainable"]
    assert trainable == lora_trainable_count(cfg, lcfg, head_out_features=2, head_bias=True)
    embedding = R * (cfg.vocab_size + cfg.emb_dim)  # r (V + d): one row of A per token id, and B
    assert trainable - lora_trainable_count(cfg, LoraConfig(rank=R, alpha=8, targets=("all-linear",),
                                                            modules_to_save=("out_head",)), 2, True) == embedding


def test_gpt_mini_sentiment_adapter_counts():
    """The numbers chapter 8 quotes for its two adapters (LoRA r=8 on every linear layer + the head; the
    sentiment adapter also on the token embedding)."""
    cfg = GPTConfig.from_preset("gpt-mini")
    linear = LoraConfig(rank=8, alpha=16, targets=("all-linear",), modules_to_save=("out_head",))
    with_embedding = LoraConfig(rank=8, alpha=16, targets=("all-linear", "tok_emb"), modules_to_save=("out_head",))
    assert lora_trainable_count(cfg, linear, 2, True) == 221_698
    assert lora_trainable_count(cfg, with_embedding, 2, True) == 625_802  # + 8 * (50,257 + 256) = 404,104


def test_merge_equals_unmerged_and_a_tied_table_is_refused():
    torch.manual_seed(0)
    cfg = GPTConfig.from_preset("gpt-tiny", drop_rate=0.0)
    model = GPTModel(cfg).eval()
    apply_lora(model, LoraConfig(rank=R, alpha=8, targets=("tok_emb",)))
    with pytest.raises(ValueError, match=r"tied to \['out_head.weight'\]"):
        merge_lora(model)  # the LM head shares the table: merging would change the head too
    add_classification_head(model, 2)  # a new head: the table is its own again
    random_factors(model.tok_emb)
    x = torch.randint(0, cfg.vocab_size, (2, 9), generator=torch.Generator().manual_seed(1))
    before = model.tok_emb.linear.weight.clone()
    unmerged = model(x)
    merge_lora(model)
    torch.testing.assert_close(model(x), unmerged, rtol=0, atol=1e-5)
    assert (model.tok_emb.linear.weight - before).abs().max() > 0.1  # the update is in the table now
    unmerge_lora(model)
    torch.testing.assert_close(model.tok_emb.linear.weight, before, rtol=0, atol=1e-6)


def test_an_adapter_without_the_embedding_runs_the_base_table(tmp_path):
    torch.manual_seed(0)
    cfg = GPTConfig.from_preset("gpt-tiny", drop_rate=0.0)
    model = GPTModel(cfg).eval()
    add_classification_head(model, 2)
    x = torch.randint(0, cfg.vocab_size, (2, 9), generator=torch.Generator().manual_seed(1))
    base = model(x)
    apply_lora(model, LoraConfig(rank=R, alpha=8, targets=("tok_emb",), modules_to_save=("out_head",)),
               adapter_name="words")
    random_factors(model.tok_emb, "words")
    with_words = model(x)
    assert (with_words - base).abs().max() > 1e-3
    add_adapter(model, "plain", LoraConfig(rank=R, alpha=8, targets=("value",), modules_to_save=("out_head",)))
    set_active_adapter(model, "plain")
    torch.testing.assert_close(model(x), base, rtol=0, atol=1e-6)  # B = 0 and no branch on the table
    assert not model.tok_emb.lora["words"].lora_A.requires_grad  # only the active adapter trains

    set_active_adapter(model, "words")
    save_adapter(model, tmp_path / "words", name="words")
    torch.manual_seed(0)
    fresh = GPTModel(cfg).eval()  # the same base weights
    add_classification_head(fresh, 2)
    load_adapter(fresh, tmp_path / "words")
    assert isinstance(fresh.tok_emb, EmbeddingWithLoRA)
    torch.testing.assert_close(fresh(x), with_words, rtol=0, atol=1e-6)


def test_embedding_dims_refusals_name_the_problem():
    """embedding_dims refuses, with these messages: LoRA on LoRA, a layer that is not an nn.Embedding, and an
    nn.Embedding with max_norm (its lookup renormalises rows in place)."""
    layer = EmbeddingWithLoRA(nn.Embedding(V, D), rank=R, alpha=8)
    with pytest.raises(ValueError, match=r"^this layer already has LoRA \(EmbeddingWithLoRA\); LoRA cannot be applied "
                                         r"twice to one layer \(add another adapter by name instead\)$"):
        EmbeddingWithLoRA(layer, rank=R, alpha=8)
    with pytest.raises(TypeError, match=r"^EmbeddingWithLoRA wraps nn\.Embedding layers, got Linear$"):
        EmbeddingWithLoRA(nn.Linear(V, D), rank=R, alpha=8)
    with pytest.raises(ValueError, match=r"^LoRA on an nn\.Embedding with max_norm is not supported: the lookup "
                                         r"renormalises the base rows in place, and the update would be added "
                                         r"after it$"):
        EmbeddingWithLoRA(nn.Embedding(V, D, max_norm=1.0), rank=R, alpha=8)


def test_embedding_add_adapter_defaults_and_rank_check():
    """A second adapter on a table: scale alpha / r by default, PEFT's init (A = 0, B ~ N(0, 1) from the
    global generator), no dropout even when asked for, and rank <= min(V, d) checked by default."""
    layer = EmbeddingWithLoRA(nn.Embedding(V, D), rank=R, alpha=8)
    torch.manual_seed(5)
    branch = layer.add_adapter("b", rank=2, alpha=6)
    torch.manual_seed(5)
    torch.empty(V, 2).uniform_()  # the linear layers' draw of A comes first (then A is zeroed)
    assert torch.equal(branch.lora_B, torch.empty(2, D).normal_())
    assert branch.scale == 3.0 and branch.scaling == "alpha/r"
    assert torch.equal(branch.lora_A, torch.zeros(V, 2))
    assert isinstance(layer.add_adapter("c", rank=2, alpha=6, dropout=0.5).dropout, nn.Identity)
    assert layer.add_adapter("d", rank=2, alpha=6, scaling="alpha").scale == 6.0
    with pytest.raises(ValueError, match=r"^LoRA rank 17 is larger than min\(d_in=50, d_out=16\) = 16 for "
                                         r"EmbeddingWithLoRA\(Embedding 50 -> 16\): "):
        layer.add_adapter("e", rank=17, alpha=8)
    assert layer.add_adapter("f", rank=17, alpha=8, check_rank=False).lora_A.shape == (V, 17)


def test_embedding_on_a_bf16_table_returns_bf16():
    """A bf16 table keeps an fp32 adapter; the output is bf16, exactly the table row + the update rounded
    to bf16."""
    table = nn.Embedding(V, D).to(torch.bfloat16)
    layer = EmbeddingWithLoRA(table, rank=R, alpha=8)
    random_factors(layer)
    branch = layer.lora["default"]
    assert branch.lora_A.dtype == torch.float32
    ids = torch.tensor([[3, 0, 49]])
    out = layer(ids)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, table(ids) + (2.0 * branch.lora_A[ids] @ branch.lora_B).to(torch.bfloat16))
