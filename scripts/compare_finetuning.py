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
import dataclasses
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from classify.finetune import PROBES, QUICK, config_from_args, finetune, parse_finetune_args
from common.cli import ArgumentParser, UserError, run_main
from common.files import atomic_write_text
from gpt.device import add_device_argument, pick_device
from gpt.pretrained import DEFAULT_BASE
from plots.figures import new_figure, save_figure

ROOT = Path(__file__).resolve().parent.parent

# The book's appendix E recipe: constant learning rate (our default decays it; see finetune_spam.py).
BOOK_RECIPE = ["--rank", "16", "--alpha", "16", "--lr", "8e-4", "--schedule", "constant", "--targets", "all-linear",
               "--prefix-weight", "0"]
# name -> (extra finetune_spam.py flags, what the row shows)
ROWS: dict[str, tuple[list[str], str]] = {
    "lora-separate": (["--method", "lora", "--attention", "separate"],
                      "LoRA on all linear layers, separate W_query/W_key/W_value"),
    "lora-fused": (["--method", "lora", "--attention", "fused"], "LoRA on all linear layers, fused qkv"),
    # lr 1e-4 for full fine-tuning: chosen on the validation set (seed 123: loss 0.086 vs 0.134 at 8e-4).
    "full": (["--method", "full", "--lr", "1e-4"], "full fine-tuning (lr 1e-4)"),
    "last-block": (["--method", "last-block"], "last block + final norm + head"),
    "head": (["--method", "head"], "head only"),
    "lora-random-base": (["--method", "lora", "--model", "RANDOM"], "lora-separate on a random base"),
    "scale-alpha/r": (["--method", "lora", *BOOK_RECIPE, "--scaling", "alpha/r"], "book recipe (constant lr), alpha/r: scale 1"),
    "scale-alpha": (["--method", "lora", *BOOK_RECIPE, "--scaling", "alpha"], "book recipe (constant lr), 1st printing alpha: scale 16"),
    "lora-whole": (["--method", "lora", "--prefix-weight", "0"], "lora-separate, loss on whole messages only (the book's)"),
}
PROBE = PROBES[0]  # "You won a free cruise, call now"
ACC_KEYS = ("train_accuracy", "val_accuracy", "test_accuracy")


def random_twin(base: str) -> str:
    """'random:<preset>' with the base's shape: the preset whose architecture matches the base."""
    from gpt.checkpoint import read_checkpoint_config
    from gpt.config import PRESETS, GPTConfig
    from gpt.pretrained import describe_base

    info = describe_base(base)
    if info["kind"] == "random":
        return f"random:{info['preset']}"
    if info["kind"] == "checkpoint":
        cfg = read_checkpoint_config(info["path"])
    else:
        raise ValueError(f"no random twin for {base!r}: use a gpt.checkpoint base or random:<preset>")
    shape = ("vocab_size", "context_length", "emb_dim", "n_heads", "n_layers", "qkv_bias", "tie_weights")
    for name in PRESETS:
        p = GPTConfig.from_preset(name)
        if all(getattr(p, f) == getattr(cfg, f) for f in shape):
            return f"random:{name}"
    raise ValueError(f"no preset has the shape of {base!r} ({cfg}); cannot build a random base of the same shape")


def _settings(flags: list[str]) -> tuple:
    """Everything that determines a run's numbers (not where it writes), as finetune_spam.py parses `flags`;
    a bad setting is a ValueError here, before any run."""
    cfg = config_from_args(parse_finetune_args(flags))
    return tuple(sorted((k, str(v)) for k, v in dataclasses.asdict(cfg).items() if k not in ("progress", "seed")))


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


def summarise(runs: list[dict]) -> dict:
    """Mean (and sample std when several seeds) of each accuracy, mean time, max memory."""
    out = {"seeds": [r["seed"] for r in runs], "trainable_params": runs[0]["trainable_params"]}
    for key in ACC_KEYS:
        values = [r[key] for r in runs]
        out[key] = statistics.mean(values)
        out[key + "_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        out[key + "_all"] = values
    if all(PROBE in r.get("probes_p_spam", {}) for r in runs):
        out["probe_p_spam"] = statistics.mean(r["probes_p_spam"][PROBE] for r in runs)
    out["finetune_seconds"] = statistics.mean(r["finetune_seconds"] for r in runs)
    out["peak_rss_mib"] = max(r["peak_rss_mib"] for r in runs)
    if "cuda_max_allocated_mib" in runs[0]:
        out["cuda_max_allocated_mib"] = max(r["cuda_max_allocated_mib"] for r in runs)
    return out


def pct(mean: float, std: float, n: int) -> str:
    return f"{100 * mean:.2f}" + (f" ± {100 * std:.2f}" if n > 1 else "")


def markdown_table(rows: dict, meta: dict) -> str:
    same_as = meta.get("same_as", {})
    gpu = any("cuda_max_allocated_mib" in s for s in rows.values())
    probe = all("probe_p_spam" in s for s in rows.values())  # absent from results made before the probes existed
    head = ["row", "what", "trainable params", "train acc %", "val acc %", "test acc %"] \
        + ([f"p(spam) \"{PROBE}\""] if probe else []) + ["fine-tune time (s)", "peak RSS (MiB)"] \
        + (["peak CUDA (MiB)"] if gpu else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, s in rows.items():
        n = len(s["seeds"])
        what = ROWS[name][1] + (f" (= {same_as[name]}: same settings, same runs)" if name in same_as else "")
        cells = [name, what, f"{s['trainable_params']:,}", *(pct(s[k], s[k + '_std'], n) for k in ACC_KEYS),
                 *([f"{s['probe_p_spam']:.2f}"] if probe else []), f"{s['finetune_seconds']:.0f}", f"{s['peak_rss_mib']:.0f}"]
        if gpu:
            cells.append(f"{s.get('cuda_max_allocated_mib', float('nan')):.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    notes = [
        f"Base: `{meta['base']}`; common flags: `{' '.join(meta['common_flags']) or '(defaults)'}`; "
        f"seeds {meta['seeds']} (mean ± sample std over seeds); device {meta['device']}, {meta['threads']} threads.",
        "Accuracies on the book's balanced split (train 1,045 / validation 149 / test 300 messages). "
        "The recipe (3 epochs, cosine decay, LoRA on all linear layers, lr 1e-4 for full fine-tuning) was chosen "
        "on the validation set only; its loss at every prefix of each message (not chosen on validation) is there "
        "against \"short means ham\" (lora-whole leaves it out); the scale-* rows keep the book's constant learning "
        "rate and loss.",
        "Time: training + final evaluation of the three splits, in seconds"
        + (" (runs in this one process; peak RSS grows from row to row)." if meta["in_process"]
           else "; peak RSS is each run's own process (model load included).")
        + (f" {meta['jobs']} runs at a time, so the times include their contention." if meta.get("jobs", 1) > 1 else "")
        + (f" The machine is shared: its 1-minute load average at the end of each run was {meta['load_average']} (2 cores)." if meta.get("load_average") else ""),
    ]
    if probe:
        notes.append(f"p(spam) is the mean over the seeds for one message: an anecdote, not a score (a model can "
                     f"call it spam and still be a poor classifier).")
    if "lora-separate" in rows and "full" in rows:
        gap = 100 * (rows["lora-separate"]["test_accuracy"] - rows["full"]["test_accuracy"])
        notes.append(f"LoRA (separate) test accuracy {100 * rows['lora-separate']['test_accuracy']:.2f} % vs full "
                     f"fine-tuning {100 * rows['full']['test_accuracy']:.2f} %: LoRA minus full = {gap:+.2f} points.")
    if "scale-alpha/r" in rows and "scale-alpha" in rows:
        notes.append(f"LoRA scale: alpha/r gives {100 * rows['scale-alpha/r']['test_accuracy']:.2f} % test accuracy, "
                     f"the first printing's alpha (16x larger update at the same lr) "
                     f"{100 * rows['scale-alpha']['test_accuracy']:.2f} %.")
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"


FLOOR = 0.94  # the project's floor: LoRA on the shipped gpt-mini, mean test accuracy of three seeds


def floor_record(rows: dict, all_runs: dict, meta: dict) -> dict | None:
    """The floor, checked on this comparison: LoRA (separate) test accuracy, mean over seeds,
    >= 94 % and within one point of full fine-tuning. None when a row is missing or the base is not
    a checkpoint file (the record names the base by its sha256)."""
    from classify.data import sha256_of
    from gpt.pretrained import describe_base

    info = describe_base(meta["base"])
    if info["kind"] != "checkpoint" or "lora-separate" not in rows or "full" not in rows:
        return None
    lora, full = rows["lora-separate"], rows["full"]
    return {
        "claim": "LoRA on the shipped gpt-mini reaches >= 94 % test accuracy (mean of the seeds) and stays within "
                 "one point of full fine-tuning on the same base",
        "floor": FLOOR,
        "base": meta["base"], "base_sha256": sha256_of(info["path"]),
        "command_main_job": "python scripts/finetune_spam.py --seed SEED",
        "command": meta["command"],
        "seeds": lora["seeds"],
        "lora_test_accuracy": dict(zip(map(str, lora["seeds"]), lora["test_accuracy_all"])),
        "lora_test_accuracy_mean": lora["test_accuracy"],
        "lora_val_accuracy_mean": lora["val_accuracy"],
        "full_test_accuracy": dict(zip(map(str, full["seeds"]), full["test_accuracy_all"])),
        "full_test_accuracy_mean": full["test_accuracy"],
        "meets_floor": lora["test_accuracy"] >= FLOOR,
        "within_one_point_of_full": full["test_accuracy"] - lora["test_accuracy"] <= 0.01,
        "main_job_seconds": [r["total_seconds"] for r in all_runs["lora-separate"]],
        "device": meta["device"], "threads": meta["threads"], "torch": meta["torch"],
    }


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
        settings = _settings(common + row_flags)
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
