"""Pick the device to run on: CUDA, Apple MPS or CPU, automatically or by name."""

from __future__ import annotations

import argparse
import contextlib

import torch

DEVICE_HELP = "auto (CUDA, then Apple MPS, then CPU), cpu, cuda, cuda:N or mps"


def pick_device(name: str = "auto") -> torch.device:
    """"auto" takes CUDA, then MPS, then CPU; "cpu", "cuda", "cuda:1", "mps" are checked to exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from err
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} requested but CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
    elif device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"device {name!r} requested but Apple MPS is not available on this machine")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unsupported device {name!r}; use auto, cpu, cuda, cuda:N or mps")
    return device


def add_device_argument(parser: argparse.ArgumentParser, default: str = "auto",
                        note: str | None = None) -> argparse.ArgumentParser:
    """The --device flag every script shares; pass its value to pick_device. `note` is appended to
    the help text (e.g. why a script's default is not "auto")."""
    parser.add_argument("--device", default=default, help=DEVICE_HELP + (f". {note}" if note else ""))
    return parser


def synchronize(device: torch.device | str) -> None:
    """Wait for the work queued on a GPU, so that a timer measures the work and not its launch
    (CUDA and MPS run asynchronously; on a CPU there is nothing to wait for)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def use_bf16(device: torch.device | str, bf16: bool | None = None) -> bool:
    """Whether autocast() runs bf16 on `device`. bf16=None: yes on a CUDA GPU that supports bf16
    (Ampere and later), no elsewhere; True/False: as asked, but never on MPS (not supported here)."""
    device = torch.device(device)
    if bf16 is None:
        bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    return bool(bf16) and device.type in ("cuda", "cpu")


def autocast(device: torch.device, bf16: bool | None = None):
    """bf16 autocast where it is safe and fast: on CUDA by default, on CPU only when asked
    (CPUs with AVX512-BF16/AMX run it ~1.7x faster; older ones may be slower). Losses should
    still be computed in float32."""
    if not use_bf16(device, bf16):
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)
