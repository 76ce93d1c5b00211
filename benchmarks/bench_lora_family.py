"""What each method of the LoRA family costs to train: frozen-weight bytes, peak memory and step time.

scripts/compare_lora_family.py measures what the methods reach (accuracy, results/lora_family.*); this
benchmark measures what they cost, on the spam classifier's training step (batch 8 x 120 tokens, new
2-class head, random weights and tokens: cost does not depend on their values), at gpt-mini's shape and
at the GPT-2 124M shape. Each method is built as classify.lora_family builds it (r=16 on every linear
layer of the blocks, the head trained in full), its optimizer as the comparison makes it (LoRA+'s groups):

* trainable parameters (the head included);
* bytes of the frozen weights as stored in float32, and as they would be in bfloat16 (QLoRA's NF4 layers
  count their 4-bit codes and block constants either way; embeddings and norms stay in the dtype);
* peak memory of training steps: on a CPU, the resident set size of a fresh process per method, its peak
  reset (gpt.device.reset_peak_rss) once the model is built, so the float32 copy that QLoRA quantizes
  and PiSSA's SVD do not count; on a GPU, torch.cuda.max_memory_allocated, likewise reset;
* the time of one step (forward, backward, optimizer), the methods alternating in one process, median
  of --repeats with the interquartile range, and its ratio to LoRA's.

    python -m benchmarks.bench_lora_family                 # both shapes, every method (a few minutes)
    python -m benchmarks.bench_lora_family --device cuda   # the same on a GPU (benchmarks.gpu_run runs it)
    python -m benchmarks.bench_lora_family --quick         # a tiny random model: checks that it runs
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import gc
import json
import sys
import time

import torch

from benchmarks.common import (add_common_args, command_line, current_rss_bytes, machine_info, markdown_table, mb,
                               quick_defaults, run_worker, setup, time_alternating, write_results)
from benchmarks.setups import LEARNING_RATE, TrainStep, classifier, random_batch, shape_config
from classify.lora_family import (METHODS, apply_method, frozen_nbytes, make_optimizer, memory_beyond_start,
                                  trainable_count)
from common.cli import parse_with_quick, run_main
from gpt.device import peak_memory_bytes, reset_peak_memory, reset_peak_rss

NAME = "lora_family_cost"
MODULE = "benchmarks.bench_lora_family"
REFERENCE = "lora"  # the ratios are against plain LoRA r=16

# --quick: a tiny random model, 2 timed steps (flags given explicitly still win)
QUICK = quick_defaults(shapes=["gpt-tiny"], batch_size=2, tokens=16)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_common_args(parser, repeats=5)
    parser.add_argument("--shapes", nargs="+", default=["gpt-mini", "gpt2-small"],
                        help="model shapes (benchmarks/setups.py SHAPES; gpt-tiny with --quick)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--batch-size", type=int, default=8, help="messages per batch (2 with --quick)")
    parser.add_argument("--tokens", type=int, default=120, help="tokens per message (16 with --quick)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    # Internal: measure one method's peak memory in this (fresh) process and print JSON.
    parser.add_argument("--worker", nargs=2, metavar=("SHAPE", "METHOD"), help=argparse.SUPPRESS)
    return parser


def build(shape: str, method: str, seed: int, device) -> torch.nn.Module:
    """The spam classifier at `shape`, random weights, on `device` (where QLoRA quantizes and PiSSA takes its
    SVDs), prepared for `method`."""
    model = classifier(shape_config(shape), seed, device)
    torch.manual_seed(seed)  # the adapters' random weights: the same draw for every method
    return apply_method(model, method)


def release_freed_memory() -> None:
    """Give freed heap memory back to the system (glibc's malloc_trim), so that the RSS is what is alive."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the RSS may keep some freed memory
        pass


def memory_worker(args, device) -> dict:
    """Build ONE method in this fresh process, train a few steps, report the peak memory of the steps."""
    shape, method = args.worker
    rss_start = current_rss_bytes()  # Python + torch + libraries, before any model exists
    model = build(shape, method, args.seed, device)
    batch = random_batch(shape_config(shape), args.batch_size, args.tokens, args.seed, device)
    step = TrainStep(model, batch, device, optimizer=make_optimizer(method, model, LEARNING_RATE))
    release_freed_memory()
    rss_built = current_rss_bytes()
    reset = reset_peak_memory(device) if device.type == "cuda" else reset_peak_rss()
    for _ in range(args.warmup + args.repeats):
        step()
    return {"peak_bytes": peak_memory_bytes(device), "peak_reset_after_build": reset is not False,
            "rss_start_bytes": rss_start, "rss_built_bytes": rss_built,
            "kind": "cuda_max_memory_allocated" if device.type == "cuda" else "peak_rss"}


def measure_memory(args, shape: str) -> dict[str, dict]:
    out = {}
    for method in args.methods:
        print(f"[{NAME}] {shape}: peak memory of {method} (a fresh process)", file=sys.stderr)
        argv = ["--worker", shape, method, "--batch-size", str(args.batch_size), "--tokens", str(args.tokens),
                "--device", args.device, "--seed", str(args.seed), "--warmup", "1", "--repeats", "2"]
        if args.threads is not None:
            argv += ["--threads", str(args.threads)]
        out[method] = run_worker(MODULE, argv)
    return out


def run_shape(args, device, shape: str) -> dict:
    cfg = shape_config(shape)
    batch = random_batch(cfg, args.batch_size, args.tokens, args.seed, device)
    base = classifier(cfg, args.seed, device)
    rows, steps = {}, {}
    for method in args.methods:
        print(f"[{NAME}] {shape}: building {method}", file=sys.stderr)
        torch.manual_seed(args.seed)
        model = apply_method(copy.deepcopy(base), method)
        rows[method] = {"description": METHODS[method].description, "trainable_params": trainable_count(model),
                        "frozen_bytes": {"float32": frozen_nbytes(model, torch.float32),
                                         "bfloat16": frozen_nbytes(model, torch.bfloat16)}}
        steps[method] = TrainStep(model, batch, device, optimizer=make_optimizer(method, model, LEARNING_RATE))
    del base
    print(f"[{NAME}] {shape}: timing {args.warmup} + {args.repeats} steps per method", file=sys.stderr)
    timings = time_alternating(steps, warmup=args.warmup, repeats=args.repeats, device=device)
    for method in args.methods:
        rows[method]["step_seconds"] = timings[method].to_dict()
        rows[method]["phases_seconds"] = steps[method].median_phases(args.repeats)
    del steps
    release_freed_memory()
    if not args.no_memory:
        for method, mem in measure_memory(args, shape).items():
            rows[method]["memory"] = mem
    return {"shape": shape, "config": cfg.to_dict(), "batch_size": args.batch_size, "tokens": args.tokens,
            "methods": rows}


def beyond_start(row: dict) -> int | None:
    """Peak memory of the steps minus what the process held before any model existed (Python, torch and
    their libraries: the same for every method); on a GPU, allocated tensors only, so the peak itself."""
    return memory_beyond_start(row["memory"]) if row.get("memory") else None


def shape_table(res: dict) -> str:
    rows = res["methods"]
    ref = rows.get(REFERENCE)
    headers = ["method", "trainable params", "frozen float32", "frozen bfloat16", "peak memory", "beyond the start",
               "x LoRA", "step time", "x LoRA"]
    table = []
    for method, r in rows.items():
        t = r["step_seconds"]["median"]
        mem, ref_mem = beyond_start(r), beyond_start(ref) if ref else None
        table.append([
            r["description"], r["trainable_params"], mb(r["frozen_bytes"]["float32"]),
            mb(r["frozen_bytes"]["bfloat16"]), mb(r.get("memory", {}).get("peak_bytes")), mb(mem),
            f"{mem / ref_mem:.2f}" if mem and ref_mem else "-",
            f"{1e3 * t:,.0f} ms ({1e3 * r['step_seconds']['q1']:,.0f}-{1e3 * r['step_seconds']['q3']:,.0f})",
            f"{t / ref['step_seconds']['median']:.2f}" if ref else "-"])
    return markdown_table(headers, table)


def plot(results: dict, path) -> None:
    """Peak memory and step time per method, one row of two panels per shape, LoRA's level dashed."""
    from plots.figures import new_figure, save_figure

    shapes = results["shapes"]
    fig, axes = new_figure(len(shapes), 2, figsize=(9, 2.9 * len(shapes)), dpi=100, squeeze=False)
    for (ax_mem, ax_time), res in zip(axes, shapes):
        rows = res["methods"]
        names = list(rows)
        y = list(range(len(names)))
        mem = [(beyond_start(rows[m]) or 0) / 2**20 for m in names]
        time_ms = [1e3 * rows[m]["step_seconds"]["median"] for m in names]
        for ax, values, label in ((ax_mem, mem, "peak memory of training steps, beyond the start (MiB)"),
                                  (ax_time, time_ms, "time of one training step (ms)")):
            ax.barh(y, values, color=["#e76f51" if m == REFERENCE else "#2a9d8f" for m in names])
            if REFERENCE in rows:
                ax.axvline(values[names.index(REFERENCE)], color="#555", linestyle="--", linewidth=1)
            ax.set_yticks(y)
            ax.set_yticklabels(names, fontsize=8)
            ax.invert_yaxis()
            ax.set_xlabel(label, fontsize=8)
            ax.set_title(f"{res['shape']} shape", fontsize=9)
            ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)


def discussion(res: dict, device) -> str:
    rows = res["methods"]
    if REFERENCE not in rows:
        return ""
    lines = []
    ref = rows[REFERENCE]
    kinds = {"cuda": "allocated tensor memory", "cpu": "peak RSS"}
    for method, r in rows.items():
        if method == REFERENCE or "memory" not in r or "memory" not in ref:
            continue
        lines.append(f"- {method}: {beyond_start(r) / beyond_start(ref):.2f}x LoRA's "
                     f"{kinds.get(device.type, 'peak memory')} beyond the start, "
                     f"{r['step_seconds']['median'] / ref['step_seconds']['median']:.2f}x its step time")
    return "\n".join(lines)


def main(argv=None) -> dict:
    args = parse_with_quick(build_parser(), QUICK, argv)
    device = setup(args)
    if args.worker:
        print(json.dumps(memory_worker(args, device)))
        return {}
    machine = machine_info(device)
    results = {"reference": REFERENCE, "shapes": []}
    t0 = time.perf_counter()
    for shape in args.shapes:
        print(f"[{NAME}] {shape}: {', '.join(args.methods)}", file=sys.stderr)
        results["shapes"].append(run_shape(args, device, shape))
    results["total_seconds"] = round(time.perf_counter() - t0)
    memory_kind = ("`torch.cuda.max_memory_allocated`, reset once the model is built" if device.type == "cuda" else
                   "the peak resident set size of a fresh process per method (Python and torch included), "
                   "reset once the model is built")
    parts = [f"The LoRA family's training step on the spam classifier: batch {args.batch_size} x {args.tokens} "
             f"tokens, 2-class head, random weights and tokens, rank 16 (VeRA 256) on every linear layer of the "
             f"blocks. Step time: median of {args.repeats} steps (IQR in brackets), methods alternating. Peak "
             f"memory: {memory_kind}. 'Beyond the start' leaves out what the process held before any model "
             f"existed (on a CPU, Python and torch: the same for every method); memory ratios are of that part. "
             f"Ratios are against LoRA r=16. Frozen weights: the bytes of everything the "
             f"method does not train, as stored in float32 and as they would be in bfloat16 (QLoRA's NF4 layers "
             f"keep their 4 bits in both). The whole run took {results['total_seconds']} s."]
    for res in results["shapes"]:
        parts.append(f"## {res['shape']} shape ({res['config']['emb_dim']}-wide, {res['config']['n_layers']} "
                     f"layers)")
        parts.append(shape_table(res))
        parts.append(discussion(res, device))
    write_results(NAME, args.out_dir, command_line(MODULE, argv), machine, results, "\n\n".join(p for p in parts if p),
                  title="The LoRA family: what a training step costs")
    plot(results, args.out_dir / f"{NAME}.png")
    return results


if __name__ == "__main__":
    run_main(main)
