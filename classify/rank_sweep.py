"""rsLoRA's claim put to the test: does a larger rank help when the update is scaled alpha/sqrt(r)?

Kalajdzievski (2023), "A Rank Stabilization Scaling Factor for Fine-Tuning with LoRA": with LoRA's
scaling alpha/r the updates of large-rank adapters shrink as 1/r, their learning slows ("gradient
collapse"), and a larger rank brings no lower training loss; scaled alpha/sqrt(r) instead (rsLoRA),
the training loss falls as the rank grows. Here both scalings train the same classifier at ranks 4 to 256
(256 is gpt-mini's width: full rank for its attention layers), the same learning rate, epochs and seeds.
alpha is chosen so that both scalings equal the family's LoRA at r=16 (scale 1: alpha 16 for alpha/r,
alpha 4 for alpha/sqrt(r)); from there LoRA's scale falls as 16/r and rsLoRA's as 4/sqrt(r).

    runs = {scaling: {rank: {seed: run_method("lora", ..., lora=sweep_config(scaling, rank))}}}
    report = summarise(runs); verdicts(report); plot(report, "results/rslora_rank_sweep.png")

scripts/rslora_rank_sweep.py runs it and writes results/rslora_rank_sweep.{json,md,png}.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

from classify.lora_family import LORA
from lora import LoraConfig
from plots.figures import new_figure, save_figure

RANKS = (4, 16, 64, 256)
PIVOT_RANK = 16  # where both scalings equal the family's LoRA (scale 1)
SCALINGS = {"alpha/r": "LoRA, alpha/r", "alpha/sqrt(r)": "rsLoRA, alpha/sqrt(r)"}


def sweep_alpha(scaling: str) -> float:
    """The alpha at which `scaling` gives scale 1 at PIVOT_RANK: 16 for alpha/r, 4 for alpha/sqrt(r)."""
    if scaling not in SCALINGS:
        raise ValueError(f"unknown scaling {scaling!r}; choose from {list(SCALINGS)}")
    return float(PIVOT_RANK) if scaling == "alpha/r" else math.sqrt(PIVOT_RANK)


def sweep_config(scaling: str, rank: int) -> LoraConfig:
    """The family's LoRA settings (all-linear, head trained) at `rank`, with `scaling` and its sweep_alpha."""
    return LORA.replace(rank=rank, alpha=sweep_alpha(scaling), scaling=scaling)


def summarise(runs: dict) -> dict:
    """{scaling: {rank: {seed: run}}} -> {scaling: {rank: {"scale", "train_loss_mean", "train_loss_std",
    "val_mean", "val_std", "test_mean"}}}: the last epoch's mean training loss and the accuracies, over seeds."""
    out = {}
    for scaling, by_rank in runs.items():
        for rank, by_seed in by_rank.items():
            results = list(by_seed.values())
            losses = [r["train_loss_by_epoch"][-1] for r in results]
            row = {"scale": sweep_config(scaling, int(rank)).scale,
                   "train_loss_mean": statistics.mean(losses),
                   "train_loss_std": statistics.stdev(losses) if len(losses) > 1 else 0.0}
            for split in ("val", "test"):
                values = [r[split] for r in results]
                row[f"{split}_mean"] = statistics.mean(values)
                row[f"{split}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
            out.setdefault(scaling, {})[str(rank)] = row
    return out


def verdicts(summary: dict) -> dict:
    """For each scaling: the last-epoch training loss at the smallest and the largest rank, their difference,
    and whether the loss fell at every step up in rank ("monotone")."""
    out = {}
    for scaling, rows in summary.items():
        ranks = sorted(rows, key=int)
        losses = [rows[r]["train_loss_mean"] for r in ranks]
        out[scaling] = {"smallest_rank": int(ranks[0]), "largest_rank": int(ranks[-1]),
                        "loss_at_smallest": losses[0], "loss_at_largest": losses[-1],
                        "change": losses[-1] - losses[0],
                        "monotone": all(b < a for a, b in zip(losses, losses[1:]))}
    return out


def markdown_table(report: dict) -> str:
    lines = [f"rsLoRA's rank claim on the {report['task']} task, base {report['base']}, seeds "
             f"{', '.join(map(str, report['seeds']))}: the last epoch's mean training loss and the accuracies, "
             f"mean ± standard deviation over the seeds, learning rate {report['lr']:g}, {report['epochs']} epochs.",
             f"Command: `{report['command']}` ({report['total_seconds'] / 60:.0f} minutes on "
             f"{report['torch_threads']} thread(s))", "",
             "| scaling | rank | scale | training loss, last epoch | validation | test |", "|---|---:|---:|---:|---:|---:|"]
    for scaling, rows in report["summary"].items():
        for rank, s in sorted(rows.items(), key=lambda kv: int(kv[0])):
            lines.append(f"| {SCALINGS[scaling]} | {rank} | {s['scale']:.3g} | {s['train_loss_mean']:.3f} ± "
                         f"{s['train_loss_std']:.3f} | {100 * s['val_mean']:.1f} ± {100 * s['val_std']:.1f} % | "
                         f"{100 * s['test_mean']:.1f} ± {100 * s['test_std']:.1f} % |")
    lines.append("")
    for scaling, v in verdicts(report["summary"]).items():
        lines.append(f"- {SCALINGS[scaling]}: training loss {v['loss_at_smallest']:.3f} at r={v['smallest_rank']}, "
                     f"{v['loss_at_largest']:.3f} at r={v['largest_rank']} ({v['change']:+.3f}); "
                     f"{'falls at every step up in rank' if v['monotone'] else 'does not fall at every step up in rank'}")
    return "\n".join(lines) + "\n"


def plot(report: dict, path: str | Path) -> Path:
    """Training loss (left) and validation accuracy (right) against the rank, one line per scaling."""
    summary = report["summary"]
    fig, (ax_loss, ax_acc) = new_figure(1, 2, figsize=(8.5, 3.4), dpi=100)
    fig.set_layout_engine("constrained")
    for scaling, rows in summary.items():
        ranks = sorted(rows, key=int)
        x = [int(r) for r in ranks]
        ax_loss.errorbar(x, [rows[r]["train_loss_mean"] for r in ranks], yerr=[rows[r]["train_loss_std"] for r in ranks],
                         marker="o", capsize=3, label=SCALINGS[scaling])
        ax_acc.errorbar(x, [100 * rows[r]["val_mean"] for r in ranks], yerr=[100 * rows[r]["val_std"] for r in ranks],
                        marker="o", capsize=3, label=SCALINGS[scaling])
    for ax, label in ((ax_loss, "training loss, last epoch"), (ax_acc, "validation accuracy (%)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("rank r")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    handles, labels = ax_loss.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=2, fontsize=8)
    return save_figure(fig, path)


__all__ = ["RANKS", "PIVOT_RANK", "SCALINGS", "sweep_alpha", "sweep_config", "summarise", "verdicts",
           "markdown_table", "plot"]
