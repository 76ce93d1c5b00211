"""The main job: fine-tune a GPT spam classifier with LoRA (the book's chapter 6 + appendix E).

    python scripts/finetune_spam.py                        # LoRA on the shipped gpt-mini (CPU, < 5 minutes)
    python scripts/finetune_spam.py --method full          # or last-block, head: the chapter 6 baselines
    python scripts/finetune_spam.py --model gpt2-small     # OpenAI's GPT-2 from the cache (gpt/download.py)
    python scripts/finetune_spam.py --model random         # the same LoRA on an untrained base
    python scripts/finetune_spam.py --quick                # a tiny random model for a few steps (tests, CI)
    python scripts/classify.py --adapter runs/spam-lora "You won a free cruise, call now"
    torchrun --nproc_per_node=2 scripts/finetune_spam.py   # data-parallel, same global --batch-size

What happens, in order:
 1. The SMS Spam Collection is balanced (747 ham, 747 spam), split 70/10/20 with seed 123
    (classify/data.py), tokenised and padded with <|endoftext|> to the longest training message;
    longer validation/test messages are truncated, and the count is printed (classify/dataset.py).
 2. The base model is loaded (classify/base.py), its output head is replaced by a 2-class head
    read at the last real token (classify/model.py).
 3. --method lora: LoRA (lora/) on the chosen layers, everything else frozen, the new head trained
    in full (`modules_to_save`). full / last-block / head: the chapter 6 alternatives.
 4. AdamW, batches of 8, a few epochs (classify/train.py), with a progress bar.
 5. Train, validation and test accuracy are printed; the adapter (or the trained weights), the
    settings needed to classify new text (classifier.json), the history (history.json) and the
    loss/accuracy curves (curves.png) are written to --out.

The recipe is the book's appendix E (r=16, alpha=16, AdamW lr 8e-4, weight decay 0.1, batch 8,
LoRA on every linear layer) with two changes chosen on the VALIDATION set only (never the test
set): 3 epochs instead of 5 (to stay under 5 minutes on a 2-core CPU) and a cosine learning-rate
decay after 20 warm-up steps instead of a constant rate (seeds 123 and 124 on the first shipped
base, validation accuracy 97.3 % / 97.3 % vs 95.3 % / 96.0 %). LoRA on query and value only
reached 93.3 % validation accuracy there (seed 123, constant lr; with today's recipe and base 94.63 %,
solutions/ch07.md). `--schedule constant` gives the book's behaviour.

And one change to the loss, NOT chosen on the validation set: besides the cross-entropy at each
message's last token (the book's), the same loss at every token (--prefix-weight 1), i.e. on every
beginning of every training message. Only 4 of the 517 training spam messages have 10 tokens or
fewer (168 of the 528 ham do), and trained on whole messages the classifier learns "short means
ham": it calls "You won a free cruise, call now" ham with p(spam) 0.00 (notebook 7.6). With the
prefix loss, seeds 123 / 124 / 125 give it p(spam) 0.78 / 0.77 / 0.45. On validation the two losses
are level within one message (95.97 % vs 96.42 %, mean of the three seeds), on test the prefix loss
is ahead (97.11 % vs 96.44 %); --prefix-weight 0 gives the book's loss
(results/spam_comparison.md, rows lora-separate and lora-whole).

Measured with the defaults on the project's 2-core CPU, nearly idle (2 threads): 45 s in all, 40 s
of training (notebook 7.3's committed run); train 99.43 %, validation 96.64 %, test 97.00 % (seed 123). Seeds 123 / 124 / 125:
test 97.00 / 97.00 / 97.33 % (results/spam_floor.json).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from classify.base import DEFAULT_BASE, describe_base, load_base  # noqa: E402
from classify.data import SMS_SPAM_FILE, spam_splits  # noqa: E402
from classify.dataset import ClassificationDataset, make_loader  # noqa: E402
from classify.model import add_classification_head, predict_texts, set_trainable  # noqa: E402
from classify.train import evaluate, plot_history, train_classifier  # noqa: E402
from gpt.checkpoint import atomic_write  # noqa: E402
from gpt.device import add_device_argument, pick_device  # noqa: E402
from gpt.distributed import (cleanup, get_world_size, init_distributed, is_main_process, shard_loader,  # noqa: E402
                             unwrap, wrap_model)
from gpt.params import count_parameters  # noqa: E402
from lora import LoraConfig, apply_lora, save_adapter  # noqa: E402
from lora.config import SCALINGS  # noqa: E402

METHODS = ("lora", "full", "last-block", "head")
LABELS = ["ham", "spam"]  # class index -> name (classify/data.py: SMS_SPAM_LABELS)
# Classified at the end of every run, their p(spam) recorded: issue 4's example (short and lower case, the hard
# case: see the docstring) and two messages in the data set's style.
PROBES = ["You won a free cruise, call now",
          "Congratulations! You have won a free cruise. Call now to claim your prize",
          "Are we still on for lunch tomorrow?"]
CLASSIFIER_FILE = "classifier.json"  # how to rebuild the classifier (read by scripts/classify.py)
WEIGHTS_FILE = "classifier.safetensors"  # trained weights for the non-LoRA methods
FORMAT = "lora-from-scratch/spam-classifier"
# --quick: a tiny random model and a few steps, for tests and CI (flags given explicitly still win).
QUICK = dict(model="random:gpt-tiny", epochs=1, max_steps=6, eval_every=3, batch_size=8)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default=DEFAULT_BASE,
                   help="base model: a gpt.checkpoint folder/file (the shipped data/gpt-mini), gpt2-small..gpt2-xl "
                        "or a Hugging Face GPT-2 folder, or random[:preset] for an untrained base")
    p.add_argument("--download", action="store_true", help="download gpt2-* into the cache if missing (needs internet)")
    p.add_argument("--method", default="lora", choices=METHODS,
                   help="lora: LoRA + new head; full: every weight; last-block: last block + final_norm + head; head: head only")
    p.add_argument("--attention", default="separate", choices=["separate", "fused"],
                   help="separate W_query/W_key/W_value or one fused qkv projection (same function, LoRA per slice)")
    p.add_argument("--rank", type=int, default=16, help="LoRA rank r")
    p.add_argument("--alpha", type=float, default=16.0, help="LoRA alpha")
    p.add_argument("--scaling", default="alpha/r", choices=SCALINGS,
                   help="update scale: alpha/r (LoRA paper, PEFT), alpha/sqrt(r) (rsLoRA), alpha (book's 1st printing)")
    p.add_argument("--targets", nargs="+", default=["all-linear"],
                   help="LoRA target modules: aliases (query key value out_proj ff_in ff_out ff all-linear) or name suffixes")
    p.add_argument("--lora-dropout", type=float, default=0.0, help="dropout on the LoRA branch input")
    p.add_argument("--drop-rate", type=float, default=0.0, help="the base model's dropout while fine-tuning")
    p.add_argument("--lr", type=float, default=8e-4, help="AdamW learning rate")
    p.add_argument("--weight-decay", type=float, default=0.1, help="AdamW weight decay")
    p.add_argument("--schedule", default="cosine", choices=["constant", "cosine"],
                   help="learning rate: linear warm-up then cosine decay to 0, or constant (the book)")
    p.add_argument("--warmup-steps", type=int, default=20, help="warm-up steps for --schedule cosine")
    p.add_argument("--prefix-weight", type=float, default=1.0,
                   help="also train on every prefix of each message, with this weight (0: only whole messages, "
                        "the book's loss; see classify/train.py batch_loss and the docstring above)")
    p.add_argument("--grad-clip", type=float, default=None, help="clip the gradient norm (default: no clipping, the book)")
    p.add_argument("--epochs", type=int, default=3, help="passes over the 1,045 training messages")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many optimizer steps")
    p.add_argument("--batch-size", type=int, default=8, help="examples per optimizer step (over all processes)")
    p.add_argument("--grad-accum", type=int, default=1,
                   help="gradient accumulation: cut every batch into this many micro-batches that go forward and "
                        "backward one at a time (same step, less memory: --batch-size 64 --grad-accum 8 needs the "
                        "memory of 8)")
    p.add_argument("--eval-every", type=int, default=50, help="evaluate on the validation set every N steps (and each epoch)")
    p.add_argument("--no-trim", action="store_true",
                   help="keep the padding columns of each batch (the book's fixed width; same result, slower)")
    p.add_argument("--seed", type=int, default=123, help="head and LoRA init, data order, dropout; a random base too")
    p.add_argument("--data", default=str(SMS_SPAM_FILE), help="the SMSSpamCollection file")
    add_device_argument(p)
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (default on CUDA)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--out", default=None, help="output folder (default: runs/spam-<method>)")
    p.add_argument("--result-json", default=None, help="also write the result summary here (compare_finetuning.py uses it)")
    p.add_argument("--probe", nargs="*", default=PROBES, metavar="TEXT",
                   help="texts to classify at the end; their p(spam) is printed and recorded (none: --probe with no text)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--quick", action="store_true", help=f"smoke test: {QUICK}")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.quick:
        parser.set_defaults(**QUICK)
        args = parser.parse_args(argv)
    if args.out is None:
        args.out = str(ROOT / "runs" / f"spam-{args.method}")
    if not 1 <= args.grad_accum <= args.batch_size:
        parser.error(f"--grad-accum must be between 1 and --batch-size ({args.batch_size}), got {args.grad_accum}")
    return args


def peak_memory_mib(device: torch.device) -> dict:
    """Peak resident memory of this process so far (MiB) and, on CUDA, peak allocated GPU memory."""
    rss_mib = None
    try:  # Linux: this process's own high-water mark (ru_maxrss is inherited across fork + exec)
        with open("/proc/self/status") as f:
            rss_mib = next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        pass
    if rss_mib is None:
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
        rss_mib = rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024
    out = {"peak_rss_mib": round(rss_mib, 1)}
    if device.type == "cuda":
        out["cuda_max_allocated_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return out


def cosine_schedule(lr: float, warmup: int, total: int):
    import math

    def schedule(step: int) -> float:
        if step < warmup:
            return lr * (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.5 * lr * (1 + math.cos(math.pi * progress))
    return schedule


def build_classifier(args, device: torch.device):
    """The base model with a 2-class head, prepared for args.method. Returns (model, lora_config or None)."""
    model = load_base(args.model, attention=args.attention, drop_rate=args.drop_rate, seed=args.seed,
                      download=args.download)
    torch.manual_seed(args.seed)  # the new head's initial weights (and LoRA's A matrices below)
    add_classification_head(model, num_classes=len(LABELS))  # unties a tied LM head (see classify/model.py)
    lora_cfg = None
    if args.method == "lora":
        lora_cfg = LoraConfig(rank=args.rank, alpha=args.alpha, dropout=args.lora_dropout, targets=tuple(args.targets),
                              scaling=args.scaling, modules_to_save=("out_head",))
        apply_lora(model, lora_cfg)  # freezes the base; LoRA weights + the head's copy are trainable
    else:
        set_trainable(model, args.method)
    return model.to(device), lora_cfg


def save_classifier(model, args, lora_cfg, max_length: int, out: Path) -> list[str]:
    """Write what scripts/classify.py needs; returns the file names written."""
    out.mkdir(parents=True, exist_ok=True)
    if lora_cfg is not None:
        weights = save_adapter(model, out)  # adapter.safetensors + adapter_config.json (with the head)
        written = [weights.name, "adapter_config.json"]
    else:
        from safetensors.torch import save_file

        trained = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}
        with atomic_write(out / WEIGHTS_FILE) as tmp:
            save_file(trained, str(tmp), metadata={"format": FORMAT, "method": args.method})
        written = [WEIGHTS_FILE]
    info = {
        "format": FORMAT,
        "base": args.model,
        "base_kind": describe_base(args.model)["kind"],
        "base_seed": args.seed,  # used only to rebuild a random base
        "attention": args.attention,
        "method": args.method,
        "labels": LABELS,
        "max_length": max_length,
        "weights": written[0],
    }
    with atomic_write(out / CLASSIFIER_FILE) as tmp:
        tmp.write_text(json.dumps(info, indent=2) + "\n")
    return written + [CLASSIFIER_FILE]


def finetune(args, log=print) -> dict:
    """Run one fine-tuning as described by `args` (see build_parser); returns a summary dict."""
    t_start = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    # Under torchrun: join the process group (gloo on CPU, nccl on cuda:LOCAL_RANK). Every rank builds
    # the same loaders with the same seed and keeps its share of each global batch (shard_loader), so
    # N processes take the steps one process would (tests/test_distributed.py); rank 0 logs and saves.
    device = init_distributed(pick_device(args.device))
    if not is_main_process():
        log = lambda *a, **k: None  # noqa: E731
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    model, lora_cfg = build_classifier(args, device)
    context = model.cfg.context_length
    splits = spam_splits(args.data)
    train_set = ClassificationDataset(splits["train"], context_length=context)  # pads to the longest training text
    val_set = ClassificationDataset(splits["val"], max_length=train_set.max_length)
    test_set = ClassificationDataset(splits["test"], max_length=train_set.max_length)
    for name, ds in (("train", train_set), ("validation", val_set), ("test", test_set)):
        log(ds.describe(name))
    trim = not args.no_trim
    train_loader = shard_loader(make_loader(train_set, args.batch_size, shuffle=True, drop_last=True, seed=args.seed,
                                            trim=trim))
    # Evaluation: order does not matter, so batches of similar lengths (little padding), 4x larger.
    eval_batch, sort = 4 * args.batch_size, trim
    val_loader = shard_loader(make_loader(val_set, eval_batch, trim=trim, sort_by_length=sort), even=False)
    test_loader = shard_loader(make_loader(test_set, eval_batch, trim=trim, sort_by_length=sort), even=False)

    total = count_parameters(model)
    trainable = count_parameters(model, trainable_only=True)
    what = (f"LoRA r={args.rank} alpha={args.alpha:g} ({args.scaling}, scale {lora_cfg.scale:g}) on {','.join(args.targets)}"
            if lora_cfg else args.method)
    log(f"base {args.model} ({args.attention} attention) | {what} | trainable {trainable:,} of {total:,} parameters "
        f"({100 * trainable / total:.2f} %) | {device}" + (f" x {get_world_size()} processes" if get_world_size() > 1 else ""))
    model = wrap_model(model, device)  # DistributedDataParallel under torchrun, the model itself otherwise

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
    steps = len(train_loader) * args.epochs if args.max_steps is None else min(args.max_steps, len(train_loader) * args.epochs)
    schedule = cosine_schedule(args.lr, args.warmup_steps, steps) if args.schedule == "cosine" else None

    t_train = time.perf_counter()
    history = train_classifier(model, train_loader, val_loader, optimizer, args.epochs, device,
                               eval_every=args.eval_every, seed=args.seed, grad_clip=args.grad_clip,
                               lr_schedule=schedule, max_steps=args.max_steps, bf16=True if args.bf16 else None,
                               progress=not args.no_progress, grad_accum=args.grad_accum,
                               prefix_weight=args.prefix_weight)
    train_seconds = time.perf_counter() - t_train
    bf16 = True if args.bf16 else None
    final = {
        "train": evaluate(model, shard_loader(make_loader(train_set, eval_batch, trim=trim, sort_by_length=sort),
                                              even=False), device, bf16=bf16),
        "val": evaluate(model, val_loader, device, bf16=bf16),
        "test": evaluate(model, test_loader, device, bf16=bf16),
    }
    finetune_seconds = time.perf_counter() - t_train  # training + the three final evaluations
    log(f"accuracy: train {100 * final['train']['accuracy']:.2f} % | validation {100 * final['val']['accuracy']:.2f} % "
        f"| test {100 * final['test']['accuracy']:.2f} %  ({train_seconds:.0f} s training, "
        f"{time.perf_counter() - t_start:.0f} s in all)")

    model = unwrap(model)  # saved names without DDP's "module." prefix
    if not is_main_process():
        return {"test_accuracy": final["test"]["accuracy"]}  # rank 0 has the same numbers and writes the files
    probes = {}
    if args.probe:
        for text, (probs, truncated, _) in zip(args.probe, predict_texts(model, args.probe, train_set.max_length)):
            probes[text] = float(probs[LABELS.index("spam")])
            log(f"p(spam) {probes[text]:.3f}{' (truncated)' if truncated else ''}: {text}")
    out = Path(args.out)
    model.eval()
    files = save_classifier(model.cpu(), args, lora_cfg, train_set.max_length, out)
    plot_history(history, out / "curves.png", title=f"spam classifier: {what} on {args.model}")
    result = {
        "method": args.method,
        "base": args.model,
        "attention": args.attention,
        "lora": lora_cfg.to_dict() if lora_cfg else None,
        "lr": args.lr, "epochs": args.epochs, "batch_size": args.batch_size, "grad_accum": args.grad_accum,
        "prefix_weight": args.prefix_weight,
        "seed": args.seed,
        "schedule": args.schedule, "warmup_steps": args.warmup_steps, "drop_rate": args.drop_rate,
        "steps": history.step[-1],
        "trainable_params": trainable,
        "total_params": total,
        "train_accuracy": final["train"]["accuracy"],
        "val_accuracy": final["val"]["accuracy"],
        "test_accuracy": final["test"]["accuracy"],
        "train_loss": final["train"]["loss"], "val_loss": final["val"]["loss"], "test_loss": final["test"]["loss"],
        "truncated": {"train": train_set.num_truncated, "val": val_set.num_truncated, "test": test_set.num_truncated},
        "max_length": train_set.max_length,
        "probes_p_spam": probes,
        "train_seconds": round(train_seconds, 2),
        "finetune_seconds": round(finetune_seconds, 2),
        "total_seconds": round(time.perf_counter() - t_start, 2),
        **peak_memory_mib(device),
        "device": str(device), "threads": torch.get_num_threads(), "torch": torch.__version__,
        # Other processes share the CPU: the 1-minute load average says how quiet the machine was.
        "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "command": (f"torchrun --nproc_per_node={get_world_size()} " if get_world_size() > 1 else "python ")
        + "scripts/finetune_spam.py " + " ".join(getattr(args, "argv", None) or []),
        "history": history.to_dict(),
    }
    with atomic_write(out / "history.json") as tmp:
        tmp.write_text(json.dumps(result, indent=1) + "\n")
    log(f"saved {', '.join(files)}, history.json, curves.png in {out}")
    if args.result_json:
        with atomic_write(args.result_json) as tmp:
            tmp.write_text(json.dumps(result) + "\n")
    return result


def main(argv=None) -> dict:
    args = parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return finetune(args)
    finally:
        cleanup()


if __name__ == "__main__":
    main()
