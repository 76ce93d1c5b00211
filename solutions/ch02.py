"""Solutions to the exercises of chapter 2 (notebooks/02_attention.ipynb): attention.

Kept outside the notebooks so that a class can hand the notebooks out without the answers.
Each function returns the numbers the answer rests on; tests/test_solutions_ch02.py checks them.
Shape legend: b = batch, T = tokens, H = heads, hd = head_dim, d = width.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from gpt.attention import FusedMultiHeadAttention, MultiHeadAttention


def attention_without_mask(attn: MultiHeadAttention, x: torch.Tensor) -> torch.Tensor:
    """`attn`'s forward pass with the causal mask removed (every token sees every token). (b, T, d) -> (b, T, d)."""
    b, T, _ = x.shape
    queries, keys, values = attn.project_qkv(x)  # each (b, H, T, hd)
    context = F.scaled_dot_product_attention(queries, keys, values, is_causal=False)  # (b, H, T, hd)
    return attn.out_proj(context.transpose(1, 2).reshape(b, T, attn.d_out))


def exercise_2_1(seed: int = 123, d: int = 16, num_heads: int = 2, T: int = 6) -> dict[str, float]:
    """Change the LAST token of a sequence and measure how much the output at position 0 moves.

    Answer: with the causal mask the change is exactly 0.0 (position 0 attends only to itself); without the
    mask it is clearly non-zero: position 0 has "seen the future". A language model trained without the mask
    would learn to copy the next token from its input instead of predicting it.
    """
    torch.manual_seed(seed)
    attn = MultiHeadAttention(d, d, context_length=T, dropout=0.0, num_heads=num_heads).eval()
    x = torch.randn(1, T, d)
    x_changed = x.clone()
    x_changed[0, -1] = torch.randn(d)  # a different last token
    with torch.no_grad():
        with_mask = (attn(x_changed)[0, 0] - attn(x)[0, 0]).abs().max().item()
        without_mask = (attention_without_mask(attn, x_changed)[0, 0]
                        - attention_without_mask(attn, x)[0, 0]).abs().max().item()
    return {"with_mask": with_mask, "without_mask": without_mask}


def attention_parameter_count(d: int, qkv_bias: bool) -> int:
    """Three d x d projections (+ 3d biases if qkv_bias) and out_proj (d x d + d)."""
    return 3 * d * d + (3 * d if qkv_bias else 0) + d * d + d


def exercise_2_2(d: int = 768, num_heads: int = 12) -> dict[str, dict[str, int]]:
    """Parameters of one GPT-2 small attention layer, by formula and counted, in both layouts.

    Answer: 4d^2 + d = 2,360,064 without the qkv bias (the book's config), 4d^2 + 4d = 2,362,368 with it (the
    released GPT-2). The number of heads does not appear: heads split the d_out columns, they do not add any.
    Fused and separate layouts have the same count (one (3d, d) weight instead of three (d, d)).
    """
    result = {}
    for qkv_bias in (False, True):
        key = "with qkv bias" if qkv_bias else "without qkv bias"
        kwargs = dict(d_in=d, d_out=d, context_length=1024, dropout=0.0, num_heads=num_heads, qkv_bias=qkv_bias)
        with torch.device("meta"):  # shapes only
            separate, fused = MultiHeadAttention(**kwargs), FusedMultiHeadAttention(**kwargs)
        result[key] = {"formula": attention_parameter_count(d, qkv_bias),
                       "separate": sum(p.numel() for p in separate.parameters()),
                       "fused": sum(p.numel() for p in fused.parameters())}
    return result


class CausalAttention(nn.Module):
    """The book's single-head causal attention: projections, mask, softmax, dropout; no output projection."""

    def __init__(self, d_in, d_out, context_length, dropout, qkv_bias=False):
        super().__init__()
        self.W_query = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_key = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_value = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.dropout = nn.Dropout(dropout)
        self.register_buffer("mask", torch.triu(torch.ones(context_length, context_length, dtype=torch.bool), 1),
                             persistent=False)

    def forward(self, x):  # (b, T, d_in) -> (b, T, d_out)
        T = x.shape[1]
        queries, keys, values = self.W_query(x), self.W_key(x), self.W_value(x)  # (b, T, d_out)
        scores = (queries @ keys.transpose(1, 2)).masked_fill(self.mask[:T, :T], float("-inf"))  # (b, T, T)
        weights = self.dropout(torch.softmax(scores / math.sqrt(keys.shape[-1]), dim=-1))
        return weights @ values


def exercise_2_3(seed: int = 123, d_in: int = 8, d_out: int = 6, T: int = 5) -> tuple[nn.Module, MultiHeadAttention]:
    """(CausalAttention, MultiHeadAttention(num_heads=1)) built after torch.manual_seed(seed), the second holding the
    first's projections and out_proj = identity; `difference_2_3` measures them.

    Answer: one head with head_dim = d_out is exactly the single-head computation; the only extra piece of
    MultiHeadAttention is out_proj, and with weight I and bias 0 it changes nothing. The difference is
    float rounding (about 1e-7) or exactly 0.
    """
    torch.manual_seed(seed)
    single = CausalAttention(d_in, d_out, context_length=T, dropout=0.0).eval()
    multi = MultiHeadAttention(d_in, d_out, context_length=T, dropout=0.0, num_heads=1).eval()
    with torch.no_grad():
        for name in ("W_query", "W_key", "W_value"):
            getattr(multi, name).load_state_dict(getattr(single, name).state_dict())
        multi.out_proj.weight.copy_(torch.eye(d_out))
        multi.out_proj.bias.zero_()
    return single, multi


def difference_2_3(seed: int = 123, d_in: int = 8, d_out: int = 6, T: int = 5) -> float:
    """The largest absolute difference of exercise_2_3's two modules on a random (2, T, d_in) input."""
    single, multi = exercise_2_3(seed, d_in, d_out, T)
    x = torch.randn(2, T, d_in, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return (multi(x) - single(x)).abs().max().item()


def exercise_2_4(dims: tuple[int, ...] = (16, 64, 256), n: int = 20_000, seed: int = 123) -> dict[int, tuple[float, float]]:
    """Variance of q . k for q, k ~ N(0, I_d), raw and divided by sqrt(d): {d: (raw variance, scaled variance)}.

    Answer: the raw variance is about d (a sum of d independent products, each of variance 1); divided by
    sqrt(d) it is about 1 at every width, so the softmax sees scores of the same spread whatever the head size.
    """
    gen = torch.Generator().manual_seed(seed)
    result = {}
    for d in dims:
        q = torch.randn(n, d, generator=gen, dtype=torch.float64)
        k = torch.randn(n, d, generator=gen, dtype=torch.float64)
        dots = (q * k).sum(dim=-1)  # (n,)
        result[d] = (dots.var().item(), (dots / math.sqrt(d)).var().item())
    return result


# ---------------------------------------------------------------------------------------------------------------
# Planted wrong answers: each makes one mistake a student could make; the exercise checks must reject them.

def wrong_exercise_2_1(seed: int = 123, d: int = 16, num_heads: int = 2, T: int = 6) -> dict[str, float]:
    """Runs the masked module for "without_mask" too (forgets to remove the mask)."""
    torch.manual_seed(seed)
    attn = MultiHeadAttention(d, d, context_length=T, dropout=0.0, num_heads=num_heads).eval()
    x = torch.randn(1, T, d)
    x_changed = x.clone()
    x_changed[0, -1] = torch.randn(d)
    with torch.no_grad():
        change = (attn(x_changed)[0, 0] - attn(x)[0, 0]).abs().max().item()
    return {"with_mask": change, "without_mask": change}


def wrong_exercise_2_2(d: int = 768, num_heads: int = 12) -> dict[str, dict[str, int]]:
    """The formula forgets out_proj's bias: 4 d^2 (+ 3d) instead of 4 d^2 + d (+ 3d)."""
    result = exercise_2_2(d, num_heads)
    for key, entry in result.items():
        entry["formula"] -= d
    return result


def wrong_exercise_2_3(seed: int = 123, d_in: int = 8, d_out: int = 6,
                       T: int = 5) -> tuple[nn.Module, MultiHeadAttention]:
    """Leaves out_proj at its random initialisation instead of the identity."""
    torch.manual_seed(seed)
    single = CausalAttention(d_in, d_out, context_length=T, dropout=0.0).eval()
    multi = MultiHeadAttention(d_in, d_out, context_length=T, dropout=0.0, num_heads=1).eval()
    with torch.no_grad():
        for name in ("W_query", "W_key", "W_value"):
            getattr(multi, name).load_state_dict(getattr(single, name).state_dict())
    return single, multi


def wrong_exercise_2_4(dims: tuple[int, ...] = (16, 64, 256), n: int = 20_000,
                       seed: int = 123) -> dict[int, tuple[float, float]]:
    """Divides the dot products by d instead of sqrt(d): the scaled variance shrinks like 1 / d."""
    gen = torch.Generator().manual_seed(seed)
    result = {}
    for d in dims:
        q = torch.randn(n, d, generator=gen, dtype=torch.float64)
        k = torch.randn(n, d, generator=gen, dtype=torch.float64)
        dots = (q * k).sum(dim=-1)
        result[d] = (dots.var().item(), (dots / d).var().item())
    return result


# What students really write instead of the computation (tests/test_exercise_checks.py: the checks reject them).

def typed_in_exercise_2_1(seed: int = 123, d: int = 16, num_heads: int = 2, T: int = 6) -> dict[str, float]:
    """Types in the statement's setting's answer (0 with the mask, the default setting's change without it) for
    every seed and size."""
    return exercise_2_1()


def shortcut_exercise_2_1(seed: int = 123, d: int = 16, num_heads: int = 2, T: int = 6) -> dict[str, float]:
    """Compares the whole output, every position, instead of position 0: the last position moves even with the mask."""
    torch.manual_seed(seed)
    attn = MultiHeadAttention(d, d, context_length=T, dropout=0.0, num_heads=num_heads).eval()
    x = torch.randn(1, T, d)
    x_changed = x.clone()
    x_changed[0, -1] = torch.randn(d)
    with torch.no_grad():
        with_mask = (attn(x_changed) - attn(x)).abs().max().item()
        without_mask = (attention_without_mask(attn, x_changed) - attention_without_mask(attn, x)).abs().max().item()
    return {"with_mask": with_mask, "without_mask": without_mask}


def typed_in_exercise_2_2(d: int = 768, num_heads: int = 12) -> dict[str, dict[str, int]]:
    """Types in GPT-2 small's counts (2,359,296 + 768 and + 3 x 768 more with the qkv bias) for every width."""
    return {"without qkv bias": {"formula": 2_360_064, "separate": 2_360_064, "fused": 2_360_064},
            "with qkv bias": {"formula": 2_362_368, "separate": 2_362_368, "fused": 2_362_368}}


def shortcut_exercise_2_2(d: int = 768, num_heads: int = 12) -> dict[str, dict[str, int]]:
    """Reports the module's count as the "formula": nothing is derived, the formula is never written."""
    result = exercise_2_2(d, num_heads)
    for entry in result.values():
        entry["formula"] = entry["separate"]
    return result


def typed_in_exercise_2_3(seed: int = 123, d_in: int = 8, d_out: int = 6, T: int = 5) -> float:
    """Types in a difference of 0.0: the number the statement promises, with no modules built."""
    return 0.0


def shortcut_exercise_2_3(seed: int = 123, d_in: int = 8, d_out: int = 6,
                          T: int = 5) -> tuple[nn.Module, MultiHeadAttention]:
    """Skips writing CausalAttention: returns the one-head MultiHeadAttention as both modules."""
    torch.manual_seed(seed)
    multi = MultiHeadAttention(d_in, d_out, context_length=T, dropout=0.0, num_heads=1).eval()
    with torch.no_grad():
        multi.out_proj.weight.copy_(torch.eye(d_out))
        multi.out_proj.bias.zero_()
    return multi, multi


def typed_in_exercise_2_4(dims: tuple[int, ...] = (16, 64, 256), n: int = 20_000,
                          seed: int = 123) -> dict[int, tuple[float, float]]:
    """Types in the statement's widths' measured variances, whatever widths, sample size and seed are asked."""
    return exercise_2_4()


def shortcut_exercise_2_4(dims: tuple[int, ...] = (16, 64, 256), n: int = 20_000,
                          seed: int = 123) -> dict[int, tuple[float, float]]:
    """States the variances from theory (d_k and 1) instead of measuring them."""
    return {d: (float(d), 1.0) for d in dims}
