"""Chapter 8 script: adapters in practice, from the command line (notebooks/08_adapters_in_practice.ipynb).

    python scripts/ch08_adapters.py            # the shipped gpt-mini: a spam and a sentiment adapter (minutes on a CPU)
    python scripts/ch08_adapters.py --quick    # a random gpt-tiny for a few steps: runs/quick/ch08_adapters (tests, CI)

What it does, in order (adapters, figures and results.json go to --out, written whole when the run ends:
common.files.atomic_folder; settings and --out are checked, in one line each, before any work):
 1. Data: the SMS spam set (the book's balanced 70/10/20 split, seed 123) and the 3,000 sentiment
    sentences (Amazon, IMDb, Yelp; classify.data.load_sentiment) split 70/10/20 with seed 123.
 2. ONE base model with a new 2-class head. A SPAM adapter (LoRA on every linear layer + its own copy
    of the head, `modules_to_save`) is trained; then a SENTIMENT adapter is added to the same base and
    trained. The sentiment adapter also puts LoRA on the token embedding (`tok_emb`) and trains on every
    prefix of each sentence (chapter 7's loss): gpt-mini has read novels and SMS messages, not reviews,
    and LoRA on the linear layers cannot change what a word's embedding says; without it the adapter
    stays below a bag of words (notebook 8, section 8.3; scripts/compare_sentiment.py).
    Training the second adapter leaves the first bit-for-bit unchanged (checked).
 3. Both are saved with lora.save_adapter: about 0.9 MB (spam) and 2.5 MB (sentiment, the embedding's
    A has one row per token id) at r=8 against the base checkpoint's 35 MB (08_file_sizes.png).
 4. A FRESH base is loaded and both adapters are put on it with lora.load_adapter: the saved config
    re-applies LoRA with the training flags, so none are repeated here. Its logits equal the trained
    model's. The adapters are swapped on that one base to classify a few texts with each.
 5. Loading the spam adapter onto a different base (other weights, other architecture) fails with an
    error that says why.
 6. The spam adapter is merged for inference. Latency of the base, the unmerged and the merged model
    at batch 1 and 8 (median of --repeats forward passes, variants alternating; 08_latency.png).
    These are rough timings; benchmarks/bench_inference.py is the careful measurement.
 7. Test accuracy of each adapter on both test sets, beside a bag of words (classify.bag_of_words: logistic
    regression on which tokens a text contains) and TF-IDF n-grams (classify.tfidf) fitted on the same training
    split, and the training curves (08_training_curves.png).

Everything runs on --device (auto: CUDA, then Apple MPS, then CPU), with bf16 autocast while training
and evaluating on CUDA as in scripts/finetune_spam.py (--bf16 asks for it elsewhere). Adapters are
saved from CPU copies of the tensors (lora.save_adapter), so a file written on a GPU loads anywhere.

Hu et al. 2021, "LoRA", arXiv:2106.09685 (section 4.2: many task-specific adapters on one frozen base,
switched by swapping A and B; no extra inference latency once merged).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from classify.bag_of_words import fit_bag_of_words
from classify.model import add_classification_head, class_logits, predict_texts
from classify.saved import run_folder
from classify.tasks import ADAPTERS, LABELS, PREFIX_WEIGHT, TASKS, Task, add_task_adapter, load_tasks, train_on_task
from classify.tfidf import fit_tfidf
from classify.train import evaluate
from common.cli import ArgumentParser, UserError, parse_with_quick, run_main
from common.files import atomic_write_text
from gpt.config import GPTConfig
from gpt.device import add_device_argument, pick_device, synchronize, use_bf16
from gpt.model import GPTModel
from gpt.pretrained import DEFAULT_BASE, describe_base, load_base
from lora import (LoraConfig, load_adapter, lora_parameter_report, merge_lora, save_adapter, set_active_adapter,
                  unmerge_lora)
from plots.figures import new_figure, save_figure

ROOT = Path(__file__).resolve().parent.parent
RESULTS_FILE = "results.json"  # marks a folder as this script's run (with "quick": true for a smoke run)

QUICK = dict(model="random:gpt-tiny", max_steps=4, eval_every=2, repeats=3)
EXAMPLES = {
    "spam": ["You are a winner! Call 09061701461 now to claim your 900 GBP prize. T&C apply",
             "Hey, are we still meeting for lunch tomorrow at 12?",
             "FREE entry into our weekly competition, text WIN to 80086 now!",
             "Sorry, I'll call you later, I'm in a meeting"],
    "sentiment": ["The battery lasts all day and the screen is gorgeous.",
                  "Terrible service, the food was cold and the waiter was rude.",
                  "I would definitely recommend this film to my friends.",
                  "It broke after two days. Waste of money."],
}


def lora_config(args, task: str) -> LoraConfig:
    targets = args.spam_targets if task == "spam" else args.sentiment_targets
    return LoraConfig(rank=args.rank, alpha=args.alpha, targets=tuple(targets), modules_to_save=("out_head",))


def train_adapter(model, task: Task, cfg: LoraConfig, epochs: int, args, log=print, bf16: bool | None = None):
    """Add adapter `task.name` to `model`, make it the active and only trainable one, and train it on the
    task (classify.tasks). Returns the ClassifierHistory."""
    add_task_adapter(model, task.name, cfg, seed=args.seed)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log(f"{task.name}: training {trainable:,} parameters (LoRA r={cfg.rank} on {','.join(cfg.targets)} + its own "
        f"2-class head) of {sum(p.numel() for p in model.parameters()):,}")
    return train_on_task(model, task, epochs, lr=args.lr, weight_decay=args.weight_decay, device=args.device,
                         seed=args.seed, eval_every=args.eval_every, max_steps=args.max_steps, bf16=bf16,
                         prefix_weight=PREFIX_WEIGHT[task.name],
                         progress=not args.no_progress, log=log if not args.no_progress else None)


def classify(model, texts: list[str], labels: list[str], max_length: int) -> list[tuple[str, float]]:
    """(label, probability) for each text with the model's active adapter, on the model's device."""
    out = []
    for probs, _, _ in predict_texts(model, texts, max_length):  # probs: (C,)
        k = int(probs.argmax())
        out.append((labels[k], float(probs[k])))
    return out


def file_sizes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file()}


def different_base_errors(spec: str, adapter_dir: Path, seed: int) -> dict[str, str]:
    """The errors load_adapter raises for a base with the same architecture but other weights (drawn
    afresh with another seed), and for a base of another architecture."""
    cfg = load_base(spec, drop_rate=0.0, seed=seed).cfg
    other_arch = "gpt-mini" if cfg.emb_dim == GPTConfig.from_preset("gpt-tiny").emb_dim else "gpt-tiny"
    errors = {}
    for what, preset_cfg in (("same architecture, other weights", cfg),
                             (f"another architecture ({other_arch})", GPTConfig.from_preset(other_arch))):
        torch.manual_seed(seed + 1)
        other = GPTModel(preset_cfg)
        try:
            load_adapter(other, adapter_dir)
            errors[what] = "(no error: the adapter loaded)"
        except ValueError as err:
            errors[what] = str(err)
    return errors


def median_latency_ms(variants: dict, inputs: dict, repeats: int) -> dict[str, dict[str, float]]:
    """Median forward-pass time (ms) of each variant for each input batch. variants: name -> (prepare, model)
    where prepare() switches the model into that state (merge/unmerge); the variants alternate within
    each repeat so that they share the machine's load. On a GPU, synchronize() makes the timer wait for
    the queued work (a forward pass returns as soon as its kernels are launched)."""
    times = {b: {v: [] for v in variants} for b in inputs}
    with torch.no_grad():
        for b, x in inputs.items():
            for name, (prepare, model) in variants.items():  # warm-up
                prepare()
                model(x)
            for _ in range(repeats):
                for name, (prepare, model) in variants.items():
                    prepare()
                    synchronize(x.device)
                    t0 = time.perf_counter()
                    model(x)
                    synchronize(x.device)
                    times[b][name].append(1e3 * (time.perf_counter() - t0))
    return {b: {v: sorted(ts)[len(ts) // 2] for v, ts in row.items()} for b, row in times.items()}


# ----------------------------------------------------------------------------- figures

def plot_file_sizes(sizes: dict[str, int], path: Path) -> None:
    fig, ax = new_figure(figsize=(6, 3), dpi=100)
    names, values = list(sizes), [v / 1e6 for v in sizes.values()]
    bars = ax.barh(names, values, color=["#bbbbbb"] + ["#2a9d8f"] * (len(names) - 1))
    for bar, v in zip(bars, sizes.values()):
        label = f"{v / 1e6:.1f} MB" if v >= 1e6 else f"{v / 1e3:.0f} KB"
        ax.text(bar.get_width() * 1.15, bar.get_y() + bar.get_height() / 2, label, va="center", fontsize=8)
    ax.set_xscale("log")
    ax.set_xlim(min(values) / 3, max(values) * 8)
    ax.set_xlabel("file size (MB, log scale)")
    ax.set_title("an adapter is a small file next to one shared base")
    fig.tight_layout()
    save_figure(fig, path)


def plot_training_curves(histories: dict, path: Path) -> None:
    fig, (ax1, ax2) = new_figure(1, 2, figsize=(9, 3.4), dpi=100)
    for name, h in histories.items():
        h = h if isinstance(h, dict) else h.to_dict()
        line, = ax1.plot(h["examples_seen"], h["train_loss"], label=f"{name}, train (running)")
        ax1.plot(h["examples_seen"], h["val_loss"], "--", color=line.get_color(), label=f"{name}, validation")
        ax2.plot(h["examples_seen"], [100 * a for a in h["val_accuracy"]], "o-", ms=3, label=f"{name} (validation)")
    ax1.set_ylabel("cross-entropy at the last token")
    ax2.set_ylabel("accuracy (%)")
    for ax in (ax1, ax2):
        ax.set_xlabel("training examples seen")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("two adapters trained on one frozen base")
    fig.tight_layout()
    save_figure(fig, path)


def plot_latency(latency: dict, path: Path, note: str) -> None:
    fig, ax = new_figure(figsize=(6, 3.5), dpi=100)
    batches = list(latency)
    variants = list(latency[batches[0]])
    width = 0.8 / len(variants)
    colors = ["#bbbbbb", "#e76f51", "#2a9d8f"]
    for i, v in enumerate(variants):
        xs = [j + (i - (len(variants) - 1) / 2) * width for j in range(len(batches))]
        ys = [latency[b][v] for b in batches]
        bars = ax.bar(xs, ys, width, label=v, color=colors[i % len(colors)])
        for bar, b in zip(bars, batches):
            ratio = latency[b][v] / latency[b][variants[0]]
            ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height(), f"{ratio:.2f}x", ha="center",
                    va="bottom", fontsize=7)
    ax.set_xticks(range(len(batches)))
    ax.set_xticklabels([f"batch {b}" for b in batches])
    ax.set_ylabel("median forward pass (ms)")
    ax.set_title(f"latency, rough timing ({note})", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


# ----------------------------------------------------------------------------- main

def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=DEFAULT_BASE, help="base: a gpt.checkpoint folder/file, gpt2-small..., random[:preset]")
    p.add_argument("--rank", type=int, default=8, help="LoRA rank r of both adapters")
    p.add_argument("--alpha", type=float, default=16.0, help="LoRA alpha of both adapters")
    p.add_argument("--spam-targets", nargs="+", default=list(ADAPTERS["spam"].targets), help="LoRA targets of the spam adapter")
    p.add_argument("--sentiment-targets", nargs="+", default=list(ADAPTERS["sentiment"].targets),
                   help="LoRA targets of the sentiment adapter (tok_emb: the token embedding)")
    p.add_argument("--lr", type=float, default=8e-4, help="AdamW learning rate")
    p.add_argument("--weight-decay", type=float, default=0.1, help="AdamW weight decay")
    p.add_argument("--spam-epochs", type=int, default=3, help="epochs of the spam adapter (1,045 messages)")
    p.add_argument("--sentiment-epochs", type=int, default=2, help="epochs of the sentiment adapter (2,100 sentences)")
    p.add_argument("--max-steps", type=int, default=None, help="stop each training after this many steps")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--eval-every", type=int, default=50, help="evaluate on the validation set every N steps")
    p.add_argument("--repeats", type=int, default=30, help="forward passes per latency measurement (median)")
    p.add_argument("--latency-tokens", type=int, default=128, help="tokens per sequence in the latency measurement")
    p.add_argument("--seed", type=int, default=123)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    add_device_argument(p)
    p.add_argument("--bf16", action="store_true", help="bf16 autocast while training and evaluating (default on CUDA)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars or per-evaluation lines")
    p.add_argument("--out", default=None,
                   help="folder for adapters, PNGs, results.json (default: runs/ch08_adapters; with --quick "
                        "runs/quick/ch08_adapters). New, empty or an earlier run's folder, replaced whole when the run "
                        "is complete; a --quick run never replaces a real run's folder")
    p.add_argument("--quick", action="store_true", help=f"smoke test: {QUICK}, saved under runs/quick/")
    return p


def default_out(quick: bool) -> Path:
    return ROOT / "runs" / ("quick" if quick else "") / "ch08_adapters"


def parse_args(argv=None) -> argparse.Namespace:
    """The command line, checked: a setting that would train or measure nothing is a UserError (one line)."""
    args = parse_with_quick(build_parser(), QUICK, argv)
    if args.out is None:
        args.out = str(default_out(args.quick))
    for name in ("rank", "spam_epochs", "sentiment_epochs", "batch_size", "repeats", "latency_tokens"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    for name, minimum in (("max_steps", 1), ("threads", 1), ("eval_every", 0)):
        value = getattr(args, name)
        if value is not None and value < minimum:
            raise UserError(f"--{name.replace('_', '-')} must be at least {minimum}, got {value}")
    if not (args.lr > 0 and args.lr < float("inf")):
        raise UserError(f"--lr must be a positive, finite number, got {args.lr}")
    if not (0 <= args.alpha < float("inf")) or not (0 <= args.weight_decay < float("inf")):
        raise UserError(f"--alpha and --weight-decay must be finite numbers >= 0, got {args.alpha}, {args.weight_decay}")
    return args


def main(argv=None, log=print) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.device = device = pick_device(args.device)  # a device that does not exist: a clear error before any work
    info = describe_base(args.model)  # a clear FileNotFoundError before any work when the base is missing
    # Everything goes into a new folder beside --out, swapped in whole at the end (a second run writing the same
    # --out is refused; an interrupted run leaves the previous one as it was).
    with run_folder(args.out, quick=args.quick, marker=RESULTS_FILE, default_hint=str(default_out(True))) as tmp:
        return _run(args, device, info, Path(tmp), Path(args.out), argv, log)


def _run(args, device, info: dict, out: Path, final_out: Path, argv, log) -> dict:
    """Steps 1 to 7 of the module docstring, writing into `out` (the folder that becomes final_out)."""
    bf16 = True if args.bf16 else None  # None: bf16 where gpt.device.use_bf16 says it is supported (CUDA)
    t_start = time.perf_counter()

    # 1-2. One base, two adapters.
    model = load_base(args.model, drop_rate=0.0, seed=args.seed)
    tasks = load_tasks(model.cfg.context_length, args.batch_size, args.seed)
    for task in tasks.values():
        for split in ("train", "val", "test"):
            log(getattr(task, split).describe(f"{task.name} {split}"))
    torch.manual_seed(args.seed)
    add_classification_head(model, num_classes=2)
    model.to(device)  # the head drawn on the CPU: the same initial weights on every device
    log(f"device {device}" + (" with bf16 autocast" if use_bf16(device, bf16) else ""))
    configs = {name: lora_config(args, name) for name in TASKS}
    epochs = {"spam": args.spam_epochs, "sentiment": args.sentiment_epochs}
    histories, train_seconds = {}, {}
    for name in TASKS:
        t0 = time.perf_counter()
        histories[name] = train_adapter(model, tasks[name], configs[name], epochs[name], args, log, bf16)
        train_seconds[name] = round(time.perf_counter() - t0, 1)
        if name == "spam":
            spam_weights = {k: v.detach().clone() for k, v in model.state_dict().items() if ".spam" in k}
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in spam_weights.items()), "spam adapter changed"
    model.eval()
    report = lora_parameter_report(model)

    # 3. Save.
    adapter_dirs = {name: out / "adapters" / name for name in TASKS}
    for name, folder in adapter_dirs.items():
        save_adapter(model, folder, name=name)
    sizes = {name: sum(file_sizes(folder).values()) for name, folder in adapter_dirs.items()}
    base_file = Path(info["path"]) if info["kind"] == "checkpoint" else None
    base_bytes = base_file.stat().st_size if base_file else 4 * sum(p.numel() for p in GPTModel(model.cfg).parameters())
    size_rows = {f"base ({'checkpoint' if base_file else 'fp32 weights'})": base_bytes,
                 **{f"{n} adapter": s for n, s in sizes.items()}}
    plot_file_sizes(size_rows, out / "08_file_sizes.png")
    log("sizes: " + ", ".join(f"{k} {v:,} bytes" for k, v in size_rows.items()))

    # 4. A fresh base with both adapters: same logits, swap, classify.
    fresh = load_base(args.model, drop_rate=0.0, seed=args.seed).to(device).eval()
    for folder in adapter_dirs.values():
        load_adapter(fresh, folder)
    logit_diff = {}
    for name in TASKS:
        set_active_adapter(model, name)
        set_active_adapter(fresh, name)
        x, lengths, _ = (t.to(device) for t in next(iter(tasks[name].loader("test"))))
        with torch.no_grad():
            logit_diff[name] = (class_logits(fresh, x, lengths) - class_logits(model, x, lengths)).abs().max().item()
    assert max(logit_diff.values()) < 1e-4, logit_diff
    predictions = {}
    for adapter in TASKS:
        set_active_adapter(fresh, adapter)
        predictions[adapter] = {text: classify(fresh, [text], LABELS[adapter], tasks[adapter].max_length)[0]
                                for texts in EXAMPLES.values() for text in texts}
        for text, (label, p) in predictions[adapter].items():
            log(f"{adapter:>9} adapter: {label:>8} (p={p:.2f})  {text}")

    # 5. A different base.
    errors = different_base_errors(args.model, adapter_dirs["spam"], args.seed)
    for what, message in errors.items():
        log(f"spam adapter on a base with {what}: {message}")

    # 7. Test accuracy (before merging; merging does not change it).
    accuracy = {}
    for adapter in TASKS:
        set_active_adapter(fresh, adapter)
        accuracy[adapter] = {t: evaluate(fresh, tasks[t].loader("test"), device, bf16=bf16)["accuracy"] for t in TASKS}
        log(f"{adapter} adapter, test accuracy: " + ", ".join(f"{t} {100 * a:.1f} %" for t, a in accuracy[adapter].items()))
    bag_of_words = {}
    for name, task in tasks.items():  # the baseline without a GPT, on the same splits
        bow = fit_bag_of_words(task.splits["train"], seed=args.seed)
        bag_of_words[name] = {split: bow.accuracy(task.splits[split]) for split in ("val", "test")}
        log(f"bag of words on {name}: validation {100 * bag_of_words[name]['val']:.1f} %, "
            f"test {100 * bag_of_words[name]['test']:.1f} %")
    tfidf = {}
    for name, task in tasks.items():  # the classic baseline: TF-IDF n-grams, C chosen on validation
        baseline = fit_tfidf(task.splits["train"], task.splits["val"])
        tfidf[name] = {"val": baseline.val_accuracy, "test": baseline.accuracy(task.splits["test"]), "C": baseline.C}
        log(f"TF-IDF on {name} (C = {baseline.C:g}): validation {100 * tfidf[name]['val']:.1f} %, "
            f"test {100 * tfidf[name]['test']:.1f} %")
    plot_training_curves(histories, out / "08_training_curves.png")

    # 6. Merge for inference, and latency.
    set_active_adapter(fresh, "spam")
    T = min(args.latency_tokens, fresh.cfg.context_length)
    g = torch.Generator().manual_seed(args.seed)
    inputs = {b: torch.randint(0, fresh.cfg.vocab_size, (b, T), generator=g).to(device)  # drawn on the CPU
              for b in (1, 8)}
    with torch.no_grad():
        unmerged_logits = class_logits(fresh, inputs[8])
        merge_lora(fresh)
        merged_diff = (class_logits(fresh, inputs[8]) - unmerged_logits).abs().max().item()
        unmerge_lora(fresh)
    plain = load_base(args.model, drop_rate=0.0, seed=args.seed).eval()  # no LoRA wrappers at all
    torch.manual_seed(args.seed)
    add_classification_head(plain, num_classes=2)
    plain.to(device)
    state = {"merged": False}

    def to(merged: bool):
        def prepare():
            if merged != state["merged"]:
                (merge_lora if merged else unmerge_lora)(fresh)
                state["merged"] = merged
        return prepare

    variants = {"base": (lambda: None, plain), "LoRA unmerged": (to(False), fresh), "LoRA merged": (to(True), fresh)}
    latency = median_latency_ms(variants, inputs, args.repeats)
    to(False)()
    where = f"{torch.get_num_threads()} thread(s)" if device.type == "cpu" else str(device)
    note = f"{T} tokens, median of {args.repeats}, {where}"
    plot_latency(latency, out / "08_latency.png", note)
    for b, row in latency.items():
        log(f"batch {b}: " + ", ".join(f"{v} {ms:.1f} ms" for v, ms in row.items()))

    results = {
        "command": "python scripts/ch08_adapters.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "quick": args.quick,
        "base": args.model, "device": str(device), "bf16": use_bf16(device, bf16),
        "lora": {name: c.to_dict() for name, c in configs.items()}, "lr": args.lr, "epochs": epochs, "max_steps": args.max_steps,
        "trainable_per_adapter": report["per_adapter"],
        "train_seconds": train_seconds,
        "file_sizes_bytes": size_rows,
        "fresh_vs_trained_max_logit_diff": logit_diff,
        "predictions": predictions,
        "different_base_errors": errors,
        "test_accuracy": accuracy,
        "bag_of_words_accuracy": bag_of_words,
        "tfidf_accuracy": tfidf,
        "merged_vs_unmerged_max_logit_diff": merged_diff,
        "latency_ms": {str(b): row for b, row in latency.items()},
        "latency_setup": note,
        "histories": {n: h.to_dict() for n, h in histories.items()},
        "total_seconds": round(time.perf_counter() - t_start, 1),
    }
    atomic_write_text(out / RESULTS_FILE, json.dumps(results, indent=1) + "\n")
    log(f"wrote adapters/, 08_file_sizes.png, 08_training_curves.png, 08_latency.png and results.json to {final_out}")
    return results


if __name__ == "__main__":
    run_main(main)
