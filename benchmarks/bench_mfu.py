"""Model FLOPs utilisation: how close a training step gets to the machine's matmul speed.

    MFU = (a step's matmul FLOPs, counted analytically) / (its time)  /  (a plain matmul's FLOP/s)

The step's FLOPs come from benchmarks/flops.py: 6 per parameter and token for trained
weights, 4 for frozen ones (no weight gradient), plus attention's two batched matmuls. The
reference rate is measured on the same machine, in the same process, alternating with the
steps: a large square fp32 matmul (2048^3) and one of the model's own shapes (the (b*T) x d
@ d x 4d feed-forward matmul); the faster of the two is the reference, so the utilisation is
not flattered by a slow reference.

What keeps a step below 100 %: the work the FLOP count leaves out (layer norms, GELU, softmax,
residual adds, the optimizer: memory-bound, so they cost time without FLOPs), smaller or
thinner matmuls that run below peak (attention's per-head (T x 64) products, LoRA's rank-r
branches), and Python/autograd overhead per operation.

    python -m benchmarks.bench_mfu            # GPT-2 124M shape, batch 8 x 120, LoRA r=16 (minutes)
    python -m benchmarks.bench_mfu --quick    # tiny smoke test
"""

from __future__ import annotations

import argparse
import sys

import torch

from benchmarks.common import (add_common_args, command_line, gflop, machine_info, markdown_table, quick_defaults,
                               setup, time_alternating, write_results)
from benchmarks.flops import training_step_flops
from benchmarks.profiling import MATMUL, profile_step
from benchmarks.setups import TrainStep, Variant, classifier, random_batch, shape_config, variant_models
from common.cli import parse_with_quick, run_main

NAME = "mfu"
MODULE = "benchmarks.bench_mfu"
# This project's target: a LoRA training step runs its FLOPs at least at 80 % of the rate a plain large matmul
# reaches on the same machine (measured here as the reference, not a datasheet peak).
TARGET_MFU = 0.8


def matmul_case(m: int, k: int, n: int, device, seed: int):
    """A callable doing (m x k) @ (k x n) in fp32, and its FLOPs (2 m k n)."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(m, k, generator=g).to(device)
    b = torch.randn(k, n, generator=g).to(device)
    return (lambda: torch.mm(a, b)), 2 * m * k * n


# --quick: a tiny smoke test (flags given explicitly still win)
QUICK = quick_defaults(shape="gpt-tiny", variants=["lora:4", "full"], batch_size=2, tokens=16, square=256)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_common_args(parser, repeats=5)
    parser.add_argument("--shape", default="gpt2-small", help="model shape (gpt-tiny with --quick)")
    parser.add_argument("--variants", nargs="+", default=["lora:16", "full"],
                        help="'full' or 'lora:R' ('lora:4' and 'full' with --quick)")
    parser.add_argument("--batch-size", type=int, default=8, help="sequences per batch (2 with --quick)")
    parser.add_argument("--tokens", type=int, default=120, help="tokens per sequence (16 with --quick)")
    parser.add_argument("--square", type=int, default=2048,
                        help="size of the square reference matmul (256 with --quick)")
    return parser


def main(argv=None) -> dict:
    args = parse_with_quick(build_parser(), QUICK, argv)
    device = setup(args)
    variants = [Variant.parse(v) for v in args.variants]
    cfg = shape_config(args.shape, n_layers=args.n_layers)
    machine = machine_info(device)

    base = classifier(cfg, args.seed, device)
    batch = random_batch(cfg, args.batch_size, args.tokens, args.seed, device)
    models = variant_models(base, variants)
    steps = {f"training step, {name}": TrainStep(m, batch, device) for name, m in models.items()}
    counts = {f"training step, {name}": training_step_flops(m, batch[0]) for name, m in models.items()}
    flops = {name: c["total"] for name, c in counts.items()}
    n_tokens = args.batch_size * args.tokens
    references = {f"matmul {args.square}x{args.square} @ {args.square}x{args.square}":
                  matmul_case(args.square, args.square, args.square, device, args.seed),
                  f"matmul {n_tokens}x{cfg.emb_dim} @ {cfg.emb_dim}x{4 * cfg.emb_dim} (the feed-forward shape)":
                  matmul_case(n_tokens, cfg.emb_dim, 4 * cfg.emb_dim, device, args.seed)}
    fns = {**steps, **{name: fn for name, (fn, _) in references.items()}}
    flops.update({name: f for name, (_, f) in references.items()})
    print(f"[{NAME}] {args.shape}: {', '.join(fns)}", file=sys.stderr)
    timings = time_alternating(fns, warmup=args.warmup, repeats=args.repeats, device=device)

    rates = {name: flops[name] / timings[name].median for name in fns}
    reference_name = max(references, key=lambda name: rates[name])
    reference = rates[reference_name]
    results = {"shape": args.shape, "batch_size": args.batch_size, "tokens": args.tokens,
               "reference": reference_name, "reference_flops_per_second": reference,
               "cases": {name: {"flops": flops[name], "seconds": timings[name].to_dict(),
                                "flops_per_second": rates[name], "utilisation": rates[name] / reference}
                         for name in fns}}
    # Why not 100 %: profile each step's forward + backward and split its time into matmul
    # kernels and everything else. utilisation ~= (matmul share of the time) x (matmul speed / reference).
    breakdown = {}
    for name, step in steps.items():
        prof = profile_step(step, device)
        matmul_s = prof["by_category_ms"].get(MATMUL, 0.0) / 1e3
        linear_flops = counts[name]["total"] - 3 * counts[name]["attention_forward"]  # attention is its own kernel
        breakdown[name] = {"matmul_share": matmul_s / (prof["total_ms"] / 1e3),
                           "matmul_flops_per_second": linear_flops / matmul_s if matmul_s else None,
                           "by_category_ms": prof["by_category_ms"]}
        results["cases"][name]["profile"] = breakdown[name]
    rows = [[name, gflop(flops[name]), timings[name].ms(), f"{rates[name] / 1e9:,.1f}",
             f"{100 * rates[name] / reference:.0f} %"] for name in fns]
    why = markdown_table(
        ["training step", "time in matmul kernels (forward + backward)", "their speed (GFLOP/s)", "x reference"],
        [[name, f"{100 * b['matmul_share']:.0f} %",
          f"{b['matmul_flops_per_second'] / 1e9:,.1f}" if b["matmul_flops_per_second"] else "n/a",
          f"{100 * b['matmul_flops_per_second'] / reference:.0f} %" if b["matmul_flops_per_second"] else "n/a"]
         for name, b in breakdown.items()])
    lora_name = next((n for n in steps if "LoRA" in n), None)
    verdict = ""
    if lora_name is not None:
        u = rates[lora_name] / reference
        verdict = (f"| {lora_name} | {100 * u:.0f} % | >= {100 * TARGET_MFU:.0f} % | "
                   f"{'met' if u >= TARGET_MFU else f'missed by {100 * (TARGET_MFU - u):.1f} points'} |")
    parts = [
        f"{args.shape} shape, batch {args.batch_size} x {args.tokens} tokens, fp32. Median of {args.repeats} "
        f"calls, all cases alternating. Matmul FLOPs counted analytically (benchmarks/flops.py); utilisation is "
        f"against the faster reference matmul, {reference_name}: {reference / 1e9:,.1f} GFLOP/s.",
        markdown_table(["case", "GFLOP", "time (median, IQR)", "GFLOP/s", "utilisation"], rows),
        ("| case | utilisation | target | verdict |\n|---|---|---|---|\n" + verdict) if verdict else "",
        "Where the rest goes (torch.profiler, one forward + backward pass; the optimizer step is not in it): "
        "the share of the time spent inside matmul kernels, and how fast those kernels ran on the linear "
        "layers' FLOPs (attention's are done by its own kernel). Utilisation is roughly the product of the "
        "two (less the optimizer's time).",
        why,
        "A LoRA step does the same elementwise work as full fine-tuning (layer norms, GELU, softmax, residual "
        "adds, the embedding lookup; memory-bound, so slow per FLOP) but has a third fewer matmul FLOPs to show "
        "for it, so its utilisation is lower even where it is faster; its rank-r branches are thin matmuls that "
        "run far below the machine's peak. Full fine-tuning adds AdamW, a memory-bound pass over every "
        "parameter that does no matmul work at all.",
    ]
    write_results(NAME, args.out_dir, command_line(MODULE, argv), machine, results, "\n\n".join(p for p in parts if p),
                  title="Model FLOPs utilisation of a training step")
    return results


if __name__ == "__main__":
    run_main(main)
