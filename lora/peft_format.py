"""LoRA adapters in PEFT's format, out and in, for a model whose module names map onto transformers'.

    names = gpt.weights.gpt2_module_names(model.cfg)            # transformers' GPT-2 -> our GPTModel
    export_peft_adapter(model, "out/peft-spam", names, base_model_name_or_path="gpt2")
    import_peft_adapter(model, "someone/peft-gpt2-lora", names)  # a folder PEFT's save_pretrained wrote

PEFT writes two files (peft/utils/save_and_load.py, peft/tuners/lora/config.py):
* adapter_model.safetensors, keys like
  `base_model.model.transformer.h.0.attn.c_attn.lora_A.weight` (r, d_in) and `...lora_B.weight`
  (d_out, r): the weights of two nn.Linear layers, i.e. our A and B transposed; a module to
  save as `base_model.model.lm_head.weight`.
* adapter_config.json: peft_type "LORA", r, lora_alpha (scale = lora_alpha / r, or / sqrt(r)
  with use_rslora), lora_dropout, target_modules (module-name suffixes), rank_pattern /
  alpha_pattern for modules whose rank or alpha differs (keys matched like target_modules, as
  regular expressions), modules_to_save, and fan_in_fan_out=True for GPT-2, whose layers are
  transformers' Conv1D (weight stored (d_in, d_out)). That flag only tells PEFT how to merge
  into a Conv1D weight: lora_A / lora_B are nn.Linear weights either way, so the factors load
  the same into our nn.Linear layers (their shapes are checked against each layer's d_in, d_out).
  A token embedding (GPT-2's wte) is PEFT's `Embedding` layer: `...wte.lora_embedding_A` (r, V) and
  `...wte.lora_embedding_B` (d, r), again our A and B transposed (lora/layers.py EmbeddingWithLoRA).

`module_names` says which of our modules each of theirs is: {their module name: our module
name}, or for a fused projection that we keep as separate layers, {their name: (our name for
its first third of output columns, second, third)}: GPT-2's c_attn is [q | k | v], our
separate layout has W_query, W_key, W_value. lora/ knows no model's names; the caller passes
the map (gpt.weights.gpt2_module_names for transformers' GPT-2).

The fused projection needs one thought. PEFT puts ONE LoRA on c_attn: A (R, d_in), B (3d, R).
* Export: ours has one (A_j, B_j) pair of rank r per enabled projection. Both are the same
  function if PEFT's A is our A blocks side by side (R = n * r) and its B is block-diagonal:
  B_j in the rows of its projection's slice, zeros elsewhere (also zeros for a disabled
  projection). So LoRA at rank r on q and v exports as a PEFT LoRA of rank 2r on c_attn (set
  in rank_pattern), with alpha chosen so that PEFT's lora_alpha / R equals our scale.
* Import onto our fused qkv: the same LoRA on the whole projection (a LinearWithLoRA on
  att.qkv), rank R, exactly PEFT's. Onto separate W_query/W_key/W_value: each gets A and its
  third of B's rows, rank R (columns of A whose B entries are all zero in that third are
  dropped, so an adapter exported from the separate layout comes back at its own ranks).
Logits equal peft.PeftModel's within 1e-5 (tests/test_lora_peft.py).
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save
from torch import nn

from common.files import atomic_write_bytes
from lora.apply import active_adapter, adapter_configs, check_adapter, filling_new_adapter
from lora.config import LoraConfig
from lora.layers import EmbeddingWithLoRA, FusedQKVWithLoRA, LoRAWrapper, embedding_dims, linear_dims
from lora.targets import OUTPUT_HEAD_NAMES, lora_modules, matches_target, saved_modules

PEFT_WEIGHTS = "adapter_model.safetensors"
PEFT_CONFIG = "adapter_config.json"
PEFT_PREFIX = "base_model.model."  # PeftModel -> LoraModel -> the transformers model
EMBEDDING = "embedding"  # the slot of a piece that is a token embedding's LoRA (PEFT's lora_embedding_A/B)


def _check_names(module_names) -> dict:
    if not isinstance(module_names, dict) or not module_names:
        raise TypeError("module_names must be a dict {their module name: our module name, or (q, k, v) names}, "
                        "e.g. gpt.weights.gpt2_module_names(model.cfg) for transformers' GPT-2")
    for hf, ours in module_names.items():
        if not (isinstance(ours, str) or (isinstance(ours, tuple) and len(ours) == 3
                                          and all(isinstance(o, str) for o in ours))):
            raise TypeError(f"module_names[{hf!r}] must be a module name or a tuple of three, got {ours!r}")
    return module_names


def _ours_to_theirs(module_names: dict) -> dict[str, tuple[str, int | None]]:
    """our module name -> (their module name, which third of its output, or None for all of it)."""
    out = {}
    for hf, ours in module_names.items():
        for slot, name in (enumerate(ours) if isinstance(ours, tuple) else [(None, ours)]):
            out[name] = (hf, slot)
    return out


# ---------------------------------------------------------------------------------------------
# Out: our adapter -> PEFT's files
# ---------------------------------------------------------------------------------------------

def _pieces(model: nn.Module, name: str, theirs: dict) -> dict[str, list]:
    """their module name -> [(slot or None, A (d_in, r), B (r, d_out), scale), ...] for adapter `name`."""
    out: dict[str, list] = {}
    for mname, m in lora_modules(model):
        if name not in m.lora:
            continue
        if mname not in theirs:
            raise ValueError(f"cannot export LoRA on {mname!r} to PEFT's format: module_names gives it no "
                             f"counterpart (it maps e.g. {sorted(theirs)[:4]})")
        hf, slot = theirs[mname]
        branch = m.lora[name]
        if isinstance(m, EmbeddingWithLoRA):
            out.setdefault(hf, []).append((EMBEDDING, branch.lora_A, branch.lora_B, branch.scale))
        elif isinstance(m, FusedQKVWithLoRA):
            n, r, _ = branch.lora_B.shape
            for j, s in enumerate(branch.enabled_slots):
                out.setdefault(hf, []).append((s, branch.lora_A[:, j * r:(j + 1) * r], branch.lora_B[j], branch.scale))
        else:
            out.setdefault(hf, []).append((slot, branch.lora_A, branch.lora_B, branch.scale))
    return out


def _combine(pieces: list) -> tuple[torch.Tensor, torch.Tensor, float]:
    """PEFT's (lora_A.weight (R, d_in), lora_B.weight (d_out, R), scale) for one module."""
    scale = pieces[0][3]
    if len(pieces) == 1 and pieces[0][0] is None:
        _, A, B, _ = pieces[0]
        return A.T.contiguous(), B.T.contiguous(), scale
    if any(slot is None for slot, _, _, _ in pieces):
        raise ValueError("a fused projection has both a whole-layer LoRA and per-projection LoRA")
    d = pieces[0][2].shape[1]  # width of one projection
    R = sum(A.shape[1] for _, A, _, _ in pieces)
    A_peft = torch.cat([A for _, A, _, _ in pieces], dim=1).T.contiguous()  # (R, d_in)
    B_peft = torch.zeros(3 * d, R, dtype=pieces[0][2].dtype, device=pieces[0][2].device)  # (3d, R)
    col = 0
    for slot, A, B, s in pieces:  # block-diagonal: projection `slot` reads only its own r columns
        r = A.shape[1]
        B_peft[slot * d:(slot + 1) * d, col:col + r] = B.T * (s / scale)  # one scale per PEFT module
        col += r
    return A_peft, B_peft, scale


def _target_keys(names: list[str], every_name: list[str]) -> dict[str, list[str]]:
    """Group their module names under short target_modules entries ("c_attn", "attn.c_proj")
    where the short name selects exactly that group among `every_name`; else the full names."""
    groups: dict[str, list[str]] = {}
    for full in names:
        groups.setdefault(".".join(full.split(".")[-2:]), []).append(full)
    out: dict[str, list[str]] = {}
    for key, fulls in groups.items():
        if sorted(n for n in every_name if matches_target(n, key)) != sorted(fulls):
            out.update({f: [f] for f in fulls})
            continue
        last = key.split(".")[-1]
        out[last if sorted(n for n in every_name if matches_target(n, last)) == sorted(fulls) else key] = fulls
    return out


def export_peft_adapter(model: nn.Module, out_dir: str | os.PathLike, module_names: dict,
                        base_model_name_or_path: str | None = None, adapter_name: str | None = None) -> Path:
    """Write adapter `adapter_name` (default: the active one) in PEFT's LoRA format, under the
    module names `module_names` gives (for transformers' GPT-2: gpt.weights.gpt2_module_names(model.cfg)).
    Returns the folder."""
    module_names = _check_names(module_names)
    name = adapter_name or active_adapter(model)
    if name is None:
        raise ValueError("this model has no LoRA adapter to export; apply_lora first")
    check_adapter(model, name)
    cfg = adapter_configs(model)[name]
    theirs = _ours_to_theirs(module_names)
    pieces = _pieces(model, name, theirs)
    if not pieces:
        raise ValueError(f"adapter {name!r} has no LoRA layers to export")

    tensors, ranks, scales = {}, {}, {}
    for hf, parts in pieces.items():
        if parts[0][0] == EMBEDDING:  # PEFT's Embedding keeps its factors as plain parameters
            _, A, B, scales[hf] = parts[0]
            A, B, names = A.T.contiguous(), B.T.contiguous(), ("lora_embedding_A", "lora_embedding_B")
        else:
            A, B, scales[hf] = _combine(parts)
            names = ("lora_A.weight", "lora_B.weight")
        tensors[f"{PEFT_PREFIX}{hf}.{names[0]}"] = A.detach().to("cpu", torch.float32)  # (R, d_in), embedding (R, V)
        tensors[f"{PEFT_PREFIX}{hf}.{names[1]}"] = B.detach().to("cpu", torch.float32)  # (d_out, R), embedding (d, R)
        ranks[hf] = A.shape[0]

    to_save = []
    for mname, m in saved_modules(model):
        if name not in m.modules_to_save:
            continue
        head, original = m.modules_to_save[name], m.original_module
        hf = theirs.get(mname, (None, None))[0]
        if hf not in OUTPUT_HEAD_NAMES or not isinstance(head, nn.Linear) or head.bias is not None or \
                head.weight.shape != original.weight.shape:
            raise ValueError(f"cannot export module to save {mname!r} to PEFT's format: only an LM head "
                             f"(emb_dim -> vocab_size, no bias, mapped to lm_head) has a GPT2LMHeadModel counterpart; "
                             f"a classification head does not")
        tensors[f"{PEFT_PREFIX}{hf}.weight"] = head.weight.detach().to("cpu", torch.float32).contiguous()
        to_save.append(hf)

    # PEFT computes scale = lora_alpha / r per module; choose lora_alpha so that equals ours.
    lora_alpha = cfg.alpha if cfg.scaling == "alpha/r" else cfg.scale * cfg.rank
    targets = _target_keys(sorted(pieces), sorted(module_names))
    for key in [k for k, fulls in targets.items()
                if len(fulls) > 1 and len({(ranks[f], scales[f]) for f in fulls}) > 1]:
        targets.update({f: [f] for f in targets.pop(key)})  # ranks or scales differ within a group
    rank_pattern, alpha_pattern = {}, {}
    for key, fulls in targets.items():
        R, scale = ranks[fulls[0]], scales[fulls[0]]
        if R != cfg.rank:
            rank_pattern[key] = R
        if not math.isclose(scale * R, lora_alpha, rel_tol=1e-12):
            alpha_pattern[key] = scale * R

    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_name_or_path,
        "r": cfg.rank,
        "lora_alpha": lora_alpha,
        "lora_dropout": cfg.dropout,
        "target_modules": sorted(targets),
        "rank_pattern": rank_pattern,
        "alpha_pattern": alpha_pattern,
        "fan_in_fan_out": True,  # GPT-2's Conv1D stores weights (d_in, d_out); PEFT flips it for nn.Linear
        "bias": "none",
        "use_rslora": False,  # our scale is folded into lora_alpha, whatever our scaling convention
        "use_dora": False,
        "init_lora_weights": True,
        "modules_to_save": to_save or None,
        "inference_mode": True,
    }
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"{out_dir} is a file; give a folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out_dir / PEFT_WEIGHTS, save(tensors, metadata={"format": "pt"}))
    atomic_write_bytes(out_dir / PEFT_CONFIG, (json.dumps(config, indent=2) + "\n").encode())
    return out_dir


# ---------------------------------------------------------------------------------------------
# In: PEFT's files -> an adapter on our model
# ---------------------------------------------------------------------------------------------

# PEFT LoRA options whose effect this import does not reproduce: refused rather than loaded wrong.
_UNSUPPORTED = {"use_dora": False, "lora_bias": False, "bias": "none", "layer_replication": None,
                "target_parameters": None, "trainable_token_indices": None, "use_qalora": False,
                "alora_invocation_tokens": None}


def read_peft_adapter(path: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor]]:
    """(adapter_config.json as a dict, adapter_model.safetensors' tensors) of a PEFT LoRA folder, checked."""
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"no PEFT adapter at {folder}: give the folder PEFT's save_pretrained wrote "
                                f"({PEFT_CONFIG} + {PEFT_WEIGHTS})")
    if not (folder / PEFT_WEIGHTS).is_file():
        found = sorted(p.name for p in folder.iterdir())
        pickled = " (adapter_model.bin is a pickle, which this project never loads: save with " \
                  "safe_serialization=True)" if "adapter_model.bin" in found else ""
        raise FileNotFoundError(f"no {PEFT_WEIGHTS} in {folder} (it holds {found}){pickled}")
    try:
        config = json.loads((folder / PEFT_CONFIG).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"no {PEFT_CONFIG} in {folder}: PEFT writes it next to {PEFT_WEIGHTS}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{folder / PEFT_CONFIG} is not valid JSON: {e}") from None
    if not isinstance(config, dict) or config.get("peft_type") != "LORA":
        found = config.get("peft_type") if isinstance(config, dict) else None
        raise ValueError(f"{folder / PEFT_CONFIG}: peft_type is {found!r}; only PEFT's LoRA adapters (\"LORA\") "
                         f"can be imported")
    for key, fine in _UNSUPPORTED.items():
        value = config.get(key, fine)
        if value != fine and value not in (None, False, {}, []):
            dora = " (a DoRA adapter: load it with peft_methods.import_peft_dora)" if key == "use_dora" else ""
            raise ValueError(f"{folder / PEFT_CONFIG}: {key}={value!r} is not supported by this LoRA (only "
                             f"{key}={fine!r}); the adapter would load but compute something else{dora}")
    try:
        tensors = load((folder / PEFT_WEIGHTS).read_bytes())
    except SafetensorError as e:
        raise ValueError(f"{folder / PEFT_WEIGHTS} is not a readable safetensors file (truncated or corrupt?): "
                         f"{e}") from None
    return config, tensors


def _pattern_value(patterns: dict, module_name: str, default):
    for key, value in (patterns or {}).items():  # PEFT's get_pattern_key: the first key that matches
        if re.match(rf"(.*\.)?({key})$", module_name):
            return value
    return default


def _dims(model: nn.Module, name: str) -> tuple[int, int]:
    try:
        module = model.get_submodule(name)
    except AttributeError:
        raise ValueError(f"module_names maps a PEFT module to {name!r}, which this model does not have") from None
    if isinstance(module, LoRAWrapper):
        return module.d_in, module.d_out
    return (embedding_dims if isinstance(module, nn.Embedding) else linear_dims)(module)[:2]


def import_peft_adapter(model: nn.Module, path: str | os.PathLike, module_names: dict,
                        adapter_name: str | None = None, trainable: bool = False) -> nn.Module:
    """Load a PEFT LoRA adapter (the folder PEFT's save_pretrained wrote) onto `model` as a LoRA adapter.

    module_names: {their module name: our module name, or (q, k, v) names} (for transformers'
    GPT-2: gpt.weights.gpt2_module_names(model.cfg), either attention layout). The adapter is
    added under `adapter_name` (default "default") with a LoraConfig that reproduces PEFT's
    ranks and scales per module (rank_pattern / alpha_pattern by full module name) and is
    thereafter an adapter like any other: save_adapter, merge_lora, set_active_adapter.
    `trainable=False` (default) freezes every parameter. Returns the model.
    """
    module_names = _check_names(module_names)
    config, tensors = read_peft_adapter(path)
    r, lora_alpha = config.get("r", 8), config.get("lora_alpha", 8)
    rank_pattern, alpha_pattern = config.get("rank_pattern") or {}, config.get("alpha_pattern") or {}

    def scale_of(hf: str, R: int) -> float:
        alpha = _pattern_value(alpha_pattern, hf, lora_alpha)
        return alpha / math.sqrt(R) if config.get("use_rslora") else alpha / R

    lora, saved = {}, {}  # their module -> {"A": ..., "B": ...};  their module -> {param: tensor}
    for key, t in tensors.items():
        k = key[len(PEFT_PREFIX):] if key.startswith(PEFT_PREFIX) else key
        m = re.fullmatch(r"(.+)\.lora_([AB])\.weight", k) or re.fullmatch(r"(.+)\.lora_embedding_([AB])", k)
        if m:
            lora.setdefault(m.group(1), {})[m.group(2)] = t
            continue
        module = max((n for n in module_names if k.startswith(n + ".")), key=len, default=None)
        if module is None or not any(matches_target(module, s) for s in config.get("modules_to_save") or ()):
            raise ValueError(f"{path}: tensor {key!r} is neither a LoRA factor (lora_A / lora_B) nor part of a "
                             f"module in modules_to_save {config.get('modules_to_save')} that module_names maps")
        saved.setdefault(module, {})[k[len(module) + 1:]] = t
    if not lora:
        raise ValueError(f"{path}: no lora_A / lora_B tensors in {PEFT_WEIGHTS}")

    plan = {}  # our module -> (A (d_in, r), B (r, d_out), rank, alpha for our "alpha/r")
    unknown = sorted(hf for hf in lora if hf not in module_names)
    if unknown:
        raise ValueError(f"{path}: PEFT modules {unknown[:4]} have no counterpart in module_names (it maps e.g. "
                         f"{sorted(module_names)[:4]}); is this an adapter for another model?")
    for hf, factors in sorted(lora.items()):
        if set(factors) != {"A", "B"}:
            raise ValueError(f"{path}: {hf} has only lora_{''.join(factors)}; both lora_A and lora_B are needed")
        # (R, d_in), (d_out, R): nn.Linear weights, whatever fan_in_fan_out says; an embedding's (R, V), (d, R)
        A, B = factors["A"], factors["B"]
        R = A.shape[0]
        expected = _pattern_value(rank_pattern, hf, r)
        if A.dim() != 2 or B.dim() != 2 or B.shape[1] != R or R != expected:
            raise ValueError(f"{path}: {hf} has lora_A {tuple(A.shape)} and lora_B {tuple(B.shape)}, which do not "
                             f"make a rank-{expected} LoRA (r / rank_pattern in {PEFT_CONFIG})")
        scale, ours = scale_of(hf, R), module_names[hf]
        if isinstance(ours, str):
            parts = [(ours, A, B)]
        else:
            d = B.shape[0] // 3
            if 3 * d != B.shape[0]:
                raise ValueError(f"{path}: {hf}'s output width {B.shape[0]} does not split into three")
            parts = []
            for slot, name in enumerate(ours):
                B_s = B[slot * d:(slot + 1) * d]
                keep = B_s.abs().sum(0) != 0  # columns of A that reach this third
                if keep.any():
                    parts.append((name, A[keep], B_s[:, keep]))
        for name, A_n, B_n in parts:
            d_in, d_out = _dims(model, name)
            if (A_n.shape[1], B_n.shape[0]) != (d_in, d_out):
                raise ValueError(f"{path}: {hf} is {A_n.shape[1]} -> {B_n.shape[0]} but {name} here is "
                                 f"{d_in} -> {d_out} (an adapter for a model of another width?)")
            plan[name] = (A_n.T, B_n.T, A_n.shape[0], scale * A_n.shape[0])

    to_save = {}
    for hf, state in saved.items():
        ours = module_names[hf]
        if not isinstance(ours, str):
            raise ValueError(f"{path}: module to save {hf} maps to three modules here; only whole modules can be saved")
        to_save[ours] = state

    base_alpha = lora_alpha / math.sqrt(r) * r if config.get("use_rslora") else float(lora_alpha)
    cfg = LoraConfig(rank=r, alpha=base_alpha, dropout=float(config.get("lora_dropout") or 0.0), scaling="alpha/r",
                     targets=tuple(sorted(plan)), modules_to_save=tuple(sorted(to_save)),
                     rank_pattern={re.escape(n): p[2] for n, p in sorted(plan.items()) if p[2] != r},
                     alpha_pattern={re.escape(n): p[3] for n, p in sorted(plan.items())
                                    if not math.isclose(p[3] / p[2], base_alpha / r, rel_tol=1e-12)})
    name = adapter_name or "default"
    if name in adapter_configs(model):
        raise ValueError(f"this model already has an adapter named {name!r}; pass adapter_name='...' to import "
                         f"this one under another name")
    with filling_new_adapter(model, name, cfg, trainable), torch.no_grad():
        for mname, (A_ours, B_ours, _, _) in plan.items():
            branch = model.get_submodule(mname).lora[name]
            branch.lora_A.copy_(A_ours)
            branch.lora_B.copy_(B_ours)
        for mname, state in to_save.items():
            copy = model.get_submodule(mname).modules_to_save[name]
            mine = copy.state_dict()
            for k, t in state.items():
                if k in mine and t.dim() == 2 and t.shape != mine[k].shape and t.T.shape == mine[k].shape:
                    state[k] = t.T  # a Conv1D weight (fan_in_fan_out) into our nn.Linear
            copy.load_state_dict(state)
    return model
