"""Compare ways of fine-tuning the spam classifier, on the same data and seeds.

    python scripts/compare_finetuning.py                           # every row, seed 123
    python scripts/compare_finetuning.py --seeds 123 124 125        # mean of three seeds per row
    python scripts/compare_finetuning.py --rows lora-separate full  # some rows only
    python scripts/compare_finetuning.py --quick                    # tiny random model: runs/quick/compare/ (tests)

Rows (all with a new 2-class head, read at the last real token, and, unless the row says otherwise,
finetune_spam.py's recipe: 3 epochs, batch 8, AdamW lr 8e-4 with cosine decay, LoRA r=16 alpha=16 on
every linear layer, the loss at the last token plus the loss at every prefix):
  lora-separate     LoRA on W_query/W_key/W_value (+ the other linear layers the recipe targets)
  lora-fused        the same LoRA on one fused qkv projection (per-slice A/B): the same trainable count and
                    the same function; only the random draw of the A matrices differs (one (d, 3r) draw)
  full              every weight trained (the embeddings too), lr 1e-4 (8e-4 was worse on validation)
  last-block        the last transformer block + final_norm + head (the book's chapter 6)
  head              the head only: a linear probe on frozen features
  lora-random-base  lora-separate on a randomly initialised base of the same shape: what pre-training buys
  scale-alpha/r     the book's recipe r=16, alpha=16, constant lr 8e-4, the book's loss (last token only),
                    update scaled by alpha/r = 1
  scale-alpha       the same with the book's first printing: alpha * x A B, 16x larger update
  lora-whole        lora-separate trained on whole messages only (--prefix-weight 0, the book's loss); the
                    recipe also trains on every prefix of each message, against "short means ham"

The table also gives each row's p(spam) for the short prize message "You won a free cruise, call now"
(finetune_spam.py classifies its --probe texts at the end of every run), mean over the seeds.

Each run is a separate process (scripts/finetune_spam.py --result-json) so that its peak memory
(ru_maxrss) is its own; --in-process (implied by --quick) runs them in this process instead
(classify.finetune.finetune), where the peak RSS only grows from row to row. Writes
results/spam_comparison.json (every seed's numbers), results/spam_comparison.md (the table),
results/spam_curves.png and, on a checkpoint base with the lora-separate and full rows,
results/spam_floor.json (the floor). A --quick comparison writes under runs/quick/compare/ and refuses
a --results folder that holds a real comparison. Every setting is checked before the first run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from classify.comparison import ROWS, floor_record, markdown_table, random_twin, run_settings, summarise
from classify.finetune import QUICK, config_from_args, finetune, parse_finetune_args
from common.cli import ArgumentParser, UserError, run_main
from common.files import atomic_write_text
from gpt.device import add_device_argument, pick_device
from gpt.pretrained import DEFAULT_BASE
from plots.figures import new_figure, save_figure

ROOT = Path(__file__).resolve().parent.parent


def run_one(flags: list[str], in_process: bool, result_path: Path) -> dict:
    if in_process:
        args = parse_finetune_args(flags + ["--no-progress"])
        return finetune(config_from_args(args), out=args.out,
                        command="python scripts/finetune_spam.py " + " ".join(flags))
    cmd = [sys.executable, str(ROOT / "scripts" / "finetune_spam.py"), *flags, "--result-json", str(result_path),
           "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    print("\n".join("    " + line for line in proc.stdout.strip().splitlines()[-2:]))
    return json.loads(result_path.read_text())


def plot_curves(curves: dict, path: Path) -> None:
    """Validation accuracy and running training loss against examples seen, one line per row."""
    fig, (ax_loss, ax_acc) = new_figure(1, 2, figsize=(11.5, 3.8), dpi=100)
    for name, h in curves.items():
        ax_loss.plot(h["examples_seen"], h["train_loss"], label=name)
        ax_acc.plot(h["examples_seen"], [100 * a for a in h["val_accuracy"]], label=name)
    ax_loss.set_ylabel("training loss at the last token\n(running mean, nats/message)")
    ax_acc.set_ylabel("validation accuracy (%)")
    for ax in (ax_loss, ax_acc):
        ax.set_xlabel("training examples seen")
        ax.grid(alpha=0.3)
    ax_acc.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5))  # outside: the curves stay visible
    fig.suptitle("spam classifier: fine-tuning methods (first seed)")
    fig.tight_layout()
    save_figure(fig, path)


def write_table(report: dict, results_dir: Path) -> str:
    table = markdown_table(report["rows"], report["meta"])
    atomic_write_text(results_dir / "spam_comparison.md",
                      f"# Spam classifier: fine-tuning methods compared\n\nCommand: `{report['meta']['command']}`\n\n{table}")
    plot_curves(report["curves"], results_dir / "spam_curves.png")
    return table


def render(results_dir: Path) -> dict:
    """Rewrite the table and the plot from a saved spam_comparison.json (after a change of wording)."""
    path = results_dir / "spam_comparison.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run the comparison first")
    report = json.loads(path.read_text())
    print(write_table(report, results_dir))
    return report


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS), help="which rows to run")
    p.add_argument("--seeds", nargs="+", type=int, default=[123], help="one run per seed per row; the table shows the mean")
    p.add_argument("--model", default=None, help="base model (default: finetune_spam.py's, the shipped gpt-mini)")
    p.add_argument("--results", default=None,
                   help="folder for spam_comparison.{json,md}, spam_curves.png, spam_floor.json (default: results/; "
                        "with --quick runs/quick/compare/results, and a --quick comparison refuses a folder that "
                        "holds a real comparison)")
    p.add_argument("--runs", default=None,
                   help="folder for each run's folder (default: runs/compare/; with --quick runs/quick/compare/runs)")
    p.add_argument("--in-process", action="store_true", help="run the rows in this process (faster, shared peak RSS)")
    p.add_argument("--jobs", type=int, default=1,
                   help="runs at a time, each its own process (use with --threads 1; times then include contention)")
    add_device_argument(p, note="Passed to every finetune_spam.py run (which uses bf16 autocast on CUDA)")
    p.add_argument("--quick", action="store_true",
                   help="tiny random model, a few steps, in process (tests); writes under runs/quick/compare/")
    p.add_argument("--render-only", action="store_true",
                   help="run nothing: rewrite spam_comparison.md and spam_curves.png from --results/spam_comparison.json")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    """The command line; flags this script does not know are kept in `args.extra`, passed to every
    finetune_spam.py run (e.g. --epochs 2)."""
    args, extra = build_parser().parse_known_args(argv)
    args.extra = list(extra)
    quick_dir = ROOT / "runs" / "quick" / "compare"
    if args.results is None:
        args.results = str(quick_dir / "results" if args.quick else ROOT / "results")
    if args.runs is None:
        args.runs = str(quick_dir / "runs" if args.quick else ROOT / "runs" / "compare")
    if args.jobs < 1:
        raise UserError(f"--jobs must be at least 1, got {args.jobs}")
    return args


def check_results_folder(results_dir: Path, quick: bool) -> None:
    """Refuse a --results that is a file, and for a --quick comparison one that holds a real comparison."""
    if results_dir.exists() and not results_dir.is_dir():
        raise UserError(f"--results {results_dir} is a file, not a folder")
    saved = results_dir / "spam_comparison.json"
    if quick and saved.is_file():
        try:
            meta = json.loads(saved.read_text()).get("meta", {})
            was_quick = meta.get("quick", "--quick" in meta.get("common_flags", []))
        except (ValueError, OSError, AttributeError):
            was_quick = False
        if not was_quick:
            raise UserError(f"--results {results_dir} holds a real comparison (spam_comparison.json); a --quick "
                            f"comparison never replaces it: give another --results (default "
                            f"{ROOT / 'runs' / 'quick' / 'compare' / 'results'})")


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.render_only:
        return render(Path(args.results))
    pick_device(args.device)  # a device that does not exist: a clear error here, before any run
    check_results_folder(Path(args.results), args.quick)
    common = list(args.extra)
    if args.device != "auto":  # finetune_spam.py's own default is auto: every run gets the same device either way
        common += ["--device", args.device]
    if args.quick:
        common.append("--quick")
        args.in_process = True
    if args.model:
        common += ["--model", args.model]
    base = args.model or (QUICK["model"] if args.quick else DEFAULT_BASE)
    results_dir, runs_dir = Path(args.results), Path(args.runs)

    same_as: dict[str, str] = {}  # row -> earlier row with exactly the same settings (run once, reported twice)
    settings_seen: dict[tuple, str] = {}
    jobs = []  # (row, seed, flags, out folder)
    for name in args.rows:
        row_flags = [random_twin(base) if f == "RANDOM" else f for f in ROWS[name][0]]
        settings = run_settings(common + row_flags)
        if settings in settings_seen:
            same_as[name] = settings_seen[settings]
            print(f"{name}: the same settings as {same_as[name]}; its runs are reused")
            continue
        settings_seen[settings] = name
        for seed in args.seeds:
            out = runs_dir / f"{name.replace('/', '_')}-seed{seed}"
            jobs.append((name, seed, common + row_flags + ["--seed", str(seed), "--out", str(out)], out))
    results_dir.mkdir(parents=True, exist_ok=True)  # every setting has been checked: now the work
    runs_dir.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()

    def run_job(job):
        name, seed, flags, out = job
        print(f"[{time.perf_counter() - t0:5.0f} s] {name}, seed {seed}: finetune_spam.py {' '.join(flags)}", flush=True)
        return run_one(flags, args.in_process, out / "result.json")

    if args.jobs > 1 and not args.in_process:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=args.jobs) as pool:  # threads only wait on subprocesses
            results = list(pool.map(run_job, jobs))
    else:
        results = [run_job(job) for job in jobs]
    all_runs: dict[str, list[dict]] = {}
    for (name, *_), result in zip(jobs, results):
        all_runs.setdefault(name, []).append(result)
    for name, other in same_as.items():
        all_runs[name] = all_runs[other]
    all_runs = {name: all_runs[name] for name in args.rows}  # the table in ROWS order
    rows = {name: summarise(runs) for name, runs in all_runs.items()}
    first = next(iter(all_runs.values()))[0]
    meta = {"base": base, "common_flags": common, "seeds": args.seeds, "in_process": args.in_process, "same_as": same_as,
            "quick": args.quick,
            "device": first["device"], "threads": first["threads"], "torch": first["torch"],
            "jobs": args.jobs if not args.in_process else 1,
            "load_average": ", ".join(f"{r['load_average_1min']:.1f}" for name, runs in all_runs.items() for r in runs
                                      if name not in same_as and r.get("load_average_1min") is not None),
            "command": "python scripts/compare_finetuning.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "total_seconds": round(time.perf_counter() - t0, 1)}
    report = {"meta": meta, "rows": rows,
              "runs": {name: [{k: v for k, v in r.items() if k != "history"} for r in runs] for name, runs in all_runs.items()},
              "curves": {name: runs[0]["history"] for name, runs in all_runs.items() if name not in same_as}}
    atomic_write_text(results_dir / "spam_comparison.json", json.dumps(report, indent=1) + "\n")
    table = write_table(report, results_dir)
    floor = floor_record(rows, all_runs, meta)
    if floor is not None:
        atomic_write_text(results_dir / "spam_floor.json", json.dumps(floor, indent=1) + "\n")
        print(f"floor: LoRA {100 * floor['lora_test_accuracy_mean']:.2f} % (>= 94 %: {floor['meets_floor']}), "
              f"full {100 * floor['full_test_accuracy_mean']:.2f} % (within one point: "
              f"{floor['within_one_point_of_full']}) -> {results_dir / 'spam_floor.json'}")
    print("\n" + table)
    return report


if __name__ == "__main__":
    run_main(main)
