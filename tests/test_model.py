"""The model (gpt/config.py, gpt/attention.py, gpt/model.py, gpt/params.py): exact parameter
counts, weight tying, the two attention layouts computing the same function, and the errors
that bad input raises.

Large configurations are built on the meta device: shapes without memory, so counting the
1.6B-parameter GPT-2 XL takes milliseconds.
"""

import pytest
import torch

from gpt import (
    PRESETS, FusedMultiHeadAttention, GPTConfig, GPTModel, MultiHeadAttention, TransformerBlock,
    causal_attention, convert_attention, convert_state_dict, count_parameters, fuse_qkv,
    parameter_summary, parameter_table, split_qkv, tied_parameters,
)
from gpt.config import GPT2_CHECKPOINT_SETTINGS
from conftest import make_tiny_gpt

TINY = GPTConfig.from_preset("gpt-tiny")  # emb_dim 32, 2 layers, 4 heads, context 64, tied


def meta_model(cfg: GPTConfig) -> GPTModel:
    with torch.device("meta"):
        return GPTModel(cfg)


def tiny_model(seed: int = 0, **changes) -> GPTModel:
    model = make_tiny_gpt(seed, **changes).eval()  # tests/conftest.py
    with torch.no_grad():  # biases and LayerNorm parameters start at 0 / 1: make them matter
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def tokens(T: int = 24, b: int = 2, seed: int = 1):
    return torch.randint(0, TINY.vocab_size, (b, T), generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- parameter counts

@pytest.mark.parametrize("cfg, expected", [
    (GPTConfig(), 163_009_536),  # the book's 124M config: untied head, no qkv bias
    (GPTConfig(tie_weights=True), 124_412_160),  # out_head shares tok_emb: 38,597,376 fewer
    (GPTConfig(tie_weights=True, qkv_bias=True), 124_439_808),  # OpenAI's checkpoint: + 12 x 3 x 768
    (GPTConfig.from_preset("gpt2-small", **GPT2_CHECKPOINT_SETTINGS), 124_439_808),
    (GPTConfig.from_preset("gpt2-medium"), 406_212_608),
    (GPTConfig.from_preset("gpt2-large"), 838_220_800),
    (GPTConfig.from_preset("gpt2-xl"), 1_637_792_000),
])
def test_parameter_counts(cfg, expected):
    assert count_parameters(meta_model(cfg)) == expected


def test_one_block_of_gpt2_small():
    with torch.device("meta"):
        block = TransformerBlock(GPTConfig())
    assert count_parameters(block.ff) == 4_722_432  # 768*3072 + 3072 + 3072*768 + 768
    assert count_parameters(block.att) == 2_360_064  # 3 * 768*768 + 768*768 + 768
    assert count_parameters(block) == 4_722_432 + 2_360_064 + 4 * 768  # + two LayerNorms


def test_fused_layout_has_the_same_count():
    for cfg in (GPTConfig(), GPTConfig(qkv_bias=True, tie_weights=True)):
        assert count_parameters(meta_model(cfg.replace(attention="fused"))) == count_parameters(meta_model(cfg))


def test_tying_shares_storage_and_untied_does_not():
    tied = GPTModel(TINY)
    assert tied.out_head.weight.data_ptr() == tied.tok_emb.weight.data_ptr()
    assert tied_parameters(tied) == [["tok_emb.weight", "out_head.weight"]]
    untied = GPTModel(TINY.replace(tie_weights=False))
    assert untied.out_head.weight.data_ptr() != untied.tok_emb.weight.data_ptr()
    assert tied_parameters(untied) == []
    # The difference is exactly one vocab_size x emb_dim matrix.
    assert count_parameters(untied) - count_parameters(tied) == 50257 * 32


def test_parameter_table_and_summary():
    model = GPTModel(TINY)
    total = count_parameters(model)
    # tok_emb 50257*32 + pos_emb 64*32 + 2 blocks x 12,608 (no qkv bias) + final_norm 64
    assert total == 1_608_224 + 2_048 + 2 * 12_608 + 64 == 1_635_552
    for p in model.trf_blocks.parameters():
        p.requires_grad_(False)
    assert parameter_summary(model) == {"total": 1_635_552, "trainable": 1_610_336, "frozen": 25_216}
    table = parameter_table(model)
    assert "1,635,552" in table and "1,610,336" in table and "25,216" in table
    assert "tok_emb" in table and "trf_blocks" in table
    assert "(tied: tok_emb.weight = out_head.weight, counted once)" in table
    deeper = parameter_table(model, depth=2)
    assert "trf_blocks.0" in deeper and "trf_blocks.1" in deeper


def test_parameter_table_of_gpt2_small_shows_its_total():
    table = parameter_table(meta_model(GPTConfig(qkv_bias=True, tie_weights=True)))
    (total_row,) = [line for line in table.splitlines() if line.startswith("total")]
    assert total_row.split()[1:4] == ["124,439,808", "124,439,808", "0"]
    (tok_emb_row,) = [line for line in table.splitlines() if line.startswith("tok_emb")]
    assert tok_emb_row.split()[1] == "38,597,376"  # 50257 x 768, counted once for tok_emb and out_head


# ----------------------------------------------------------------------------- separate vs fused

@pytest.mark.parametrize("qkv_bias", [False, True])
def test_convert_attention_both_directions(qkv_bias):
    separate = tiny_model(qkv_bias=qkv_bias)
    x = tokens()
    with torch.no_grad():
        ref = separate(x)
        fused = convert_attention(separate, "fused")
        assert isinstance(fused.trf_blocks[0].att, FusedMultiHeadAttention)
        assert fused.trf_blocks[0].att.qkv.weight.shape == (96, 32)
        assert (fused.trf_blocks[0].att.qkv.bias is not None) == qkv_bias
        torch.testing.assert_close(fused(x), ref, rtol=0, atol=1e-6)
        back = convert_attention(fused, "separate")
        assert isinstance(back.trf_blocks[0].att, MultiHeadAttention)
        torch.testing.assert_close(back(x), ref, rtol=0, atol=1e-6)
    # The round trip gives back the very same numbers, key for key.
    original, restored = separate.state_dict(), back.state_dict()
    assert original.keys() == restored.keys()
    assert all(torch.equal(original[k], restored[k]) for k in original)
    assert not fused.training and back.out_head.weight.data_ptr() == back.tok_emb.weight.data_ptr()


def test_convert_state_dict_layout_and_errors():
    sd = tiny_model(qkv_bias=True).state_dict()
    fused = convert_state_dict(sd, to="fused")
    q, k, v = (sd[f"trf_blocks.0.att.{n}.weight"] for n in ("W_query", "W_key", "W_value"))
    assert torch.equal(fused["trf_blocks.0.att.qkv.weight"], torch.cat([q, k, v]))  # rows [q | k | v]
    assert not any("W_key" in key for key in fused)
    assert convert_state_dict(fused, to="fused").keys() == fused.keys()  # already fused: unchanged
    with pytest.raises(ValueError, match="unknown attention layout 'flash'"):
        convert_state_dict(sd, to="flash")


@pytest.mark.parametrize("qkv_bias", [False, True])
@pytest.mark.parametrize("d_in, d_out", [(32, 32), (24, 48)])
def test_fuse_and_split_qkv_modules(qkv_bias, d_in, d_out):
    torch.manual_seed(0)
    separate = MultiHeadAttention(d_in, d_out, context_length=16, dropout=0.0, num_heads=4, qkv_bias=qkv_bias)
    x = torch.randn(2, 10, d_in)
    with torch.no_grad():
        if qkv_bias:
            for linear in (separate.W_query, separate.W_key, separate.W_value):
                linear.bias.normal_()
        ref = separate(x)
        assert ref.shape == (2, 10, d_out)
        fused = fuse_qkv(separate)
        assert fused.qkv.weight.shape == (3 * d_out, d_in)
        torch.testing.assert_close(fused(x), ref, rtol=0, atol=1e-6)
        back = split_qkv(fused)
        torch.testing.assert_close(back(x), ref, rtol=0, atol=1e-6)
    for name in ("W_query", "W_key", "W_value"):
        assert torch.equal(getattr(back, name).weight, getattr(separate, name).weight)
        if qkv_bias:
            assert torch.equal(getattr(back, name).bias, getattr(separate, name).bias)
        else:
            assert getattr(back, name).bias is None


def test_explicit_softmax_equals_sdpa():
    sdpa = tiny_model(qkv_bias=True)
    explicit = GPTModel(sdpa.cfg.replace(sdpa=False)).eval()
    explicit.load_state_dict(sdpa.state_dict())
    x = tokens(T=64)
    with torch.no_grad():
        torch.testing.assert_close(explicit(x), sdpa(x), rtol=0, atol=1e-5)


@pytest.mark.parametrize("sdpa", [True, False])
@pytest.mark.parametrize("layout", [MultiHeadAttention, FusedMultiHeadAttention])
def test_prefix_kv_equals_attention_over_the_whole_sequence(layout, sdpa):
    """Keys/values of the first P tokens passed as prefix_kv give the suffix the same output as
    running attention over all tokens (what a KV cache and prefix tuning rely on)."""
    torch.manual_seed(0)
    att = layout(32, 32, context_length=64, dropout=0.0, num_heads=4, qkv_bias=True, sdpa=sdpa).eval()
    x = torch.randn(2, 12, 32)
    P = 5
    with torch.no_grad():
        full = att(x)  # (2, 12, 32)
        _, keys, values = att.project_qkv(x[:, :P])  # each (2, 4, P, 8)
        suffix = att(x[:, P:], prefix_kv=(keys, values))  # (2, 7, 32)
    torch.testing.assert_close(suffix, full[:, P:], rtol=0, atol=1e-6)


@pytest.mark.parametrize("sdpa", [True, False])
@pytest.mark.parametrize("layout", [MultiHeadAttention, FusedMultiHeadAttention])
def test_kv_cache_equals_attention_over_the_whole_sequence(layout, sdpa):
    """use_cache=True: P tokens at once, then one token per call, gives what one call over all
    tokens gives; the cache holds every token's keys and values; prefix_kv and the cache exclude
    each other."""
    torch.manual_seed(0)
    att = layout(32, 32, context_length=64, dropout=0.0, num_heads=4, qkv_bias=True, sdpa=sdpa).eval()
    x = torch.randn(2, 12, 32)
    P = 5
    with torch.no_grad():
        full = att(x)  # (2, 12, 32)
        steps = [att(x[:, :P], use_cache=True)] + [att(x[:, t:t + 1], use_cache=True) for t in range(P, 12)]
        torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=0, atol=1e-6)
        _, keys, values = att.project_qkv(x)  # each (2, 4, 12, 8)
        torch.testing.assert_close(att.cache_k, keys, rtol=0, atol=1e-6)  # one row vs twelve: rounding
        torch.testing.assert_close(att.cache_v, values, rtol=0, atol=1e-6)
        with pytest.raises(ValueError, match="prefix_kv and use_cache cannot be combined"):
            att(x[:, :1], prefix_kv=(keys, values), use_cache=True)
        att.reset_cache()
        assert att.cache_k is None and att.cache_v is None
        assert "cache_k" not in att.state_dict()  # never saved with the weights


def test_causal_mask_future_tokens_do_not_matter():
    model = tiny_model()
    x = tokens(T=20)
    y = x.clone()
    y[:, 12:] = (y[:, 12:] + 1) % TINY.vocab_size  # change only the future of position 11
    with torch.no_grad():
        torch.testing.assert_close(model(x)[:, :12], model(y)[:, :12], rtol=0, atol=0)
        assert not torch.allclose(model(x)[:, 12:], model(y)[:, 12:])


def test_return_hidden():
    model = tiny_model()
    x = tokens()
    with torch.no_grad():
        hidden = model(x, return_hidden=True)
        assert hidden.shape == (2, 24, 32)
        torch.testing.assert_close(model.out_head(hidden), model(x), rtol=0, atol=0)


# ----------------------------------------------------------------------------- bad input

def test_unknown_preset_lists_the_presets():
    with pytest.raises(ValueError) as err:
        GPTConfig.from_preset("gpt2-huge")
    assert "'gpt2-huge'" in str(err.value)
    assert all(name in str(err.value) for name in PRESETS)


def test_heads_must_divide_width():
    with pytest.raises(ValueError, match="emb_dim=768 is not divisible by n_heads=10"):
        GPTConfig(n_heads=10)
    with pytest.raises(ValueError, match="d_out=30 is not divisible by num_heads=4"):
        MultiHeadAttention(30, 30, context_length=8, dropout=0.0, num_heads=4)


def test_unknown_attention_layout():
    with pytest.raises(ValueError, match="attention must be one of .* got 'flash'"):
        GPTConfig(attention="flash")
    with pytest.raises(ValueError, match="'flash'"):
        convert_attention(GPTModel(TINY), "flash")


def test_other_bad_fields():
    with pytest.raises(ValueError, match="n_layers must be a positive integer"):
        GPTConfig(n_layers=0)
    with pytest.raises(ValueError, match="drop_rate"):
        GPTConfig(drop_rate=1.0)
    with pytest.raises(ValueError, match="unknown field"):
        GPTConfig.from_dict({"emb_size": 8})
    assert GPTConfig.from_dict(TINY.to_dict()) == TINY


def test_input_longer_than_context():
    model = GPTModel(TINY)
    with pytest.raises(ValueError, match="input has 65 tokens but the model's context_length is 64"):
        model(torch.zeros(1, 65, dtype=torch.long))
    with pytest.raises(ValueError, match="2 keys for 3 queries"):
        q = torch.zeros(1, 1, 3, 8)
        causal_attention(q, q[:, :, :2], q[:, :, :2])


@pytest.mark.parametrize("bad, ids", [(50257, [[0, 11, 50257]]), (-1, [[5, -1, 7]]), (60000, [[60000], [3]])])
def test_token_id_outside_the_vocabulary(bad, ids):
    model = GPTModel(TINY)
    with pytest.raises(ValueError, match=rf"token id {bad} is outside the vocabulary: ids must be in 0 \.\. 50256 "
                                         r"\(vocab_size 50257\)"):
        model(torch.tensor(ids))
    with torch.no_grad():  # the edges are fine
        assert model(torch.tensor([[0, 50256]])).shape == (1, 2, 50257)
