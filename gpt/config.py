"""Model configuration: one dataclass whose defaults are GPT-2 124M, plus named presets.

Field names follow the book (Raschka, *Build a Large Language Model From Scratch*):
`vocab_size`, `context_length`, `emb_dim`, `n_heads`, `n_layers`, `drop_rate`, `qkv_bias`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from common.config import dataclass_from_dict

ATTENTION_VARIANTS = ("separate", "fused")


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int = 50257  # GPT-2 BPE: 50,000 merges + 256 bytes + <|endoftext|>
    context_length: int = 1024  # longest input the position embedding covers, in tokens
    emb_dim: int = 768  # width of the residual stream (d_model)
    n_heads: int = 12  # attention heads; emb_dim must be divisible by it
    n_layers: int = 12  # transformer blocks
    drop_rate: float = 0.1  # dropout on embeddings, attention weights and residual branches
    qkv_bias: bool = False  # bias in the query/key/value projections (the real GPT-2 has it)
    attention: str = "separate"  # "separate": W_query, W_key, W_value; "fused": one qkv projection
    tie_weights: bool = False  # share out_head.weight with tok_emb.weight (GPT-2 does)
    sdpa: bool = True  # torch's scaled_dot_product_attention; False: the explicit softmax

    def __post_init__(self):
        for name in ("vocab_size", "context_length", "emb_dim", "n_heads", "n_layers"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"GPTConfig.{name} must be a positive integer, got {value!r}")
        if self.emb_dim % self.n_heads != 0:
            raise ValueError(
                f"GPTConfig: emb_dim={self.emb_dim} is not divisible by n_heads={self.n_heads}; "
                f"each head needs emb_dim / n_heads dimensions"
            )
        if not 0.0 <= self.drop_rate < 1.0:
            raise ValueError(f"GPTConfig.drop_rate must be in [0, 1), got {self.drop_rate}")
        if self.attention not in ATTENTION_VARIANTS:
            raise ValueError(
                f"GPTConfig.attention must be one of {ATTENTION_VARIANTS}, got {self.attention!r}"
            )

    @property
    def head_dim(self) -> int:
        return self.emb_dim // self.n_heads

    def replace(self, **changes) -> "GPTConfig":
        """A copy with some fields changed (and validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "GPTConfig":
        """The config a to_dict() (a checkpoint's JSON) describes; an unknown key is refused, naming it."""
        return dataclass_from_dict(cls, d)

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "GPTConfig":
        """`GPTConfig.from_preset("gpt2-medium", qkv_bias=True)`."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})


# The four OpenAI GPT-2 sizes differ only in width, depth and heads.
# (Parameter counts in the comments are for the real, tied checkpoints with qkv bias.)
PRESETS: dict[str, dict] = {
    "gpt2-small": dict(emb_dim=768, n_layers=12, n_heads=12),  # 124M
    "gpt2-medium": dict(emb_dim=1024, n_layers=24, n_heads=16),  # 355M
    "gpt2-large": dict(emb_dim=1280, n_layers=36, n_heads=20),  # 774M
    "gpt2-xl": dict(emb_dim=1600, n_layers=48, n_heads=25),  # 1558M
    # Small offline models. gpt-mini is the one pre-trained on a laptop CPU and shipped in
    # data/gpt-mini/; gpt-tiny only exists so that tests run in milliseconds.
    "gpt-mini": dict(emb_dim=256, n_layers=6, n_heads=8, context_length=256, tie_weights=True, drop_rate=0.0),
    "gpt-tiny": dict(emb_dim=32, n_layers=2, n_heads=4, context_length=64, tie_weights=True),
}

# The settings of OpenAI's released checkpoints, on top of a size preset.
GPT2_CHECKPOINT_SETTINGS = dict(qkv_bias=True, tie_weights=True, drop_rate=0.0)
