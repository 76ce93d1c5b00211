"""Generation speed with and without the KV cache (gpt/generate.py, use_cache).

Without a cache, step t runs the model over all T + t tokens so far, so generating N tokens after
a prompt of T costs about N (T + N / 2) token passes; with the cache the prompt runs once and each
step runs one token, N + T passes in all, plus attention over the cached keys. The cache trades
that arithmetic for memory: every block keeps the keys and values of every token,
2 * n_layers * b * (T + N) * d numbers.

Measured here: greedy generation of `--new-tokens` tokens after a random prompt of
`--prompt-tokens` tokens, batch 1, random weights, both variants alternating; the two outputs are
checked to be the same tokens before timing.

    python -m benchmarks.bench_generate --threads 1 --warmup 0   # GPT-2 124M shape (about a minute)
    python -m benchmarks.bench_generate --quick              # tiny smoke test
"""

from __future__ import annotations

import argparse
import sys

import torch

from benchmarks.common import (add_common_args, command_line, machine_info, markdown_table, quick_defaults, setup,
                               time_alternating, write_results)
from benchmarks.setups import shape_config
from common.cli import parse_with_quick, run_main
from gpt.generate import generate
from gpt.model import GPTModel

NAME = "generate"
MODULE = "benchmarks.bench_generate"


# --quick: a tiny smoke test (flags given explicitly still win)
QUICK = quick_defaults(shape="gpt-tiny", prompt_tokens=8, new_tokens=16)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_common_args(parser, repeats=3)
    parser.add_argument("--shape", default="gpt2-small", help="model shape (gpt-tiny with --quick)")
    parser.add_argument("--prompt-tokens", type=int, default=16, help="prompt length (8 with --quick)")
    parser.add_argument("--new-tokens", type=int, default=48, help="tokens to generate (16 with --quick)")
    parser.add_argument("--batch-size", type=int, default=1, help="sequences generated at once")
    return parser


def main(argv=None) -> dict:
    args = parse_with_quick(build_parser(), QUICK, argv)
    device = setup(args)
    cfg = shape_config(args.shape, n_layers=args.n_layers)
    if args.prompt_tokens + args.new_tokens > cfg.context_length:
        raise ValueError(f"--prompt-tokens {args.prompt_tokens} + --new-tokens {args.new_tokens} exceed the "
                         f"{args.shape} context length {cfg.context_length}; ask for fewer tokens")
    machine = machine_info(device)
    model = GPTModel(cfg).to(device).eval()
    prompt = torch.randint(0, cfg.vocab_size, (args.batch_size, args.prompt_tokens),
                           generator=torch.Generator().manual_seed(args.seed)).to(device)

    def run(use_cache):
        return lambda: generate(model, prompt, max_new_tokens=args.new_tokens, use_cache=use_cache)

    same = torch.equal(run(True)(), run(False)())  # also a first, untimed call of each
    if not same:
        raise RuntimeError("cached and uncached generation gave different tokens; not timing them")
    print(f"[{NAME}] {args.shape}, batch {args.batch_size}, {args.prompt_tokens} + {args.new_tokens} tokens",
          file=sys.stderr)
    timings = time_alternating({"uncached": run(False), "KV cache": run(True)}, warmup=args.warmup,
                               repeats=args.repeats, device=device)
    speedup = timings["uncached"].median / timings["KV cache"].median
    cache_bytes = 2 * cfg.n_layers * args.batch_size * (args.prompt_tokens + args.new_tokens) * cfg.emb_dim * 4
    results = {"shape": args.shape, "batch_size": args.batch_size, "prompt_tokens": args.prompt_tokens,
               "new_tokens": args.new_tokens, "same_tokens": same, "speedup": speedup, "cache_bytes": cache_bytes,
               "variants": {name: {"seconds": t.to_dict(),
                                   "tokens_per_second": args.batch_size * args.new_tokens / t.median}
                            for name, t in timings.items()}}
    rows = [[name, t.ms(), f"{args.batch_size * args.new_tokens / t.median:,.1f}"] for name, t in timings.items()]
    parts = [
        f"{args.shape} shape ({cfg.emb_dim}-wide, {cfg.n_layers} layers), random weights, greedy generation of "
        f"{args.new_tokens} tokens after a {args.prompt_tokens}-token prompt, batch {args.batch_size}. Median of "
        f"{args.repeats} generations (IQR), the two variants alternating; both produce the same tokens (checked "
        f"before timing).",
        markdown_table(["variant", "one generation", "new tokens / s"], rows),
        f"The KV cache is **{speedup:.1f}x** faster here. It holds {cache_bytes / 2**20:,.2f} MiB of keys and values "
        f"at the end (float32). The gain grows with the sequence: without the cache the work per step grows with "
        f"the tokens so far, with it only the attention over the cached keys does.",
    ]
    write_results(NAME, args.out_dir, command_line(MODULE, argv), machine, results, "\n\n".join(parts),
                  title="Generation with and without the KV cache")
    return results


if __name__ == "__main__":
    run_main(main)
