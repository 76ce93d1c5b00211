"""Pick the device to run on (CUDA, Apple MPS or CPU, automatically or by name), and measure its peak memory."""

from __future__ import annotations

import argparse
import contextlib
import sys

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


def peak_rss_bytes() -> int:
    """This process's peak resident set size so far, in bytes.

    On Linux it is read from /proc/self/status (VmHWM, the high-water mark of this process's
    memory), NOT from getrusage's ru_maxrss: ru_maxrss survives exec, so a process started by
    subprocess from a bigger parent reports the PARENT's peak when that is larger. Elsewhere
    (macOS: bytes, BSD: KiB) ru_maxrss is all there is.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # "VmHWM:   123456 kB"
    except OSError:
        pass
    import resource  # POSIX only; Windows has neither /proc nor resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def reset_peak_rss() -> bool:
    """Set this process's peak RSS (VmHWM) back to its current RSS, so that peak_rss_bytes measures from
    here: Linux only (writing 5 to /proc/self/clear_refs). Returns False where that is not possible;
    then measure in a fresh process instead."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def reset_peak_memory(device: torch.device | str) -> None:
    """Start a new GPU peak (torch.cuda.reset_peak_memory_stats). The process's peak RSS is left alone
    (reset_peak_rss resets it, on Linux)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_bytes(device: torch.device | str) -> int:
    """Peak memory so far: allocated tensor bytes on a CUDA GPU, the process's peak RSS elsewhere."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return peak_rss_bytes()


def peak_memory_mib(device: torch.device | str) -> dict:
    """What a training run records about memory, in MiB (2**20 bytes), rounded to 0.1:
    {"peak_rss_mib": the process's peak RSS} plus, on CUDA, {"cuda_max_allocated_mib": peak tensor bytes}."""
    device = torch.device(device)
    out = {"peak_rss_mib": round(peak_rss_bytes() / 2**20, 1)}
    if device.type == "cuda":
        out["cuda_max_allocated_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return out
