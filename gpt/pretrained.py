"""Which pre-trained model to start from, named by one string (every chapter, script and fine-tuning run).

    "data/gpt-mini"           the model pre-trained offline and shipped in the repo (the default),
                              or any folder/file written by gpt.checkpoint.save_model
    "gpt2-small" ... "gpt2-xl" OpenAI's GPT-2 from the local cache (gpt/download.py fetches it when
                              online), or a folder with a Hugging Face model.safetensors + config.json
    "random", "random:gpt-tiny" a randomly initialised model of a preset (default gpt-mini), drawn
                              from torch.manual_seed(seed): the control that shows what pre-training buys

A fine-tuned model saves the string it started from, so that the same base can be rebuilt later
exactly; a random base is rebuilt from its seed. (A saved adapter also carries a fingerprint of the
base weights, which checks that it really is the same base.)
"""

from __future__ import annotations

from pathlib import Path

import torch

from gpt.checkpoint import load_model, read_checkpoint_config
from gpt.config import GPTConfig
from gpt.model import GPTModel

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_BASE = "data/gpt-mini"
GPT2_NAMES = ("gpt2-small", "gpt2-medium", "gpt2-large", "gpt2-xl")
CHECKPOINT_FILE = "model.safetensors"


def _existing_path(spec: str) -> Path | None:
    """`spec` as a path, relative to the working directory or else to the repository root."""
    for candidate in (Path(spec).expanduser(), ROOT / spec):
        if candidate.exists():
            return candidate
    return None


def _is_our_checkpoint(path: Path) -> bool:
    """True for a file written by gpt.checkpoint.save_model (config in its metadata)."""
    try:
        read_checkpoint_config(path)
        return True
    except ValueError:
        return False


def describe_base(spec: str) -> dict:
    """What `spec` names: {"kind": "checkpoint" | "gpt2" | "random", "path" or "preset"}; raises
    FileNotFoundError (with what to do) when it names nothing that exists."""
    if spec == "random" or spec.startswith("random:"):
        preset = spec.partition(":")[2] or "gpt-mini"
        GPTConfig.from_preset(preset)  # ValueError for an unknown preset
        return {"kind": "random", "preset": preset}
    path = _existing_path(spec)
    if path is not None:
        weights = path / CHECKPOINT_FILE if path.is_dir() else path
        if not weights.is_file():
            raise FileNotFoundError(f"{path} has no {CHECKPOINT_FILE}")
        if _is_our_checkpoint(weights):
            return {"kind": "checkpoint", "path": str(weights)}
        return {"kind": "gpt2", "path": str(path)}  # a Hugging Face GPT-2 file or folder
    if spec in GPT2_NAMES:
        return {"kind": "gpt2", "path": spec}
    hint = (" It ships with the repository (git checkout data/gpt-mini); to remake it, run the two "
            "scripts/pretrain.py commands under 'remake' in its manifest.json, or use --model random / gpt2-small."
            if Path(spec).name == "gpt-mini" else "")
    raise FileNotFoundError(f"base model {spec!r} not found: not a file or folder (here or in {ROOT}), not one of "
                            f"{list(GPT2_NAMES)}, not 'random[:preset]'.{hint}")


def load_base(spec: str = DEFAULT_BASE, attention: str = "separate", drop_rate: float = 0.0, seed: int = 123,
              device: str | torch.device = "cpu", download: bool = False) -> GPTModel:
    """Build the base GPTModel that `spec` names (see the module docstring), with the given attention
    layout ("separate" or "fused": same function) and dropout, in train mode on `device`.
    seed: only for a random base (its weights are drawn after torch.manual_seed(seed))."""
    info = describe_base(spec)
    if info["kind"] == "random":
        torch.manual_seed(seed)
        model = GPTModel(GPTConfig.from_preset(info["preset"], attention=attention, drop_rate=drop_rate))
    elif info["kind"] == "checkpoint":
        model = load_model(info["path"], attention=attention, drop_rate=drop_rate)
    else:
        from gpt.weights import load_gpt2

        model = load_gpt2(info["path"], attention=attention, download=download, drop_rate=drop_rate)
    return model.to(device).train()


__all__ = ["DEFAULT_BASE", "GPT2_NAMES", "describe_base", "load_base"]
