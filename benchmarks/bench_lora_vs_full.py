"""LoRA against full fine-tuning: time per training step and peak memory, across ranks.

The claim (seeds; Hu et al. 2021, section 4.2: on GPT-3 175B, training memory from 1.2 TB to
350 GB and a 25 % speed-up): LoRA trains faster and with less memory, because the frozen
weights need neither gradients nor optimizer state. How much faster is the question: LoRA
removes the weight-gradient matmuls (a third of a step's matmul work) and AdamW's pass over
all parameters, but NOT the forward pass nor the activation gradients, which
must flow through every frozen layer to reach the LoRA branches below. So, counting matmuls, a
LoRA step costs about 2/3 of a full one (4 instead of 6 FLOPs per weight and token); it comes
out cheaper than that only where full fine-tuning pays for work the FLOP count does not show:
memory traffic such as the dense 38.6M-entry embedding gradient and AdamW reading and writing
four tensors of 124M numbers every step.

Shapes: GPT-2 124M (batch 8 x 120 tokens, the book's spam setting) and gpt-mini. Each step is
split into forward, backward and optimizer time so the table shows where LoRA saves. Peak
memory: process RSS measured in a fresh subprocess per variant on a CPU,
torch.cuda.max_memory_allocated on a GPU. With --profile the 124M step of full fine-tuning and
LoRA r=16 are profiled (torch.profiler) and the time is split into kinds of work.

    python -m benchmarks.bench_lora_vs_full            # the real run (minutes)
    python -m benchmarks.bench_lora_vs_full --quick    # a tiny smoke test (seconds)
"""

from __future__ import annotations

import argparse
import json
import sys

from benchmarks.common import (add_common_args, command_line, current_rss_bytes, gflop, machine_info, markdown_table,
                               mb, quick_defaults, run_worker, setup, time_alternating, write_results)
from benchmarks.flops import training_step_flops
from benchmarks.profiling import profile_step
from benchmarks.setups import (TrainStep, Variant, classifier, make_variant, random_batch, shape_config,
                               variant_models)
from common.cli import parse_with_quick, run_main
from gpt.device import peak_memory_bytes, reset_peak_memory
from gpt.params import count_parameters

NAME = "lora_vs_full"
MODULE = "benchmarks.bench_lora_vs_full"
DEFAULT_VARIANTS = ["full", "lora:4", "lora:16", "lora:64", "lora:16:query,value"]
# This project's targets for "LoRA trains faster and with less memory", at the GPT-2 124M shape, LoRA r=16
# against full fine-tuning: half the step time, 60 % of the memory. (For scale, the LoRA paper, section 4.2,
# reports 25 % faster training and 350 GB instead of 1.2 TB of GPU memory on GPT-3 175B.)
TARGET_TIME_RATIO, TARGET_MEMORY_RATIO = 0.5, 0.6


# --quick: a tiny smoke test in seconds (flags given explicitly still win)
QUICK = quick_defaults(shapes=["gpt-tiny"], variants=["full", "lora:4"], batch_size=2, tokens=16, profile=False)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_common_args(parser, repeats=5)
    parser.add_argument("--shapes", nargs="+", default=["gpt2-small", "gpt-mini"],
                        help="model shapes (benchmarks/setups.py SHAPES; gpt-tiny with --quick)")
    parser.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS),
                        help="'full', 'lora:R' (all linear layers) or 'lora:R:query,value' "
                             "(full and lora:4 with --quick)")
    parser.add_argument("--batch-size", type=int, default=8, help="messages per batch (2 with --quick)")
    parser.add_argument("--tokens", type=int, default=120, help="tokens per message (16 with --quick)")
    parser.add_argument("--attention", choices=("separate", "fused"), default="separate",
                        help="QKV layout (bench_attention compares them)")
    parser.add_argument("--no-sdpa", action="store_true", help="explicit softmax attention instead of SDPA")
    parser.add_argument("--fused-adamw", action="store_true",
                        help="torch.optim.AdamW(fused=True) instead of torch's default implementation (the book's)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--profile", action=argparse.BooleanOptionalAction, default=True,
                        help="profile full vs LoRA r=16 on the first shape (off with --quick)")
    # Internal: measure one variant's peak memory in this (fresh) process and print JSON.
    parser.add_argument("--worker", nargs=2, metavar=("SHAPE", "VARIANT"), help=argparse.SUPPRESS)
    return parser


def _config(args, shape: str):
    return shape_config(shape, attention=args.attention, sdpa=not args.no_sdpa, n_layers=args.n_layers)


# ----------------------------------------------------------------------------- memory (subprocess)

def memory_worker(args, device) -> dict:
    """Build ONE variant in this fresh process, train a few steps, report its peak memory."""
    shape, spec = args.worker
    rss_start = current_rss_bytes()  # Python + torch + libraries, before any model exists
    reset_peak_memory(device)
    cfg = _config(args, shape)
    model = make_variant(classifier(cfg, args.seed, device), Variant.parse(spec))  # in place: one copy only
    rss_built = current_rss_bytes()
    step = TrainStep(model, random_batch(cfg, args.batch_size, args.tokens, args.seed, device), device,
                     fused_adamw=args.fused_adamw)
    for _ in range(args.warmup + args.repeats):
        step()
    return {"peak_bytes": peak_memory_bytes(device), "rss_start_bytes": rss_start, "rss_built_bytes": rss_built,
            "kind": "cuda_max_memory_allocated" if device.type == "cuda" else "peak_rss"}


def measure_memory(args, shape: str, variants: list[Variant]) -> dict[str, dict]:
    out = {}
    for v in variants:
        argv = ["--worker", shape, v.spec, "--batch-size", str(args.batch_size), "--tokens", str(args.tokens),
                "--attention", args.attention, "--device", args.device, "--seed", str(args.seed),
                "--warmup", "1", "--repeats", "2"]
        if args.threads is not None:
            argv += ["--threads", str(args.threads)]
        if args.no_sdpa:
            argv.append("--no-sdpa")
        if args.n_layers is not None:
            argv += ["--n-layers", str(args.n_layers)]
        if args.fused_adamw:
            argv.append("--fused-adamw")
        out[v.name] = run_worker(MODULE, argv)
    return out


# ----------------------------------------------------------------------------- the run

def run_shape(args, device, shape: str, variants: list[Variant], profile: bool) -> dict:
    cfg = _config(args, shape)
    base = classifier(cfg, args.seed, device)
    batch = random_batch(cfg, args.batch_size, args.tokens, args.seed, device)
    models = variant_models(base, variants)
    steps = {name: TrainStep(model, batch, device, fused_adamw=args.fused_adamw) for name, model in models.items()}
    timings = time_alternating(steps, warmup=args.warmup, repeats=args.repeats, device=device)

    rows = {}
    for v in variants:
        model = models[v.name]
        flops = training_step_flops(model, batch[0])
        rows[v.name] = {
            "variant": v.spec,
            "trainable_params": count_parameters(model, trainable_only=True),
            "step_seconds": timings[v.name].to_dict(),
            "phases_seconds": steps[v.name].median_phases(args.repeats),
            "flops": flops,
        }
    if not args.no_memory:
        for name, mem in measure_memory(args, shape, variants).items():
            rows[name]["memory"] = mem
    result = {"shape": shape, "config": cfg.to_dict(), "batch_size": args.batch_size, "tokens": args.tokens,
              "variants": rows}
    if profile:
        full = next((v for v in variants if v.kind == "full"), None)
        lora = next((v for v in variants if v.kind == "lora" and v.rank == 16), None) or \
            next((v for v in variants if v.kind == "lora"), None)
        result["profile"] = {v.name: profile_step(steps[v.name], device) for v in (full, lora) if v is not None}
    del steps, models, base
    return result


def _full_row(rows: dict) -> dict | None:
    return next((r for r in rows.values() if r["variant"] == "full"), None)


def shape_table(res: dict) -> str:
    rows = res["variants"]
    full = _full_row(rows)
    headers = ["variant", "trainable params", "step time", "x full", "forward / backward / optimizer (ms)",
               "matmul GFLOP", "peak memory", "x full"]
    table = []
    for name, r in rows.items():
        t = r["step_seconds"]["median"]
        ph = r["phases_seconds"]
        mem = r.get("memory", {}).get("peak_bytes")
        time_ratio = f"{t / full['step_seconds']['median']:.2f}" if full else "-"
        mem_ratio = (f"{mem / full['memory']['peak_bytes']:.2f}" if full and mem and "memory" in full else "-")
        table.append([
            name, r["trainable_params"],
            f"{1e3 * t:,.0f} ms ({1e3 * r['step_seconds']['q1']:,.0f}-{1e3 * r['step_seconds']['q3']:,.0f})",
            time_ratio,
            f"{1e3 * ph['forward']:,.0f} / {1e3 * ph['backward']:,.0f} / {1e3 * ph['optimizer']:,.0f}",
            gflop(r['flops']['total']), mb(mem), mem_ratio,
        ])
    return markdown_table(headers, table)


def discussion(res: dict) -> str:
    """What the numbers of one shape say, for LoRA r=16 (or the first LoRA variant)."""
    rows = res["variants"]
    full = _full_row(rows)
    lora = next((r for r in rows.values() if r["variant"] == "lora:16"), None) or \
        next((r for r in rows.values() if r["variant"].startswith("lora")), None)
    if full is None or lora is None:
        return ""
    tf, tl = full["step_seconds"]["median"], lora["step_seconds"]["median"]
    pf, pl = full["phases_seconds"], lora["phases_seconds"]
    ff, fl = full["flops"], lora["flops"]
    lines = [
        f"**{lora['variant']} against full fine-tuning at the {res['shape']} shape:** step time "
        f"{tl / tf:.2f}x. The matmul FLOPs alone predict {fl['total'] / ff['total']:.2f}x "
        f"({gflop(fl['total'])} vs {gflop(ff['total'])} GFLOP): the frozen layers skip their weight "
        f"gradients but still pass activation gradients down to the LoRA branches below them.",
        f"Per phase (LoRA / full): forward {pl['forward'] / pf['forward']:.2f}x, "
        f"backward {pl['backward'] / pf['backward']:.2f}x, optimizer {1e3 * pl['optimizer']:.0f} ms vs "
        f"{1e3 * pf['optimizer']:.0f} ms. The forward pass is the same work (plus the small branches); "
        f"the backward pass loses the weight-gradient matmuls; AdamW has "
        f"{lora['trainable_params']:,} instead of {full['trainable_params']:,} numbers to update.",
        f"Without the optimizer phase the ratio would be "
        f"{(pl['forward'] + pl['backward']) / (pf['forward'] + pf['backward']):.2f}x: how much LoRA gains beyond the "
        f"skipped weight gradients depends on how slow the full model's optimizer step is "
        f"({pf['optimizer'] / tf:.0%} of a full step here; `--fused-adamw` measures it with "
        f"torch.optim.AdamW(fused=True), which makes that step several times faster on a CPU).",
    ]
    if "memory" in full and "memory" in lora:
        mf, ml = full["memory"], lora["memory"]
        lines.append(
            f"Peak memory {ml['peak_bytes'] / mf['peak_bytes']:.2f}x ({mb(ml['peak_bytes'])} vs "
            f"{mb(mf['peak_bytes'])}). Full fine-tuning holds, besides the weights, a gradient and two AdamW "
            f"moments per parameter (3 x {mb(4 * full['trainable_params'])}); LoRA holds those only for its "
            f"{lora['trainable_params']:,} trainable numbers. Both hold the activations the backward pass needs."
            + (f" Of the peak, {mb(mf['rss_start_bytes'])} is the Python process with torch loaded, before any "
               f"model exists: a fixed cost that no fine-tuning method removes, and that pulls the ratio towards 1. "
               f"Above it: {mb(ml['peak_bytes'] - ml['rss_start_bytes'])} vs "
               f"{mb(mf['peak_bytes'] - mf['rss_start_bytes'])}, "
               f"{(ml['peak_bytes'] - ml['rss_start_bytes']) / (mf['peak_bytes'] - mf['rss_start_bytes']):.2f}x."
               if mf.get("kind") == "peak_rss" and mf.get("rss_start_bytes") and ml.get("rss_start_bytes") else ""))
    return "\n\n".join(lines)


def targets_section(res: dict) -> str:
    rows = res["variants"]
    full = _full_row(rows)
    lora = next((r for r in rows.values() if r["variant"] == "lora:16"), None)
    if res["shape"] != "gpt2-small" or full is None or lora is None:
        return ""
    t = lora["step_seconds"]["median"] / full["step_seconds"]["median"]
    lines = ["| target (GPT-2 124M, LoRA r=16 vs full) | measured | verdict |", "|---|---|---|",
             f"| step time <= {TARGET_TIME_RATIO}x | {t:.2f}x | "
             f"{'met' if t <= TARGET_TIME_RATIO else f'missed by {t / TARGET_TIME_RATIO - 1:.0%}'} |"]
    if "memory" in full and "memory" in lora:
        m = lora["memory"]["peak_bytes"] / full["memory"]["peak_bytes"]
        lines.append(f"| peak memory <= {TARGET_MEMORY_RATIO}x | {m:.2f}x | "
                     f"{'met' if m <= TARGET_MEMORY_RATIO else f'missed by {m / TARGET_MEMORY_RATIO - 1:.0%}'} |")
    return "\n".join(lines)


def _ms(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def profile_section(profile: dict) -> str:
    if not profile:
        return ""
    names = list(profile)
    cats = sorted({c for p in profile.values() for c in p["by_category_ms"]},
                  key=lambda c: -max(p["by_category_ms"].get(c, 0.0) for p in profile.values()))
    table = markdown_table(["self time by kind of work (ms, one step)"] + names,
                           [[c] + [_ms(profile[n]["by_category_ms"].get(c, 0.0)) for n in names] for c in cats])
    tops = "\n\n".join(f"<details><summary>top operators: {n}</summary>\n\n```\n{p['top_ops']}\n```\n</details>"
                       for n, p in profile.items())
    title = "### Profile (torch.profiler, one forward + backward pass each; the optimizer is timed above)"
    return f"{title}\n\n{table}\n\n{tops}"


def main(argv=None) -> dict:
    args = parse_with_quick(build_parser(), QUICK, argv)
    device = setup(args)
    if args.worker:
        print(json.dumps(memory_worker(args, device)))
        return {}
    shapes = args.shapes
    variants = [Variant.parse(v) for v in args.variants]
    profile = args.profile
    machine = machine_info(device)

    results = {"shapes": [], "optimizer": "AdamW(fused=True)" if args.fused_adamw else "AdamW (torch's default)"}
    for i, shape in enumerate(shapes):
        print(f"[{NAME}] {shape}: {', '.join(v.name for v in variants)}", file=sys.stderr)
        results["shapes"].append(run_shape(args, device, shape, variants, profile and i == 0))

    parts = [
        f"LoRA against full fine-tuning on the spam-classifier task: one {results['optimizer']} step on a batch of "
        f"{args.batch_size} x {args.tokens} tokens, 2-class head, random weights and tokens. Step time is the median "
        f"of {args.repeats} steps (IQR in brackets), variants alternating; peak memory is "
        + ("`torch.cuda.max_memory_allocated`" if device.type == "cuda" else
           "the peak resident set size of a fresh process per variant (everything: Python, torch, weights, "
           "gradients, optimizer state, activations)") + ". Ratios are against full fine-tuning."]
    for res in results["shapes"]:
        parts.append(f"## {res['shape']} ({res['config']['emb_dim']}-wide, {res['config']['n_layers']} layers, "
                     f"{res['config']['attention']} QKV, {'SDPA' if res['config']['sdpa'] else 'explicit softmax'})")
        parts.append(shape_table(res))
        parts.append(targets_section(res))
        parts.append(discussion(res))
        parts.append(profile_section(res.get("profile")))
    markdown = "\n\n".join(p for p in parts if p)
    write_results(NAME, args.out_dir, command_line(MODULE, argv), machine, results, markdown,
                  title="LoRA vs full fine-tuning: step time and peak memory")
    return results


if __name__ == "__main__":
    run_main(main)
