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


def build_classifier_with(method: str, model_spec: str, seed: int = 123, drop_rate: float = 0.0) -> nn.Module:
    """The base `model_spec` with a new 2-class head and `method` applied (only what it trains requires grad)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {sorted(METHODS)}")
    model = load_base(model_spec, drop_rate=drop_rate, seed=seed)
    torch.manual_seed(seed)  # the head's and the adapter's random weights: the same for every method
    add_classification_head(model, num_classes=2)
    if method == "full":
        set_trainable(model, "full")
    elif method == "qlora":
        quantize_base(model)
        apply_lora(model, LORA)
    elif method == "dora":
        apply_dora(model, LORA)
    elif method == "pissa":
        apply_pissa(model, LORA)
    elif method == "rslora":
        apply_lora(model, LORA.replace(scaling="alpha/sqrt(r)"))
    elif method == "vera":
        apply_vera(model, rank=VERA_RANK, targets=("all-linear",), modules_to_save=("out_head",))
    else:  # lora, loraplus: the same model, another optimizer
        apply_lora(model, LORA)
    return model


def make_optimizer(method: str, model: nn.Module, lr: float, weight_decay: float = 0.1) -> torch.optim.Optimizer:
    """AdamW over what the method trains; LoRA+ splits it into PEFT's groups."""
    if method == "loraplus":
        return create_loraplus_optimizer(model, torch.optim.AdamW, lr=lr, loraplus_lr_ratio=LORAPLUS_RATIO,
                                         loraplus_weight_decay=weight_decay)
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay)


def trainable_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def run_method(method: str, model_spec: str, task: Task, seed: int, max_steps: int | None = None,
               device="cpu") -> dict:
    """Build, train and evaluate one method on one task at one seed. Returns {"val", "test" (accuracies),
    "trainable" (numbers), "frozen_bytes" (what the frozen weights take), "seconds", "val_by_epoch"}."""
    model = build_classifier_with(method, model_spec, seed=seed)
    frozen_bytes = base_nbytes(model) - 4 * trainable_count(model)  # trainable weights are float32
    model.to(device)
    recipe = METHODS[method]
    optimizer = make_optimizer(method, model, recipe.lr)
    t0 = time.perf_counter()
    history = train_classifier(model, task.loader("train"), task.loader("val"), optimizer, recipe.epochs, device,
                               eval_every=0, seed=seed, max_steps=max_steps, prefix_weight=PREFIX_WEIGHT[task.name],
                               progress=False, log=None)
    seconds = time.perf_counter() - t0
    model.eval()
    out = {split: evaluate(model, task.loader(split), device)["accuracy"] for split in ("val", "test")}
    out.update(trainable=trainable_count(model), frozen_bytes=frozen_bytes, seconds=round(seconds, 1),
               val_by_epoch=history.val_accuracy)
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


def markdown_table(report: dict) -> str:
    lines = [f"The LoRA family on base {report['base']}, seeds {', '.join(map(str, report['seeds']))}: accuracy, "
             f"mean ± standard deviation over the seeds.", f"Command: `{report['command']}`", ""]
    for task, rows in report["summary"].items():
        lines += [f"### {task}", "", "| method | trainable parameters | frozen weights (MB) | validation | test | "
                  "training (s) |", "|---|---:|---:|---:|---:|---:|"]
        for method, s in rows.items():
            lines.append(f"| {report['methods'][method]} | {s['trainable']:,} | {s['frozen_bytes'] / 1e6:.2f} | "
                         f"{100 * s['val_mean']:.1f} ± {100 * s['val_std']:.1f} % | "
                         f"{100 * s['test_mean']:.1f} ± {100 * s['test_std']:.1f} % | {s['seconds_mean']:.0f} |")
        lines.append("")
    return "\n".join(lines)


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


__all__ = ["METHODS", "Method", "build_classifier_with", "make_optimizer", "run_method", "summarise",
           "markdown_table", "plot", "trainable_count"]
