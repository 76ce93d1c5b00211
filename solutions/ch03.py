"""Solutions to the exercises of chapter 3 (notebooks/03_gpt_model.ipynb): the GPT model.

Kept outside the notebooks so that a class can hand the notebooks out without the answers.
Each function returns the numbers the answer rests on; tests/test_solutions_ch03.py checks them.
Shape legend: b = batch, T = tokens, d = emb_dim, V = vocab_size.
"""

from __future__ import annotations

import torch
from torch import nn

from gpt.attention import MultiHeadAttention
from gpt.config import GPTConfig
from gpt.model import GPTModel


def exercise_3_1(cfg: GPTConfig) -> int:
    """The parameter count of GPTModel(cfg), by formula (V = vocab, C = context length, d = width, L = layers):

        embeddings   V d + C d
        per block    attention 4 d^2 + d (+ 3 d with qkv_bias)   feed-forward 8 d^2 + 5 d   2 LayerNorms 4 d
        final norm   2 d
        out_head     V d, or 0 when tied to the token embedding

    Answer for gpt2-medium (V = 50,257, C = 1,024, d = 1,024, L = 24): 406,212,608 in the book's configuration
    (untied, no qkv bias) and 354,823,168 as released (tied, qkv bias) -- the "355M" model.
    """
    V, C, d, L = cfg.vocab_size, cfg.context_length, cfg.emb_dim, cfg.n_layers
    attention = 4 * d * d + d + (3 * d if cfg.qkv_bias else 0)
    feed_forward = 8 * d * d + 5 * d
    block = attention + feed_forward + 4 * d
    return V * d + C * d + L * block + 2 * d + (0 if cfg.tie_weights else V * d)


class HeadDimAttention(MultiHeadAttention):
    """Multi-head attention with `num_heads` heads of `head_dim` each, independent of the model width d_in.

    The projections map d_in -> num_heads * head_dim; out_proj maps the concatenated heads back to d_in, so
    the block's residual stream keeps its width. With num_heads * head_dim == d_in this is MultiHeadAttention.
    """

    def __init__(self, d_in, num_heads, head_dim, context_length, dropout=0.0, qkv_bias=False, sdpa=True):
        super().__init__(d_in, num_heads * head_dim, context_length, dropout, num_heads, qkv_bias, sdpa)
        self.out_proj = nn.Linear(num_heads * head_dim, d_in)  # (H * hd) -> d_in instead of d_out -> d_out


def exercise_3_2(cfg: GPTConfig, head_dim: int) -> GPTModel:
    """A GPTModel whose every attention layer uses cfg.n_heads heads of `head_dim` dimensions.

    Answer: for GPT-2 small with 12 heads of 32 (d_att = 384) one attention layer has
    3 * 768 * 384 (q, k, v) + 384 * 768 + 768 (out_proj) = 1,180,416 parameters, half of the 2,360,064 of
    12 heads of 64. Narrower heads save parameters and compute; each head then scores tokens in a
    32-dimensional space.
    """
    model = GPTModel(cfg)
    for block in model.trf_blocks:
        block.att = HeadDimAttention(cfg.emb_dim, cfg.n_heads, head_dim, cfg.context_length, cfg.drop_rate,
                                     cfg.qkv_bias, cfg.sdpa)
    return model


def exercise_3_3(cfg: GPTConfig | None = None, t: int = 5, T: int = 10, seed: int = 123) -> dict[str, float]:
    """Causality and dropout of a GPTModel.

    Returns the largest change of the logits at positions < t and at positions >= t when the token at
    position t changes (eval mode), and the largest difference between two forward passes in train mode and
    in eval mode.

    Answer: positions < t do not move (up to float rounding: the masked scores are exactly -inf, so their
    softmax weights are exactly 0); positions >= t do. In train mode with drop_rate > 0 dropout draws a new
    random mask on every call, so two passes differ; in eval mode dropout is the identity and they agree.
    """
    cfg = cfg or GPTConfig.from_preset("gpt-tiny", drop_rate=0.1)
    torch.manual_seed(seed)
    model = GPTModel(cfg)
    ids = torch.randint(0, cfg.vocab_size, (1, T))
    changed = ids.clone()
    changed[0, t] = (ids[0, t] + 1) % cfg.vocab_size
    with torch.no_grad():
        model.eval()
        a, b = model(ids), model(changed)  # (1, T, V)
        eval_1, eval_2 = model(ids), model(ids)
        model.train()
        train_1, train_2 = model(ids), model(ids)
    return {
        "change_before_t": (a[:, :t] - b[:, :t]).abs().max().item(),
        "change_from_t": (a[:, t:] - b[:, t:]).abs().max().item(),
        "train_passes_differ_by": (train_1 - train_2).abs().max().item(),
        "eval_passes_differ_by": (eval_1 - eval_2).abs().max().item(),
    }


def exercise_3_4(n_params: int | None = None, trainable_fraction: float = 0.01) -> dict[str, float]:
    """Memory in GB (10^9 bytes) of the released GPT-2 XL: weights at fp32 / bf16, and full AdamW training in
    fp32 (weights + gradients + two moment estimates = 16 bytes per parameter), versus training only
    `trainable_fraction` of the parameters (frozen weights 4 bytes, trained ones 16).

    Answer (1,557,611,200 parameters): 6.23 GB fp32, 3.12 GB bf16; full fine-tuning 24.92 GB before any
    activations; with 1 % trainable 6.42 GB (4 bytes for every weight + 12 for each trained one). Freezing
    most weights removes their gradients and optimizer state, which is where most of the training memory goes.
    """
    if n_params is None:
        from gpt.config import GPT2_CHECKPOINT_SETTINGS

        with torch.device("meta"):
            model = GPTModel(GPTConfig.from_preset("gpt2-xl", **GPT2_CHECKPOINT_SETTINGS))
        n_params = sum(p.numel() for p in model.parameters())
    trainable = n_params * trainable_fraction
    return {
        "parameters": n_params,
        "fp32_weights_gb": 4 * n_params / 1e9,
        "bf16_weights_gb": 2 * n_params / 1e9,
        "adamw_fp32_full_gb": 16 * n_params / 1e9,
        "adamw_fp32_partial_gb": (4 * n_params + 12 * trainable) / 1e9,
    }


# ---------------------------------------------------------------------------------------------------------------
# Planted wrong answers: each makes one mistake a student could make; the exercise checks must reject them.

def wrong_exercise_3_1(cfg: GPTConfig) -> int:
    """Forgets the final LayerNorm (2 d parameters)."""
    return exercise_3_1(cfg) - 2 * cfg.emb_dim


def wrong_exercise_3_2(cfg: GPTConfig, head_dim: int) -> GPTModel:
    """Builds the narrower attention but never puts it into the blocks."""
    model = GPTModel(cfg)
    HeadDimAttention(cfg.emb_dim, cfg.n_heads, head_dim, cfg.context_length, cfg.drop_rate, cfg.qkv_bias, cfg.sdpa)
    return model


def wrong_exercise_3_3(cfg: GPTConfig | None = None, t: int = 5, T: int = 10, seed: int = 123) -> dict[str, float]:
    """Never switches to eval mode: dropout stays on for the causality test and the 'eval' passes."""
    cfg = cfg or GPTConfig.from_preset("gpt-tiny", drop_rate=0.1)
    torch.manual_seed(seed)
    model = GPTModel(cfg).train()
    ids = torch.randint(0, cfg.vocab_size, (1, T))
    changed = ids.clone()
    changed[0, t] = (ids[0, t] + 1) % cfg.vocab_size
    with torch.no_grad():
        a, b = model(ids), model(changed)
        one, two = model(ids), model(ids)
    return {"change_before_t": (a[:, :t] - b[:, :t]).abs().max().item(),
            "change_from_t": (a[:, t:] - b[:, t:]).abs().max().item(),
            "train_passes_differ_by": (one - two).abs().max().item(),
            "eval_passes_differ_by": (one - two).abs().max().item()}


def wrong_exercise_3_4(n_params: int | None = None, trainable_fraction: float = 0.01) -> dict[str, float]:
    """Counts 12 bytes per parameter for full AdamW training: the gradient and two moments, not the weight."""
    result = exercise_3_4(n_params, trainable_fraction)
    result["adamw_fp32_full_gb"] = 12 * result["parameters"] / 1e9
    return result


# What students really write instead of the computation (tests/test_exercise_checks.py: the checks reject them).

def typed_in_exercise_3_1(cfg: GPTConfig) -> int:
    """Types in the statement's two gpt2-medium counts (354,823,168 as released, 406,212,608 in the book's setting)."""
    return 354_823_168 if cfg.qkv_bias else 406_212_608


def shortcut_exercise_3_1(cfg: GPTConfig) -> int:
    """Builds the model (on the meta device) and counts it: the statement asks for the formula instead."""
    with torch.device("meta"):
        return sum(p.numel() for p in GPTModel(cfg).parameters())


def typed_in_exercise_3_2(cfg: GPTConfig, head_dim: int) -> GPTModel:
    """Ignores head_dim: returns the GPTModel of the statement's setting, whose heads are emb_dim / n_heads wide."""
    return GPTModel(cfg)


def shortcut_exercise_3_2(cfg: GPTConfig, head_dim: int) -> GPTModel:
    """Changes the number of heads so that emb_dim / n_heads = head_dim instead of writing a layer with n_heads heads
    of head_dim: the projections stay emb_dim wide."""
    import dataclasses

    return GPTModel(dataclasses.replace(cfg, n_heads=max(1, cfg.emb_dim // head_dim)))


def typed_in_exercise_3_3(cfg: GPTConfig | None = None, t: int = 5, T: int = 10, seed: int = 123) -> dict[str, float]:
    """Types in the statement's setting's four numbers whatever model, positions and seed are asked."""
    return {"change_before_t": 0.0, "change_from_t": 0.4252048134803772, "train_passes_differ_by": 0.4021508991718292,
            "eval_passes_differ_by": 0.0}


def shortcut_exercise_3_3(cfg: GPTConfig | None = None, t: int = 5, T: int = 10, seed: int = 123) -> dict[str, float]:
    """Measures causality but states the dropout part from expectation (train passes differ, eval passes do not)
    instead of running the two passes."""
    result = exercise_3_3(cfg, t, T, seed)
    result["train_passes_differ_by"], result["eval_passes_differ_by"] = 1.0, 0.0
    return result


def typed_in_exercise_3_4(n_params: int | None = None, trainable_fraction: float = 0.01) -> dict[str, float]:
    """Types in GPT-2 XL's numbers at 1 % whatever model size and share are asked."""
    return {"parameters": 1_557_611_200, "fp32_weights_gb": 6.2304448, "bf16_weights_gb": 3.1152224,
            "adamw_fp32_full_gb": 24.9217792, "adamw_fp32_partial_gb": 6.417358144}


def shortcut_exercise_3_4(n_params: int | None = None, trainable_fraction: float = 0.01) -> dict[str, float]:
    """Takes the headline "1.5 billion" for GPT-2 XL instead of counting the released model."""
    return exercise_3_4(n_params if n_params is not None else 1_500_000_000, trainable_fraction)
