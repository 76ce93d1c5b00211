"""LoRA, LoRA+, rsLoRA and VeRA at a grid of learning rates on the sentiment task, the rate chosen on validation
(classify/rate_search.py says why and which rates).

    python scripts/tune_family_rates.py --threads 2      # sentiment, seed 123, 16 runs
    python scripts/tune_family_rates.py --quick          # a random gpt-tiny, 2 steps: runs/quick/lora_family_rates

Writes lora_family_rates.json (every run), .md (the table, the chosen rates) and .png (validation accuracy against
the rate) into --results (default results/). A --quick run never replaces a real search.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from classify.lora_family import run_method
from classify.rate_search import GRIDS, markdown_table, plot, summarise
from classify.tasks import TASKS, tasks_for_base
from common.cli import ArgumentParser, check_at_least, check_results_folder, parse_with_quick, run_main
from common.files import write_record
from gpt.device import add_device_argument, pick_device
from gpt.pretrained import DEFAULT_BASE

ROOT = Path(__file__).resolve().parent.parent
QUICK = dict(model="random:gpt-tiny", max_steps=2, methods=["lora", "vera"])
NAME = "lora_family_rates"


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=DEFAULT_BASE, help="base: a checkpoint folder/file, random[:preset]")
    p.add_argument("--task", default="sentiment", choices=list(TASKS))
    p.add_argument("--methods", nargs="+", default=list(GRIDS), choices=list(GRIDS))
    p.add_argument("--seed", type=int, default=123)
    p.add_argument("--max-steps", type=int, default=None, help="stop each training after this many steps")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    add_device_argument(p)
    p.add_argument("--results", default=None, help=f"folder for {NAME}.{{json,md,png}} (default: results/; with "
                                                   f"--quick runs/quick/{NAME})")
    p.add_argument("--quick", action="store_true", help=f"smoke test: {QUICK}")
    return p


def main(argv=None, log=print) -> dict:
    args = parse_with_quick(build_parser(), QUICK, argv)
    results = check_results_folder(args, NAME, ROOT)
    check_at_least(args, max_steps=1, threads=1, seed=0)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    task = tasks_for_base(args.model)[args.task]
    runs: dict = {}
    t0 = time.perf_counter()
    for method in args.methods:
        for lr in GRIDS[method]:
            r = run_method(method, args.model, task, args.seed, args.max_steps, device, lr=lr)
            runs.setdefault(method, {})[repr(lr)] = r
            log(f"{method:9} lr {lr:<8g}: validation {100 * r['val']:.1f} %, test {100 * r['test']:.1f} % "
                f"({time.perf_counter() - t0:.0f} s)")
    report = {"command": "python scripts/tune_family_rates.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "quick": args.quick, "base": args.model, "task": args.task, "seed": args.seed, "device": str(device),
              "summary": summarise(runs), "runs": runs, "torch_threads": torch.get_num_threads(),
              "total_seconds": round(time.perf_counter() - t0)}
    table = markdown_table(report)
    write_record(results, NAME, report, table, plot)
    log(table)
    return report


if __name__ == "__main__":
    run_main(main)
