"""Chapter 10 script: every method of the LoRA family trains on the spam task, and the chapter's measurements.

    python scripts/ch10_lora_family.py                   # each method, 40 steps on spam: what it trains (2 minutes)
    python scripts/ch10_lora_family.py --steps 10 --methods qlora vera
    python scripts/ch10_lora_family.py --results-only    # the committed side-by-side table and the decision table
                                                         # (cost: GPT-2 124M shape on an H200, as chapter 10 reads it)

Each method is built as classify/lora_family.py builds it (gpt-mini, a new 2-class head, r=16 on every linear
layer of the blocks) and trained with the comparison's recipe for --steps steps (seed 123); the script prints
what it trains, what its frozen weights take, its mean training loss and its validation accuracy then. The full
comparison (every method to the end, two tasks, three seeds: 45 minutes) is scripts/compare_lora_family.py; the
cost of a training step is benchmarks/bench_lora_family.py; the rsLoRA rank sweep scripts/rslora_rank_sweep.py.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from classify.lora_family import METHODS, run_method, side_by_side, which_method_when
from classify.tasks import tasks_for_base
from common.cli import ArgumentParser, UserError, parse_with_quick, run_main
from gpt.device import add_device_argument, pick_device
from gpt.pretrained import DEFAULT_BASE

ROOT = Path(__file__).resolve().parent.parent
QUICK = dict(model="random:gpt-tiny", steps=2)
FAMILY = ROOT / "results" / "lora_family.json"
# the cost the chapter's decision table reads: the GPT-2 124M shape on an H200 (benchmarks.gpu_run's lora_family step)
COST = ROOT / "results" / "gpu" / "2026-12-04-lora-family" / "benchmarks" / "lora_family_cost.json"
TFIDF = ROOT / "results" / "tfidf_baseline.json"


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=DEFAULT_BASE, help="base: a checkpoint folder/file, random[:preset]")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--steps", type=int, default=40, help="optimizer steps per method")
    p.add_argument("--seed", type=int, default=123)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--results-only", action="store_true", help="train nothing: print the committed tables")
    p.add_argument("--cost", type=Path, default=COST,
                   help="with --results-only: the cost record to read (benchmarks/bench_lora_family's .json)")
    p.add_argument("--shape", default="gpt2-small", help="with --results-only: the cost record's model shape")
    add_device_argument(p)
    p.add_argument("--quick", action="store_true", help=f"smoke test: {QUICK}")
    return p


def committed_tables(cost_path: Path = COST, shape: str = "gpt2-small") -> dict:
    """side_by_side and which_method_when on the committed records (cost from `cost_path` at `shape`)."""
    for path in (FAMILY, cost_path, TFIDF):
        if not path.is_file():
            raise UserError(f"{path} is missing; the committed records come with the repository (git checkout), or "
                            f"remake it with the command its .md names")
    cost = next((s for s in json.loads(cost_path.read_text())["results"]["shapes"] if s["shape"] == shape), None)
    if cost is None:
        raise UserError(f"{cost_path} has no {shape} shape")
    rows = side_by_side(json.loads(FAMILY.read_text()), cost, json.loads(TFIDF.read_text()))
    return {"rows": rows, "decisions": which_method_when(rows)}


def main(argv=None, log=print) -> dict:
    args = parse_with_quick(build_parser(), QUICK, argv)
    if args.results_only:
        tables = committed_tables(args.cost, args.shape)
        log("method     | spam test      | sentiment test | trained    | peak memory x LoRA | step time x LoRA")
        for r in tables["rows"]:
            mem, t = r["peak_memory_x_lora"], r["step_time_x_lora"]
            log(f"{r['method']:10} | {100 * r['spam_test_mean']:5.1f} ± {100 * r['spam_test_std']:3.1f} % | "
                f"{100 * r['sentiment_test_mean']:5.1f} ± {100 * r['sentiment_test_std']:3.1f} % | "
                f"{'-' if r['trainable'] is None else format(r['trainable'], ','):>10} | "
                f"{'-' if mem is None else f'{mem:.2f}':>18} | {'-' if t is None else f'{t:.2f}':>16}")
        for d in tables["decisions"]:
            log(f"{d['situation']}: {d['method']} ({d['why']})")
        return tables
    if args.steps < 1:
        raise UserError(f"--steps must be at least 1, got {args.steps}")
    if args.threads:
        if args.threads < 1:
            raise UserError(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    spam = tasks_for_base(args.model)["spam"]
    out = {}
    for method in args.methods:
        r = run_method(method, args.model, spam, args.seed, max_steps=args.steps, device=device)
        out[method] = r
        log(f"{method:9} {r['trainable']:>10,} trained, frozen weights {r['frozen_bytes'] / 2**20:6.1f} MiB, "
            f"training loss {r['train_loss_by_epoch'][-1]:.3f} over {args.steps} steps, validation accuracy "
            f"{100 * r['val']:.1f} % ({r['seconds']:.0f} s)")
    return out


if __name__ == "__main__":
    run_main(main)
