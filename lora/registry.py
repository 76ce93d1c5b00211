"""Which adapters a model has, which one is active, whether all are switched off: one object per model.

`LoraAdapters` is a dict, adapter name -> LoraConfig, with two more attributes:

    active     the adapter forward uses and training updates (None: no adapter yet)
    disabled   True while every adapter is switched off (disable_adapters)

The model holds it as `model.lora_adapters`, and every LoRA wrapper and modules-to-save
wrapper in the model holds the SAME object (`wrapper.registry`): a wrapper's `active_adapter`
and `disabled` read it, so switching adapters is one assignment and nothing can disagree.
A wrapper made by hand (`LinearWithLoRA(nn.Linear(8, 8), rank=2, alpha=4)`) has a registry of
its own; `registry_of(model)` adopts such wrappers into one registry for the whole model the
first time a model-level function (merge_lora, set_active_adapter, ...) meets them.

What is merged into which weight is not a setting but a fact about each weight; each wrapper
keeps that in its own `merged_adapters`.
"""

from __future__ import annotations

from torch import nn

from lora.config import LoraConfig

REGISTRY_ATTRIBUTE = "lora_adapters"  # where a model keeps its registry (model.lora_adapters)


class LoraAdapters(dict):
    """name -> LoraConfig, plus `active` (str or None) and `disabled` (bool)."""

    def __init__(self, *args, active: str | None = None, disabled: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.active = active
        self.disabled = disabled

    def __repr__(self) -> str:
        return f"LoraAdapters({dict.__repr__(self)}, active={self.active!r}, disabled={self.disabled})"


def _wrappers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(getattr(m, "registry", None), LoraAdapters)]


def registry_of(model: nn.Module) -> LoraAdapters:
    """The model's registry; created (empty) when the model has no adapter yet.

    A model whose LoRA wrappers were put in by hand, each with a registry of its own, gets one
    registry that all of them share from now on; their adapters are recorded with the config
    their branches imply (`config_of_branch`), targets by full module name. If those wrappers
    disagree on the active adapter, a ValueError says so.
    """
    registry = model.__dict__.get(REGISTRY_ATTRIBUTE)
    if isinstance(registry, LoraAdapters):
        return registry
    wrappers = _wrappers(model)
    shared = {id(w.registry): w.registry for w in wrappers}
    if len(shared) == 1:
        registry = next(iter(shared.values()))
    else:
        actives = {r.active for r in shared.values()} - {None}
        if len(actives) > 1:
            raise ValueError(f"the LoRA layers of this model have different active adapters {sorted(actives)}; "
                             f"set the same one on each, or build the model with apply_lora")
        registry = LoraAdapters(active=actives.pop() if actives else None,
                                disabled=any(r.disabled for r in shared.values()))
        for r in shared.values():
            registry.update(r)
        for w in wrappers:
            w.registry = registry
    branches: dict[str, list] = {}
    for module_name, w in model.named_modules():
        lora = w.__dict__.get("_modules", {}).get("lora")
        if isinstance(w.__dict__.get("registry"), LoraAdapters) and isinstance(lora, nn.ModuleDict):
            for adapter, branch in lora.items():
                branches.setdefault(adapter, []).append((module_name, branch))
    for adapter, found in branches.items():
        if adapter not in registry:
            first = found[0][1]
            names = tuple(n for n, _ in found if n)
            registry[adapter] = LoraConfig(rank=first.rank, alpha=first.alpha, scaling=first.scaling,
                                           targets=names or ("all-linear",))
    model.__dict__[REGISTRY_ATTRIBUTE] = registry
    return registry
