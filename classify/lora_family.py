"""The LoRA family on one classifier: each method builds the same spam / sentiment classifier from the same base.

    model = build_classifier_with("dora", "data/gpt-mini", seed=123)    # base + new 2-class head + DoRA
    result = run_method("dora", "data/gpt-mini", tasks["spam"], seed=123)

Every method adapts every linear layer of the blocks ("all-linear") and trains a new 2-class head in full
(modules_to_save), at rank 16, alpha 16, then trains with the project's loop (classify.train.train_classifier,
AdamW, the task's prefix weight from classify.tasks.PREFIX_WEIGHT) for the same epochs:

    lora      LoRA r=16 (lora.apply_lora)
    qlora     the base frozen in NF4 with double quantization (lora.quantize_base), LoRA r=16 on top
    dora      DoRA r=16 (peft_methods.apply_dora): a trained magnitude per output feature
    pissa     LoRA r=16 initialised from W's top-16 singular vectors (lora.apply_pissa)
    loraplus  LoRA r=16, B's learning rate 16x A's (lora.create_loraplus_optimizer)
    rslora    LoRA r=16 scaled alpha/sqrt(r) (LoraConfig(scaling="alpha/sqrt(r)")): 4x LoRA's update here
    vera      VeRA r=256 (peft_methods.apply_vera): shared frozen random A, B; two vectors per layer trained,
              at a 5x larger learning rate (the VeRA paper trains its vectors at larger rates than LoRA)
    full      every weight trained (the reference), at lr 1e-4 (full fine-tuning's usual smaller rate)

Each method's recipe is in METHODS; scripts/compare_lora_family.py runs them over tasks and seeds and writes
the table and the plot (results/lora_family.{json,md,png}).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from classify.model import add_classification_head, set_trainable
from classify.tasks import PREFIX_WEIGHT, Task
from classify.train import evaluate, train_classifier
from gpt.pretrained import load_base
from lora import LoraConfig, apply_lora, apply_pissa, base_nbytes, create_loraplus_optimizer, quantize_base
from peft_methods import apply_dora, apply_vera
from plots.figures import new_figure, save_figure

RANK, ALPHA = 16, 16
LORA = LoraConfig(rank=RANK, alpha=ALPHA, targets=("all-linear",), modules_to_save=("out_head",))
LORAPLUS_RATIO = 16.0  # the LoRA+ paper's suggested 2^4
VERA_RANK = 256  # PEFT's default r for VeRA: A and B are shared, so r costs only r numbers per layer


@dataclass(frozen=True)
class Method:
    description: str
    lr: float = 8e-4
    epochs: int = 2


METHODS = {
    "lora": Method(f"LoRA r={RANK}, alpha {ALPHA}"),
    "qlora": Method(f"QLoRA: NF4 base (double quantization), LoRA r={RANK}"),
    "dora": Method(f"DoRA r={RANK}"),
    "pissa": Method(f"PiSSA r={RANK} (principal singular vectors)"),
    "loraplus": Method(f"LoRA+ r={RANK}, B at {LORAPLUS_RATIO:g}x A's rate"),
    "rslora": Method(f"rsLoRA r={RANK} (alpha/sqrt(r))"),
    "vera": Method(f"VeRA r={VERA_RANK}", lr=4e-3),
    "full": Method("full fine-tuning", lr=1e-4),
}


def apply_method(model: nn.Module, method: str, lora: LoraConfig = LORA) -> nn.Module:
    """Prepare a classifier (a base with its new head) IN PLACE for `method`: after it, only what the method
    trains requires grad. `lora`: the LoRA settings of the methods built on LoRA (rank, alpha, scaling,
    targets). Returns the model."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {sorted(METHODS)}")
    if method == "full":
        set_trainable(model, "full")
    elif method == "qlora":
        quantize_base(model)
        apply_lora(model, lora)
    elif method == "dora":
        apply_dora(model, lora)
    elif method == "pissa":
        apply_pissa(model, lora)
    elif method == "rslora":
        apply_lora(model, lora.replace(scaling="alpha/sqrt(r)"))
    elif method == "vera":
        apply_vera(model, rank=VERA_RANK, targets=("all-linear",), modules_to_save=("out_head",))
    else:  # lora, loraplus: the same model, another optimizer
        apply_lora(model, lora)
    return model


def build_classifier_with(method: str, model_spec: str, seed: int = 123, drop_rate: float = 0.0,
                          lora: LoraConfig = LORA) -> nn.Module:
    """The base `model_spec` with a new 2-class head and `method` applied (only what it trains requires grad)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {sorted(METHODS)}")
    model = load_base(model_spec, drop_rate=drop_rate, seed=seed)
    torch.manual_seed(seed)  # the head's and the adapter's random weights: the same for every method
    add_classification_head(model, num_classes=2)
    return apply_method(model, method, lora)


def frozen_nbytes(model: nn.Module, dtype: torch.dtype | None = None) -> int:
    """Bytes of what the method leaves frozen, stored in `dtype` (None: as it is; NF4 layers count their
    4-bit codes and constants whatever `dtype` is)."""
    size = torch.empty((), dtype=dtype or torch.float32).element_size()
    return base_nbytes(model, dtype) - size * trainable_count(model)


def make_optimizer(method: str, model: nn.Module, lr: float, weight_decay: float = 0.1) -> torch.optim.Optimizer:
    """AdamW over what the method trains; LoRA+ splits it into PEFT's groups."""
    if method == "loraplus":
        return create_loraplus_optimizer(model, torch.optim.AdamW, lr=lr, loraplus_lr_ratio=LORAPLUS_RATIO,
                                         loraplus_weight_decay=weight_decay)
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay)


def trainable_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def run_method(method: str, model_spec: str, task: Task, seed: int, max_steps: int | None = None,
               device="cpu", lora: LoraConfig = LORA, lr: float | None = None) -> dict:
    """Build, train and evaluate one method on one task at one seed. Returns {"val", "test" (accuracies),
    "trainable" (numbers), "frozen_bytes" (what the frozen weights take), "seconds", "val_by_epoch",
    "train_loss_by_epoch" (the mean training loss of each epoch)}. lr: instead of the method's own (METHODS)."""
    model = build_classifier_with(method, model_spec, seed=seed, lora=lora)
    frozen_bytes = frozen_nbytes(model)
    model.to(device)
    recipe = METHODS[method]
    optimizer = make_optimizer(method, model, recipe.lr if lr is None else lr)
    t0 = time.perf_counter()
    history = train_classifier(model, task.loader("train"), task.loader("val"), optimizer, recipe.epochs, device,
                               eval_every=0, seed=seed, max_steps=max_steps, prefix_weight=PREFIX_WEIGHT[task.name],
                               progress=False, log=None)
    seconds = time.perf_counter() - t0
    model.eval()
    out = {split: evaluate(model, task.loader(split), device)["accuracy"] for split in ("val", "test")}
    out.update(trainable=trainable_count(model), frozen_bytes=frozen_bytes, seconds=round(seconds, 1),
               val_by_epoch=history.val_accuracy, train_loss_by_epoch=history.train_loss)
    return out


def summarise(runs: dict) -> dict:
    """{task: {method: {seed: result}}} -> {task: {method: means and standard deviations over the seeds}}."""
    out = {}
    for task, by_method in runs.items():
        for method, by_seed in by_method.items():
            results = list(by_seed.values())
            row = {"trainable": results[0]["trainable"], "frozen_bytes": results[0]["frozen_bytes"],
                   "seconds_mean": statistics.mean(r["seconds"] for r in results)}
            for split in ("val", "test"):
                values = [r[split] for r in results]
                row[f"{split}_mean"] = statistics.mean(values)
                row[f"{split}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
            out.setdefault(task, {})[method] = row
    return out


def markdown_table(report: dict, tfidf: dict | None = None) -> str:
    """The tables of compare_lora_family's record, one per task; with `tfidf` (scripts/tfidf_baseline.py's record)
    a last row for the TF-IDF baseline on the same split, tuned on validation only."""
    lines = [f"The LoRA family on base {report['base']}, seeds {', '.join(map(str, report['seeds']))}: accuracy, "
             f"mean ± standard deviation over the seeds.", f"Command: `{report['command']}`", ""]
    for task, rows in report["summary"].items():
        lines += [f"### {task}", "", "| method | trainable parameters | frozen weights (MB) | validation | test | "
                  "training (s) |", "|---|---:|---:|---:|---:|---:|"]
        for method, s in rows.items():
            lines.append(f"| {report['methods'][method]} | {s['trainable']:,} | {s['frozen_bytes'] / 1e6:.2f} | "
                         f"{100 * s['val_mean']:.1f} ± {100 * s['val_std']:.1f} % | "
                         f"{100 * s['test_mean']:.1f} ± {100 * s['test_std']:.1f} % | {s['seconds_mean']:.0f} |")
        if tfidf and task in tfidf["tasks"]:
            t = tfidf["tasks"][task]
            lines.append(f"| TF-IDF n-grams + logistic regression (no GPT; C={t['C']:g} chosen on validation) | "
                         f"{t['parameters']:,} | - | {100 * t['val_accuracy']:.1f} % | {100 * t['test_accuracy']:.1f} % "
                         f"| - |")
        lines.append("")
    return "\n".join(lines)


def side_by_side(report: dict, cost: dict, tfidf: dict | None = None) -> list[dict]:
    """One row per method, joining what it reaches (`report`: compare_lora_family's record) and what it costs
    (`cost`: one shape of benchmarks/bench_lora_family's record, {"methods": {method: ...}}), plus a TF-IDF row
    (`tfidf`: scripts/tfidf_baseline.py's record) where given. Each row: method, description, test accuracy
    mean and standard deviation per task (fractions), trainable parameters (on the report's base, where the
    accuracy was measured), frozen bytes in float32 and bfloat16 and peak memory and step time as ratios to
    LoRA's (all three at `cost`'s shape; None where not measured)."""
    ref = cost["methods"].get("lora")
    rows = []
    for method in report["methods"]:
        c = cost["methods"].get(method)
        row = {"method": method, "description": report["methods"][method]}
        for task, by_method in report["summary"].items():
            row[f"{task}_test_mean"] = by_method[method]["test_mean"]
            row[f"{task}_test_std"] = by_method[method]["test_std"]
        row["trainable"] = next(iter(report["summary"].values()))[method]["trainable"]
        row["frozen_float32"] = c["frozen_bytes"]["float32"] if c else None
        row["frozen_bfloat16"] = c["frozen_bytes"]["bfloat16"] if c else None
        has_memory = c and ref and "memory" in c and "memory" in ref
        row["peak_memory_x_lora"] = (memory_beyond_start(c["memory"]) / memory_beyond_start(ref["memory"])
                                     if has_memory else None)
        row["step_time_x_lora"] = (c["step_seconds"]["median"] / ref["step_seconds"]["median"]) if c and ref else None
        rows.append(row)
    if tfidf:
        row = {"method": "tfidf", "description": "TF-IDF word + character n-grams, logistic regression"}
        for task in report["summary"]:
            row[f"{task}_test_mean"] = tfidf["tasks"][task]["test_accuracy"]
            row[f"{task}_test_std"] = 0.0  # deterministic: one fit per task
        row.update(trainable=None, frozen_float32=None, frozen_bfloat16=None, peak_memory_x_lora=None,
                   step_time_x_lora=None)
        rows.append(row)
    return rows


def memory_beyond_start(memory: dict) -> int:
    """Peak memory of the steps above what the process held before any model (on a CPU: Python and torch)."""
    if memory["kind"] != "peak_rss":  # a GPU's allocated tensors: nothing of the process in them
        return memory["peak_bytes"]
    return memory["peak_bytes"] - (memory["rss_start_bytes"] or 0)


def which_method_when(rows: list[dict], tasks: tuple[str, ...] = ("spam", "sentiment")) -> list[dict]:
    """The decision table, read off side_by_side's rows of the fine-tuning methods (TF-IDF left out):
    {"situation", "method", "why"} for memory-bound (the smallest peak memory of a training step), few
    parameters (the fewest trained), best accuracy (the best mean test accuracy over `tasks`) and best
    accuracy among the adapters (full fine-tuning left out)."""
    tuned = [r for r in rows if r["method"] != "tfidf"]
    lora = next(r for r in tuned if r["method"] == "lora")

    def mean_acc(r):
        return sum(r[f"{t}_test_mean"] for t in tasks) / len(tasks)

    def accuracy_note(r):
        return ", ".join(f"{t} {100 * (r[f'{t}_test_mean'] - lora[f'{t}_test_mean']):+.1f} points" for t in tasks)

    memory = min((r for r in tuned if r["peak_memory_x_lora"] is not None), key=lambda r: r["peak_memory_x_lora"])
    fewest = min((r for r in tuned if r["trainable"] is not None), key=lambda r: r["trainable"])
    best = max(tuned, key=mean_acc)
    best_adapter = max((r for r in tuned if r["method"] != "full"), key=mean_acc)
    return [
        {"situation": "memory-bound: the frozen base barely fits", "method": memory["method"],
         "why": f"{memory['peak_memory_x_lora']:.2f}x LoRA's peak memory; against LoRA: {accuracy_note(memory)}"},
        {"situation": "few parameters: many adapters to store or serve", "method": fewest["method"],
         "why": f"{fewest['trainable']:,} trained numbers ({fewest['trainable'] / lora['trainable']:.3f}x LoRA's); "
                f"against LoRA: {accuracy_note(fewest)}"},
        {"situation": "best accuracy, whatever it costs", "method": best["method"],
         "why": f"mean test accuracy {100 * mean_acc(best):.1f} % over {', '.join(tasks)}; against LoRA: "
                f"{accuracy_note(best)}"},
        {"situation": "best accuracy from an adapter", "method": best_adapter["method"],
         "why": f"mean test accuracy {100 * mean_acc(best_adapter):.1f} %; against LoRA: {accuracy_note(best_adapter)}"},
    ]


def plot(report: dict, path: str | Path) -> Path:
    """Test accuracy per method (bars), one panel per task."""
    summary = report["summary"]
    fig, axes = new_figure(1, len(summary), figsize=(4.2 * len(summary), 3.4), dpi=100, squeeze=False)
    for ax, (task, rows) in zip(axes[0], summary.items()):
        methods = list(rows)
        ax.barh(range(len(methods)), [100 * rows[m]["test_mean"] for m in methods],
                xerr=[100 * rows[m]["test_std"] for m in methods], color="#2a9d8f")
        ax.set_yticks(list(range(len(methods))))
        ax.set_yticklabels(methods, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlim(0, 100)
        ax.set_xlabel(f"test accuracy (%), mean of {len(report['seeds'])} seed(s)")
        ax.set_title(task, fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)


__all__ = ["METHODS", "Method", "apply_method", "side_by_side", "which_method_when", "memory_beyond_start",
           "build_classifier_with", "frozen_nbytes", "make_optimizer", "run_method", "summarise", "markdown_table",
           "plot", "trainable_count"]
