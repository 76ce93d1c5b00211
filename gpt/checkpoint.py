"""Saving and loading models and training state, atomically and without pickled code.

* Model weights: safetensors, with the GPTConfig stored as JSON in the file's metadata, so a
  checkpoint is self-describing. A tied output head is stored once.
* Training state (optimizer, scheduler, step, random states) for resuming: torch.save, read back
  with `weights_only=True`, which refuses arbitrary pickled objects.
* Every write goes through common.files.atomic_write: a temporary file in the target folder, then
  renamed over the target (`os.replace` is atomic on POSIX and Windows), so an interrupted save
  never leaves a half-written file where a good one was.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from common.files import atomic_write
from gpt.config import GPTConfig
from gpt.model import GPTModel


def _tied_duplicates(model: torch.nn.Module) -> set[str]:
    """State-dict keys that alias an earlier key's storage (e.g. out_head.weight when tied)."""
    seen, dup = set(), set()
    for name, t in model.state_dict(keep_vars=True).items():
        ptr = t.data_ptr()
        if ptr in seen and t.numel() > 0:
            dup.add(name)
        seen.add(ptr)
    return dup


def save_model(model: GPTModel, path: str | Path, dtype: torch.dtype | None = None, metadata: dict | None = None) -> Path:
    """Write `model`'s weights (optionally cast, e.g. to float16 to halve the file) and config."""
    skip = _tied_duplicates(model)
    tensors = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().cpu().contiguous()
               for k, v in model.state_dict().items() if k not in skip}
    meta = {"format": "lora-from-scratch/gpt", "config": json.dumps(model.cfg.to_dict())}
    meta.update({k: str(v) for k, v in (metadata or {}).items()})
    with atomic_write(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return Path(path)


def read_checkpoint_config(path: str | Path) -> GPTConfig:
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{path} is not a readable safetensors file (truncated or corrupt?): {err}") from err
    if "config" not in meta:
        raise ValueError(f"{path} has no model config in its metadata; was it written by gpt.checkpoint.save_model?")
    return GPTConfig.from_dict(json.loads(meta["config"]))


def load_model(path: str | Path, device: str | torch.device = "cpu", **config_overrides) -> GPTModel:
    """Build a GPTModel from a checkpoint written by `save_model` (weights upcast to float32).

    config_overrides change fields that do not alter weight shapes, e.g. attention="fused"
    (the qkv weights are converted) or drop_rate=0.1.
    """
    path = Path(path)
    saved_cfg = read_checkpoint_config(path)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{path} is not a readable safetensors file (truncated or corrupt?): {err}") from err
    tensors = {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}
    cfg = saved_cfg.replace(**config_overrides)
    if cfg.attention != saved_cfg.attention:
        from gpt.model import convert_state_dict

        tensors = convert_state_dict(tensors, to=cfg.attention)
    model = GPTModel(cfg)
    expected = model.state_dict()
    tied = _tied_duplicates(model)
    missing = sorted(set(expected) - set(tensors) - tied)
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{path} does not fit {cfg}: missing keys {missing[:5]}, unexpected keys {unexpected[:5]}")
    for k, v in tensors.items():
        if v.shape != expected[k].shape:
            raise ValueError(f"{path}: {k} has shape {tuple(v.shape)}, the config expects {tuple(expected[k].shape)}")
    model.load_state_dict(tensors, strict=False)
    return model.to(device)


def save_training_state(path: str | Path, **state) -> Path:
    """torch.save a dict of tensors/numbers/state_dicts atomically (no custom classes)."""
    with atomic_write(path) as tmp:
        torch.save(state, tmp)
    return Path(path)


def load_training_state(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"training state not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # an UnpicklingError for disallowed globals, RuntimeError for truncation
        # Not torch's own text: it suggests weights_only=False, which would run pickled code.
        raise ValueError(f"cannot load training state {path}: it is truncated, corrupt or holds more than tensors "
                         f"({type(err).__name__}); start the run afresh with --no-resume (it replaces the file), "
                         f"or delete the file") from err


def describe_size(state_dict: dict) -> str:
    """A GPT state dict's size in the config's words, e.g. 'emb_dim=32, n_layers=2, context_length=64'."""
    blocks = {k.split(".")[1] for k in state_dict if k.startswith("trf_blocks.")}
    parts = []
    if "tok_emb.weight" in state_dict:
        parts.append(f"emb_dim={state_dict['tok_emb.weight'].shape[1]}")
    parts.append(f"n_layers={len(blocks)}")
    if "pos_emb.weight" in state_dict:
        parts.append(f"context_length={state_dict['pos_emb.weight'].shape[0]}")
    return ", ".join(parts)


def check_same_size(state_dict: dict, model: torch.nn.Module, path: str | Path) -> None:
    """ValueError (one line) when the weights saved in `path` (a training state) do not fit `model`:
    a run folder left by another model size. The message names both sizes and what to do."""
    mine = model.state_dict()
    differ = sorted(set(mine) ^ set(state_dict)) or [k for k in mine if mine[k].shape != state_dict[k].shape]
    if not differ:
        return
    saved, this = describe_size(state_dict), describe_size(mine)
    if saved == this:  # same sizes, other layout (e.g. qkv_bias, fused attention): name a tensor instead
        saved, this = f"{saved}; {differ[0]} differs", this
    raise ValueError(f"{path} was saved by a model of another size ({saved}) than this run's ({this}); pass "
                     f"--no-resume to start this model afresh (it replaces that file), or choose another --out")
