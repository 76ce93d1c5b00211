"""LoraConfig: every hyper-parameter of a LoRA adapter in one frozen dataclass.

The names follow the book where it has one (`rank`, `alpha`) and PEFT otherwise
(`dropout` is PEFT's `lora_dropout`, `targets` its `target_modules`, `modules_to_save`
the same). The config is saved next to the adapter's weights (`lora/adapters.py`), so a
saved adapter is always re-applied with the flags it was trained with.

Targets are either aliases for GPTModel's modules (`TARGET_ALIASES`) or, like PEFT's
`target_modules`, a module-name suffix (`"W_query"`, `"trf_blocks.3.ff.layers.0"`, or
`"c_attn"` on a transformers GPT-2). How they are matched lives in `lora/targets.py`.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass

from common.config import dataclass_from_dict

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


def validate_rank(rank, d_in: int | None = None, d_out: int | None = None, layer: str | None = None,
                  fits: bool = True) -> None:
    """The one check of a LoRA rank, used wherever a rank meets a layer (and by LoraConfig without one).

    rank must be a positive int; with the layer's shape given and fits=True, also
    rank <= min(d_in, d_out), otherwise the update is not low-rank and costs more than the
    full weight. `layer` names the layer in the message (a module name, or a description).
    fits=False only for the book's replace_linear_with_lora, which wraps its 768 -> 2 head at r=16.
    """
    where = f" for {layer}" if layer else ""
    if not isinstance(rank, int) or isinstance(rank, bool):
        raise TypeError(f"LoRA rank must be an int, got {type(rank).__name__} {rank!r}{where}")
    if rank <= 0:
        raise ValueError(f"LoRA rank must be a positive integer, got {rank}{where}")
    if fits and d_in is not None and d_out is not None and rank > min(d_in, d_out):
        raise ValueError(f"LoRA rank {rank} is larger than min(d_in={d_in}, d_out={d_out}) = {min(d_in, d_out)}"
                         f"{where}: the update would not be low-rank (and costs more than the full weight)")


def check_lora_hyperparameters(rank, alpha, dropout, scaling) -> None:
    """Raise ValueError/TypeError for a rank, alpha, dropout or scaling that cannot work.
    (rank <= min(d_in, d_out) is checked where the layer's shape is known, by validate_rank.)"""
    validate_rank(rank)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise TypeError(f"LoRA alpha must be a number, got {type(alpha).__name__} {alpha!r}")
    if not math.isfinite(alpha) or alpha < 0:
        raise ValueError(f"LoRA alpha must be a finite number >= 0, got {alpha}")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise ValueError(f"LoRA dropout must be in [0, 1), got {dropout!r}")
    if scaling not in SCALINGS:
        raise ValueError(f"unknown LoRA scaling {scaling!r}; choose one of {SCALINGS}")


def pattern_key(keys, module_name: str) -> str | None:
    """PEFT's rule for rank_pattern / alpha_pattern: the first key that, read as a regular
    expression, matches the end of the module name after a dot (or the whole name)."""
    for key in keys:
        if re.match(rf"(.*\.)?({key})$", module_name):
            return key
    return None


def _as_pattern(value, field: str, kind) -> tuple[tuple[str, object], ...]:
    if not value:
        return ()
    items = value.items() if isinstance(value, dict) else value
    try:
        pairs = tuple((k, v) for k, v in items)
    except (TypeError, ValueError):
        raise TypeError(f"LoraConfig.{field} must be a dict of module-name pattern -> {kind.__name__}, "
                        f"got {value!r}") from None
    for key, v in pairs:
        if not isinstance(key, str) or not key:
            raise TypeError(f"LoraConfig.{field} keys must be non-empty strings, got {key!r}")
        try:
            re.compile(key)
        except re.error as e:
            raise ValueError(f"LoraConfig.{field} key {key!r} is not a regular expression: {e}") from None
    return pairs


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
    # rank and alpha: the book's appendix E recipe (r = 16, alpha = 16, so alpha/r = 1), which is also the main
    # job's (classify.finetune.FinetuneConfig takes these defaults from here: one default per setting)
    rank: int = 16  # r: inner dimension of A (d_in x r) and B (r x d_out)
    alpha: float = 16.0  # strength of the update; see SCALINGS for how it is combined with r
    dropout: float = 0.0  # dropout on the LoRA branch's input (PEFT: lora_dropout)
    targets: tuple[str, ...] = ("query", "value")  # aliases or module-name suffixes (PEFT: target_modules)
    scaling: str = "alpha/r"  # "alpha/r", "alpha/sqrt(r)" (rsLoRA) or "alpha" (book's 1st printing)
    modules_to_save: tuple[str, ...] = ()  # modules trained in full and saved with the adapter (a new head)
    # Per-module exceptions, PEFT's rank_pattern / alpha_pattern: {module-name pattern: rank or alpha};
    # stored as (pattern, value) pairs so the config stays hashable. Set by import_peft_adapter.
    rank_pattern: tuple[tuple[str, int], ...] = ()
    alpha_pattern: tuple[tuple[str, float], ...] = ()

    def __post_init__(self):
        check_lora_hyperparameters(self.rank, self.alpha, self.dropout, self.scaling)
        object.__setattr__(self, "rank_pattern", _as_pattern(self.rank_pattern, "rank_pattern", int))
        object.__setattr__(self, "alpha_pattern", _as_pattern(self.alpha_pattern, "alpha_pattern", float))
        for key, r in self.rank_pattern:
            validate_rank(r, layer=f"rank_pattern[{key!r}]")
        for key, a in self.alpha_pattern:
            check_lora_hyperparameters(self.rank, a, self.dropout, self.scaling)
        object.__setattr__(self, "alpha_pattern", tuple((k, float(a)) for k, a in self.alpha_pattern))
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

    def rank_for(self, module_name: str) -> int:
        """The rank of this adapter's LoRA on `module_name` (rank_pattern, else rank)."""
        key = pattern_key(dict(self.rank_pattern), module_name)
        return self.rank if key is None else dict(self.rank_pattern)[key]

    def alpha_for(self, module_name: str) -> float:
        """The alpha of this adapter's LoRA on `module_name` (alpha_pattern, else alpha)."""
        key = pattern_key(dict(self.alpha_pattern), module_name)
        return self.alpha if key is None else dict(self.alpha_pattern)[key]

    def replace(self, **changes) -> "LoraConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["targets"], d["modules_to_save"] = list(self.targets), list(self.modules_to_save)
        for field in ("rank_pattern", "alpha_pattern"):  # left out when empty: most adapters have none
            if d[field]:
                d[field] = dict(getattr(self, field))
            else:
                del d[field]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "LoraConfig":
        """The config a to_dict() (an adapter_config.json) describes; an unknown key is refused, naming it."""
        return dataclass_from_dict(cls, d)
