"""Causal multi-head self-attention in two layouts that compute the same function.

* `MultiHeadAttention`: three projections `W_query`, `W_key`, `W_value` (the book's layout).
* `FusedMultiHeadAttention`: one projection `qkv` of width 3 * d_out whose output is split
  into queries, keys and values (nanoGPT's `c_attn`, GPT-2's checkpoint layout). One large
  matmul instead of three smaller ones: the same FLOPs, fewer kernel launches, better use of
  the hardware.

`fuse_qkv` and `split_qkv` convert a module's weights between the two layouts; both give the
same outputs up to float rounding.

Both layouts keep a KV cache for generation (`forward(x, use_cache=True)`), as in the book's
chapter-4 bonus material: generating token t + 1 needs the keys and values of tokens 0 .. t, and
without a cache every step recomputes them all. With `use_cache=True` the module appends this
call's keys and values to `cache_k` / `cache_v` and attends over the whole cache, so the prompt is
processed once and each later step feeds one token. `reset_cache()` empties it;
`gpt/generate.py` resets it before and after every call.

Shape legend: b = batch, T = tokens, H = heads, hd = head_dim, d_in / d_out = widths,
P = tokens already in the cache (or prefix tokens).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def causal_attention(queries, keys, values, dropout_p: float = 0.0, sdpa: bool = True):
    """Scaled dot-product attention where each query sees only keys at or before its position.

    queries: (b, H, Tq, hd); keys, values: (b, H, Tk, hd) with Tk >= Tq. When Tk > Tq the first
    Tk - Tq keys are a prefix (cached or learned key/values) that every query may attend to.
    Returns the context vectors, (b, H, Tq, hd).
    """
    Tq, Tk = queries.shape[-2], keys.shape[-2]
    if Tk < Tq:
        raise ValueError(f"causal_attention: {Tk} keys for {Tq} queries; need at least as many keys")
    offset = Tk - Tq
    if sdpa:
        if Tq == 1:  # one new token (cached generation): it may see every key, no mask needed
            return F.scaled_dot_product_attention(queries, keys, values, dropout_p=dropout_p)
        if offset == 0:
            return F.scaled_dot_product_attention(queries, keys, values, dropout_p=dropout_p, is_causal=True)
        # is_causal aligns the mask top-left; with a prefix the diagonal is shifted, so pass it.
        allowed = torch.ones(Tq, Tk, dtype=torch.bool, device=queries.device).tril(diagonal=offset)
        return F.scaled_dot_product_attention(queries, keys, values, attn_mask=allowed, dropout_p=dropout_p)

    # The explicit version, as written in the book: scores, mask, softmax, weighted sum.
    scores = queries @ keys.transpose(-2, -1)  # (b, H, Tq, hd) x (b, H, hd, Tk) -> (b, H, Tq, Tk)
    future = torch.ones(Tq, Tk, dtype=torch.bool, device=queries.device).triu(diagonal=offset + 1)
    scores = scores.masked_fill(future, float("-inf"))
    weights = torch.softmax(scores / math.sqrt(keys.shape[-1]), dim=-1)
    weights = F.dropout(weights, p=dropout_p)
    return weights @ values  # (b, H, Tq, Tk) x (b, H, Tk, hd) -> (b, H, Tq, hd)


class _CausalSelfAttention(nn.Module):
    """What both layouts share: head bookkeeping, the attention itself, the output projection."""

    def __init__(self, d_in: int, d_out: int, context_length: int, dropout: float, num_heads: int,
                 sdpa: bool = True):
        super().__init__()
        if d_out % num_heads != 0:
            raise ValueError(f"d_out={d_out} is not divisible by num_heads={num_heads}")
        self.d_in, self.d_out = d_in, d_out
        self.context_length = context_length
        self.num_heads = num_heads
        self.head_dim = d_out // num_heads
        self.dropout = dropout
        self.sdpa = sdpa
        self.out_proj = nn.Linear(d_out, d_out)  # mixes the heads' outputs
        # The KV cache: keys and values of every token seen since the last reset_cache(), each
        # (b, H, P, hd). Buffers, so that model.to(device) moves them; not persistent, so they
        # never enter a state dict or a checkpoint.
        self.register_buffer("cache_k", None, persistent=False)
        self.register_buffer("cache_v", None, persistent=False)

    def project_qkv(self, x):
        """(b, T, d_in) -> queries, keys, values, each (b, H, T, hd)."""
        raise NotImplementedError

    def split_heads(self, t):
        b, T, _ = t.shape
        return t.view(b, T, self.num_heads, self.head_dim).transpose(1, 2)  # (b, H, T, hd)

    def forward(self, x, prefix_kv=None, use_cache: bool = False):
        """x: (b, T, d_in) -> (b, T, d_out).

        prefix_kv: optional (keys, values), each (b, H, P, hd), prepended to this input's keys
        and values (prefix tuning).
        use_cache: append this input's keys and values to the cache and attend over all of it:
        x holds the tokens that follow the P cached ones (the prompt first, then one new token
        per step).
        """
        b, T, _ = x.shape
        queries, keys, values = self.project_qkv(x)  # each (b, H, T, hd)
        if prefix_kv is not None:
            if use_cache:
                raise ValueError("prefix_kv and use_cache cannot be combined: pass one set of earlier keys and values")
            keys = torch.cat([prefix_kv[0], keys], dim=2)  # (b, H, P + T, hd)
            values = torch.cat([prefix_kv[1], values], dim=2)
        if use_cache:
            if self.cache_k is not None:
                keys = torch.cat([self.cache_k, keys], dim=2)  # (b, H, P + T, hd)
                values = torch.cat([self.cache_v, values], dim=2)
            self.cache_k, self.cache_v = keys, values
        dropout_p = self.dropout if self.training else 0.0
        context = causal_attention(queries, keys, values, dropout_p=dropout_p, sdpa=self.sdpa)
        context = context.transpose(1, 2).reshape(b, T, self.d_out)  # (b, T, H * hd)
        return self.out_proj(context)

    def reset_cache(self):
        """Forget the cached keys and values (before generating from a new prompt)."""
        self.cache_k, self.cache_v = None, None


class MultiHeadAttention(_CausalSelfAttention):
    """Separate query, key and value projections: three (d_in -> d_out) matmuls."""

    def __init__(self, d_in, d_out, context_length, dropout, num_heads, qkv_bias=False, sdpa=True):
        super().__init__(d_in, d_out, context_length, dropout, num_heads, sdpa)
        self.W_query = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_key = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_value = nn.Linear(d_in, d_out, bias=qkv_bias)

    def project_qkv(self, x):
        return self.split_heads(self.W_query(x)), self.split_heads(self.W_key(x)), self.split_heads(self.W_value(x))


class FusedMultiHeadAttention(_CausalSelfAttention):
    """One (d_in -> 3 * d_out) projection; rows [0:d) are queries, [d:2d) keys, [2d:3d) values."""

    def __init__(self, d_in, d_out, context_length, dropout, num_heads, qkv_bias=False, sdpa=True):
        super().__init__(d_in, d_out, context_length, dropout, num_heads, sdpa)
        self.qkv = nn.Linear(d_in, 3 * d_out, bias=qkv_bias)

    def project_qkv(self, x):
        b, T, _ = x.shape
        qkv = self.qkv(x)  # (b, T, 3 * d_out)
        qkv = qkv.view(b, T, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (3, b, H, T, hd)
        return qkv.unbind(0)


def _module_kwargs(attn: _CausalSelfAttention, qkv_bias: bool) -> dict:
    return dict(d_in=attn.d_in, d_out=attn.d_out, context_length=attn.context_length,
                dropout=attn.dropout, num_heads=attn.num_heads, qkv_bias=qkv_bias, sdpa=attn.sdpa)


@torch.no_grad()
def fuse_qkv(attn: MultiHeadAttention) -> FusedMultiHeadAttention:
    """A `FusedMultiHeadAttention` computing the same function as `attn` (weights copied)."""
    has_bias = attn.W_query.bias is not None
    fused = FusedMultiHeadAttention(**_module_kwargs(attn, has_bias)).to(attn.out_proj.weight)
    fused.qkv.weight.copy_(torch.cat([attn.W_query.weight, attn.W_key.weight, attn.W_value.weight], dim=0))
    if has_bias:
        fused.qkv.bias.copy_(torch.cat([attn.W_query.bias, attn.W_key.bias, attn.W_value.bias], dim=0))
    fused.out_proj.load_state_dict(attn.out_proj.state_dict())
    fused.train(attn.training)
    return fused


@torch.no_grad()
def split_qkv(attn: FusedMultiHeadAttention) -> MultiHeadAttention:
    """A `MultiHeadAttention` computing the same function as the fused `attn` (weights copied)."""
    has_bias = attn.qkv.bias is not None
    separate = MultiHeadAttention(**_module_kwargs(attn, has_bias)).to(attn.out_proj.weight)
    for linear, w in zip((separate.W_query, separate.W_key, separate.W_value), attn.qkv.weight.chunk(3, dim=0)):
        linear.weight.copy_(w)
    if has_bias:
        for linear, b in zip((separate.W_query, separate.W_key, separate.W_value), attn.qkv.bias.chunk(3, dim=0)):
            linear.bias.copy_(b)
    separate.out_proj.load_state_dict(attn.out_proj.state_dict())
    separate.train(attn.training)
    return separate


@torch.no_grad()
def attention_weights(model, ids: torch.Tensor, layer: int) -> torch.Tensor:
    """Causal attention weights of every head of block `layer` for one sequence.

    ids: (1, T), on the model's device. Returns (H, T, T) on that device: row i holds token i's weights
    over tokens 0..T-1 (0 above the diagonal).
    The block's input is computed with the model's own modules (embeddings, earlier blocks, norm1), and
    the weights come from causal_attention itself: attending with the identity matrix as
    the values returns the weight matrix (weights @ I = weights).
    """
    T = ids.shape[1]
    x = model.tok_emb(ids) + model.pos_emb(torch.arange(T, device=ids.device))  # (1, T, d)
    for block in model.trf_blocks[:layer]:
        x = block(x)
    att = model.trf_blocks[layer].att
    queries, keys, _ = att.project_qkv(model.trf_blocks[layer].norm1(x))  # each (1, H, T, hd)
    identity = torch.eye(T, device=ids.device).expand(1, att.num_heads, T, T)  # (1, H, T, T) as "values"
    return causal_attention(queries, keys, identity, sdpa=False)[0]  # (H, T, T)
