"""GPT-2, top to bottom: LayerNorm, FeedForward, TransformerBlock, GPTModel.

Module names follow the book (`tok_emb`, `pos_emb`, `trf_blocks`, `att`, `ff`, `norm1`,
`final_norm`, `out_head`); `gpt/weights.py` maps OpenAI's names (`wte`, `h`, `c_attn`, ...)
onto these in one place.

KV cache (the book's chapter-4 bonus): `model(idx, use_cache=True)` keeps every block's keys and
values and `current_pos`, the position of the next token, so the next call passes only the new
tokens and reads the position embedding from `current_pos` on. `reset_kv_cache()` starts over.

Shape legend: b = batch, T = tokens, d = emb_dim, V = vocab_size.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from gpt.attention import FusedMultiHeadAttention, MultiHeadAttention, fuse_qkv, split_qkv
from gpt.config import GPTConfig


class LayerNorm(nn.Module):
    """Normalise each token's vector to zero mean and unit variance, then scale and shift.

    The book's names (`scale`, `shift`); computed with F.layer_norm, which is the same formula
    (biased variance, eps inside the square root) in one fused kernel.
    """

    def __init__(self, emb_dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.scale = nn.Parameter(torch.ones(emb_dim))
        self.shift = nn.Parameter(torch.zeros(emb_dim))

    def forward(self, x):
        return F.layer_norm(x, self.scale.shape, self.scale, self.shift, self.eps)


class FeedForward(nn.Module):
    """Position-wise MLP: d -> 4d -> d with GELU in between (GPT-2's `c_fc`, `c_proj`)."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(cfg.emb_dim, 4 * cfg.emb_dim),
            # GPT-2 was trained with the tanh approximation; exact GELU gives slightly
            # different logits on real weights.
            nn.GELU(approximate="tanh"),
            nn.Linear(4 * cfg.emb_dim, cfg.emb_dim),
        )

    def forward(self, x):
        return self.layers(x)  # (b, T, d)


class TransformerBlock(nn.Module):
    """Pre-norm block: x + attention(norm1(x)), then x + ff(norm2(x))."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        attention_class = MultiHeadAttention if cfg.attention == "separate" else FusedMultiHeadAttention
        self.att = attention_class(
            d_in=cfg.emb_dim, d_out=cfg.emb_dim, context_length=cfg.context_length,
            dropout=cfg.drop_rate, num_heads=cfg.n_heads, qkv_bias=cfg.qkv_bias, sdpa=cfg.sdpa,
        )
        self.ff = FeedForward(cfg)
        self.norm1 = LayerNorm(cfg.emb_dim)
        self.norm2 = LayerNorm(cfg.emb_dim)
        self.drop_shortcut = nn.Dropout(cfg.drop_rate)

    def forward(self, x, use_cache: bool = False):
        # use_cache is passed on only when asked: wrappers of `att` (adapters, prefix tuning)
        # keep the plain att(x) call.
        attended = self.att(self.norm1(x), use_cache=True) if use_cache else self.att(self.norm1(x))
        x = x + self.drop_shortcut(attended)  # (b, T, d)
        x = x + self.drop_shortcut(self.ff(self.norm2(x)))  # (b, T, d)
        return x


class GPTModel(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.emb_dim)
        self.pos_emb = nn.Embedding(cfg.context_length, cfg.emb_dim)
        self.drop_emb = nn.Dropout(cfg.drop_rate)
        self.trf_blocks = nn.Sequential(*[TransformerBlock(cfg) for _ in range(cfg.n_layers)])
        self.final_norm = LayerNorm(cfg.emb_dim)
        self.out_head = nn.Linear(cfg.emb_dim, cfg.vocab_size, bias=False)
        self.apply(self._init_weights)
        # Residual projections are scaled down by sqrt(2 * n_layers) so that the residual
        # stream's variance does not grow with depth (GPT-2 paper, section 2.3; nanoGPT).
        for name, param in self.named_parameters():
            if name.endswith("att.out_proj.weight") or name.endswith("ff.layers.2.weight"):
                nn.init.normal_(param, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layers))
        if cfg.tie_weights:
            # Share, don't copy: one tensor, counted once (check with data_ptr()).
            self.out_head.weight = self.tok_emb.weight
        self.current_pos = 0  # tokens in the KV cache = position of the next token (use_cache=True)

    def _init_weights(self, module):
        # GPT-2's initialisation: weights N(0, 0.02), biases zero.
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, in_idx, return_hidden: bool = False, use_cache: bool = False):
        """in_idx: (b, T) token ids -> logits (b, T, V); or the final hidden states (b, T, d)
        after `final_norm` when return_hidden=True.

        use_cache=True: in_idx are the T tokens after the `current_pos` tokens already in the KV
        cache (positions current_pos .. current_pos + T - 1); their keys and values join the cache.
        """
        b, T = in_idx.shape
        self.check_token_ids(in_idx)
        if use_cache:
            self._check_cache_support()
        start = self.current_pos if use_cache else 0
        if start + T > self.cfg.context_length:
            if use_cache:
                raise ValueError(
                    f"the KV cache holds {start} tokens and {T} more would pass the model's context_length "
                    f"{self.cfg.context_length}; call reset_kv_cache() and start again from the last "
                    f"{self.cfg.context_length} tokens, or generate without the cache"
                )
            raise ValueError(
                f"input has {T} tokens but the model's context_length is {self.cfg.context_length}; "
                f"truncate the input (keep the last {self.cfg.context_length} tokens) or use a longer context"
            )
        positions = torch.arange(start, start + T, device=in_idx.device)
        x = self.tok_emb(in_idx) + self.pos_emb(positions)  # (b, T, d)
        x = self.drop_emb(x)
        if use_cache:
            for block in self.trf_blocks:
                x = block(x, use_cache=True)
            self.current_pos += T
        else:
            x = self.trf_blocks(x)
        x = self.final_norm(x)
        if return_hidden:
            return x
        return self.out_head(x)  # (b, T, V)

    def check_token_ids(self, in_idx):
        """A token id outside 0 .. vocab_size - 1 is a ValueError naming it (an embedding lookup
        would fail with an index error on a CPU, and a device-side assert on a GPU)."""
        outside = (in_idx < 0) | (in_idx >= self.cfg.vocab_size)
        if outside.any():
            bad = int(in_idx[outside][0])
            raise ValueError(
                f"token id {bad} is outside the vocabulary: ids must be in 0 .. {self.cfg.vocab_size - 1} "
                f"(vocab_size {self.cfg.vocab_size}); encode the text with this model's tokenizer"
            )

    def _check_cache_support(self):
        for i, block in enumerate(self.trf_blocks):
            if not isinstance(block.att, (MultiHeadAttention, FusedMultiHeadAttention)):
                raise ValueError(
                    f"use_cache needs gpt/attention.py's attention modules, but block {i}'s att is a "
                    f"{type(block.att).__name__} (a wrapper such as prefix tuning or an adapter); "
                    f"generate with use_cache=False"
                )

    def reset_kv_cache(self):
        """Empty every block's KV cache and start positions at 0 again."""
        for block in self.trf_blocks:
            if hasattr(block.att, "reset_cache"):
                block.att.reset_cache()
        self.current_pos = 0


def convert_attention(model: GPTModel, attention: str) -> GPTModel:
    """A new GPTModel with the given attention layout ("separate" or "fused") and the same
    function as `model`: weights are copied, qkv split or concatenated."""
    cfg = model.cfg.replace(attention=attention)
    new = GPTModel(cfg).to(next(model.parameters()))
    state = model.state_dict()
    new.load_state_dict(convert_state_dict(state, to=attention))
    new.train(model.training)
    return new


def convert_state_dict(state: dict, to: str) -> dict:
    """Rename/reshape a GPTModel state dict's attention weights into layout `to`.

    separate -> fused: W_query/W_key/W_value.{weight,bias} are concatenated along the output
    dimension into qkv.{weight,bias}; fused -> separate: qkv is chunked into three.
    Keys that are already in the target layout pass through unchanged.
    """
    if to not in ("separate", "fused"):
        raise ValueError(f"unknown attention layout {to!r}; use 'separate' or 'fused'")
    out = {}
    for key, value in state.items():
        if to == "fused" and ".att.W_query." in key:
            prefix, kind = key.split(".att.W_query.")
            parts = [state[f"{prefix}.att.{name}.{kind}"] for name in ("W_query", "W_key", "W_value")]
            out[f"{prefix}.att.qkv.{kind}"] = torch.cat(parts, dim=0)
        elif to == "fused" and (".att.W_key." in key or ".att.W_value." in key):
            continue
        elif to == "separate" and ".att.qkv." in key:
            prefix, kind = key.split(".att.qkv.")
            for name, part in zip(("W_query", "W_key", "W_value"), value.chunk(3, dim=0)):
                out[f"{prefix}.att.{name}.{kind}"] = part.clone()
        else:
            out[key] = value
    return out


__all__ = ["LayerNorm", "FeedForward", "TransformerBlock", "GPTModel", "convert_attention",
           "convert_state_dict", "fuse_qkv", "split_qkv"]
