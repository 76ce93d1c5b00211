"""Saving and loading LoRA adapters: only what was trained, plus everything needed to re-apply it.

    save_adapter(model, "runs/spam")            # runs/spam/adapter.safetensors + adapter_config.json
    save_adapter(model, "runs/spam.safetensors") # one file, the config in its metadata
    model = load_adapter(GPTModel(cfg), "runs/spam")

What is saved:
* adapter.safetensors: the adapter's lora_A / lora_B tensors and its copies of the modules
  to save (a new classification head), under names that do not depend on the adapter's name
  (see `lora_state_dict`). A few hundred KB instead of the whole model. Its metadata holds
  the config below, so this one file is the whole adapter.
* the config: the LoraConfig (rank, alpha, scaling, dropout, targets, modules_to_save), the
  base model's GPTConfig when the model has `.cfg`, a fingerprint of the frozen base weights
  (sha256 over names, dtypes, shapes and bytes, plus one short hash per tensor so a mismatch
  can be named), and a sha256 of the tensors themselves (damage detection).
* adapter_config.json (folder form only): a readable copy of that config.

Loading re-applies LoRA with the SAVED flags, so the caller repeats nothing (a pitfall
reported to PEFT: adapters loaded with other flags than they were trained with). An adapter
made for another base (other config, other weights), another rank or shape, a missing or
corrupt file: each a ValueError / FileNotFoundError that says which.

Files are written atomically with common.files (a temporary file `.{name}.{pid}.{random}.tmp`
in the same folder, then os.replace; a killed save's leftovers are removed by the next save to
the same place), so an interrupted save never leaves a half-written file behind; and since the weights file carries
its own config, an interruption between the two files of a folder leaves a complete adapter
(the new one, with a stale JSON copy that loading warns about). Nothing is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save
from torch import nn

from common.files import atomic_write_bytes, remove_orphaned_temp_files
from lora.apply import active_adapter, adapter_configs, check_adapter, filling_new_adapter, merged_adapters
from lora.config import LoraConfig
from lora.state_dict import base_parameters, lora_state_dict
from lora.targets import saved_modules

ADAPTER_WEIGHTS = "adapter.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
FORMAT = "lora-from-scratch-adapter"
FORMAT_VERSION = 1
PEFT_WEIGHTS = "adapter_model.safetensors"  # what PEFT's save_pretrained writes next to its adapter_config.json
PEFT_IMPORT_HINT = ("import it with lora.import_peft_adapter(model, path, module_names) (for transformers' GPT-2: "
                    "module_names=gpt.weights.gpt2_module_names(model.cfg))")
# GPTConfig fields that change the weights' names or shapes (drop_rate and sdpa do not).
_ARCHITECTURE_FIELDS = ("vocab_size", "context_length", "emb_dim", "n_heads", "n_layers", "qkv_bias",
                        "attention", "tie_weights")


# ---------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------

def _tensor_bytes(t: torch.Tensor) -> bytes:
    t = t.detach().to("cpu").contiguous()
    return t.view(torch.uint8).numpy().tobytes() if t.numel() else b""


def base_fingerprint(model: nn.Module, exclude: tuple[str, ...] = ()) -> dict | None:
    """A fingerprint of the frozen base weights: one 16-hex-digit sha256 per tensor (over its
    dtype, shape and bytes) and a sha256 over all of them with their names. LoRA branches and
    modules to save are left out, wrappers are seen through (base_parameters), and so are the
    modules named in `exclude` (with everything inside them). None for a model on the meta
    device (nothing to hash). About a second for GPT-2 124M on a CPU."""
    params = [(n, p) for n, p in base_parameters(model) if not _under(n, exclude)]
    if any(p.is_meta for _, p in params):
        return None
    total = hashlib.sha256()
    tensors = {}
    for name, p in params:
        h = hashlib.sha256(f"{p.dtype}|{tuple(p.shape)}|".encode() + _tensor_bytes(p)).hexdigest()
        tensors[name] = h[:16]
        total.update(f"{name}|{h}\n".encode())
    return {"sha256": total.hexdigest(), "tensors": tensors}


def _under(name: str, modules) -> bool:
    return any(name == m or name.startswith(m + ".") for m in modules)


def _adapter_files(path: str | os.PathLike) -> tuple[Path, Path | None]:
    """(weights file, config file or None when the config lives in the weights' metadata)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return path, None
    return path / ADAPTER_WEIGHTS, path / ADAPTER_CONFIG


# ---------------------------------------------------------------------------------------------
# Save
# ---------------------------------------------------------------------------------------------

def save_adapter(model: nn.Module, path: str | os.PathLike, name: str | None = None) -> Path:
    """Save adapter `name` (default: the active one) to a folder or a single .safetensors file.

    A path ending in `.safetensors` is one self-contained file (config in its metadata);
    anything else is a folder with adapter.safetensors and adapter_config.json (created if
    needed). Returns the path of the weights file.
    """
    name = name or active_adapter(model)
    if name is None:
        raise ValueError("this model has no LoRA adapter to save; apply_lora first")
    check_adapter(model, name)
    if merged_adapters(model):
        raise ValueError(f"adapter(s) {sorted(merged_adapters(model))} are merged into the base weights; "
                         f"unmerge_lora(model) before saving (the base fingerprint must be of the unmerged base)")
    weights_path, config_path = _adapter_files(path)
    if config_path is not None:
        if weights_path.parent.exists() and not weights_path.parent.is_dir():
            raise ValueError(f"{weights_path.parent} is a file; give a folder or a path ending in .safetensors")
        weights_path.parent.mkdir(parents=True, exist_ok=True)
    elif not weights_path.parent.is_dir():
        raise FileNotFoundError(f"folder {weights_path.parent} does not exist")

    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in lora_state_dict(model, name).items()}
    gpt_cfg = getattr(model, "cfg", None)
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "adapter_name": name,
        "lora": adapter_configs(model)[name].to_dict(),
        "lora_modules": sorted({k.rsplit(".", 1)[0] for k in tensors if k.endswith((".lora_A", ".lora_B"))}),
        "modules_to_save": {n: {k[len(n) + 1:]: list(v.shape) for k, v in tensors.items() if k.startswith(n + ".")}
                            for n, m in saved_modules(model) if name in m.modules_to_save},
        "base_model": {
            "class": type(model).__name__,
            "gpt_config": gpt_cfg.to_dict() if hasattr(gpt_cfg, "to_dict") else None,
            "fingerprint": base_fingerprint(model),
        },
    }
    config["tensors_sha256"] = tensors_digest(tensors)
    # The weights file carries its own config: it alone is the adapter, complete or absent
    # (written atomically). adapter_config.json, written second, is a readable copy; a save
    # interrupted between the two files leaves a stale copy, which loading notices and ignores.
    blob = save(tensors, metadata={"format": "pt", "adapter_config": json.dumps(config, sort_keys=True)})
    for target in (weights_path, config_path):
        if target is not None:
            remove_orphaned_temp_files(target.parent, name=target.name)  # what a killed earlier save left
    atomic_write_bytes(weights_path, blob)
    if config_path is not None:
        atomic_write_bytes(config_path, (json.dumps(config, indent=2, sort_keys=True) + "\n").encode())
    return weights_path


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over the tensors' names, dtypes, shapes and bytes, in name order: detects a file
    whose data was damaged even when its header still parses."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name]
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(_tensor_bytes(t))
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# Load
# ---------------------------------------------------------------------------------------------

def read_adapter(path: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config, tensors) of a saved adapter, checked for presence, format and integrity.

    The config is the one stored inside the weights file. In a folder, adapter_config.json is
    only a readable copy: if it disagrees (a save interrupted between the two files, or an
    edit), a warning says so and the weights file's own config is used.
    """
    weights_path, config_path = _adapter_files(path)
    if config_path is not None and not weights_path.is_file() and (Path(path) / PEFT_WEIGHTS).is_file():
        raise ValueError(f"{path} holds a PEFT adapter ({PEFT_WEIGHTS} + {ADAPTER_CONFIG}), not one written by "
                         f"save_adapter; {PEFT_IMPORT_HINT}")
    if not weights_path.is_file():
        where = f"{ADAPTER_WEIGHTS} (and {ADAPTER_CONFIG})" if config_path else "a .safetensors file"
        raise FileNotFoundError(f"no LoRA adapter at {path}: {weights_path} is missing (expected {where})")
    blob = weights_path.read_bytes()
    try:
        tensors = load(blob)
        config = json.loads(_safetensors_metadata(blob).get("adapter_config", "null") or "null")
    except (SafetensorError, ValueError, OSError) as e:  # (json.JSONDecodeError is a ValueError)
        raise ValueError(f"{weights_path} is not a readable safetensors file (truncated or corrupt?): {e}") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        found = config.get("format") if isinstance(config, dict) else None
        raise ValueError(f"{weights_path} is not a {FORMAT} (no adapter config in its metadata, format field: "
                         f"{found!r}); if it is a PEFT adapter: {PEFT_IMPORT_HINT}")
    if config.get("tensors_sha256") != tensors_digest(tensors):
        raise ValueError(f"{weights_path}: the tensor data does not match the sha256 recorded when it was saved "
                         f"(the file is corrupt)")
    if config_path is not None:
        try:
            copy = json.loads(config_path.read_text())
        except FileNotFoundError:
            copy = config  # the readable copy is optional
        except (json.JSONDecodeError, UnicodeDecodeError):
            copy = None
        if copy != config:
            warnings.warn(f"{config_path} does not match the config stored in {weights_path.name} (a save "
                          f"interrupted between the two files, or an edited copy); using the one in "
                          f"{weights_path.name}", stacklevel=2)
    return config, tensors


def _safetensors_metadata(blob: bytes) -> dict:
    # The header: 8 bytes little-endian length, then JSON; "__metadata__" holds our strings.
    n = int.from_bytes(blob[:8], "little")
    return json.loads(blob[8:8 + n]).get("__metadata__", {}) or {}


def _check_base(model: nn.Module, config: dict) -> None:
    base = config.get("base_model", {})
    saved_cfg = base.get("gpt_config")
    model_cfg = getattr(model, "cfg", None)
    if saved_cfg and hasattr(model_cfg, "to_dict"):
        mine = model_cfg.to_dict()
        diff = [f"{k}={saved_cfg.get(k)!r} (this model: {mine.get(k)!r})" for k in _ARCHITECTURE_FIELDS
                if k in saved_cfg and saved_cfg.get(k) != mine.get(k)]
        if diff:
            raise ValueError("this adapter was made for another base model: " + ", ".join(diff))
    saved_fp = base.get("fingerprint")
    if saved_fp is None:
        return
    # Modules the adapter brings its own copy of (a new head) are not part of the base it needs;
    # neither are this model's own modules to save.
    skip = tuple(config.get("modules_to_save", {})) + tuple(n for n, _ in saved_modules(model))
    fp = base_fingerprint(model, exclude=skip)
    if fp is None:
        return
    saved_t = {n: h for n, h in saved_fp["tensors"].items() if not _under(n, skip)}
    mine_t = fp["tensors"]
    differ = [n for n in saved_t if n in mine_t and saved_t[n] != mine_t[n]]
    missing = sorted(set(saved_t) - set(mine_t))
    extra = sorted(set(mine_t) - set(saved_t))
    if not (differ or missing or extra):
        return
    parts = []
    if differ:
        parts.append(f"different values in {differ[:5]}" + (f" and {len(differ) - 5} more" if len(differ) > 5 else ""))
    if missing:
        parts.append(f"parameters missing here: {missing[:5]}")
    if extra:
        parts.append(f"parameters the adapter's base did not have: {extra[:5]}")
    hint = "; unmerge_lora first" if merged_adapters(model) else ""
    raise ValueError("this adapter was made for another base model (weights fingerprint differs: "
                     + "; ".join(parts) + f"){hint}; pass check_base=False to load it anyway")


def load_adapter(model: nn.Module, path: str | os.PathLike, adapter_name: str | None = None,
                 trainable: bool = False, check_base: bool = True) -> nn.Module:
    """Load a saved adapter onto `model` (a base model, possibly carrying other adapters).

    LoRA is applied with the saved LoraConfig, then the saved tensors are copied in. The adapter
    gets its saved name unless `adapter_name` is given; the first adapter on a model becomes the
    active one (otherwise call set_active_adapter). `trainable=False` (default, for inference)
    freezes every parameter; True makes the active adapter trainable again. A module to save
    whose saved shape differs from the model's (a 2-class head for a base with an LM head) is
    restored as a new nn.Linear of the saved shape, used only while this adapter is active.
    Returns the model.
    """
    config, tensors = read_adapter(path)
    if merged_adapters(model):
        raise ValueError(f"adapter(s) {sorted(merged_adapters(model))} are merged into this model's weights; "
                         f"unmerge_lora(model) before loading another adapter")
    if check_base:
        _check_base(model, config)
    name = adapter_name or config.get("adapter_name") or "default"
    try:
        cfg = LoraConfig.from_dict(config["lora"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path}: the adapter's LoRA config is invalid: {e}") from None
    if name in adapter_configs(model):
        raise ValueError(f"this model already has an adapter named {name!r}; pass adapter_name='...' to load "
                         f"this one under another name")
    with filling_new_adapter(model, name, cfg, trainable, check_rank=False):  # the saved tensors fix the shapes
        _restore_heads(model, name, config, tensors)
        _copy_in(model, name, cfg, tensors)
    return model


def _restore_heads(model, name, config, tensors):
    for mname, m in saved_modules(model):
        if name not in m.modules_to_save:
            continue
        copy = m.modules_to_save[name]
        saved = {k[len(mname) + 1:]: t for k, t in tensors.items() if k.startswith(mname + ".")}
        mine = copy.state_dict()
        if "weight" in saved and isinstance(copy, nn.Linear) and mine["weight"].shape != saved["weight"].shape:
            out_f, in_f = saved["weight"].shape
            new = nn.Linear(in_f, out_f, bias="bias" in saved, device=mine["weight"].device,
                            dtype=mine["weight"].dtype)
            new.train(copy.training)
            m.modules_to_save[name] = new.requires_grad_(True)


def _copy_in(model, name, cfg, tensors):
    expected = lora_state_dict(model, name)
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ValueError(f"the adapter's tensors do not fit this model: missing {missing[:6]}, unexpected "
                         f"{unexpected[:6]} (an adapter for another architecture or target list?)")
    for key, target in expected.items():
        t = tensors[key]
        if tuple(t.shape) == tuple(target.shape):
            continue
        rank_dim = -1 if key.endswith(".lora_A") else -2 if key.endswith(".lora_B") else None
        only_rank = (rank_dim is not None and t.dim() == target.dim()
                     and [s for i, s in enumerate(t.shape) if i != t.dim() + rank_dim]
                     == [s for i, s in enumerate(target.shape) if i != target.dim() + rank_dim])
        what = (f"rank mismatch (rank dimension {t.shape[rank_dim]} in the file, {target.shape[rank_dim]} "
                f"expected from rank={cfg.rank} in the adapter's config)"
                if only_rank else "shape mismatch (an adapter for a model of another width?)")
        raise ValueError(f"{key}: the adapter file has shape {tuple(t.shape)} but this model expects "
                         f"{tuple(target.shape)}: {what}")
    with torch.no_grad():
        for key, target in expected.items():
            target.copy_(tensors[key])
