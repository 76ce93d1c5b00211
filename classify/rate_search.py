"""Were LoRA+, rsLoRA and VeRA behind only because of the shared learning rate? A search on validation.

The family comparison (classify/lora_family.py) trains every method at one rate per kind of method. LoRA+ (B at 16
times the rate), rsLoRA (4 times LoRA's scale at r = 16) and VeRA (4e-3 for its vectors) fell behind LoRA on the
sentiment task there. Here each of them trains at a grid of rates around the shared one, on the same split and
seed, and the rate is chosen on validation accuracy alone; the test accuracy at the chosen rate is then compared
with LoRA's at the shared rate (the same seed).

    rows = {method: {lr: run_method(method, base, task, seed, lr=lr)} for method, grid in GRIDS.items() for lr in grid}
    report = summarise(rows)

scripts/tune_family_rates.py runs it and writes results/lora_family_rates.{json,md,png}.
"""

from __future__ import annotations

from pathlib import Path

from classify.lora_family import METHODS
from plots.figures import new_figure, save_figure

# Each grid holds the method's shared rate (METHODS) and rates below and above it, a factor 2 to 4 apart.
GRIDS = {
    "lora": (2e-4, 8e-4, 1.6e-3),
    "loraplus": (5e-5, 1e-4, 2e-4, 4e-4, 8e-4),
    "rslora": (1e-4, 2e-4, 4e-4, 8e-4),
    "vera": (1e-3, 4e-3, 1e-2, 2e-2),
}


def summarise(runs: dict) -> dict:
    """{method: {lr: run}} -> {method: {"by_lr": {lr: {"val", "test"}}, "best_lr" (highest validation accuracy;
    the smaller rate on a tie), "best_val", "test_at_best", "shared_lr", "test_at_shared"}}."""
    out = {}
    for method, by_lr in runs.items():
        rates = sorted(by_lr, key=float)
        best = max(rates, key=lambda lr: (by_lr[lr]["val"], -float(lr)))
        shared = next((lr for lr in rates if float(lr) == METHODS[method].lr), None)
        out[method] = {"by_lr": {lr: {"val": by_lr[lr]["val"], "test": by_lr[lr]["test"]} for lr in rates},
                       "best_lr": float(best), "best_val": by_lr[best]["val"], "test_at_best": by_lr[best]["test"],
                       "shared_lr": METHODS[method].lr,
                       "test_at_shared": None if shared is None else by_lr[shared]["test"]}
    return out


def markdown_table(report: dict) -> str:
    summary = report["summary"]
    lora = summary.get("lora")
    lines = [f"Learning rates searched on validation accuracy: the {report['task']} task, base {report['base']}, seed "
             f"{report['seed']}, each method's recipe otherwise unchanged.",
             f"Command: `{report['command']}` ({report['total_seconds'] / 60:.0f} minutes on {report['torch_threads']} "
             f"thread(s))", "",
             "| method | learning rate | validation | test |", "|---|---:|---:|---:|"]
    for method, s in summary.items():
        for lr, r in s["by_lr"].items():
            mark = " (chosen)" if float(lr) == s["best_lr"] else (" (shared)" if float(lr) == s["shared_lr"] else "")
            lines.append(f"| {METHODS[method].description} | {float(lr):g}{mark} | {100 * r['val']:.1f} % | "
                         f"{100 * r['test']:.1f} % |")
    lines.append("")
    for method, s in summary.items():
        shared = "not run" if s["test_at_shared"] is None else f"{100 * s['test_at_shared']:.1f} %"
        line = (f"- {method}: rate {s['best_lr']:g} chosen on validation ({100 * s['best_val']:.1f} %), test "
                f"{100 * s['test_at_best']:.1f} % (at the shared rate {s['shared_lr']:g}: {shared})")
        if lora and method != "lora":
            line += f"; LoRA at its chosen rate: test {100 * lora['test_at_best']:.1f} %"
        lines.append(line)
    return "\n".join(lines) + "\n"


def plot(report: dict, path: str | Path) -> Path:
    """Validation accuracy against the learning rate, one line per method, the chosen rate ringed."""
    fig, ax = new_figure(1, 1, figsize=(6.5, 3.4), dpi=100)
    for method, s in report["summary"].items():
        rates = [float(lr) for lr in s["by_lr"]]
        vals = [100 * r["val"] for r in s["by_lr"].values()]
        (line,) = ax.plot(rates, vals, "o-", label=METHODS[method].description)
        ax.plot([s["best_lr"]], [100 * s["best_val"]], "o", ms=12, mfc="none", color=line.get_color())
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel(f"{report['task']} validation accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    return save_figure(fig, path)


__all__ = ["GRIDS", "summarise", "markdown_table", "plot"]
