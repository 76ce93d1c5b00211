"""The main job as a function: fine-tune a GPT spam classifier, evaluate it, save it as one folder.

    from classify.finetune import FinetuneConfig, finetune
    result = finetune(FinetuneConfig(), out="runs/spam-lora")               # the recipe: LoRA on gpt-mini
    result = finetune(FinetuneConfig.quick_run(method="full"), out="runs/quick/spam-full")   # a smoke run

scripts/finetune_spam.py is its command line (one flag per FinetuneConfig field, `finetune_parser`),
scripts/compare_finetuning.py runs it once per row and seed. What happens, in order:
 1. Every setting is checked (FinetuneConfig), then the output folder (classify.saved.run_folder: not a
    file, not another model's folder, not a real run for a smoke run, writable, room on the disk) and
    held, so a second writer is refused; all before any data is read or model built.
 2. The SMS Spam Collection is balanced and split (classify.data.spam_splits: 1,045 / 149 / 300), a batch
    larger than the training set is refused; then the base is loaded (gpt.pretrained) and fingerprinted,
    its head replaced by a 2-class head read at the last real token (classify.model), and LoRA applied
    (lora/) or the layers of --method unfrozen; the texts are tokenised and padded (classify.dataset).
 3. AdamW, a warm-up + cosine schedule (gpt.train.learning_rate) or a constant rate, batches of 8, a few
    epochs (classify.train.train_classifier), data-parallel under torchrun (gpt.distributed).
 4. Train, validation and test accuracy; p(spam) of the probe texts; the classifier, history.json and
    curves.png are written into the held folder, which replaces --out only when everything is in it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import time
import dataclasses
from dataclasses import dataclass, fields
from pathlib import Path

import torch

from classify.data import SMS_SPAM_FILE, SMS_SPAM_LABELS, spam_splits
from classify.dataset import make_loader, split_datasets
from classify.model import TRAINABLE_CHOICES, add_classification_head, predict_texts, set_trainable
from classify.saved import MIN_FREE_BYTES, classifier_info, run_folder, write_classifier
from classify.train import evaluate, train_classifier
from common.files import atomic_write_text
from gpt.device import peak_memory_mib, pick_device, reset_peak_memory
from gpt.distributed import cleanup, get_world_size, init_distributed, is_main_process, shard_loader, unwrap, wrap_model
from gpt.pretrained import DEFAULT_BASE, describe_base, load_base
from gpt.train import learning_rate
from lora.config import SCALINGS, LoraConfig
from plots.figures import plot_history

ROOT = Path(__file__).resolve().parent.parent
METHODS = ("lora", *TRAINABLE_CHOICES)  # lora, full, last-block, head
LABELS = sorted(SMS_SPAM_LABELS, key=SMS_SPAM_LABELS.get)  # class index -> name: ["ham", "spam"]
# Classified at the end of every run, their p(spam) recorded: a short, lower-case prize message (the hard
# case: scripts/finetune_spam.py's docstring) and two messages in the data set's style.
PROBES = ("You won a free cruise, call now",
          "Congratulations! You have won a free cruise. Call now to claim your prize",
          "Are we still on for lunch tomorrow?")
# A smoke run (--quick, tests, CI): a tiny random model and a few steps; the numbers mean nothing.
QUICK = dict(model="random:gpt-tiny", epochs=1, max_steps=6, eval_every=3, batch_size=8)


def default_out(method: str, quick: bool = False) -> Path:
    """Where a run is saved by default: runs/spam-<method>, a smoke run under runs/quick/ (never where a
    real run keeps its results)."""
    return ROOT / "runs" / ("quick" if quick else "") / f"spam-{method}"


@dataclass(frozen=True)
class FinetuneConfig:
    """Every setting of one fine-tuning; the defaults are the project's recipe (scripts/finetune_spam.py
    explains each choice). Checked when made: a ValueError names the setting (as its command-line flag)."""

    model: str = DEFAULT_BASE  # base: checkpoint folder/file, gpt2-small..xl, HF folder, random[:preset]
    download: bool = False  # fetch gpt2-* into the cache if missing
    method: str = "lora"  # lora | full | last-block | head
    attention: str = "separate"  # separate W_query/W_key/W_value or one fused qkv
    rank: int = LoraConfig.rank  # LoRA r, alpha, scaling and dropout: LoraConfig's defaults (the book's 16, 16)
    alpha: float = LoraConfig.alpha
    scaling: str = LoraConfig.scaling  # alpha/r | alpha/sqrt(r) | alpha
    # every linear layer (the book's appendix E); LoraConfig's own default is the LoRA paper's query + value,
    # the smallest sensible set for a library call that names no targets
    targets: tuple[str, ...] = ("all-linear",)
    train_head: bool = True  # LoRA: train the new head too (modules_to_save); False leaves it frozen at its random
    # init, chapter 9's mistake "the new head left frozen" (only the LoRA matrices train)
    lora_dropout: float = LoraConfig.dropout
    drop_rate: float = 0.0  # the base's dropout while fine-tuning
    lr: float = 8e-4
    weight_decay: float = 0.1
    schedule: str = "cosine"  # cosine (after warm-up) | constant (the book)
    warmup_steps: int = 20
    # weight of the loss at every token: 1, the recipe (scripts/finetune_spam.py says why); the library functions
    # (classify.train.batch_loss, train_classifier, classify.tasks.train_on_task) default to 0, the book's loss,
    # so that a call written as the book writes it trains as the book does
    prefix_weight: float = 1.0
    grad_clip: float | None = None  # max gradient norm; None: no clipping (the book)
    epochs: int = 3
    max_steps: int | None = None
    batch_size: int = 8  # examples per optimizer step, over all processes
    grad_accum: int = 1  # micro-batches per batch
    eval_every: int = 50  # validation every N steps (0: only at each epoch's end)
    trim: bool = True  # drop all-padding columns of each batch
    seed: int = 123
    data: str = str(SMS_SPAM_FILE)
    device: str = "auto"
    bf16: bool = False  # bf16 autocast on a CPU (on CUDA it is on when supported)
    threads: int | None = None
    probes: tuple[str, ...] = PROBES
    progress: bool = True
    quick: bool = False  # a smoke run: saved as such, never replaces a real run

    def __post_init__(self):
        object.__setattr__(self, "targets", tuple(self.targets))
        object.__setattr__(self, "probes", tuple(self.probes))

        def bad(name, wanted):
            raise ValueError(f"--{name.replace('_', '-')} must be {wanted}, got {getattr(self, name)!r}")

        def positive_int(name, allow_none=False, minimum=1):
            v = getattr(self, name)
            if v is None and allow_none:
                return
            if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
                bad(name, f"an integer >= {minimum}" + (" (or left out)" if allow_none else ""))

        def number(name, low, high=math.inf, low_open=False, allow_none=False):
            v = getattr(self, name)
            if v is None and allow_none:
                return
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            ok = ok and (v > low if low_open else v >= low) and v < high
            if not ok:
                where = f"{'>' if low_open else '>='} {low:g}" + (f" and < {high:g}" if high < math.inf else "")
                bad(name, f"a finite number {where}" + (" (or left out)" if allow_none else ""))

        if self.method not in METHODS:
            bad("method", f"one of {METHODS}")
        if self.attention not in ("separate", "fused"):
            bad("attention", "separate or fused")
        if self.schedule not in ("constant", "cosine"):
            bad("schedule", "constant or cosine")
        if self.scaling not in SCALINGS:
            bad("scaling", f"one of {SCALINGS}")
        if not isinstance(self.train_head, bool):
            raise ValueError(f"train_head must be True or False, got {self.train_head!r}")
        if not self.train_head and self.method != "lora":
            raise ValueError(f"--frozen-head is for --method lora (its head is in modules_to_save); --method "
                             f"{self.method} trains the head itself, and a frozen one would leave it nothing new")
        for name in ("rank", "epochs", "batch_size", "grad_accum"):
            positive_int(name)
        positive_int("max_steps", allow_none=True)
        positive_int("threads", allow_none=True)
        positive_int("warmup_steps", minimum=0)
        positive_int("eval_every", minimum=0)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            bad("seed", "an integer >= 0")
        number("lr", 0, low_open=True)
        number("alpha", 0)
        if self.alpha == 0:  # the update scale * B A is then zero: the run would train matrices that change nothing
            raise ValueError("--alpha 0 makes the LoRA update (alpha/r) B A zero, so the run would train nothing; "
                             "give a positive --alpha (the recipe: 16)")
        number("weight_decay", 0)
        number("prefix_weight", 0)
        number("lora_dropout", 0, 1)
        number("drop_rate", 0, 1)
        number("grad_clip", 0, low_open=True, allow_none=True)
        if self.grad_accum > self.batch_size:
            raise ValueError(f"--grad-accum must be between 1 and --batch-size ({self.batch_size}), got {self.grad_accum}")
        if not self.targets:
            bad("targets", "at least one module name")
        if any(not str(t).strip() for t in self.probes):
            raise ValueError("--probe: a probe text is empty; there is nothing to classify")

    @classmethod
    def quick_run(cls, **overrides) -> "FinetuneConfig":
        """The smoke run's settings (QUICK, marked quick=True), with any overrides."""
        return cls(**{**QUICK, "quick": True, **overrides})

    def replace(self, **changes) -> "FinetuneConfig":
        """A copy with some settings changed (checked again)."""
        return dataclasses.replace(self, **changes)

    def describe(self, lora_scale: float | None = None) -> str:
        """What is trained, in a few words (the log line, the curves' title)."""
        if self.method != "lora":
            return self.method
        scale = f", scale {lora_scale:g}" if lora_scale is not None else ""
        frozen = "" if self.train_head else ", head frozen"
        return f"LoRA r={self.rank} alpha={self.alpha:g} ({self.scaling}{scale}) on {','.join(self.targets)}{frozen}"


# ----------------------------------------------------------------------------- the command line's flags

def finetune_parser(description: str | None = None) -> argparse.ArgumentParser:
    """The flags of scripts/finetune_spam.py: one per FinetuneConfig field (defaults from it), plus --out,
    --result-json and --quick. compare_finetuning.py parses the flags it passes on with the same parser."""
    from common.cli import ArgumentParser
    from gpt.device import add_device_argument

    d = FinetuneConfig()
    p = ArgumentParser(description=description)
    p.add_argument("--model", default=d.model,
                   help="base model: a gpt.checkpoint folder/file (the shipped data/gpt-mini), gpt2-small..gpt2-xl "
                        "or a Hugging Face GPT-2 folder, or random[:preset] for an untrained base")
    p.add_argument("--download", action="store_true", help="download gpt2-* into the cache if missing (needs internet)")
    p.add_argument("--method", default=d.method, choices=METHODS,
                   help="lora: LoRA + new head; full: every weight; last-block: last block + final_norm + head; head: head only")
    p.add_argument("--attention", default=d.attention, choices=["separate", "fused"],
                   help="separate W_query/W_key/W_value or one fused qkv projection (same function, LoRA per slice)")
    p.add_argument("--rank", type=int, default=d.rank, help="LoRA rank r")
    p.add_argument("--alpha", type=float, default=d.alpha, help="LoRA alpha")
    p.add_argument("--scaling", default=d.scaling, choices=SCALINGS,
                   help="update scale: alpha/r (LoRA paper, PEFT), alpha/sqrt(r) (rsLoRA), alpha (book's 1st printing)")
    p.add_argument("--targets", nargs="+", default=list(d.targets),
                   help="LoRA target modules: aliases (query key value out_proj ff_in ff_out ff all-linear) or name suffixes")
    p.add_argument("--frozen-head", action="store_true",
                   help="LoRA: leave the new 2-class head frozen at its random init (modules_to_save empty): "
                        "chapter 9's mistake, to see what it costs; only the LoRA matrices train")
    p.add_argument("--lora-dropout", type=float, default=d.lora_dropout, help="dropout on the LoRA branch input")
    p.add_argument("--drop-rate", type=float, default=d.drop_rate, help="the base model's dropout while fine-tuning")
    p.add_argument("--lr", type=float, default=d.lr, help="AdamW learning rate")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help="AdamW weight decay")
    p.add_argument("--schedule", default=d.schedule, choices=["constant", "cosine"],
                   help="learning rate: linear warm-up then cosine decay to 0, or constant (the book)")
    p.add_argument("--warmup-steps", type=int, default=d.warmup_steps, help="warm-up steps for --schedule cosine")
    p.add_argument("--prefix-weight", type=float, default=d.prefix_weight,
                   help="also train on every prefix of each message, with this weight (0: only whole messages, "
                        "the book's loss; see classify/train.py batch_loss)")
    p.add_argument("--grad-clip", type=float, default=d.grad_clip,
                   help="clip the gradient norm to this positive number (default: no clipping, the book)")
    p.add_argument("--epochs", type=int, default=d.epochs, help="passes over the 1,045 training messages")
    p.add_argument("--max-steps", type=int, default=d.max_steps, help="stop after this many optimizer steps (>= 1)")
    p.add_argument("--batch-size", type=int, default=d.batch_size,
                   help="examples per optimizer step (over all processes); at most the training set's size")
    p.add_argument("--grad-accum", type=int, default=d.grad_accum,
                   help="gradient accumulation: cut every batch into this many micro-batches that go forward and "
                        "backward one at a time (same step, less memory: --batch-size 64 --grad-accum 8 needs the "
                        "memory of 8)")
    p.add_argument("--eval-every", type=int, default=d.eval_every,
                   help="evaluate on the validation set every N steps (0: only at the end of each epoch)")
    p.add_argument("--no-trim", action="store_true",
                   help="keep the padding columns of each batch (the book's fixed width; same result, slower)")
    p.add_argument("--seed", type=int, default=d.seed, help="head and LoRA init, data order, dropout; a random base too")
    p.add_argument("--data", default=d.data, help="the SMSSpamCollection file (label<TAB>text, UTF-8)")
    add_device_argument(p)
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (default on CUDA)")
    p.add_argument("--threads", type=int, default=d.threads, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--out", default=None,
                   help="output folder (default: runs/spam-<method>; with --quick runs/quick/spam-<method>). It must be "
                        "new, empty or an earlier run's folder, which is replaced whole once the new run is complete; "
                        "a --quick run never replaces a real run's folder")
    p.add_argument("--result-json", default=None, help="also write the result summary here (compare_finetuning.py uses it)")
    p.add_argument("--probe", nargs="*", default=list(d.probes), metavar="TEXT",
                   help="texts to classify at the end; their p(spam) is printed and recorded (none: --probe with no text)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke test (tests, CI): {QUICK}, saved under runs/quick/ and marked as such; flags given "
                        f"explicitly still win")
    return p


def config_from_args(args: argparse.Namespace) -> FinetuneConfig:
    """The FinetuneConfig a parsed command line (finetune_parser) describes."""
    values = vars(args)
    renamed = {"trim": not values.get("no_trim", False), "progress": not values.get("no_progress", False),
               "train_head": not values.get("frozen_head", False),
               "probes": tuple(values.get("probe") or ())}
    return FinetuneConfig(**{f.name: renamed[f.name] if f.name in renamed else values[f.name]
                             for f in fields(FinetuneConfig) if f.name in values or f.name in renamed})


def parse_finetune_args(argv=None, parser: argparse.ArgumentParser | None = None) -> argparse.Namespace:
    """Parse the command line (--quick swaps in QUICK's defaults; explicit flags win) and fill in --out's default."""
    from common.cli import parse_with_quick

    args = parse_with_quick(parser or finetune_parser(), QUICK, argv)
    if args.out is None:
        args.out = str(default_out(args.method, args.quick))
    return args


# ----------------------------------------------------------------------------- the job

def build_classifier(cfg: FinetuneConfig, device="cpu"):
    """The base with a 2-class head, prepared for cfg.method, on `device`.
    Returns (model, LoraConfig or None, fingerprint of the base weights as loaded)."""
    from lora import apply_lora, base_fingerprint

    model = load_base(cfg.model, attention=cfg.attention, drop_rate=cfg.drop_rate, seed=cfg.seed, download=cfg.download)
    fingerprint = base_fingerprint(model)  # saved with the classifier and checked when it is loaded
    torch.manual_seed(cfg.seed)  # the new head's initial weights (and LoRA's A matrices below)
    add_classification_head(model, num_classes=len(LABELS))  # unties a tied LM head (see classify/model.py)
    lora_cfg = None
    if cfg.method == "lora":
        lora_cfg = LoraConfig(rank=cfg.rank, alpha=cfg.alpha, dropout=cfg.lora_dropout, targets=cfg.targets,
                              scaling=cfg.scaling, modules_to_save=("out_head",) if cfg.train_head else ())
        apply_lora(model, lora_cfg)  # freezes the base; LoRA weights + the head's copy are trainable
    else:
        set_trainable(model, cfg.method)
    return model.to(device), lora_cfg, fingerprint


def _bytes_to_write(cfg: FinetuneConfig) -> int:
    """About how much a run writes: a LoRA adapter or a head is small; full and last-block write weights the
    size of the base (float32)."""
    if cfg.method in ("lora", "head"):
        return MIN_FREE_BYTES
    info = describe_base(cfg.model)
    if info["kind"] == "checkpoint":
        return MIN_FREE_BYTES + 2 * Path(info["path"]).stat().st_size  # float16 on disk, float32 saved
    return MIN_FREE_BYTES


def finetune(cfg: FinetuneConfig, out: str | Path | None = None, log=print, result_json: str | Path | None = None,
             command: str | None = None) -> dict:
    """Run one fine-tuning (see the module docstring); returns the summary dict also saved as history.json.

    out: the run folder (default: default_out(cfg.method, cfg.quick)). result_json: also write the summary
    there, after the run folder is in place (it may lie inside it). command: recorded in the summary."""
    t_start = time.perf_counter()
    out = Path(out) if out is not None else default_out(cfg.method, cfg.quick)
    device = pick_device(cfg.device)  # a device that does not exist: refused before anything else
    # Under torchrun only rank 0 writes; RANK is known before the process group is joined.
    writer = os.environ.get("RANK", "0") == "0"
    folder = (run_folder(out, cfg.quick, _bytes_to_write(cfg), default_hint=str(default_out(cfg.method, True)))
              if writer else contextlib.nullcontext(None))
    with folder as tmp:
        # The data before the model: a bad file is refused before anything is built.
        splits = spam_splits(cfg.data)
        if len(splits["train"]) < cfg.batch_size:
            raise ValueError(f"--batch-size {cfg.batch_size} is larger than the {len(splits['train']):,} training "
                             f"messages of {cfg.data}: no batch could be formed; use at most {len(splits['train']):,}")
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        # Under torchrun: join the process group (gloo on CPU, nccl on cuda:LOCAL_RANK). Every rank builds the
        # same loaders with the same seed and keeps its share of each global batch (shard_loader), so N
        # processes take the steps one process would (tests/test_distributed.py); rank 0 logs and saves.
        device = init_distributed(device)
        try:
            result = _train_and_save(cfg, device, splits, tmp, log if is_main_process() else _quiet, t_start, command)
        finally:
            cleanup()
    if tmp is not None:
        log(f"saved {', '.join(result.pop('files'))}, history.json, curves.png in {out}")
        if result_json:
            atomic_write_text(result_json, json.dumps(result) + "\n")
    return result


def _quiet(*args, **kwargs) -> None:
    pass


def _train_and_save(cfg: FinetuneConfig, device, splits, tmp: Path | None, log, t_start: float, command) -> dict:
    reset_peak_memory(device)  # CUDA's peak tensor memory counts from here
    bf16 = True if cfg.bf16 else None  # None: on where supported (CUDA), decided by gpt.device.use_bf16
    model, lora_cfg, fingerprint = build_classifier(cfg, device)
    data = split_datasets(splits, context_length=model.cfg.context_length)  # pads to the longest training text
    for name, ds in (("train", data["train"]), ("validation", data["val"]), ("test", data["test"])):
        log(ds.describe(name))
    train_loader = shard_loader(make_loader(data["train"], cfg.batch_size, shuffle=True, drop_last=True, seed=cfg.seed,
                                            trim=cfg.trim))
    # Evaluation: order does not matter, so batches of similar lengths (little padding), 4x larger.
    eval_batch = 4 * cfg.batch_size

    def eval_loader(split):
        return shard_loader(make_loader(data[split], eval_batch, trim=cfg.trim, sort_by_length=cfg.trim), even=False)

    val_loader = eval_loader("val")
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    what = cfg.describe(lora_cfg.scale if lora_cfg else None)
    world = get_world_size()
    log(f"base {cfg.model} ({cfg.attention} attention) | {what} | trainable {trainable:,} of {total:,} parameters "
        f"({100 * trainable / total:.2f} %) | {device}" + (f" x {world} processes" if world > 1 else ""))
    model = wrap_model(model, device)  # DistributedDataParallel under torchrun, the model itself otherwise

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                                  weight_decay=cfg.weight_decay)
    steps = len(train_loader) * cfg.epochs if cfg.max_steps is None else min(cfg.max_steps, len(train_loader) * cfg.epochs)
    schedule = ((lambda step: learning_rate(step, steps, cfg.lr, cfg.warmup_steps, 0.0)) if cfg.schedule == "cosine"
                else None)
    t_train = time.perf_counter()
    history = train_classifier(model, train_loader, val_loader, optimizer, cfg.epochs, device,
                               eval_every=cfg.eval_every, seed=cfg.seed, grad_clip=cfg.grad_clip,
                               lr_schedule=schedule, max_steps=cfg.max_steps, bf16=bf16, progress=cfg.progress,
                               grad_accum=cfg.grad_accum, prefix_weight=cfg.prefix_weight)
    train_seconds = time.perf_counter() - t_train
    final = {"train": evaluate(model, eval_loader("train"), device, bf16=bf16),
             "val": evaluate(model, val_loader, device, bf16=bf16),
             "test": evaluate(model, eval_loader("test"), device, bf16=bf16)}
    finetune_seconds = time.perf_counter() - t_train  # training + the three final evaluations
    log(f"accuracy: train {100 * final['train']['accuracy']:.2f} % | validation {100 * final['val']['accuracy']:.2f} % "
        f"| test {100 * final['test']['accuracy']:.2f} %  ({train_seconds:.0f} s training, "
        f"{time.perf_counter() - t_start:.0f} s in all)")

    model = unwrap(model)  # saved names without DDP's "module." prefix
    if not is_main_process():
        return {"test_accuracy": final["test"]["accuracy"]}  # rank 0 has the same numbers and writes the files
    max_length = data["train"].max_length
    probes = {}
    if cfg.probes:
        for text, (probs, truncated, _) in zip(cfg.probes, predict_texts(model, list(cfg.probes), max_length)):
            probes[text] = float(probs[LABELS.index("spam")])
            log(f"p(spam) {probes[text]:.3f}{' (truncated)' if truncated else ''}: {text}")
    model.eval()
    info = classifier_info(cfg.model, cfg.seed, cfg.attention, cfg.method, LABELS, max_length, fingerprint, cfg.quick,
                           base_config=model.cfg.to_dict())
    files = write_classifier(tmp, model.cpu(), info)
    plot_history(history, tmp / "curves.png", title=f"spam classifier: {what} on {cfg.model}")
    result = {
        "method": cfg.method, "base": cfg.model, "attention": cfg.attention,
        "lora": lora_cfg.to_dict() if lora_cfg else None, "train_head": cfg.train_head,
        "lr": cfg.lr, "epochs": cfg.epochs, "batch_size": cfg.batch_size, "grad_accum": cfg.grad_accum,
        "prefix_weight": cfg.prefix_weight, "seed": cfg.seed, "schedule": cfg.schedule,
        "warmup_steps": cfg.warmup_steps, "drop_rate": cfg.drop_rate, "quick": cfg.quick,
        "steps": history.step[-1],
        "trainable_params": trainable, "total_params": total,
        "train_accuracy": final["train"]["accuracy"], "val_accuracy": final["val"]["accuracy"],
        "test_accuracy": final["test"]["accuracy"],
        # the last-token cross-entropy (the classifier's prediction) and the same at every token
        "train_loss": final["train"]["loss"], "val_loss": final["val"]["loss"], "test_loss": final["test"]["loss"],
        "train_prefix_loss": final["train"]["prefix_loss"], "val_prefix_loss": final["val"]["prefix_loss"],
        "test_prefix_loss": final["test"]["prefix_loss"],
        "truncated": {s: data[s].num_truncated for s in ("train", "val", "test")},
        "max_length": max_length,
        "probes_p_spam": probes,
        "train_seconds": round(train_seconds, 2),
        "finetune_seconds": round(finetune_seconds, 2),
        "total_seconds": round(time.perf_counter() - t_start, 2),
        **peak_memory_mib(device),
        "device": str(device), "threads": torch.get_num_threads(), "torch": torch.__version__,
        # Other processes share the CPU: the 1-minute load average says how quiet the machine was.
        "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "command": command,
        "history": history.to_dict(),
    }
    atomic_write_text(tmp / "history.json", json.dumps(result, indent=1) + "\n")
    return {**result, "files": files}


__all__ = ["FinetuneConfig", "LABELS", "METHODS", "PROBES", "QUICK", "build_classifier", "config_from_args",
           "default_out", "finetune", "finetune_parser", "parse_finetune_args"]
