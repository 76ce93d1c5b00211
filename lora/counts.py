"""LoRA's arithmetic: how many numbers are trained instead of a full weight matrix.

A d_in x d_out weight has d_in * d_out entries. LoRA trains A (d_in x r) and B (r x d_out)
instead: r * (d_in + d_out) numbers. Examples (tests/test_lora_counts.py):

    512 x 64 at r=8    ->  4,608 instead of 32,768   (86 % fewer)
    100 x 100 at r=1   ->    200 instead of 10,000
    10 x 8 at r=3      ->     54 instead of 80

`lora_trainable_count` does the same sum for a whole GPT without building it, so a reader
can price a configuration on paper (GPT-2 124M, r=8 on query and value: 294,912).
"""

from __future__ import annotations

from lora.config import QKV_ALIASES, TARGET_ALIASES, LoraConfig

EMBEDDING_NAME = "tok_emb"  # GPTModel's token embedding (a default name, as the aliases are)


def _positive(**values):
    for name, v in values.items():
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")


def full_parameter_count(d_in: int, d_out: int) -> int:
    """Entries of a d_in x d_out weight matrix (no bias): what full fine-tuning trains."""
    _positive(d_in=d_in, d_out=d_out)
    return d_in * d_out


def lora_parameter_count(d_in: int, d_out: int, rank: int) -> int:
    """Entries of A (d_in x r) plus B (r x d_out)."""
    _positive(d_in=d_in, d_out=d_out, rank=rank)
    return rank * (d_in + d_out)


def reduction(d_in: int, d_out: int, rank: int) -> float:
    """Fraction of trainable parameters saved: 1 - lora / full (0.859375 for 512 x 64 at r=8).
    Negative when r is too large to save anything (r > d_in * d_out / (d_in + d_out))."""
    return 1.0 - lora_parameter_count(d_in, d_out, rank) / full_parameter_count(d_in, d_out)


def _layer_shapes(d: int, alias: str) -> list[tuple[int, int]]:
    shapes = {"query": [(d, d)], "key": [(d, d)], "value": [(d, d)], "out_proj": [(d, d)],
              "ff_in": [(d, 4 * d)], "ff_out": [(4 * d, d)], "ff": [(d, 4 * d), (4 * d, d)]}
    return shapes[alias]


def lora_trainable_count(gpt_cfg, lora_cfg: LoraConfig, head_out_features: int | None = None,
                         head_bias: bool = False) -> int:
    """Trainable parameters after `apply_lora(GPTModel(gpt_cfg), lora_cfg)`, computed on paper.

    gpt_cfg: anything with the attributes emb_dim, n_layers and vocab_size (a GPTConfig, or a
    SimpleNamespace): the GPT's shapes, as plain ints. The output head is (emb_dim -> vocab_size,
    no bias) unless you replaced it: pass its `head_out_features` (2 for a spam classifier) and
    `head_bias`. Works for both attention layouts (a fused qkv with LoRA on q and v trains
    exactly what W_query + W_value would). The token embedding "tok_emb" (vocab_size -> emb_dim)
    is priced too; other module-name suffixes and rank patterns need the model (lora_parameter_report).
    """
    missing = [a for a in ("emb_dim", "n_layers", "vocab_size") if not isinstance(getattr(gpt_cfg, a, None), int)]
    if missing:
        raise TypeError(f"lora_trainable_count needs a config with integer {missing} (a GPTConfig), "
                        f"got {type(gpt_cfg).__name__}")
    if lora_cfg.rank_pattern:
        raise ValueError("lora_trainable_count prices one rank for every layer; this config has a rank_pattern: "
                         "build the model and use lora_parameter_report")
    r, d = lora_cfg.rank, gpt_cfg.emb_dim
    head_out = gpt_cfg.vocab_size if head_out_features is None else head_out_features
    aliases = set()
    for target in lora_cfg.targets:
        if target == EMBEDDING_NAME:
            aliases.add(target)
        elif target == "all-linear":
            aliases |= {*QKV_ALIASES, "out_proj", "ff_in", "ff_out"}
        elif target == "ff":
            aliases |= {"ff_in", "ff_out"}
        elif target in TARGET_ALIASES:
            aliases.add(target)
        else:
            raise ValueError(f"lora_trainable_count prices the aliases {sorted(TARGET_ALIASES)}, "
                             f"not module-name suffixes like {target!r}; build the model and use lora_parameter_report")
    saved = set(lora_cfg.modules_to_save)
    if saved - {"out_head"}:
        raise ValueError(f"lora_trainable_count only knows the module to save 'out_head', got {sorted(saved)}")

    per_block = sum(lora_parameter_count(d_in, d_out, r)
                    for alias in sorted(aliases - {"out_head", EMBEDDING_NAME}) for d_in, d_out in _layer_shapes(d, alias))
    total = gpt_cfg.n_layers * per_block
    if "out_head" in aliases:
        total += lora_parameter_count(d, head_out, r)
    if EMBEDDING_NAME in aliases:  # one row of A per token id: r * (vocab_size + emb_dim)
        total += lora_parameter_count(gpt_cfg.vocab_size, d, r)
    if "out_head" in saved:
        total += d * head_out + (head_out if head_bias else 0)
    return total
