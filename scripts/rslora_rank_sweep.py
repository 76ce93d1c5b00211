"""rsLoRA's rank claim on this project's task: LoRA (alpha/r) and rsLoRA (alpha/sqrt(r)) at ranks 4 to 256,
the same learning rate, epochs and seeds (classify/rank_sweep.py says how alpha is chosen).

    python scripts/rslora_rank_sweep.py                 # sentiment, ranks 4 16 64 256, seeds 123 124
    python scripts/rslora_rank_sweep.py --quick         # a random gpt-tiny, 2 steps: runs/quick/rslora_rank_sweep

Writes rslora_rank_sweep.json (every run), .md (the table and the verdicts) and .png (loss and accuracy
against the rank) into --results (default results/). A --quick run never replaces a real sweep.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from classify.lora_family import METHODS, run_method
from classify.rank_sweep import RANKS, SCALINGS, markdown_table, plot, summarise, sweep_config, verdicts
from classify.tasks import TASKS, tasks_for_base
from common.cli import (ArgumentParser, UserError, check_at_least, check_results_folder, check_seeds,
                        parse_with_quick, run_main)
from common.files import write_record
from gpt.device import add_device_argument, pick_device
from gpt.pretrained import DEFAULT_BASE

ROOT = Path(__file__).resolve().parent.parent
QUICK = dict(model="random:gpt-tiny", max_steps=2, seeds=[123], ranks=[4, 16])
NAME = "rslora_rank_sweep"


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=DEFAULT_BASE, help="base: a checkpoint folder/file, random[:preset]")
    p.add_argument("--task", default="sentiment", choices=list(TASKS),
                   help="the task (sentiment: spam is near its ceiling at every rank)")
    p.add_argument("--ranks", nargs="+", type=int, default=list(RANKS))
    p.add_argument("--seeds", nargs="+", type=int, default=[123, 124])
    p.add_argument("--max-steps", type=int, default=None, help="stop each training after this many steps")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    add_device_argument(p)
    p.add_argument("--results", default=None, help=f"folder for {NAME}.{{json,md,png}} (default: results/; with "
                                                   f"--quick runs/quick/{NAME})")
    p.add_argument("--quick", action="store_true", help=f"smoke test: {QUICK}")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    args = parse_with_quick(build_parser(), QUICK, argv)
    check_results_folder(args, NAME, ROOT)
    check_at_least(args, max_steps=1, threads=1)
    if min(args.ranks) < 1 or len(set(args.ranks)) != len(args.ranks) or len(args.ranks) < 2:
        raise UserError(f"--ranks must be at least two different integers >= 1, got {args.ranks}")
    check_seeds(args.seeds)
    return args


def main(argv=None, log=print) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    task = tasks_for_base(args.model)[args.task]
    runs: dict = {}
    t0 = time.perf_counter()
    for rank in args.ranks:
        for scaling in SCALINGS:
            for seed in args.seeds:
                r = run_method("lora", args.model, task, seed, args.max_steps, device, lora=sweep_config(scaling, rank))
                runs.setdefault(scaling, {}).setdefault(str(rank), {})[str(seed)] = r
                log(f"{scaling:<14} r={rank:<4} seed {seed}: training loss {r['train_loss_by_epoch'][-1]:.3f}, "
                    f"validation {100 * r['val']:.1f} % ({time.perf_counter() - t0:.0f} s)")
    summary = summarise(runs)
    report = {
        "command": "python scripts/rslora_rank_sweep.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "quick": args.quick, "base": args.model, "task": args.task, "device": str(device), "seeds": args.seeds,
        "ranks": args.ranks, "lr": METHODS["lora"].lr, "epochs": METHODS["lora"].epochs,
        "summary": summary, "verdicts": verdicts(summary), "runs": runs,
        "torch_threads": torch.get_num_threads(), "total_seconds": round(time.perf_counter() - t0),
    }
    table = markdown_table(report)
    write_record(args.results, NAME, report, table, plot)
    log(table)
    return report


if __name__ == "__main__":
    run_main(main)
