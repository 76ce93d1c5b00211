"""Chapter 4 script: pre-train a small GPT on public-domain novels and unlabelled SMS messages.

    python scripts/pretrain.py                      # gpt-mini's stage 1, ~35 min on a 2-core CPU with --bf16
    python scripts/pretrain.py --quick              # a tiny model for a few steps (tests, CI)
    python scripts/pretrain.py --ship data/gpt-mini # also write the shipped checkpoint + manifest
    python scripts/pretrain.py --init data/gpt-mini --corpus sms ... --ship data/gpt-mini
                                                    # continue on the SMS messages alone: gpt-mini's
                                                    # stage 2 (the exact flags: data/gpt-mini/manifest.json)
    torchrun --nproc_per_node=2 scripts/pretrain.py --quick   # data-parallel: 2 processes, same global batch

The device is picked automatically (CUDA, then Apple MPS, then CPU) unless --device names one;
on CUDA the forward pass runs under bf16 autocast. Under torchrun every process takes an equal
share of each global batch (--batch-size), and only rank 0 prints and writes files.

The corpus: the nine Project Gutenberg novels and "The Verdict" in data/pretrain/, and the SMS
messages of data/sms_spam/ that are NOT in the spam classifier's validation or test split
(domain-adaptive pre-training; labels are never used). The last 10 % of every novel and 10 % of
those messages are held out for the validation loss. --corpus sms keeps only the SMS messages,
--corpus novels only the novels.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import torch

from classify.data import sha256_of, unlabelled_sms_for_pretraining
from common.cli import ArgumentParser, UserError, parse_with_quick, run_main
from common.files import atomic_write
from gpt.checkpoint import load_model, save_model
from gpt.config import GPTConfig
from gpt.corpus import CORPORA, build_corpus
from gpt.data import TokenWindows, tokenize_documents
from gpt.device import add_device_argument, pick_device
from gpt.distributed import cleanup, get_world_size, init_distributed, is_main_process
from gpt.generate import generate_text
from gpt.model import GPTModel
from gpt.params import count_parameters
from gpt.train import PretrainConfig, pretrain
from plots.figures import plot_losses

ROOT = Path(__file__).resolve().parent.parent

PROMPTS = ["Every effort moves you", "Congratulations! You have been selected to"]
# --quick: a tiny model on The Verdict for a few steps. Flags given explicitly still win.
QUICK = dict(preset="gpt-tiny", corpus="verdict", max_steps=20, eval_every=10, warmup_steps=5)


def _init_checkpoint(spec: str) -> dict:
    """The checkpoint to continue from: its path, name and, when it has a manifest.json beside it (as a
    shipped folder does), what that manifest says, so the new manifest can record the whole history."""
    path = Path(spec)
    if path.is_dir():
        path = path / "model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"--init {spec}: no checkpoint there (expected a .safetensors file or a folder "
                                f"holding model.safetensors)")
    manifest_path = path.parent / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    previous = {k: manifest[k] for k in ("name", "corpus", "steps", "tokens_seen", "final_val_loss", "wall_time_minutes",
                                         "device", "command", "sha256", "continued_from") if k in manifest}
    previous["sha256"] = sha256_of(path)  # what was actually loaded
    # The commands that made the checkpoint, in order: run them, then this run's, to remake the new one.
    remake = manifest.get("remake") or ([manifest["command"]] if "command" in manifest else [])
    return {"path": path, "name": manifest.get("name", path.parent.name), "tokens_seen": manifest.get("tokens_seen", 0),
            "manifest": previous, "remake": remake}


def main(argv=None):
    p = ArgumentParser(description=__doc__)
    p.add_argument("--preset", default="gpt-mini", help="model size (see gpt/config.py PRESETS)")
    p.add_argument("--init", default=None,
                   help="continue pre-training from this checkpoint (a folder such as data/gpt-mini, or a .safetensors "
                        "file written by gpt.checkpoint.save_model) instead of random weights; --preset is then ignored")
    p.add_argument("--corpus", default="novels+sms", choices=CORPORA,
                   help="training text: novels+sms (gpt-mini's stage 1), sms (its stage 2, with --init), novels, "
                        "or The Verdict alone (--quick)")
    p.add_argument("--sms-repeat", type=int, default=4, help="how often the SMS training messages are repeated")
    p.add_argument("--max-steps", type=int, default=None, help="optimizer steps (default: one pass over the corpus)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per step (same result, less memory)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--min-lr", type=float, default=1e-4)
    p.add_argument("--warmup-steps", type=int, default=50)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--save-every", type=int, default=None, help="steps between resumable checkpoints (default: --eval-every)")
    p.add_argument("--drop-rate", type=float, default=None, help="dropout (default: the preset's)")
    p.add_argument("--seed", type=int, default=123)
    add_device_argument(p)
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (default on CUDA; on CPUs with AVX512-BF16 it is ~1.7x faster)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--out", default=str(ROOT / "runs" / "pretrain"), help="run folder: resumable state, final model, plot")
    p.add_argument("--no-resume", action="store_true")
    p.add_argument("--ship", default=None, help="also write a float16 checkpoint + manifest.json + loss plot here")
    p.add_argument("--quick", action="store_true", help="tiny model, The Verdict, 20 steps: a smoke test (flags given explicitly win)")
    args = parse_with_quick(p, QUICK, argv)
    init = check_args(args)  # every argument, before any data is read or model built
    if args.threads:
        torch.set_num_threads(args.threads)
    device = init_distributed(pick_device(args.device))  # under torchrun: join the group (cuda:LOCAL_RANK on GPUs)
    try:
        return _run(args, argv, device, init)
    finally:
        cleanup()


def check_args(args) -> dict | None:
    """Refuse a bad argument with one message naming the flag, before anything is loaded or written.
    Returns what --init names (see _init_checkpoint), or None."""
    for flag in ("max_steps", "batch_size", "grad_accum", "eval_every", "save_every", "sms_repeat", "threads"):
        value = getattr(args, flag)
        if value is not None and value < 1:  # None: the default (one pass, --eval-every, torch's threads)
            raise UserError(f"--{flag.replace('_', '-')} must be at least 1, got {value}"
                            + ("; leave it out for one pass over the corpus" if flag == "max_steps" else ""))
    if args.warmup_steps < 0:
        raise UserError(f"--warmup-steps must be 0 or more, got {args.warmup_steps}")
    if not (math.isfinite(args.lr) and args.lr > 0):
        raise UserError(f"--lr must be a number > 0, got {args.lr}")
    if not (math.isfinite(args.min_lr) and args.min_lr >= 0):
        raise UserError(f"--min-lr must be a number >= 0, got {args.min_lr}")
    if args.drop_rate is not None and not 0 <= args.drop_rate < 1:
        raise UserError(f"--drop-rate must be in [0, 1), got {args.drop_rate}")
    for flag in ("out", "ship"):
        folder = getattr(args, flag)
        if folder is not None and Path(folder).exists() and not Path(folder).is_dir():
            raise UserError(f"--{flag} {folder} is a file; give a folder (it is created if missing)")
    # The checks that the library makes anyway, made now: a wrong preset, a batch that does not split
    # into --grad-accum micro-batches, an unknown device (each a ValueError naming the problem).
    if args.init is None:
        GPTConfig.from_preset(args.preset)
    PretrainConfig(max_steps=args.max_steps or 1, batch_size=args.batch_size, grad_accum=args.grad_accum, lr=args.lr,
                   min_lr=args.min_lr, warmup_steps=args.warmup_steps, eval_every=args.eval_every,
                   save_every=args.save_every or args.eval_every)
    pick_device(args.device)
    return _init_checkpoint(args.init) if args.init else None


def _run(args, argv, device, init):
    main_process = is_main_process()
    log = print if main_process else (lambda *a, **k: None)  # only rank 0 prints
    torch.manual_seed(args.seed)  # the same initial weights in every process

    overrides = {} if args.drop_rate is None else {"drop_rate": args.drop_rate}
    if init is not None:  # continued pre-training: the checkpoint's config and weights (fp16 ships are upcast)
        model = load_model(init["path"], **overrides)
        cfg, name = model.cfg, init["name"]
    else:
        cfg, name = GPTConfig.from_preset(args.preset, **overrides), args.preset
        model = GPTModel(cfg)
    sms = unlabelled_sms_for_pretraining() if "sms" in args.corpus else None  # never the classifier's val/test
    train_texts, val_texts, described = build_corpus(args.corpus, args.sms_repeat, args.seed, sms=sms)
    window = cfg.context_length
    train_data = TokenWindows(tokenize_documents(train_texts), window)
    val_data = TokenWindows(tokenize_documents(val_texts), window)
    max_steps = args.max_steps if args.max_steps is not None else len(train_data) // args.batch_size  # one pass
    tcfg = PretrainConfig(max_steps=max_steps, batch_size=args.batch_size, grad_accum=args.grad_accum, lr=args.lr,
                          min_lr=args.min_lr, warmup_steps=args.warmup_steps, eval_every=args.eval_every,
                          save_every=args.save_every or args.eval_every, seed=args.seed,
                          bf16=True if args.bf16 else None)
    model = model.to(device)
    world_size = get_world_size()
    log(f"{name}: {count_parameters(model):,} parameters | {len(train_data):,} training windows of "
        f"{window} tokens | {max_steps} steps of {args.batch_size} windows on {device}"
        + (f" x {world_size} processes ({args.batch_size // world_size} windows each)" if world_size > 1 else "")
        + (f" | continuing from {init['path']}" if init else ""))
    # Greedy generation draws no random numbers, so rank 0 doing it alone keeps the ranks in step.
    samples_before = {q: generate_text(model, q, 20) for q in PROMPTS} if main_process else {}
    t0 = time.perf_counter()
    history = pretrain(model, train_data, val_data, tcfg, args.out, device=device, resume=not args.no_resume)
    seconds = time.perf_counter() - t0
    if not main_process:
        return history
    out = Path(args.out)
    plot_losses(history, out / "loss.png", title=f"pre-training {name}")
    samples_after = {q: generate_text(model, q, 30) for q in PROMPTS}
    for q in PROMPTS:
        print(f"\nbefore: {samples_before[q]!r}\nafter:  {samples_after[q]!r}")
    print(f"final train loss {history.train_loss[-1]:.3f} | val loss {history.val_loss[-1]:.3f} | {seconds / 60:.1f} min")

    if args.ship:
        ship = Path(args.ship)
        ckpt = save_model(model.cpu(), ship / "model.safetensors", dtype=torch.float16)
        plot_losses(history, ship / "loss.png", title=f"pre-training {name}")
        command = ((f"torchrun --nproc_per_node={world_size} " if world_size > 1 else "python ")
                   + "scripts/pretrain.py " + " ".join(argv if argv is not None else sys.argv[1:]))
        manifest = {
            "name": name,
            "config": cfg.to_dict(),
            "parameters": count_parameters(model),
            "corpus": described,
            "domain_adaptive_pretraining": "unlabelled SMS messages outside the spam validation/test split"
            if args.corpus in ("novels+sms", "sms") else None,
            "window_tokens": window,
            "steps": max_steps,
            "tokens_seen": history.tokens[-1] + (init["tokens_seen"] if init else 0),
            "final_train_loss": round(history.train_loss[-1], 4),
            "final_val_loss": round(history.val_loss[-1], 4),
            "wall_time_minutes": round(seconds / 60, 1),
            "device": str(device) + (f" ({torch.get_num_threads()} threads)" if device.type == "cpu" else "")
            + (f" x {world_size} processes" if world_size > 1 else ""),
            "weights_dtype": "float16 (upcast to float32 on load)",
            "command": command,
            "remake": (init["remake"] if init else []) + [command],
            "torch": torch.__version__,
            **({"continued_from": init["manifest"]} if init else {}),
            "samples": samples_after,
            "sha256": sha256_of(ckpt),
        }
        with atomic_write(ship / "manifest.json") as tmp:
            tmp.write_text(json.dumps(manifest, indent=2) + "\n")
        print(f"shipped {ckpt} ({ckpt.stat().st_size / 1e6:.1f} MB), sha256 {manifest['sha256']}")
    return history


if __name__ == "__main__":
    run_main(main)
