"""LoRA, DoRA, bottleneck adapters and prefix tuning on the spam task, side by side.

The seeds' claims, measured on one task: LoRA and adapters train a small fraction of the
parameters; adapters add inference latency (extra layers in series) while merged LoRA adds
none; prefix tuning is "difficult to optimise" and "reserves some chunk of the model's sequence
length" for its prefix. Each method fine-tunes the same pre-trained gpt-mini (data/gpt-mini)
on the book's balanced SMS spam split (classify/data.py), with the same new 2-class head,
batches, epochs and seed; then:

* trainable parameters (the head included);
* test accuracy after the last epoch (no model selection);
* training time (wall clock, the per-epoch validation passes included; methods run one after
  the other, so compare them on a quiet machine);
* inference latency of the model as it would be deployed (LoRA and DoRA merged), batch 1 and 8
  of test messages, all methods alternating, as a ratio to the base model;
* the context left for the input: context_length, minus P for prefix tuning.

Head-only training (a linear probe on the frozen model) and full fine-tuning are the two ends
of the range, for reference. Learning rates are per method (`--lr-*`), not tuned here beyond
common defaults: LoRA-style methods 8e-4 (scripts/finetune_spam.py), prefix tuning higher, as
usual for it.

    python -m benchmarks.bench_peft_methods           # gpt-mini, 3 epochs per method (minutes)
    python -m benchmarks.bench_peft_methods --quick   # a tiny random model, a few steps
"""

from __future__ import annotations

import argparse
import copy
import sys
import time

import torch

from benchmarks.common import (add_common_args, command_line, machine_info, markdown_table, quick_defaults, setup,
                               time_alternating, write_results)
from common.cli import parse_with_quick, run_main
from classify.data import spam_splits
from classify.dataset import ClassificationDataset, encode_text, make_loader
from classify.model import add_classification_head, set_trainable
from classify.train import evaluate, train_classifier
from gpt.params import count_parameters
from gpt.pretrained import load_base
from lora import LoraConfig, apply_lora, merge_lora
from peft_methods.bottleneck_adapter import apply_bottleneck_adapters
from peft_methods.dora import apply_dora, merge_dora
from peft_methods.prefix_tuning import apply_prefix_tuning, context_left, init_prefix_from_tokens

NAME = "peft_methods"
MODULE = "benchmarks.bench_peft_methods"
METHODS = ("head", "lora", "dora", "adapters", "prefix", "full")
METHOD_NAMES = {"head": "head only", "lora": "LoRA", "dora": "DoRA", "adapters": "bottleneck adapters",
                "prefix": "prefix tuning", "full": "full fine-tuning"}


# --quick: a tiny random model, a few steps (flags given explicitly still win)
QUICK = quick_defaults(base="random:gpt-tiny", epochs=1, max_steps=4, subset=32, bottleneck=8, rank=4)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_common_args(parser, repeats=7)
    parser.add_argument("--base", default="data/gpt-mini",
                        help="base model (gpt/pretrained.py; random:gpt-tiny with --quick)")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--epochs", type=int, default=3, help="passes over the training messages (1 with --quick)")
    parser.add_argument("--max-steps", type=int, default=None,
                        help="stop each training early (default: none; 4 with --quick)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rank", type=int, default=16,
                        help="LoRA / DoRA rank (all linear layers), alpha = rank (4 with --quick)")
    parser.add_argument("--bottleneck", type=int, default=64, help="bottleneck adapter width m (8 with --quick)")
    parser.add_argument("--prefix", type=int, default=10, help="prefix tuning: P prefix tokens per layer")
    parser.add_argument("--prefix-reparametrize", action="store_true", help="prefix tuning through an MLP (Li & Liang)")
    parser.add_argument("--prefix-prompt", default=None,
                        help="initialise the prefix from this text's keys and values (Li & Liang, section 7.2); "
                             "P becomes its number of tokens. Default: a random prefix")
    parser.add_argument("--lr", type=float, default=8e-4, help="learning rate of LoRA, DoRA, adapters, head only")
    parser.add_argument("--lr-prefix", type=float, default=5e-3, help="learning rate of prefix tuning")
    parser.add_argument("--lr-full", type=float, default=5e-5, help="learning rate of full fine-tuning (the book's)")
    parser.add_argument("--subset", type=int, default=None,
                        help="use only the first N training and N/2 val/test messages (default: all; 32 with --quick)")
    return parser


def prepare(method: str, base, args):
    """A copy of `base` (with its 2-class head) set up for `method`: (model, deploy) where
    deploy() gives the inference version (merged for LoRA/DoRA)."""
    model = copy.deepcopy(base)
    torch.manual_seed(args.seed)  # the same LoRA A / adapter / prefix initialisation on every run
    lora_cfg = LoraConfig(rank=args.rank, alpha=args.rank, targets=("all-linear",), modules_to_save=("out_head",))
    if method in ("head", "full"):
        set_trainable(model, method)
        return model, lambda: model
    if method == "lora":
        apply_lora(model, lora_cfg)
        return model, lambda: merge_lora(copy.deepcopy(model))
    if method == "dora":
        apply_dora(model, lora_cfg)
        return model, lambda: merge_dora(copy.deepcopy(model))
    if method == "adapters":
        return apply_bottleneck_adapters(model, bottleneck=args.bottleneck), lambda: model
    if method == "prefix":
        apply_prefix_tuning(model, n_prefix=args.prefix, reparametrize=args.prefix_reparametrize)
        if args.prefix_prompt:
            init_prefix_from_tokens(model, encode_text(args.prefix_prompt))
        return model, lambda: model
    raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")


def main(argv=None) -> dict:
    args = parse_with_quick(build_parser(), QUICK, argv)
    device = setup(args)
    if args.prefix_prompt:
        args.prefix = len(encode_text(args.prefix_prompt))
    machine = machine_info(device)

    base = load_base(args.base, attention="separate", drop_rate=0.0, seed=args.seed)
    torch.manual_seed(args.seed)
    add_classification_head(base, 2)
    base = base.to(device)
    context = base.cfg.context_length

    splits = spam_splits()
    if args.subset:
        splits = {"train": splits["train"][: args.subset], "val": splits["val"][: args.subset // 2],
                  "test": splits["test"][: args.subset // 2]}
    # Every method sees the same token ids: padded to the longest training message, and short
    # enough for the context prefix tuning leaves (its inputs start after P virtual tokens).
    room = context - args.prefix if "prefix" in args.methods else context
    train_set = ClassificationDataset(splits["train"], context_length=room)
    val_set = ClassificationDataset(splits["val"], max_length=train_set.max_length)
    test_set = ClassificationDataset(splits["test"], max_length=train_set.max_length)

    rows, deployed = {}, {}
    for method in args.methods:
        print(f"[{NAME}] {METHOD_NAMES[method]} on {args.base}", file=sys.stderr)
        model, deploy = prepare(method, base, args)
        model.to(device)
        params = [p for p in model.parameters() if p.requires_grad]
        lr = {"prefix": args.lr_prefix, "full": args.lr_full}.get(method, args.lr)
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.1)
        train_loader = make_loader(train_set, args.batch_size, shuffle=True, drop_last=True, seed=args.seed)
        val_loader = make_loader(val_set, args.batch_size)
        t0 = time.perf_counter()
        history = train_classifier(model, train_loader, val_loader, optimizer, args.epochs, device, eval_every=0,
                                   seed=args.seed, max_steps=args.max_steps, log=None)
        train_seconds = time.perf_counter() - t0
        model.eval()
        test = evaluate(model, make_loader(test_set, args.batch_size), device)
        deployed[method] = deploy().eval()
        rows[method] = {
            "method": METHOD_NAMES[method], "lr": lr,
            "trainable_params": count_parameters(model, trainable_only=True),
            "test_accuracy": test["accuracy"], "val_accuracy": history.val_accuracy[-1],
            "train_seconds": train_seconds, "steps": history.step[-1],
            "context_left": context_left(model),
        }

    # Inference latency of the deployed models, all alternating, on real test messages.
    ids = test_set.input_ids.to(device)
    latency = {}
    for b in (1, 8):
        batch = ids[:b]

        def forward(m, x=batch):
            def fn():
                with torch.no_grad():
                    m(x)
            return fn

        fns = {"base (no fine-tuning)": forward(base.eval()), **{m: forward(deployed[m]) for m in deployed}}
        timings = time_alternating(fns, warmup=args.warmup, repeats=args.repeats, device=device)
        latency[b] = {name: t.to_dict() for name, t in timings.items()}
        for method in deployed:
            rows[method][f"latency_b{b}_x_base"] = timings[method].median / timings["base (no fine-tuning)"].median
            rows[method][f"latency_b{b}_ms"] = 1e3 * timings[method].median

    results = {"base": args.base, "config": base.cfg.to_dict(), "epochs": args.epochs, "batch_size": args.batch_size,
               "max_length": train_set.max_length, "n_train": len(train_set), "n_test": len(test_set),
               "methods": rows, "latency": {str(b): v for b, v in latency.items()},
               "settings": {"rank": args.rank, "bottleneck": args.bottleneck, "prefix": args.prefix,
                            "prefix_reparametrize": args.prefix_reparametrize, "prefix_prompt": args.prefix_prompt}}
    table = markdown_table(
        ["method", "trainable params", "lr", "test accuracy", "training time", "latency b=1 (x base)",
         "latency b=8 (x base)", "context left (tokens)"],
        [[r["method"] + _detail(m, args), r["trainable_params"], f"{r['lr']:g}", f"{100 * r['test_accuracy']:.1f} %",
          f"{r['train_seconds']:,.1f} s", f"{r['latency_b1_ms']:,.1f} ms ({r['latency_b1_x_base']:.2f}x)",
          f"{r['latency_b8_ms']:,.1f} ms ({r['latency_b8_x_base']:.2f}x)", r["context_left"]]
         for m, r in rows.items()])
    parts = [
        f"Base {args.base} ({base.cfg.emb_dim}-wide, {base.cfg.n_layers} layers, context {context}); the balanced "
        f"SMS spam split: {len(train_set):,} training and {len(test_set):,} test messages, padded to "
        f"{train_set.max_length} tokens; {args.epochs} epoch(s), batch {args.batch_size}, AdamW (weight decay 0.1), "
        f"seed {args.seed}. Latency: one forward pass over 1 or 8 test messages of {train_set.max_length} tokens, "
        f"median of {args.repeats}, LoRA and DoRA merged into the weights.",
        table,
        "Reading the table: LoRA and DoRA merged cost what the base costs at inference; bottleneck adapters add "
        f"2 x {base.cfg.n_layers} small layers in series; prefix tuning adds {args.prefix} keys to every attention "
        f"layer and leaves {context - args.prefix} of the {context} positions for the message. DoRA trains one "
        f"magnitude per output feature more than LoRA and recomputes each adapted weight's norm on every training "
        f"step. Accuracy differences of a few test messages ({100 / len(test_set):.1f} % each) are within the "
        f"noise of one seed.",
    ]
    write_results(NAME, args.out_dir, command_line(MODULE, argv), machine, results, "\n\n".join(parts),
                  title="Parameter-efficient methods on the spam task")
    _plot(rows, args.out_dir / f"{NAME}.png")
    return results


def _detail(method: str, args) -> str:
    return {"lora": f" r={args.rank}, all linear", "dora": f" r={args.rank}, all linear",
            "adapters": f" m={args.bottleneck}", "prefix": f" P={args.prefix}" +
            (", MLP" if args.prefix_reparametrize else "") +
            (f", from {args.prefix_prompt!r}" if args.prefix_prompt else "")}.get(method, "")


def _plot(rows: dict, path) -> None:
    """Test accuracy against trainable parameters, and deployed latency, one bar per method."""
    from plots.figures import new_figure, save_figure

    names = [r["method"] for r in rows.values()]
    fig, (ax_acc, ax_lat) = new_figure(1, 2, figsize=(9, 3.4), dpi=100)
    ax_acc.scatter([r["trainable_params"] for r in rows.values()], [100 * r["test_accuracy"] for r in rows.values()])
    for name, r in zip(names, rows.values()):
        ax_acc.annotate(name, (r["trainable_params"], 100 * r["test_accuracy"]), fontsize=8)
    ax_acc.set_xscale("log")
    ax_acc.set_xlabel("trainable parameters")
    ax_acc.set_ylabel("test accuracy (%)")
    ax_lat.barh(names, [r["latency_b1_x_base"] for r in rows.values()], label="batch 1")
    ax_lat.axvline(1.0, color="gray", lw=0.8)
    ax_lat.set_xlabel("inference latency, x base model (batch 1)")
    for ax in (ax_acc, ax_lat):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)


if __name__ == "__main__":
    run_main(main)
