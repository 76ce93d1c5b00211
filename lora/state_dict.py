"""What an adapter consists of, as tensors: its own weights, and the base weights it sits on.

    lora_state_dict(model)     the adapter's lora_A / lora_B and its copies of the modules to save
    base_parameters(model)     the frozen base, under the base model's own parameter names

save_adapter (lora/adapters.py) writes the first and fingerprints the second.
"""

from __future__ import annotations

from torch import nn

from lora.apply import active_adapter, check_adapter
from lora.targets import lora_modules, saved_modules


def lora_state_dict(model: nn.Module, adapter_name: str | None = None) -> dict:
    """The tensors one adapter trains, under names independent of the adapter's name:

        trf_blocks.0.att.W_query.lora_A   (d_in, r)
        trf_blocks.0.att.W_query.lora_B   (r, d_out)      fused qkv: lora_A (d_in, n*r), lora_B (n, r, d)
        out_head.weight, out_head.bias    a module to save (the adapter's copy)
    """
    name = adapter_name or active_adapter(model)
    check_adapter(model, name)
    out = {}
    for mname, m in lora_modules(model):
        if name in m.lora:
            out[f"{mname}.lora_A"] = m.lora[name].lora_A
            out[f"{mname}.lora_B"] = m.lora[name].lora_B
    for mname, m in saved_modules(model):
        if name in m.modules_to_save:
            for key, value in m.modules_to_save[name].state_dict().items():
                out[f"{mname}.{key}"] = value
    return out


def base_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The base model's own parameters under their original names (LoRA wrappers see through:
    `...W_query.linear.weight` is listed as `...W_query.weight`); LoRA branches and modules to
    save (original and copies) are left out. Tied weights appear once."""
    lora_prefixes = tuple(n + "." for n, _ in lora_modules(model))
    saved_prefixes = tuple(n + "." for n, _ in saved_modules(model))
    out = []
    for name, p in model.named_parameters():
        if saved_prefixes and name.startswith(saved_prefixes):
            continue
        prefix = next((pre for pre in lora_prefixes if name.startswith(pre)), None)
        if prefix is not None:
            rest = name[len(prefix):]
            if not rest.startswith("linear."):
                continue  # a LoRA branch
            name = prefix + rest[len("linear."):]
        out.append((name, p))
    return out
