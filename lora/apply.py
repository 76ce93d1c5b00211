"""Putting LoRA into a model: choose layers by name, wrap them, freeze the rest.

    apply_lora(model, LoraConfig(rank=8, alpha=16, targets=("query", "value")))
    apply_lora(model, rank=16, alpha=16, targets="all-linear", modules_to_save=["out_head"])
    replace_linear_with_lora(model, rank=16, alpha=16)      # the book's version: every nn.Linear

Like PEFT, this works on any nn.Module from the outside, by module names and types: GPTModel's
names are only the defaults behind the aliases in `TARGET_ALIASES` (lora/config.py); a target
that is not an alias is a module-name suffix, as in PEFT's target_modules (`"c_attn"` on
transformers' GPT-2).

Several named adapters can live on one base model. Each wrapped layer keeps a ModuleDict of
branches keyed by adapter name and each module to save one copy per adapter; exactly one
adapter is active (its weights are the trainable ones), or all are disabled:

    add_adapter(model, "sentiment", cfg); set_active_adapter(model, "sentiment")
    with disable_adapters(model): base_logits = model(x)

The model remembers its adapters' configs in `model.lora_adapters` (name -> LoraConfig) and
the active one in `model.lora_active_adapter`; saving (lora/adapters.py) reads both.

Reference: https://github.com/huggingface/peft (tuners/tuners_utils.py: target matching,
"all-linear"; tuners/lora/model.py: adapters, set_adapter, disable_adapter).
"""

from __future__ import annotations

import contextlib
import warnings

from torch import nn

from gpt.params import parameter_summary, parameter_table
from lora.config import FUSED_QKV_NAME, QKV_ALIASES, TARGET_ALIASES, LoraConfig
from lora.layers import FusedQKVWithLoRA, LinearWithLoRA, LoRAWrapper, linear_dims
from lora.modules_to_save import ModulesToSaveWrapper

DEFAULT_ADAPTER = "default"
OUTPUT_HEAD_NAMES = ("out_head", "lm_head")  # never wrapped by "all-linear" (the book's and transformers' names)
_FUSED_QKV_SUFFIX = f"att.{FUSED_QKV_NAME}"


# ---------------------------------------------------------------------------------------------
# Finding modules
# ---------------------------------------------------------------------------------------------

def _matches(name: str, suffix: str) -> bool:
    """PEFT's rule: the whole module name, or its ending after a dot ("W_query" matches
    "trf_blocks.0.att.W_query" but not "trf_blocks.0.att.xW_query")."""
    return name == suffix or name.endswith("." + suffix)


def _is_linear_like(module: nn.Module) -> bool:
    if isinstance(module, LoRAWrapper):
        return True
    try:
        linear_dims(module)
        return True
    except TypeError:
        return False


def user_modules(model: nn.Module):
    """(name, module) pairs as the user sees them: a LoRA wrapper stands for the layer it wraps
    (its inner `linear` and branches are not listed) and a modules-to-save wrapper for its module."""
    inside: tuple[str, ...] = ()
    for name, module in model.named_modules():
        if inside and name.startswith(inside):
            continue
        if isinstance(module, (LoRAWrapper, ModulesToSaveWrapper)):
            inside += (name + ".",)
        yield name, module


def lora_modules(model: nn.Module):
    """(name, wrapper) for every LoRA-wrapped layer."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoRAWrapper)]


def _saved_modules(model: nn.Module):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, ModulesToSaveWrapper)]


def _output_head_names(model: nn.Module) -> set[str]:
    names = set()
    get_out = getattr(model, "get_output_embeddings", None)  # transformers models
    head = get_out() if callable(get_out) else None
    for name, module in user_modules(model):
        if name.split(".")[-1] in OUTPUT_HEAD_NAMES or (head is not None and module is head):
            names.add(name)
    return names


def _example_names(model: nn.Module, k: int = 6) -> list[str]:
    return [n for n, m in user_modules(model) if n and _is_linear_like(m)][:k]


def resolve_targets(model: nn.Module, cfg: LoraConfig) -> tuple[dict, list[str]]:
    """Which modules a config selects, without changing the model.

    Returns (plan, to_save): plan maps a module name to ("linear", None) for a plain LoRA
    layer or ("fused", (q, k, v) booleans) for a fused qkv projection; to_save lists the
    modules_to_save names. Raises ValueError for an unknown target, a target that matches no
    module, a target that matches something that is not a linear layer, or a module that is
    both a target and a module to save.
    """
    modules = list(user_modules(model))
    to_save = []
    for suffix in cfg.modules_to_save:
        hits = [n for n, _ in modules if n and _matches(n, suffix)]
        if not hits:
            raise ValueError(f"modules_to_save entry {suffix!r} matches no module in {type(model).__name__}")
        to_save += [n for n in hits if n not in to_save]

    plan: dict[str, tuple] = {}

    def add(name, kind, slot=None):
        if name in to_save:
            raise ValueError(f"{name} is both a LoRA target and in modules_to_save; choose one "
                             f"(a module to save is trained in full, LoRA would be redundant)")
        old = plan.get(name)
        if old is not None and old[0] != kind:
            raise ValueError(f"{name} is selected both as a whole layer and as query/key/value slices of a fused "
                             f"qkv projection; use either the aliases 'query'/'key'/'value' or the name 'qkv'")
        if kind == "fused":
            enable = list(old[1]) if old else [False, False, False]
            for s in (range(3) if slot is None else [slot]):
                enable[s] = True
            plan[name] = ("fused", tuple(enable))
        else:
            plan[name] = ("linear", None)

    for target in cfg.targets:
        found = 0
        if target == "all-linear":
            skip = _output_head_names(model) | set(to_save)
            for name, module in modules:
                if name and name not in skip and _is_linear_like(module):
                    fused = _matches(name, _FUSED_QKV_SUFFIX) or isinstance(module, FusedQKVWithLoRA)
                    add(name, "fused" if fused else "linear")
                    found += 1
        elif target in TARGET_ALIASES:
            for name, module in modules:
                if not name or not _is_linear_like(module):
                    continue
                if any(_matches(name, s) for s in TARGET_ALIASES[target]):
                    add(name, "linear")
                    found += 1
                elif target in QKV_ALIASES and _matches(name, _FUSED_QKV_SUFFIX):
                    add(name, "fused", QKV_ALIASES.index(target))
                    found += 1
            if not found:
                where = " or ".join(TARGET_ALIASES[target] + ((_FUSED_QKV_SUFFIX,) if target in QKV_ALIASES else ()))
                raise ValueError(f"LoRA target {target!r} matched no module in {type(model).__name__} (it looks "
                                 f"for linear layers named ...{where}); linear layers here are named like "
                                 f"{_example_names(model)}")
        else:
            hits = [(n, m) for n, m in modules if n and _matches(n, target)]
            if not hits:
                raise ValueError(f"unknown LoRA target {target!r}: not one of the aliases {sorted(TARGET_ALIASES)} "
                                 f"and no module name ends with it; linear layers here are named like "
                                 f"{_example_names(model)}")
            for name, module in hits:
                if not _is_linear_like(module):
                    raise ValueError(f"LoRA target {target!r} matches {name}, a {type(module).__name__}; LoRA wraps "
                                     f"linear layers (nn.Linear or transformers' Conv1D)")
                add(name, "linear")
                found += 1
    return plan, to_save


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


# ---------------------------------------------------------------------------------------------
# Adapters on a model
# ---------------------------------------------------------------------------------------------

def _as_config(cfg, kwargs) -> LoraConfig:
    if cfg is not None and kwargs:
        raise TypeError(f"pass either a LoraConfig or keyword arguments, not both (got {sorted(kwargs)})")
    if cfg is None:
        return LoraConfig(**kwargs)
    if not isinstance(cfg, LoraConfig):
        raise TypeError(f"expected a LoraConfig, got {type(cfg).__name__}")
    return cfg


def adapter_configs(model: nn.Module) -> dict[str, LoraConfig]:
    """name -> LoraConfig of every adapter on the model."""
    return model.__dict__.setdefault("lora_adapters", {})


def active_adapter(model: nn.Module) -> str | None:
    return model.__dict__.get("lora_active_adapter")


def merged_adapters(model: nn.Module) -> set[str]:
    return {name for _, m in lora_modules(model) for name in m.merged_adapters}


def _check_adapter(model: nn.Module, name: str) -> None:
    if name not in adapter_configs(model):
        raise ValueError(f"no LoRA adapter named {name!r} on this model; adapters: {sorted(adapter_configs(model))}")


def add_adapter(model: nn.Module, adapter_name: str, cfg: LoraConfig | None = None, *, check_rank: bool = True,
                **kwargs) -> nn.Module:
    """Add a LoRA adapter `adapter_name` to the layers `cfg.targets` selects (in place).

    Layers that already carry another adapter get one more branch; `cfg.modules_to_save` get
    one more trainable copy. The first adapter becomes the active one. All parameters except
    the active adapter's are frozen (see `set_active_adapter`). Returns the model.
    check_rank=False allows rank > min(d_in, d_out) (only load_adapter uses it, to reload
    adapters made by the book's replace_linear_with_lora).
    """
    cfg = _as_config(cfg, kwargs)
    if adapter_name in adapter_configs(model):
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
        d_in, d_out, _ = (module.d_in, module.d_out, None) if isinstance(module, LoRAWrapper) else linear_dims(module)
        if kind == "fused":
            d_out //= 3
        if check_rank and cfg.rank > min(d_in, d_out):
            raise ValueError(f"LoRA rank {cfg.rank} is larger than min(d_in={d_in}, d_out={d_out}) of {name}: "
                             f"the update would not be low-rank")

    for name, (kind, enable) in plan.items():
        module = model.get_submodule(name)
        args = dict(rank=cfg.rank, alpha=cfg.alpha, dropout=cfg.dropout, scaling=cfg.scaling)
        if kind == "fused":
            args["enable"] = enable
        elif not check_rank:
            args["check_rank"] = False
        if isinstance(module, LoRAWrapper):
            module.add_adapter(adapter_name, **args)
        else:
            cls = FusedQKVWithLoRA if kind == "fused" else LinearWithLoRA
            wrapper = cls(module, adapter_name=adapter_name, **args)
            wrapper.active_adapter = active_adapter(model) or adapter_name
            _set_submodule(model, name, wrapper)
    for name in to_save:
        module = model.get_submodule(name)
        if not isinstance(module, ModulesToSaveWrapper):
            module = ModulesToSaveWrapper(module)
            module.active_adapter = active_adapter(model) or adapter_name
            _set_submodule(model, name, module)
        module.add_adapter(adapter_name)

    adapter_configs(model)[adapter_name] = cfg
    if active_adapter(model) is None:
        model.__dict__["lora_active_adapter"] = adapter_name
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
    add_adapter(model, adapter_name, _as_config(cfg, kwargs))
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
    for _, m in _saved_modules(model):
        if name in m.modules_to_save:
            m.modules_to_save[name].requires_grad_(True)


def set_active_adapter(model: nn.Module, adapter_name: str) -> None:
    """Make `adapter_name` the adapter forward uses and training updates (PEFT: set_adapter)."""
    _check_adapter(model, adapter_name)
    others = merged_adapters(model) - {adapter_name}
    if others:
        raise ValueError(f"adapter(s) {sorted(others)} are merged into the base weights; unmerge_lora first, "
                         f"otherwise {adapter_name!r} would run on top of them")
    for _, m in lora_modules(model) + _saved_modules(model):
        m.active_adapter = adapter_name
    model.__dict__["lora_active_adapter"] = adapter_name
    mark_only_active_adapter_trainable(model)


def _set_disabled(model: nn.Module, disabled: bool) -> None:
    for _, m in lora_modules(model) + _saved_modules(model):
        m.disabled = disabled


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
        _set_disabled(model, True)

    def __exit__(self, *exc):
        _set_disabled(self.model, False)
        return False


def enable_adapters(model: nn.Module) -> None:
    _set_disabled(model, False)


def delete_adapter(model: nn.Module, adapter_name: str) -> None:
    """Remove an adapter. Layers left without any adapter get their original module back."""
    _check_adapter(model, adapter_name)
    if adapter_name in merged_adapters(model):
        raise ValueError(f"adapter {adapter_name!r} is merged into the base weights; unmerge_lora first")
    for name, m in lora_modules(model):
        if adapter_name in m.lora:
            del m.lora[adapter_name]
            if len(m.lora) == 0:
                _set_submodule(model, name, m.linear)
    for name, m in _saved_modules(model):
        if adapter_name in m.modules_to_save:
            del m.modules_to_save[adapter_name]
            if len(m.modules_to_save) == 0:
                _set_submodule(model, name, m.original_module)
    del adapter_configs(model)[adapter_name]
    if active_adapter(model) == adapter_name:
        rest = sorted(adapter_configs(model))
        model.__dict__["lora_active_adapter"] = None
        if rest:
            set_active_adapter(model, rest[0])


# ---------------------------------------------------------------------------------------------
# The book's function
# ---------------------------------------------------------------------------------------------

def replace_linear_with_lora(model: nn.Module, rank: int, alpha: float, dropout: float = 0.0,
                             scaling: str = "alpha/r") -> nn.Module:
    """The book's `replace_linear_with_lora`: wrap EVERY nn.Linear (the output head too) in a
    LinearWithLoRA. Unlike `apply_lora` it freezes nothing; the book freezes the model first:

        for p in model.parameters(): p.requires_grad = False
        replace_linear_with_lora(model, rank=16, alpha=16)

    The wrapped layers are registered as adapter "default" (so save_adapter works). A layer
    narrower than the rank (the book's 768 -> 2 head at r=16) is wrapped as the book does, with
    a warning; apply_lora refuses it.
    """
    cfg = LoraConfig(rank=rank, alpha=alpha, dropout=dropout, scaling=scaling, targets=("all-linear",))
    if lora_modules(model) or adapter_configs(model):
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
        _set_submodule(model, name, LinearWithLoRA(linear, rank, alpha, dropout, scaling, freeze_base=False,
                                                   check_rank=False))
    # Record exactly what was wrapped: full module names are valid targets (PEFT-style suffixes).
    adapter_configs(model)[DEFAULT_ADAPTER] = cfg.replace(targets=tuple(names))
    model.__dict__["lora_active_adapter"] = DEFAULT_ADAPTER
    return model


# ---------------------------------------------------------------------------------------------
# What an adapter consists of
# ---------------------------------------------------------------------------------------------

def lora_state_dict(model: nn.Module, adapter_name: str | None = None) -> dict:
    """The tensors one adapter trains, under names independent of the adapter's name:

        trf_blocks.0.att.W_query.lora_A   (d_in, r)
        trf_blocks.0.att.W_query.lora_B   (r, d_out)      fused qkv: lora_A (d_in, n*r), lora_B (n, r, d)
        out_head.weight, out_head.bias    a module to save (the adapter's copy)
    """
    name = adapter_name or active_adapter(model)
    _check_adapter(model, name)
    out = {}
    for mname, m in lora_modules(model):
        if name in m.lora:
            out[f"{mname}.lora_A"] = m.lora[name].lora_A
            out[f"{mname}.lora_B"] = m.lora[name].lora_B
    for mname, m in _saved_modules(model):
        if name in m.modules_to_save:
            for key, value in m.modules_to_save[name].state_dict().items():
                out[f"{mname}.{key}"] = value
    return out


def base_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The base model's own parameters under their original names (LoRA wrappers see through:
    `...W_query.linear.weight` is listed as `...W_query.weight`); LoRA branches and modules to
    save (original and copies) are left out. Tied weights appear once."""
    lora_prefixes = tuple(n + "." for n, _ in lora_modules(model))
    saved_prefixes = tuple(n + "." for n, _ in _saved_modules(model))
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


def lora_parameter_report(model: nn.Module, depth: int = 1) -> dict:
    """Total, trainable and frozen parameters, overall and per module.

    Returns a dict: total, trainable, frozen (gpt.params.parameter_summary), lora (all LoRA
    weights, every adapter), modules_to_save (their trainable copies), per_adapter
    {name: trainable tensors of that adapter}, per_module {name: {total, trainable, frozen}}
    at `depth` levels of names, and table (gpt.params.parameter_table, printable).
    """
    report = dict(parameter_summary(model))
    report["lora"] = sum(p.numel() for _, m in lora_modules(model) for p in m.lora.parameters())
    report["modules_to_save"] = sum(p.numel() for _, m in _saved_modules(model) for p in m.modules_to_save.parameters())
    report["per_adapter"] = {name: sum(t.numel() for t in lora_state_dict(model, name).values())
                             for name in adapter_configs(model)}
    per_module: dict[str, dict[str, int]] = {}
    for name, p in model.named_parameters():
        row = per_module.setdefault(".".join(name.split(".")[:depth]), {"total": 0, "trainable": 0, "frozen": 0})
        row["total"] += p.numel()
        row["trainable" if p.requires_grad else "frozen"] += p.numel()
    report["per_module"] = per_module
    report["table"] = parameter_table(model, depth)
    return report
