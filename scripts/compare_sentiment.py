"""Chapter 8's measurement: which recipe on gpt-mini reaches the bag of words on the sentiment sentences?

    python scripts/compare_sentiment.py                    # seeds 123 124 125, about 25 minutes on 2 CPU cores
    python scripts/compare_sentiment.py --rows linear linear+embedding --seeds 123
    python scripts/compare_sentiment.py --quick            # a random gpt-tiny, a few steps: runs/quick/compare_sentiment

The split is chapter 8's (classify.tasks: 2,100 / 300 / 600 sentences, seed 123); each row trains a new 2-class
head read at the last real token, from the same base, at the same seeds. Rows:
  bag-of-words       logistic regression on which GPT-2 tokens a sentence contains (classify.bag_of_words): the
                     baseline, no GPT at all
  linear             LoRA r=8 on every linear layer + the head: the spam adapter's recipe (2 epochs, AdamW 8e-4,
                     the loss at the last token)
  linear+prefix      the same, also trained on every prefix of each sentence (the main job's loss, chapter 7)
  embedding          LoRA r=8 on the token embedding + the head only (no linear layer adapted)
  linear+embedding   LoRA on every linear layer and on the token embedding
  linear+embedding+prefix   the same with the prefix loss: chapter 8's sentiment adapter
  full               every weight trained, the embeddings too (lr 1e-4, 3 epochs: full fine-tuning's usual
                     smaller rate)

The recipe is chosen on validation (the best mean there is chapter 8's); test is reported beside it. Writes results/sentiment_comparison.json (every
seed's numbers and the base's sha256), .md (the table) and .png (the plot chapter 8 shows). A --quick run
writes under runs/quick/ and never replaces the real results.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from classify.bag_of_words import fit_bag_of_words
from classify.data import sha256_of
from classify.model import add_classification_head, set_trainable
from classify.tasks import SENTIMENT_LORA, SPAM_LORA, add_task_adapter, load_tasks, train_on_task
from classify.train import evaluate
from common.cli import ArgumentParser, UserError, parse_with_quick, run_main
from common.files import atomic_write_text
from gpt.device import add_device_argument, pick_device
from gpt.pretrained import DEFAULT_BASE, describe_base, load_base
from lora import LoraConfig
from plots.figures import new_figure, save_figure

ROOT = Path(__file__).resolve().parent.parent
QUICK = dict(model="random:gpt-tiny", max_steps=4, seeds=[123])
EMBEDDING_ONLY = LoraConfig(rank=8, alpha=16, targets=("tok_emb",), modules_to_save=("out_head",))
# name -> (what it trains: a LoraConfig or "full", epochs, learning rate, prefix weight, description)
ROWS = {
    "linear": (SPAM_LORA, 2, 8e-4, 0.0, "LoRA on every linear layer (the spam adapter's recipe)"),
    "linear+prefix": (SPAM_LORA, 2, 8e-4, 1.0, "the same, trained on every prefix too"),
    "embedding": (EMBEDDING_ONLY, 2, 8e-4, 0.0, "LoRA on the token embedding only"),
    "linear+embedding": (SENTIMENT_LORA, 2, 8e-4, 0.0, "LoRA on every linear layer + the token embedding"),
    "linear+embedding+prefix": (SENTIMENT_LORA, 2, 8e-4, 1.0,
                                "the same, trained on every prefix too: chapter 8's sentiment adapter"),
    "full": ("full", 3, 1e-4, 0.0, "full fine-tuning (lr 1e-4, 3 epochs)"),
}
ALL_ROWS = ["bag-of-words", *ROWS]


def run_row(row: str, model_spec: str, tasks: dict, seed: int, max_steps: int | None, device) -> dict:
    """Train one row at one seed; its validation and test accuracy and trainable parameter count."""
    task = tasks["sentiment"]
    if row == "bag-of-words":
        bow = fit_bag_of_words(task.splits["train"], seed=seed)
        return {"val": bow.accuracy(task.splits["val"]), "test": bow.accuracy(task.splits["test"]),
                "trainable": bow.num_parameters()}
    what, epochs, lr, prefix_weight, _ = ROWS[row]
    model = load_base(model_spec, drop_rate=0.0, seed=seed)
    torch.manual_seed(seed)
    add_classification_head(model, num_classes=2)
    if what == "full":
        set_trainable(model, "full")
    else:
        add_task_adapter(model, "sentiment", what, seed=seed)
    model.to(device)  # built on the CPU: the same initial weights on every device
    history = train_on_task(model, task, epochs, lr=lr, device=device, seed=seed, eval_every=0, max_steps=max_steps,
                            prefix_weight=prefix_weight, progress=False, log=None)
    model.eval()
    out = {split: evaluate(model, task.loader(split), device)["accuracy"] for split in ("val", "test")}
    out["trainable"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    out["val_by_epoch"] = history.val_accuracy
    return out


def summarise(runs: dict) -> dict:
    """row -> {"val_mean", "val_std", "test_mean", "test_std", "trainable"} over the seeds."""
    out = {}
    for row, by_seed in runs.items():
        vals, tests = [r["val"] for r in by_seed.values()], [r["test"] for r in by_seed.values()]
        out[row] = {"val_mean": statistics.mean(vals), "test_mean": statistics.mean(tests),
                    "val_std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
                    "test_std": statistics.stdev(tests) if len(tests) > 1 else 0.0,
                    "trainable": next(iter(by_seed.values()))["trainable"]}
    return out


def markdown_table(report: dict) -> str:
    seeds = report["seeds"]
    lines = [f"Sentiment sentences (2,100 train / 300 validation / 600 test), base {report['base']}, seeds "
             f"{', '.join(map(str, seeds))}: mean ± standard deviation over the seeds.",
             f"Command: `{report['command']}`", "",
             "| row | trainable parameters | validation | test |", "|---|---:|---:|---:|"]
    for row, s in report["summary"].items():
        lines.append(f"| {row} | {s['trainable']:,} | {100 * s['val_mean']:.1f} ± {100 * s['val_std']:.1f} % | "
                     f"{100 * s['test_mean']:.1f} ± {100 * s['test_std']:.1f} % |")
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    summary = report["summary"]
    rows = list(summary)
    fig, ax = new_figure(figsize=(7.5, 3.4), dpi=100)
    y = range(len(rows))
    for offset, split, color in ((-0.2, "val", "#8ab6d6"), (0.2, "test", "#2a9d8f")):
        ax.barh([i + offset for i in y], [100 * summary[r][f"{split}_mean"] for r in rows], 0.4,
                xerr=[100 * summary[r][f"{split}_std"] for r in rows], color=color,
                label="validation" if split == "val" else "test")
    if "bag-of-words" in summary:
        for split, ls in (("val", ":"), ("test", "--")):
            ax.axvline(100 * summary["bag-of-words"][f"{split}_mean"], color="#555555", ls=ls, lw=1,
                       label=f"bag of words, {'validation' if split == 'val' else 'test'}")
    ax.set_yticks(list(y))
    ax.set_yticklabels(rows, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(45, 100)
    ax.set_xlabel(f"accuracy (%), mean of {len(report['seeds'])} seed(s)")
    ax.set_title("sentiment on gpt-mini: what an adapter must reach to beat a bag of words", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=DEFAULT_BASE, help="base: a checkpoint folder/file, random[:preset]")
    p.add_argument("--rows", nargs="+", default=ALL_ROWS, choices=ALL_ROWS, help="rows to run (default: all)")
    p.add_argument("--seeds", nargs="+", type=int, default=[123, 124, 125])
    p.add_argument("--max-steps", type=int, default=None, help="stop each training after this many steps")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    add_device_argument(p)
    p.add_argument("--results", default=None, help="folder for sentiment_comparison.{json,md,png} (default: results/; "
                                                   "with --quick runs/quick/compare_sentiment)")
    p.add_argument("--quick", action="store_true", help=f"smoke test: {QUICK}")
    p.add_argument("--render", action="store_true",
                   help="run nothing: rewrite sentiment_comparison.md and .png from --results/sentiment_comparison.json")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    args = parse_with_quick(build_parser(), QUICK, argv)
    if args.results is None:
        args.results = str(ROOT / "runs" / "quick" / "compare_sentiment" if args.quick else ROOT / "results")
    results = Path(args.results)
    if results.exists() and not results.is_dir():
        raise UserError(f"--results {results} is a file, not a folder")
    if args.quick and (results / "sentiment_comparison.json").is_file() and \
            not json.loads((results / "sentiment_comparison.json").read_text()).get("quick"):
        raise UserError(f"--results {results} holds a real comparison; a --quick run never replaces it")
    for name, minimum in (("max_steps", 1), ("threads", 1)):
        value = getattr(args, name)
        if value is not None and value < minimum:
            raise UserError(f"--{name.replace('_', '-')} must be at least {minimum}, got {value}")
    if len(set(args.seeds)) != len(args.seeds) or min(args.seeds) < 0:
        raise UserError(f"--seeds must be different integers >= 0, got {args.seeds}")
    return args


def write_table_and_plot(report: dict, results: Path) -> str:
    table = markdown_table(report)
    atomic_write_text(results / "sentiment_comparison.md", table)
    plot(report, results / "sentiment_comparison.png")
    return table


def main(argv=None, log=print) -> dict:
    args = parse_args(argv)
    if args.render:
        path = Path(args.results) / "sentiment_comparison.json"
        if not path.is_file():
            raise UserError(f"--render: no {path} to render; run the comparison first")
        report = json.loads(path.read_text())
        log(write_table_and_plot(report, path.parent))
        return report
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)  # a device that does not exist: one clear line before any work
    info = describe_base(args.model)  # so is a missing base
    context_length = load_base(args.model, seed=0).cfg.context_length
    tasks = load_tasks(context_length)
    runs: dict[str, dict[int, dict]] = {}
    t0 = time.perf_counter()
    for row in args.rows:
        for seed in args.seeds:
            result = run_row(row, args.model, tasks, seed, args.max_steps, device)
            runs.setdefault(row, {})[seed] = result
            log(f"{row:<24} seed {seed}: validation {100 * result['val']:.1f} %, test {100 * result['test']:.1f} % "
                f"({time.perf_counter() - t0:.0f} s)")
    report = {
        "command": "python scripts/compare_sentiment.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "quick": args.quick, "base": args.model, "device": str(device),
        "base_sha256": sha256_of(info["path"]) if info["kind"] == "checkpoint" else None,
        "seeds": args.seeds, "rows": {row: (ROWS[row][4] if row in ROWS else "bag of words") for row in args.rows},
        "summary": summarise(runs), "runs": {row: {str(s): r for s, r in by.items()} for row, by in runs.items()},
        "torch_threads": torch.get_num_threads(), "total_seconds": round(time.perf_counter() - t0),
    }
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    atomic_write_text(results / "sentiment_comparison.json", json.dumps(report, indent=1) + "\n")
    log(write_table_and_plot(report, results))
    return report


if __name__ == "__main__":
    run_main(main)
