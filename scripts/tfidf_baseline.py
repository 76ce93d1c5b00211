"""The classic baseline on both of the course's tasks, beside the best fine-tuned gpt-mini of each.

    python scripts/tfidf_baseline.py            # spam and sentiment, about a minute on 2 CPU cores

TF-IDF word 1-2-grams and character 2-5-grams with logistic regression (classify.tfidf), C chosen on each
task's validation split alone, then scored once on its test split. Beside it, read from the committed
comparisons (nothing is retrained here): LoRA on gpt-mini for spam (results/spam_floor.json, the main job's
mean over its seeds) and chapter 8's sentiment adapter (results/sentiment_comparison.json, the
linear+embedding+prefix row's mean). Writes results/tfidf_baseline.json and .md.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from classify.tasks import task_splits
from classify.tfidf import fit_tfidf, versus_tfidf
from common.cli import ArgumentParser, UserError, run_main
from common.files import atomic_write_text

ROOT = Path(__file__).resolve().parent.parent
# The best fine-tuned gpt-mini of each task, as its results file holds it: (file, how to read the mean test accuracy,
# what the row is).
GPT_MINI_ROWS = {
    "spam": ("spam_floor.json", lambda r: r["lora_test_accuracy_mean"],
             "LoRA r=16 on gpt-mini (the main job), mean of seeds 123-125"),
    "sentiment": ("sentiment_comparison.json", lambda r: r["summary"]["linear+embedding+prefix"]["test_mean"],
                  "chapter 8's sentiment adapter (linear+embedding+prefix), mean of seeds 123-125"),
}


def markdown(report: dict) -> str:
    lines = [f"Command: `{report['command']}` ({report['total_seconds']} s)", "",
             "| task | TF-IDF C (chosen on validation) | n-gram features | TF-IDF validation | TF-IDF test "
             "| fine-tuned gpt-mini test | gpt-mini is |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for task, row in report["tasks"].items():
        lines.append(f"| {task} | {row['C']:g} | {row['features']:,} | {100 * row['val_accuracy']:.2f} % "
                     f"| {100 * row['test_accuracy']:.2f} % | {100 * row['gpt_mini_test_accuracy']:.2f} % "
                     f"| {row['verdict']} |")
    lines += ["", *(f"- {task}: {row['gpt_mini_row']}" for task, row in report["tasks"].items())]
    return "\n".join(lines) + "\n"


def main(argv=None, log=print) -> dict:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", default=str(ROOT / "results"), help="folder of the comparisons; written there")
    args = parser.parse_args(argv)
    results = Path(args.results)
    missing = [name for name, *_ in GPT_MINI_ROWS.values() if not (results / name).is_file()]
    if missing:
        raise UserError(f"{results} has no {', '.join(missing)}: the gpt-mini rows are read from there "
                        "(run scripts/compare_finetuning.py and scripts/compare_sentiment.py, or pass --results)")
    t0 = time.perf_counter()
    splits = task_splits()  # the texts chapters 7 and 8 fine-tune on, untokenised: TF-IDF reads them whole
    report = {"command": " ".join(["python scripts/tfidf_baseline.py", *(sys.argv[1:] if argv is None else argv)]),
              "tasks": {}}
    for name, split in splits.items():
        baseline = fit_tfidf(split["train"], split["val"])
        file, read, what = GPT_MINI_ROWS[name]
        gpt_mini = read(json.loads((results / file).read_text()))
        test = baseline.accuracy(split["test"])
        report["tasks"][name] = {
            "C": baseline.C, "val_accuracy_by_C": {str(c): a for c, a in baseline.val_accuracy_by_C.items()},
            "features": baseline.num_features(), "parameters": baseline.num_parameters(),
            "val_accuracy": baseline.val_accuracy, "test_accuracy": test,
            "gpt_mini_test_accuracy": gpt_mini, "gpt_mini_row": f"{what} ({file})", "verdict": versus_tfidf(gpt_mini, test),
        }
        log(f"{name}: TF-IDF C={baseline.C:g}, validation {100 * baseline.val_accuracy:.2f} %, test {100 * test:.2f} %; "
            f"gpt-mini {100 * gpt_mini:.2f} %: {versus_tfidf(gpt_mini, test)}")
    report["total_seconds"] = round(time.perf_counter() - t0)
    atomic_write_text(results / "tfidf_baseline.json", json.dumps(report, indent=1) + "\n")
    atomic_write_text(results / "tfidf_baseline.md", markdown(report))
    return report


if __name__ == "__main__":
    run_main(main)
