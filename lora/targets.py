"""Which modules a LoRA config selects: PEFT's target_modules rule, the aliases, "all-linear".

A target is either an alias for GPTModel's modules (`TARGET_ALIASES` in lora/config.py: "query",
"value", "ff", ...) or, as in PEFT's target_modules, a module-name suffix: the whole name or its
ending after a dot ("W_query" matches "trf_blocks.0.att.W_query"; "c_attn" on transformers' GPT-2;
"0" on an nn.Sequential). "all-linear" is every linear layer except the output head, as in PEFT.
GPT's names are only strings here: any nn.Module works.

`resolve_targets` answers the question without changing the model; lora/apply.py then wraps
what it returns. The helpers that list a model's LoRA wrappers and modules to save live here
too, since every other file of lora/ asks those questions.

Reference: https://github.com/huggingface/peft (tuners/tuners_utils.py: check_target_module_exists,
"all-linear").
"""

from __future__ import annotations

from torch import nn

from lora.config import FUSED_QKV_NAME, QKV_ALIASES, TARGET_ALIASES, LoraConfig
from lora.layers import EmbeddingWithLoRA, FusedQKVWithLoRA, LoRAWrapper, linear_dims
from lora.modules_to_save import ModulesToSaveWrapper

OUTPUT_HEAD_NAMES = ("out_head", "lm_head")  # never wrapped by "all-linear" (the book's and transformers' names)
FUSED_QKV_SUFFIX = f"att.{FUSED_QKV_NAME}"


def matches_target(name: str, suffix: str) -> bool:
    """PEFT's rule: the whole module name, or its ending after a dot ("W_query" matches
    "trf_blocks.0.att.W_query" but not "trf_blocks.0.att.xW_query")."""
    return name == suffix or name.endswith("." + suffix)


def is_linear_like(module: nn.Module) -> bool:
    if isinstance(module, LoRAWrapper):
        return not isinstance(module, EmbeddingWithLoRA)
    try:
        linear_dims(module)
        return True
    except TypeError:
        return False


def is_embedding(module: nn.Module) -> bool:
    """A token embedding LoRA can wrap (by name only: "all-linear" leaves embeddings alone, as in PEFT)."""
    return isinstance(module, (nn.Embedding, EmbeddingWithLoRA))


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


def saved_modules(model: nn.Module):
    """(name, wrapper) for every module to save (ModulesToSaveWrapper)."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, ModulesToSaveWrapper)]


def output_head_names(model: nn.Module) -> set[str]:
    names = set()
    get_out = getattr(model, "get_output_embeddings", None)  # transformers models
    head = get_out() if callable(get_out) else None
    for name, module in user_modules(model):
        if name.split(".")[-1] in OUTPUT_HEAD_NAMES or (head is not None and module is head):
            names.add(name)
    return names


def example_names(model: nn.Module, k: int = 6) -> list[str]:
    return [n for n, m in user_modules(model) if n and is_linear_like(m)][:k]


def resolve_targets(model: nn.Module, cfg: LoraConfig) -> tuple[dict, list[str]]:
    """Which modules a config selects, without changing the model.

    Returns (plan, to_save): plan maps a module name to ("linear", None) for a plain LoRA
    layer, ("embedding", None) for a token embedding named as a target (e.g. "tok_emb", PEFT's
    "wte") or ("fused", (q, k, v) booleans) for a fused qkv projection; to_save lists the
    modules_to_save names. Raises ValueError for an unknown target, a target that matches no
    module, a target that matches something that is not a linear layer, or a module that is
    both a target and a module to save.
    """
    modules = list(user_modules(model))
    to_save = []
    for suffix in cfg.modules_to_save:
        hits = [n for n, _ in modules if n and matches_target(n, suffix)]
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
            plan[name] = (kind, None)

    for target in cfg.targets:
        found = 0
        if target == "all-linear":
            skip = output_head_names(model) | set(to_save)
            for name, module in modules:
                if name and name not in skip and is_linear_like(module):
                    fused = matches_target(name, FUSED_QKV_SUFFIX) or isinstance(module, FusedQKVWithLoRA)
                    add(name, "fused" if fused else "linear")
                    found += 1
            if not found:  # an adapter on nothing would train nothing (PEFT refuses it too)
                raise ValueError(f"LoRA target 'all-linear' matched no linear layer in {type(model).__name__}: it "
                                 f"leaves out the output head and modules_to_save ({sorted(skip)}); name the "
                                 f"layers to adapt instead")
        elif target in TARGET_ALIASES:
            for name, module in modules:
                if not name or not is_linear_like(module):
                    continue
                if any(matches_target(name, s) for s in TARGET_ALIASES[target]):
                    add(name, "linear")
                    found += 1
                elif target in QKV_ALIASES and matches_target(name, FUSED_QKV_SUFFIX):
                    add(name, "fused", QKV_ALIASES.index(target))
                    found += 1
            if not found:
                where = " or ".join(TARGET_ALIASES[target] + ((FUSED_QKV_SUFFIX,) if target in QKV_ALIASES else ()))
                raise ValueError(f"LoRA target {target!r} matched no module in {type(model).__name__} (it looks "
                                 f"for linear layers named ...{where}); linear layers here are named like "
                                 f"{example_names(model)}")
        else:
            hits = [(n, m) for n, m in modules if n and matches_target(n, target)]
            if not hits:
                raise ValueError(f"unknown LoRA target {target!r}: not one of the aliases {sorted(TARGET_ALIASES)} "
                                 f"and no module name ends with it; linear layers here are named like "
                                 f"{example_names(model)}")
            for name, module in hits:
                if is_embedding(module):
                    add(name, "embedding")
                elif is_linear_like(module):
                    add(name, "linear")
                else:
                    raise ValueError(f"LoRA target {target!r} matches {name}, a {type(module).__name__}; LoRA wraps "
                                     f"linear layers (nn.Linear or transformers' Conv1D) and nn.Embedding")
                found += 1
    return plan, to_save


def set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put `new` where the module called `name` is."""
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
