"""Attention layouts and kernels: fused vs separate QKV, explicit softmax vs SDPA.

Two claims to measure (gpt/attention.py, seed 4):

* A fused `qkv` projection (one d -> 3d matmul) is faster than three separate d -> d ones
  (W_query, W_key, W_value): the same FLOPs, but one larger matmul and one kernel launch
  instead of three, and one gradient matmul instead of three in the backward pass.
* torch's `scaled_dot_product_attention` (SDPA) is faster than the book's explicit
  scores -> mask -> softmax -> weights @ values, which materialises the (b, H, T, T) score and
  weight tensors and runs four kernels where SDPA's fused kernel runs one.

Each is measured for the forward pass alone (inference), forward + backward with every weight
trained (full fine-tuning) and forward + backward with LoRA r=16 on queries and values (base
frozen), at two levels: one attention module (where the difference lives) and the whole GPT
(where it is diluted by the feed-forward layers, which are the same in both). The two layouts
hold the same weights (`fuse_qkv` / `convert_attention`), so they compute the same function.

    python -m benchmarks.bench_attention            # GPT-2 124M shape, batch 8 x 120 (minutes)
    python -m benchmarks.bench_attention --quick    # tiny smoke test
"""

from __future__ import annotations

import argparse
import copy
import sys

import torch
from torch import nn

from benchmarks.common import (add_common_args, command_line, machine_info, markdown_table, quick_defaults, setup,
                               time_alternating, write_results)
from benchmarks.setups import NUM_CLASSES, random_batch, shape_config
from common.cli import parse_with_quick, run_main
from classify.model import add_classification_head, class_logits
from gpt.attention import MultiHeadAttention, _CausalSelfAttention, fuse_qkv
from gpt.model import GPTModel, convert_attention
from lora import LoraConfig, apply_lora

NAME = "attention"
MODULE = "benchmarks.bench_attention"
# This project's target: one fused qkv matmul at most 0.9x the time of three separate ones (forward+backward),
# the gain fewer, larger kernels are expected to bring.
TARGET_FUSED = 0.9
MODES = ("forward", "forward+backward (full)", "forward+backward (LoRA on query, value)")
LAYOUTS = ("separate", "fused")
KERNELS = ("explicit softmax", "SDPA")


class _AttentionOnly(nn.Module):
    """One attention module under the name `att`, so LoRA's aliases ("query", "value") find it."""

    def __init__(self, att: nn.Module):
        super().__init__()
        self.att = att

    def forward(self, x):
        return self.att(x)


def _set_kernel(model: nn.Module, kernel: str) -> None:
    for m in model.modules():
        if isinstance(m, _CausalSelfAttention):
            m.sdpa = kernel == "SDPA"


def _with_lora(model: nn.Module, rank: int) -> nn.Module:
    """A LoRA copy of `model` (a deep copy: LoRA freezes its base, and `model` stays trainable)."""
    return apply_lora(copy.deepcopy(model), LoraConfig(rank=rank, alpha=rank, targets=("query", "value")))


def module_cases(cfg, args, device) -> dict:
    """Callables for one attention module: (mode, layout, kernel) -> fn."""
    torch.manual_seed(args.seed)
    separate = MultiHeadAttention(cfg.emb_dim, cfg.emb_dim, cfg.context_length, 0.0, cfg.n_heads,
                                  qkv_bias=cfg.qkv_bias).to(device)
    layouts = {"separate": _AttentionOnly(separate), "fused": _AttentionOnly(fuse_qkv(separate))}
    x = torch.randn(args.batch_size, args.tokens, cfg.emb_dim, device=device)
    grad_out = torch.randn_like(x)
    cases = {}
    for layout, full in layouts.items():
        lora = _with_lora(full, args.rank)
        for kernel in KERNELS:
            def forward(m=full, k=kernel):
                _set_kernel(m, k)
                with torch.no_grad():
                    m(x)

            def backward(m, k):
                def fn():
                    _set_kernel(m, k)
                    x_in = x.detach().requires_grad_(True)  # the input's gradient is needed in a real model
                    m(x_in).backward(grad_out)
                    m.zero_grad(set_to_none=True)
                return fn

            cases[(MODES[0], layout, kernel)] = forward
            cases[(MODES[1], layout, kernel)] = backward(full, kernel)
            cases[(MODES[2], layout, kernel)] = backward(lora, kernel)
    return cases


def model_cases(cfg, args, device) -> dict:
    """Callables for the whole classifier GPT: (mode, layout, kernel) -> fn."""
    torch.manual_seed(args.seed)
    separate = GPTModel(cfg.replace(attention="separate"))
    layouts = {"separate": separate, "fused": convert_attention(separate, "fused")}  # same weights
    for model in layouts.values():
        torch.manual_seed(args.seed)  # the same 2-class head on both
        add_classification_head(model, NUM_CLASSES)
        model.to(device).train()
    input_ids, labels = random_batch(cfg, args.batch_size, args.tokens, args.seed, device)
    cases = {}
    for layout, full in layouts.items():
        lora = _with_lora(full, args.rank)
        for kernel in KERNELS:
            def forward(m=full, k=kernel):
                _set_kernel(m, k)
                with torch.no_grad():
                    m(input_ids)

            def backward(m, k):
                def fn():
                    _set_kernel(m, k)
                    torch.nn.functional.cross_entropy(class_logits(m, input_ids), labels).backward()
                    m.zero_grad(set_to_none=True)  # free the gradients before the next variant runs
                return fn

            cases[(MODES[0], layout, kernel)] = forward
            cases[(MODES[1], layout, kernel)] = backward(full, kernel)
            cases[(MODES[2], layout, kernel)] = backward(lora, kernel)
    return cases


def run_level(level: str, cfg, args, device) -> dict:
    cases = (module_cases if level == "attention module" else model_cases)(cfg, args, device)
    results = {}
    for mode in MODES:  # one side-by-side timing per mode: 4 variants alternating
        group = {f"{layout} / {kernel}": cases[(mode, layout, kernel)] for layout in LAYOUTS for kernel in KERNELS}
        timings = time_alternating(group, warmup=args.warmup, repeats=args.repeats, device=device)
        results[mode] = {name: t.to_dict() for name, t in timings.items()}
    return results


def level_table(res: dict) -> str:
    rows = []
    for mode, timings in res.items():
        med = {name: t["median"] for name, t in timings.items()}
        for kernel in KERNELS:
            sep, fus = med[f"separate / {kernel}"], med[f"fused / {kernel}"]
            rows.append([mode, f"fused vs separate QKV ({kernel})", f"{1e3 * sep:,.2f}", f"{1e3 * fus:,.2f}",
                         f"{fus / sep:.2f}"])
        for layout in LAYOUTS:
            exp, sdpa = med[f"{layout} / explicit softmax"], med[f"{layout} / SDPA"]
            rows.append([mode, f"SDPA vs explicit softmax ({layout} QKV)", f"{1e3 * exp:,.2f}", f"{1e3 * sdpa:,.2f}",
                         f"{sdpa / exp:.2f}"])
    return markdown_table(["mode", "B vs A", "A (ms)", "B (ms)", "B / A"], rows)


# --quick: a tiny smoke test (flags given explicitly still win)
QUICK = quick_defaults(shape="gpt-tiny", batch_size=2, tokens=16, rank=4)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_common_args(parser, repeats=7)
    parser.add_argument("--shape", default="gpt2-small", help="model shape (gpt-tiny with --quick)")
    parser.add_argument("--batch-size", type=int, default=8, help="sequences per batch (2 with --quick)")
    parser.add_argument("--tokens", type=int, default=120, help="tokens per sequence (16 with --quick)")
    parser.add_argument("--rank", type=int, default=16, help="LoRA rank for the LoRA mode")
    parser.add_argument("--levels", nargs="+", choices=("module", "model"), default=["module", "model"])
    return parser


def main(argv=None) -> dict:
    args = parse_with_quick(build_parser(), QUICK, argv)
    device = setup(args)
    cfg = shape_config(args.shape, n_layers=args.n_layers)
    machine = machine_info(device)
    results = {"shape": args.shape, "batch_size": args.batch_size, "tokens": args.tokens, "levels": {}}
    names = {"module": "attention module", "model": "whole GPT"}
    for level in args.levels:
        print(f"[{NAME}] {args.shape}, {names[level]}", file=sys.stderr)
        results["levels"][names[level]] = run_level(names[level], cfg, args, device)

    parts = [f"{args.shape} shape ({cfg.emb_dim}-wide, {cfg.n_heads} heads, qkv bias {cfg.qkv_bias}), batch "
             f"{args.batch_size} x {args.tokens} tokens, LoRA rank {args.rank}. Median of {args.repeats} calls per "
             f"variant, the four variants of a mode alternating. Each row compares two of them, B against A, with "
             f"the other choice held fixed; B / A < 1: B is faster."]
    verdicts = [f"| level | fused / separate, forward+backward (full), SDPA | target <= {TARGET_FUSED}x |",
                "|---|---|---|"]
    for level, res in results["levels"].items():
        parts.append(f"## {level}\n\n" + level_table(res))
        t = res[MODES[1]]
        r = t["fused / SDPA"]["median"] / t["separate / SDPA"]["median"]
        verdict = "met" if r <= TARGET_FUSED else f"missed by {r / TARGET_FUSED - 1:.0%}"
        verdicts.append(f"| {level} | {r:.2f} | {verdict} |")
    parts.insert(1, "\n".join(verdicts))
    parts.append(
        "Why fusing gains little on a CPU: the three separate projections do exactly the FLOPs of the fused "
        "one, and a CPU matmul of (b*T) x d x d is already large enough to run near the machine's peak, so "
        "fusing saves call overhead and two of the three reads of the input, not arithmetic. The gain is "
        "larger on a GPU, where each kernel launch costs microseconds and small matmuls leave the device idle. "
        "In the whole model the QKV projections are a quarter of the matmul work (3 d^2 of the 12 d^2 per "
        "token and layer), so any gain is diluted about four-fold. SDPA's advantage grows with the sequence "
        "length (the explicit version writes and reads two (b, H, T, T) tensors); at 120 tokens the scores "
        "are small next to the projections.")
    write_results(NAME, args.out_dir, command_line(MODULE, argv), machine, results, "\n\n".join(parts),
                  title="Fused vs separate QKV, explicit softmax vs SDPA")
    return results


if __name__ == "__main__":
    run_main(main)
