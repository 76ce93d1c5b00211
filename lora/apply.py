"""Putting LoRA adapters into a model, switching between them, taking them out.

    apply_lora(model, LoraConfig(rank=8, alpha=16, targets=("query", "value")))
    apply_lora(model, rank=16, alpha=16, targets="all-linear", modules_to_save=["out_head"])

Like PEFT, this works on any nn.Module from the outside, by module names and types
(lora/targets.py decides which layers a config selects); GPTModel's names are only the
defaults behind the aliases.

Several named adapters can live on one base model. Each wrapped layer keeps a ModuleDict of
branches keyed by adapter name and each module to save one copy per adapter; exactly one
adapter is active (its weights are the trainable ones), or all are disabled:

    add_adapter(model, "sentiment", cfg); set_active_adapter(model, "sentiment")
    with disable_adapters(model): base_logits = model(x)

Which adapters exist, their configs and which one is active are kept in one place, the
model's registry (`model.lora_adapters`, lora/registry.py), shared by all its wrappers.

Reference: https://github.com/huggingface/peft (tuners/lora/model.py: adapters, set_adapter,
disable_adapter).
"""

from __future__ import annotations

import contextlib

from torch import nn

from lora.config import LoraConfig, validate_rank
from lora.layers import EmbeddingWithLoRA, FusedQKVWithLoRA, LinearWithLoRA, LoRAWrapper, embedding_dims, linear_dims
from lora.modules_to_save import ModulesToSaveWrapper
from lora.registry import registry_of
from lora.targets import lora_modules, resolve_targets, saved_modules, set_submodule

DEFAULT_ADAPTER = "default"


def as_config(cfg, kwargs) -> LoraConfig:
    """A LoraConfig from either a LoraConfig or keyword arguments (not both)."""
    if cfg is not None and kwargs:
        raise TypeError(f"pass either a LoraConfig or keyword arguments, not both (got {sorted(kwargs)})")
    if cfg is None:
        return LoraConfig(**kwargs)
    if not isinstance(cfg, LoraConfig):
        raise TypeError(f"expected a LoraConfig, got {type(cfg).__name__}")
    return cfg


def adapter_configs(model: nn.Module) -> dict[str, LoraConfig]:
    """name -> LoraConfig of every adapter on the model (the model's registry)."""
    return registry_of(model)


def active_adapter(model: nn.Module) -> str | None:
    return registry_of(model).active


def merged_adapters(model: nn.Module) -> set[str]:
    """Adapters merged into some of the model's weights (each layer records its own)."""
    return {name for _, m in lora_modules(model) for name in m.merged_adapters}


def check_adapter(model: nn.Module, name: str) -> None:
    """ValueError unless the model has an adapter called `name`."""
    if name not in registry_of(model):
        raise ValueError(f"no LoRA adapter named {name!r} on this model; adapters: {sorted(registry_of(model))}")


def add_adapter(model: nn.Module, adapter_name: str, cfg: LoraConfig | None = None, *, check_rank: bool = True,
                **kwargs) -> nn.Module:
    """Add a LoRA adapter `adapter_name` to the layers `cfg.targets` selects (in place).

    Layers that already carry another adapter get one more branch; `cfg.modules_to_save` get
    one more trainable copy. The first adapter becomes the active one. All parameters except
    the active adapter's are frozen (see `set_active_adapter`). Each layer gets the rank and
    alpha `cfg.rank_for(name)` / `cfg.alpha_for(name)` give. Returns the model.
    check_rank=False allows rank > min(d_in, d_out) (only load_adapter uses it, to reload
    adapters made by the book's replace_linear_with_lora).
    """
    cfg = as_config(cfg, kwargs)
    registry = registry_of(model)
    if adapter_name in registry:
        raise ValueError(f"LoRA adapter {adapter_name!r} is already applied to this model (LoRA applied twice); "
                         f"pass adapter_name='another_name' to add a second adapter")
    plan, to_save = resolve_targets(model, cfg)

    # Check every layer before changing any, so that a bad rank leaves the model untouched.
    for name, (kind, enable) in plan.items():
        module = model.get_submodule(name)
        if isinstance(module, LoRAWrapper):
            if (kind == "fused") != isinstance(module, FusedQKVWithLoRA):
                raise ValueError(f"{name} already carries LoRA as a {type(module).__name__}; another adapter "
                                 f"cannot put a {'fused' if kind == 'fused' else 'whole-layer'} LoRA on it")
            if adapter_name in module.lora:
                raise ValueError(f"LoRA adapter {adapter_name!r} is already applied to {name} (LoRA applied twice)")
        if isinstance(module, LoRAWrapper):
            d_in, d_out = module.d_in, module.d_out
        else:
            d_in, d_out, _ = (embedding_dims if kind == "embedding" else linear_dims)(module)
        validate_rank(cfg.rank_for(name), d_in, d_out // 3 if kind == "fused" else d_out, name, fits=check_rank)

    for name, (kind, enable) in plan.items():
        module = model.get_submodule(name)
        args = dict(rank=cfg.rank_for(name), alpha=cfg.alpha_for(name), dropout=cfg.dropout, scaling=cfg.scaling)
        if kind == "fused":
            args["enable"] = enable
        elif not check_rank:
            args["check_rank"] = False
        if isinstance(module, LoRAWrapper):
            module.add_adapter(adapter_name, **args)
        else:
            cls = {"fused": FusedQKVWithLoRA, "linear": LinearWithLoRA, "embedding": EmbeddingWithLoRA}[kind]
            set_submodule(model, name, cls(module, adapter_name=adapter_name, registry=registry, layer_name=name,
                                           **args))
    for name in to_save:
        module = model.get_submodule(name)
        if not isinstance(module, ModulesToSaveWrapper):
            module = ModulesToSaveWrapper(module, registry=registry)
            set_submodule(model, name, module)
        module.add_adapter(adapter_name)

    registry[adapter_name] = cfg
    if registry.active is None:
        registry.active = adapter_name
    mark_only_active_adapter_trainable(model)
    return model


def apply_lora(model: nn.Module, cfg: LoraConfig | None = None, *, adapter_name: str = DEFAULT_ADAPTER,
               **kwargs) -> nn.Module:
    """Apply LoRA in place and make it the active adapter; everything else is frozen.

    apply_lora(model, LoraConfig(rank=8, alpha=16, targets=("query", "value")))
    apply_lora(model, rank=16, alpha=16, targets="all-linear", modules_to_save=["out_head"])

    Trainable afterwards: the adapter's lora_A/lora_B and its copies of `modules_to_save`.
    Returns the model (the same object).
    """
    add_adapter(model, adapter_name, as_config(cfg, kwargs))
    set_active_adapter(model, adapter_name)
    return model


def mark_only_active_adapter_trainable(model: nn.Module) -> None:
    """requires_grad: True for the active adapter's LoRA weights and module copies, False elsewhere."""
    name = active_adapter(model)
    for p in model.parameters():
        p.requires_grad_(False)
    for _, m in lora_modules(model):
        if name in m.lora:
            m.lora[name].requires_grad_(True)
    for _, m in saved_modules(model):
        if name in m.modules_to_save:
            m.modules_to_save[name].requires_grad_(True)


def set_active_adapter(model: nn.Module, adapter_name: str) -> None:
    """Make `adapter_name` the adapter forward uses and training updates (PEFT: set_adapter)."""
    check_adapter(model, adapter_name)
    others = merged_adapters(model) - {adapter_name}
    if others:
        raise ValueError(f"adapter(s) {sorted(others)} are merged into the base weights; unmerge_lora first, "
                         f"otherwise {adapter_name!r} would run on top of them")
    registry_of(model).active = adapter_name
    mark_only_active_adapter_trainable(model)


class disable_adapters(contextlib.AbstractContextManager):
    """Run the base model: every LoRA branch and module copy is switched off.

        disable_adapters(model)              # until enable_adapters(model)
        with disable_adapters(model): ...     # switched back on when the block ends

    A merged adapter is part of the weights and cannot be switched off: unmerge first.
    """

    def __init__(self, model: nn.Module):
        merged = merged_adapters(model)
        if merged:
            raise ValueError(f"adapter(s) {sorted(merged)} are merged into the base weights and cannot be "
                             f"disabled; call unmerge_lora(model) first")
        self.model = model
        registry_of(model).disabled = True

    def __exit__(self, *exc):
        enable_adapters(self.model)
        return False


def enable_adapters(model: nn.Module) -> None:
    registry_of(model).disabled = False


def delete_adapter(model: nn.Module, adapter_name: str) -> None:
    """Remove an adapter. Layers left without any adapter get their original module back."""
    check_adapter(model, adapter_name)
    if adapter_name in merged_adapters(model):
        raise ValueError(f"adapter {adapter_name!r} is merged into the base weights; unmerge_lora first")
    for name, m in lora_modules(model):
        if adapter_name in m.lora:
            del m.lora[adapter_name]
            if len(m.lora) == 0:
                set_submodule(model, name, m.linear)
    for name, m in saved_modules(model):
        if adapter_name in m.modules_to_save:
            del m.modules_to_save[adapter_name]
            if len(m.modules_to_save) == 0:
                set_submodule(model, name, m.original_module)
    registry = registry_of(model)
    del registry[adapter_name]
    if registry.active == adapter_name:
        registry.active = None
        if registry:
            set_active_adapter(model, sorted(registry)[0])


@contextlib.contextmanager
def filling_new_adapter(model: nn.Module, adapter_name: str, cfg: LoraConfig, trainable: bool,
                        check_rank: bool = True):
    """Add adapter `adapter_name` (zero B), let the `with` block copy its weights in, then make only it
    trainable (trainable=True) or freeze everything. On any error inside the block the adapter is deleted
    again, so a load that fails leaves the model as it was. Used by lora.adapters and lora.peft_format."""
    add_adapter(model, adapter_name, cfg, check_rank=check_rank)
    try:
        yield
    except BaseException:
        delete_adapter(model, adapter_name)  # leave the model as it was
        raise
    if trainable:
        mark_only_active_adapter_trainable(model)
    else:
        for p in model.parameters():
            p.requires_grad_(False)
