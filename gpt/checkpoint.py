"""Saving and loading models and training state, atomically and without pickled code.

* Model weights: safetensors, with the GPTConfig stored as JSON in the file's metadata, so a
  checkpoint is self-describing. A tied output head is stored once.
* Training state (optimizer, scheduler, step, random states) for resuming: torch.save, read back
  with `weights_only=True`, which refuses arbitrary pickled objects.
* Every write goes to a temporary file in the target folder first and is then renamed over the
  target (`os.replace` is atomic on POSIX and Windows), so an interrupted save never leaves a
  half-written file where a good one was.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from gpt.config import GPTConfig
from gpt.model import GPTModel


@contextlib.contextmanager
def atomic_write(path: str | Path, suffix: str = ".tmp"):
    """Yield a temporary path next to `path`; on success rename it onto `path`, on error delete it.

        with atomic_write("run/model.safetensors") as tmp:
            save_file(tensors, tmp)      # a crash here leaves run/model.safetensors as it was

    The temporary file is named `.{name}.{pid}.{random}{suffix}` in the same folder (a rename
    is only atomic within one file system). It is flushed to disk (fsync) before the rename, so
    a power cut cannot leave an empty file under the final name. A process killed outright
    (SIGKILL, power cut) cannot delete its own temporary file; the next save to the same path
    removes such orphans (`remove_orphaned_temp_files`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_orphaned_temp_files(path, suffix)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        _fsync(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
    _fsync_dir(path.parent)


def _fsync(path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (POSIX; Windows cannot open a folder for fsync)."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some file systems do not support fsync on a folder
        pass
    finally:
        os.close(fd)


def _read_umask() -> int:
    mask = os.umask(0)  # the only portable way to read it is to set it...
    os.umask(mask)  # ...and put it back (done once, at import)
    return mask


_UMASK = _read_umask()


def _process_is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only checks that the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_orphaned_temp_files(path: str | Path, suffix: str = ".tmp") -> list[Path]:
    """Delete temporary files that an earlier, killed `atomic_write` to `path` left behind.

    Only files whose writer process no longer exists are removed, so a save to the same path
    running in another process is never disturbed. POSIX only (on Windows, os.kill(pid, 0)
    would terminate the process); returns the removed paths.
    """
    path = Path(path)
    if os.name != "posix" or not path.parent.is_dir():
        return []
    removed = []
    for candidate in path.parent.glob(f".{path.name}.*{suffix}"):
        parts = candidate.name[len(path.name) + 2 : len(candidate.name) - len(suffix)].split(".")  # [pid, random]
        if len(parts) != 2 or not parts[0].isdigit():
            continue  # not one of ours (e.g. the temp file of a longer name that starts the same)
        pid = int(parts[0])
        if pid == os.getpid() or _process_is_alive(pid):
            continue
        with contextlib.suppress(FileNotFoundError):
            candidate.unlink()
            removed.append(candidate)
    return removed


def new_figure(nrows: int = 1, ncols: int = 1, figsize=(6, 3.5), dpi: int = 100, **subplots_kwargs):
    """(figure, axes) as plt.subplots gives them, but without pyplot: no window, no global figure list,
    and a notebook's plotting backend is left alone when a script's plotting function runs there.
    Save the figure with save_figure."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=dpi)
    return fig, fig.subplots(nrows, ncols, **subplots_kwargs)


def save_figure(fig, path: str | Path, **savefig_kwargs) -> Path:
    """Write a matplotlib figure as a PNG atomically (like every other file here), then close it."""
    with atomic_write(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", **savefig_kwargs)
    if "matplotlib.pyplot" in sys.modules:  # a pyplot figure: free it (new_figure's figures need nothing)
        sys.modules["matplotlib.pyplot"].close(fig)
    return Path(path)


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
        raise ValueError(f"cannot load training state {path}: {err}") from err
