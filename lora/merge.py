"""Merging a LoRA adapter into the frozen weights for inference, and taking it out again.

    W_merged = W + scale * (A @ B)^T          (nn.Linear stores W as (d_out, d_in))

After `merge_lora(model)` every wrapped layer is a plain matmul again: forward skips the
branch, so inference costs exactly what the base model costs (the LoRA paper's "no additional
inference latency"). `unmerge_lora(model)` subtracts the same product, which restores the base
weights up to float rounding (about 1e-7 relative in fp32; in bf16 the round trip is lossy,
so keep a bf16 model merged or reload it).

Decisions, each tested:
* Merging an adapter that is already merged is refused with a ValueError (adding the update
  twice would silently double it); so is unmerging one that is not merged.
* Only the active adapter can be merged, and while it is merged the model cannot switch or
  disable adapters (that would run another adapter on top of merged weights).
* A LoRA layer whose base weight is shared with another parameter (GPT-2's output head tied
  to the token embedding) is refused: merging would silently change the embedding too.
  Keep such an adapter unmerged (its forward is correct), or untie the head yourself first
  (`model.out_head.linear.weight = nn.Parameter(model.tok_emb.weight.clone())`) and say so.
"""

from __future__ import annotations

from torch import nn

from lora.apply import check_adapter
from lora.registry import registry_of
from lora.targets import lora_modules


def _layers_of(model: nn.Module, adapter_name: str | None):
    name = adapter_name or registry_of(model).active
    if name is None:
        raise ValueError("this model has no LoRA adapter to merge; apply_lora first")
    check_adapter(model, name)
    layers = [(n, m) for n, m in lora_modules(model) if name in m.lora]
    if not layers:
        raise ValueError(f"no LoRA layer of this model has an adapter named {name!r}")
    return name, layers


def shared_with(model: nn.Module, name: str) -> list[str]:
    """The other parameter names of `model` whose tensor shares storage with parameter `name`
    (GPT-2's output head tied to the token embedding); checked with data_ptr(), not assumed."""
    params = dict(model.named_parameters(remove_duplicate=False))
    p = params[name]
    if p.is_meta:
        return [n for n, q in params.items() if q is p and n != name]
    return [n for n, q in params.items() if n != name and not q.is_meta and q.device == p.device
            and q.data_ptr() == p.data_ptr()]


def merge_lora(model: nn.Module, adapter_name: str | None = None) -> nn.Module:
    """Add the active adapter's update into the base weights (in place); returns the model."""
    name, layers = _layers_of(model, adapter_name)
    active = registry_of(model).active
    if name != active:
        raise ValueError(f"only the active adapter can be merged; call set_active_adapter(model, {name!r}) first "
                         f"(active: {active!r})")
    if registry_of(model).disabled:
        raise ValueError("adapters are disabled (disable_adapters); enable them before merging")
    already = [n for n, m in layers if name in m.merged_adapters]
    if already:
        raise ValueError(f"LoRA adapter {name!r} is already merged (e.g. into {already[0]}); merging again would "
                         f"add the update twice. Call unmerge_lora(model) first")
    for n, m in layers:
        if getattr(m.linear, "quantized", False):  # lora/qlora.py's Linear4bit: no float weight to add into
            raise ValueError(f"cannot merge LoRA into {n or 'this layer'}: it is a 4-bit base; call "
                             f"lora.qlora.dequantize_base(model) first")
        weight = f"{n}.linear.weight" if n else "linear.weight"
        others = shared_with(model, weight)
        if others:
            raise ValueError(f"cannot merge LoRA into {n or 'this layer'}: its weight is tied to {others} (shared "
                             f"storage); merging would silently change those too. Keep this adapter unmerged, or "
                             f"untie the weight explicitly first")
    for _, m in layers:
        m.merge(name)
    return model


def unmerge_lora(model: nn.Module, adapter_name: str | None = None) -> nn.Module:
    """Subtract a merged adapter's update from the base weights again; returns the model."""
    name, layers = _layers_of(model, adapter_name)
    merged = [(n, m) for n, m in layers if name in m.merged_adapters]
    if not merged:
        raise ValueError(f"LoRA adapter {name!r} is not merged; nothing to unmerge")
    for _, m in merged:
        m.unmerge(name)
    return model


def is_merged(model: nn.Module) -> bool:
    return any(m.merged_adapters for _, m in lora_modules(model))
