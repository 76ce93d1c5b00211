"""The LoRA family on the spam and sentiment classifiers: LoRA, QLoRA, DoRA, PiSSA, LoRA+, rsLoRA, VeRA and
full fine-tuning, from the same base, at the same seeds (classify/lora_family.py has each recipe).

    python scripts/compare_lora_family.py                       # every method, both tasks, seeds 123 124 125
    python scripts/compare_lora_family.py --methods lora dora --tasks spam --seeds 123
    python scripts/compare_lora_family.py --quick               # a random gpt-tiny, 2 steps: runs/quick/lora_family

Writes lora_family.json (every seed's numbers), .md (the tables) and .png (test accuracy per method) into
--results (default results/). A --quick run writes under runs/quick/ and never replaces a real comparison.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from classify.lora_family import METHODS, markdown_table, plot, run_method, summarise
from classify.tasks import TASKS, tasks_for_base
from common.cli import (ArgumentParser, UserError, check_at_least, check_results_folder, check_seeds,
                        parse_with_quick, run_main)
from common.files import write_record
from gpt.device import add_device_argument, pick_device
from gpt.pretrained import DEFAULT_BASE

ROOT = Path(__file__).resolve().parent.parent
QUICK = dict(model="random:gpt-tiny", max_steps=2, seeds=[123])
NAME = "lora_family"


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=DEFAULT_BASE, help="base: a checkpoint folder/file, random[:preset]")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS), help="methods to run")
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS), help="tasks to run")
    p.add_argument("--seeds", nargs="+", type=int, default=[123, 124, 125])
    p.add_argument("--max-steps", type=int, default=None, help="stop each training after this many steps")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    add_device_argument(p)
    p.add_argument("--results", default=None, help=f"folder for {NAME}.{{json,md,png}} (default: results/; with "
                                                   f"--quick runs/quick/{NAME})")
    p.add_argument("--quick", action="store_true", help=f"smoke test: {QUICK}")
    p.add_argument("--from-record", action="store_true",
                   help=f"train nothing: rewrite {NAME}.md and .png from the {NAME}.json in --results (after a new "
                        f"TF-IDF baseline, say)")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    args = parse_with_quick(build_parser(), QUICK, argv)
    check_results_folder(args, NAME, ROOT)
    check_at_least(args, max_steps=1, threads=1)
    check_seeds(args.seeds)
    return args


def tfidf_record(results: Path) -> dict | None:
    """scripts/tfidf_baseline.py's record beside the comparison, or the committed one; None if neither exists."""
    for path in (results / "tfidf_baseline.json", ROOT / "results" / "tfidf_baseline.json"):
        if path.is_file():
            return json.loads(path.read_text())
    return None


def write_tables(report: dict, results: Path, log=print) -> None:
    """The record, its tables (with the TF-IDF row) and its plot into `results`."""
    table = markdown_table(report, None if report["quick"] else tfidf_record(results))
    write_record(results, NAME, report, table, plot)
    log(table)


def main(argv=None, log=print) -> dict:
    args = parse_args(argv)
    if args.from_record:
        record = Path(args.results) / f"{NAME}.json"
        if not record.is_file():
            raise UserError(f"--from-record: there is no {record}; run the comparison first")
        report = json.loads(record.read_text())
        write_tables(report, Path(args.results), log)
        return report
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    tasks = tasks_for_base(args.model)
    runs: dict = {}
    t0 = time.perf_counter()
    for task in args.tasks:
        for method in args.methods:
            for seed in args.seeds:
                r = run_method(method, args.model, tasks[task], seed, args.max_steps, device)
                runs.setdefault(task, {}).setdefault(method, {})[seed] = r
                log(f"{task:<9} {method:<9} seed {seed}: validation {100 * r['val']:.1f} %, test {100 * r['test']:.1f} %"
                    f", {r['trainable']:,} trained ({time.perf_counter() - t0:.0f} s)")
    report = {
        "command": "python scripts/compare_lora_family.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "quick": args.quick, "base": args.model, "device": str(device), "seeds": args.seeds,
        "methods": {m: METHODS[m].description for m in args.methods},
        "summary": summarise(runs),
        "runs": {t: {m: {str(s): r for s, r in by.items()} for m, by in ms.items()} for t, ms in runs.items()},
        "torch_threads": torch.get_num_threads(), "total_seconds": round(time.perf_counter() - t0),
    }
    write_tables(report, Path(args.results), log)
    return report


if __name__ == "__main__":
    run_main(main)
