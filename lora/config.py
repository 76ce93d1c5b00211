"""LoraConfig: every hyper-parameter of a LoRA adapter in one frozen dataclass.

The names follow the book where it has one (`rank`, `alpha`) and PEFT otherwise
(`dropout` is PEFT's `lora_dropout`, `targets` its `target_modules`, `modules_to_save`
the same). The config is saved next to the adapter's weights (`lora/adapters.py`), so a
saved adapter is always re-applied with the flags it was trained with.

Targets are either aliases for GPTModel's modules (`TARGET_ALIASES`) or, like PEFT's
`target_modules`, a module-name suffix (`"W_query"`, `"trf_blocks.3.ff.layers.0"`, or
`"c_attn"` on a transformers GPT-2). How they are matched lives in `lora/apply.py`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

# How the update x A B is scaled before it is added to the frozen layer's output.
#
#   "alpha/r"        alpha / r: the LoRA paper (Hu et al., 2021, section 4.1), loralib, PEFT, litgpt,
#                    and the book's later printings. Changing r keeps the update's size roughly fixed,
#                    so a learning rate tuned at one rank still works at another.
#   "alpha/sqrt(r)"  alpha / sqrt(r): rank-stabilised LoRA (rsLoRA, Kalajdzievski 2023,
#                    arXiv:2312.03732; PEFT's use_rslora=True). With alpha/r, large ranks learn slower.
#   "alpha"          alpha, no division: the book's FIRST printing (`self.alpha * (x @ self.A @ self.B)`).
#                    At r=16, alpha=16 the update is 16x larger than with "alpha/r", so the book's
#                    learning rate (8e-4) takes 16x larger steps in the output: training degrades.
#
# Switching between them at fixed alpha only multiplies the update by a constant, which is
# exactly equivalent to choosing another alpha (for "alpha": alpha' = alpha * r under "alpha/r").
SCALINGS = ("alpha/r", "alpha/sqrt(r)", "alpha")

# Aliases for GPTModel's module names (gpt/model.py). Each maps to module-name suffixes,
# matched like PEFT's target_modules (the whole name, or a suffix after a dot).
# "query", "key" and "value" also select their slice of a fused `att.qkv` projection
# (GPTConfig(attention="fused")): LoRA then goes on that one Linear with a per-projection switch.
TARGET_ALIASES: dict[str, tuple[str, ...]] = {
    "query": ("att.W_query",),  # + the query slice of att.qkv
    "key": ("att.W_key",),  # + the key slice of att.qkv
    "value": ("att.W_value",),  # + the value slice of att.qkv
    "out_proj": ("att.out_proj",),
    "ff_in": ("ff.layers.0",),  # d -> 4d
    "ff_out": ("ff.layers.2",),  # 4d -> d
    "ff": ("ff.layers.0", "ff.layers.2"),
    "out_head": ("out_head",),
    # Every nn.Linear (and transformers' Conv1D) except the output head and modules_to_save,
    # as PEFT's "all-linear" does. On GPTModel: query, key, value, out_proj, ff.
    "all-linear": (),
}
QKV_ALIASES = ("query", "key", "value")  # order of the slices in a fused qkv output
FUSED_QKV_NAME = "qkv"  # the fused projection's attribute name in gpt/attention.py


def scaling_factor(alpha: float, rank: int, scaling: str = "alpha/r") -> float:
    """The number the update x A B is multiplied by (see SCALINGS above)."""
    if scaling == "alpha/r":
        return alpha / rank
    if scaling == "alpha/sqrt(r)":
        return alpha / math.sqrt(rank)
    if scaling == "alpha":
        return float(alpha)
    raise ValueError(f"unknown LoRA scaling {scaling!r}; choose one of {SCALINGS}")


def check_lora_hyperparameters(rank, alpha, dropout, scaling) -> None:
    """Raise ValueError/TypeError for a rank, alpha, dropout or scaling that cannot work.
    (rank <= min(d_in, d_out) is checked where the layer's shape is known.)"""
    if not isinstance(rank, int) or isinstance(rank, bool):
        raise TypeError(f"LoRA rank must be an int, got {type(rank).__name__} {rank!r}")
    if rank <= 0:
        raise ValueError(f"LoRA rank must be a positive integer, got {rank}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise TypeError(f"LoRA alpha must be a number, got {type(alpha).__name__} {alpha!r}")
    if not math.isfinite(alpha) or alpha < 0:
        raise ValueError(f"LoRA alpha must be a finite number >= 0, got {alpha}")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise ValueError(f"LoRA dropout must be in [0, 1), got {dropout!r}")
    if scaling not in SCALINGS:
        raise ValueError(f"unknown LoRA scaling {scaling!r}; choose one of {SCALINGS}")


def _as_tuple(value, field: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    try:
        items = tuple(value)
    except TypeError:
        raise TypeError(f"LoraConfig.{field} must be a string or a list of strings, got {value!r}") from None
    for item in items:
        if not isinstance(item, str) or not item:
            raise TypeError(f"LoraConfig.{field} must contain non-empty strings, got {item!r}")
    return items


@dataclass(frozen=True)
class LoraConfig:
    rank: int = 8  # r: inner dimension of A (d_in x r) and B (r x d_out)
    alpha: float = 16.0  # strength of the update; see SCALINGS for how it is combined with r
    dropout: float = 0.0  # dropout on the LoRA branch's input (PEFT: lora_dropout)
    targets: tuple[str, ...] = ("query", "value")  # aliases or module-name suffixes (PEFT: target_modules)
    scaling: str = "alpha/r"  # "alpha/r", "alpha/sqrt(r)" (rsLoRA) or "alpha" (book's 1st printing)
    modules_to_save: tuple[str, ...] = ()  # modules trained in full and saved with the adapter (a new head)

    def __post_init__(self):
        check_lora_hyperparameters(self.rank, self.alpha, self.dropout, self.scaling)
        # Accept a single string or any sequence; store tuples so the config stays hashable.
        object.__setattr__(self, "alpha", float(self.alpha))
        object.__setattr__(self, "dropout", float(self.dropout))
        object.__setattr__(self, "targets", _as_tuple(self.targets, "targets"))
        object.__setattr__(self, "modules_to_save", _as_tuple(self.modules_to_save, "modules_to_save"))
        if not self.targets:
            raise ValueError(f"LoraConfig.targets is empty; choose from {sorted(TARGET_ALIASES)} "
                             f"or give module-name suffixes")

    @property
    def scale(self) -> float:
        """The factor the update x A B is multiplied by."""
        return scaling_factor(self.alpha, self.rank, self.scaling)

    def replace(self, **changes) -> "LoraConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["targets"], d["modules_to_save"] = list(self.targets), list(self.modules_to_save)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "LoraConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"LoraConfig: unknown field(s) {unknown}; known fields are {sorted(known)}")
        return cls(**d)
