"""What every benchmark shares: the machine record, timing, peak memory, results files.

How the numbers are taken (and why):

* **Side by side.** The compared variants are timed in one process, in alternating order
  (round-robin, the starting variant rotating every round), so that a background job or a
  thermal change slows all of them alike instead of whichever happened to run last. Ratios
  between variants are the headline; absolute times depend on the machine.
* **Medians and IQR.** After `warmup` untimed calls, each variant runs `repeats` times; we
  quote the median and the inter-quartile range (25th-75th percentile), which one slow
  outlier cannot move.
* **Peak memory.** On a GPU: `torch.cuda.max_memory_allocated` (tensors only). On a CPU there
  is no allocator counter, so each variant runs in a FRESH subprocess that reports its peak
  resident set size (the operating system's number: Python, torch's libraries,
  the model, gradients, optimizer state and activations all included). A fresh process per
  variant matters: freed memory is not always returned to the OS, so a second variant in the
  same process would inherit the first one's peak. (On Linux the peak is read as VmHWM from
  /proc/self/status: getrusage's ru_maxrss would report the parent's peak in a subprocess;
  gpt/device.py's peak_rss_bytes and peak_memory_bytes.)
* **The machine.** CPU model, cores, torch's thread count, torch version, GPU, and the load
  average when the run started (a busy machine is the most common reason two runs disagree).
* **Results.** `benchmarks/results/<name>.json` (everything, machine-readable) and
  `benchmarks/results/<name>.md` (a table for people, with the exact command and the machine),
  both written atomically. `--quick` runs go to `benchmarks/results/quick/` so a smoke test
  never overwrites a real result.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from common.files import atomic_write_text
from gpt.device import add_device_argument, pick_device, synchronize  # synchronize: also used by setups.py

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "benchmarks" / "results"
QUICK_RESULTS_DIR = RESULTS_DIR / "quick"


# ----------------------------------------------------------------------------- the machine

def cpu_model() -> str:
    """The CPU's marketing name ("AMD EPYC 7B13", "Apple M2", ...), or platform's best guess."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    if sys.platform == "darwin":
        try:
            return subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True,
                                  text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            pass
    return platform.processor() or platform.machine() or "unknown"


def machine_info(device: torch.device | str = "cpu") -> dict:
    """Everything that decides how fast a benchmark runs, as a flat dict."""
    device = torch.device(device)
    try:
        import psutil
        physical = psutil.cpu_count(logical=False)
        ram_gb = round(psutil.virtual_memory().total / 1e9, 1)
    except ImportError:  # psutil is a dev requirement; the record just gets shorter without it
        physical, ram_gb = None, None
    info = {
        "cpu": cpu_model(),
        "logical_cores": os.cpu_count(),
        "physical_cores": physical,
        "ram_gb": ram_gb,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
        "device": str(device),
        "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def machine_line(info: dict) -> str:
    """One readable line: `AMD EPYC (2 cores, 2 torch threads), torch 2.13.0, cpu, load 0.4`."""
    text = (f"{info['cpu']} ({info['logical_cores']} logical cores, {info['torch_threads']} torch threads), "
            f"torch {info['torch']}, Python {info['python']}, {info['os']}, device {info['device']}")
    if "gpu" in info:
        text += f" = {info['gpu']} (CUDA {info['cuda']})"
    if info.get("load_average_1min") is not None:
        text += f", load average {info['load_average_1min']} at the start"
    return text


# ----------------------------------------------------------------------------- timing

@dataclass
class Timing:
    """Seconds per call: median, quartiles, every sample."""
    median: float
    q1: float
    q3: float
    samples: list[float]

    @classmethod
    def from_samples(cls, samples: list[float]) -> "Timing":
        if not samples:
            raise ValueError("no timing samples")
        s = sorted(samples)
        if len(s) == 1:
            return cls(s[0], s[0], s[0], list(samples))
        q1, _, q3 = statistics.quantiles(s, n=4, method="inclusive")
        return cls(statistics.median(s), q1, q3, list(samples))

    def ms(self) -> str:
        """`123.4 ms (IQR 120.1-125.0)`."""
        return f"{1e3 * self.median:,.1f} ms (IQR {1e3 * self.q1:,.1f}-{1e3 * self.q3:,.1f})"

    def to_dict(self) -> dict:
        return asdict(self)


def time_call(fn: Callable[[], object], device: torch.device | str = "cpu") -> float:
    """Seconds one call of fn takes, GPU work included."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def time_alternating(fns: dict[str, Callable[[], object]], warmup: int = 1, repeats: int = 5,
                     device: torch.device | str = "cpu", progress: bool = True) -> dict[str, Timing]:
    """Time several variants side by side: `warmup` untimed rounds, then `repeats` timed rounds,
    each round calling every variant once; the order rotates every round. Returns name -> Timing."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    names = list(fns)
    samples: dict[str, list[float]] = {name: [] for name in names}
    rounds = tqdm(range(warmup + repeats), desc="timing " + ", ".join(names)[:60], disable=None if progress else True,
                  leave=False)
    for r in rounds:
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            seconds = time_call(fns[name], device)
            if r >= warmup:
                samples[name].append(seconds)
    return {name: Timing.from_samples(samples[name]) for name in names}


def ratio(a: Timing | float, b: Timing | float) -> float:
    """a / b on medians."""
    a = a.median if isinstance(a, Timing) else a
    b = b.median if isinstance(b, Timing) else b
    return a / b


# ----------------------------------------------------------------------------- memory

def current_rss_bytes() -> int | None:
    """This process's resident set size now, in bytes (None without psutil)."""
    try:
        import psutil
    except ImportError:
        return None
    return psutil.Process().memory_info().rss


def run_worker(module: str, argv: list[str], timeout: float | None = None) -> dict:
    """Run `python -m <module> <argv>` in a fresh process and return the JSON dict it prints
    as its last line of stdout (how CPU benchmarks measure each variant's peak RSS alone)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    cmd = [sys.executable, "-m", module, *argv]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"worker failed (exit {proc.returncode}): {shlex.join(cmd)}\n{proc.stderr[-3000:]}")
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    if not lines:
        raise RuntimeError(f"worker printed nothing: {shlex.join(cmd)}\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1])


# ----------------------------------------------------------------------------- arguments

def quick_defaults(**own) -> dict:
    """A benchmark's --quick defaults (common.cli.parse_with_quick swaps them in; flags given explicitly win):
    its own tiny shapes and few steps, plus 2 timed repeats and results under benchmarks/results/quick."""
    return {"repeats": 2, "out_dir": QUICK_RESULTS_DIR, **own}


def add_common_args(parser: argparse.ArgumentParser, repeats: int = 5, warmup: int = 1) -> argparse.ArgumentParser:
    """The flags every benchmark has; parse with common.cli.parse_with_quick(parser, QUICK, argv), where the
    benchmark's QUICK = quick_defaults(...)."""
    parser.add_argument("--quick", action="store_true",
                        help="tiny shapes and 2 repeats: checks that the benchmark runs (what the tests use)")
    parser.add_argument("--repeats", type=int, default=repeats, help="timed repeats per variant")
    parser.add_argument("--warmup", type=int, default=warmup, help="untimed calls per variant before timing")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads (default: torch's own choice, usually the physical cores)")
    # gpt.device.add_device_argument with a "cpu" default: the committed results in benchmarks/results
    # were measured on a CPU by commands that name no device (their .md files discuss CPU numbers, and
    # the lora_vs_full memory column is a CPU's peak RSS); with "auto" the same recorded commands would
    # measure a GPU wherever there is one. Ask for a GPU explicitly: --device cuda (or auto).
    add_device_argument(parser, default="cpu",
                        note="Default cpu, not auto: the committed results were measured on a CPU by commands that "
                             "name no device; pass --device cuda (or auto) to measure a GPU")
    parser.add_argument("--seed", type=int, default=123, help="seed for weights and data")
    parser.add_argument("--n-layers", type=int, default=None,
                        help="override the shape's number of blocks (a shallower model to explore on a slow machine)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR,
                        help="where results go (benchmarks/results/quick with --quick)")
    return parser


def setup(args) -> torch.device:
    """Apply --threads, --seed, --device; check --repeats. Returns the device."""
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    if args.repeats < 1:
        raise ValueError(f"--repeats must be >= 1, got {args.repeats}")
    torch.manual_seed(args.seed)
    return pick_device(args.device)


def command_line(module: str, argv: list[str] | None) -> str:
    """The command that reproduces a run: `python -m benchmarks.bench_x --flag value`."""
    argv = sys.argv[1:] if argv is None else list(argv)
    return shlex.join(["python", "-m", module, *map(str, argv)])


# ----------------------------------------------------------------------------- results

def markdown_table(headers: list[str], rows: list[list]) -> str:
    def cell(v):
        if isinstance(v, float):
            return f"{v:,.3g}" if abs(v) < 1000 else f"{v:,.0f}"
        if isinstance(v, int) and not isinstance(v, bool):
            return f"{v:,}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def gflop(flops: float) -> str:
    """GFLOP with as many decimals as small numbers need: `489.6`, `0.0123`."""
    g = flops / 1e9
    return f"{g:,.1f}" if g >= 10 else f"{g:.3g}"


def mb(n_bytes: float | None) -> str:
    return "n/a" if n_bytes is None else f"{n_bytes / 2**20:,.0f} MiB"


def write_results(name: str, out_dir: Path, command: str, machine: dict, results: dict, markdown: str,
                  title: str) -> tuple[Path, Path]:
    """benchmarks/results/<name>.json and <name>.md. The markdown gets a header with the title,
    the command and the machine, then `markdown` (tables and the discussion of the numbers)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    payload = {"benchmark": name, "title": title, "command": command, "date": stamp, "machine": machine,
               "results": results}
    json_path, md_path = out_dir / f"{name}.json", out_dir / f"{name}.md"
    atomic_write_text(json_path, json.dumps(payload, indent=2) + "\n")
    header = (f"# {title}\n\n"
              f"Command: `{command}`  \n"
              f"Machine: {machine_line(machine)}  \n"
              f"Date: {stamp}\n\n")
    atomic_write_text(md_path, header + markdown.rstrip() + "\n")
    return json_path, md_path
