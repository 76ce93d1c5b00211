"""The book's `replace_linear_with_lora` (Raschka, Build a Large Language Model from Scratch, appendix E).

    for p in model.parameters(): p.requires_grad = False
    replace_linear_with_lora(model, rank=16, alpha=16)

It wraps EVERY nn.Linear, the output head too, and freezes nothing itself. `apply_lora`
(lora/apply.py) is the configurable version: named targets, rank checks, modules to save.
"""

from __future__ import annotations

import warnings

from torch import nn

from lora.apply import DEFAULT_ADAPTER
from lora.config import LoraConfig
from lora.layers import LinearWithLoRA, linear_dims
from lora.registry import registry_of
from lora.targets import lora_modules, set_submodule


def replace_linear_with_lora(model: nn.Module, rank: int, alpha: float, dropout: float = 0.0,
                             scaling: str = "alpha/r") -> nn.Module:
    """The book's `replace_linear_with_lora`: wrap EVERY nn.Linear (the output head too) in a
    LinearWithLoRA. Unlike `apply_lora` it freezes nothing; the book freezes the model first.

    The wrapped layers are registered as adapter "default" (so save_adapter works). A layer
    narrower than the rank (the book's 768 -> 2 head at r=16) is wrapped as the book does, with
    a warning; apply_lora refuses it.
    """
    cfg = LoraConfig(rank=rank, alpha=alpha, dropout=dropout, scaling=scaling, targets=("all-linear",))
    registry = registry_of(model)
    if lora_modules(model) or registry:
        raise ValueError("this model already has LoRA layers; replace_linear_with_lora would wrap them twice")
    names = [n for n, m in model.named_modules() if n and isinstance(m, nn.Linear)]
    if not names:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layers to wrap")
    for name in names:
        linear = model.get_submodule(name)
        d_in, d_out, _ = linear_dims(linear)
        if rank > min(d_in, d_out):
            # The book wraps its 2-class head (768 -> 2) at r=16 too; its 2,666,528 count includes it.
            warnings.warn(f"LoRA rank {rank} > min(d_in={d_in}, d_out={d_out}) for {name}: the update's "
                          f"{rank * (d_in + d_out):,} parameters exceed the layer's {d_in * d_out:,} weights and "
                          f"cannot have rank above {min(d_in, d_out)} (apply_lora refuses this; the book does it)",
                          stacklevel=2)
        set_submodule(model, name, LinearWithLoRA(linear, rank, alpha, dropout, scaling, freeze_base=False,
                                                  check_rank=False, registry=registry, layer_name=name))
    # Record exactly what was wrapped: full module names are valid targets (PEFT-style suffixes).
    registry[DEFAULT_ADAPTER] = cfg.replace(targets=tuple(names))
    registry.active = DEFAULT_ADAPTER
    return model
