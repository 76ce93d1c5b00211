"""Chapter 4 script: pre-train a small GPT on public-domain novels and unlabelled SMS messages.

    python scripts/pretrain.py                      # gpt-mini, ~30 min on a 2-core CPU with --bf16
    python scripts/pretrain.py --quick              # a tiny model for a few steps (tests, CI)
    python scripts/pretrain.py --ship data/gpt-mini # also write the shipped checkpoint + manifest

The corpus: the nine Project Gutenberg novels and "The Verdict" in data/pretrain/, and the SMS
messages of data/sms_spam/ that are NOT in the spam classifier's validation or test split
(domain-adaptive pre-training; labels are never used). The last 10 % of every novel and 10 % of
those messages are held out for the validation loss.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from classify.data import unlabelled_sms_for_pretraining  # noqa: E402
from gpt.checkpoint import save_model  # noqa: E402
from gpt.config import GPTConfig  # noqa: E402
from gpt.data import TokenWindows, tokenize_documents  # noqa: E402
from gpt.device import pick_device  # noqa: E402
from gpt.generate import generate_text  # noqa: E402
from gpt.model import GPTModel  # noqa: E402
from gpt.params import count_parameters  # noqa: E402
from gpt.train import PretrainConfig, plot_losses, pretrain  # noqa: E402

PRETRAIN_DIR = ROOT / "data" / "pretrain"
PROMPTS = ["Every effort moves you", "Congratulations! You have been selected to"]


def build_corpus(corpus: str, sms_repeat: int, seed: int):
    """Return (train_texts, val_texts, description)."""
    novels = sorted(PRETRAIN_DIR.glob("pg*.txt")) + [PRETRAIN_DIR / "the-verdict.txt"]
    if corpus == "verdict":
        novels = [PRETRAIN_DIR / "the-verdict.txt"]
    train, val = [], []
    for path in novels:
        text = path.read_text(encoding="utf-8").replace("\r\n", "\n")
        cut = int(0.9 * len(text))
        train.append(text[:cut])
        val.append(text[cut:])
    described = [p.name for p in novels]
    if corpus == "novels+sms":
        sms = unlabelled_sms_for_pretraining()
        random.Random(seed).shuffle(sms)
        cut = int(0.9 * len(sms))
        train += sms[:cut] * sms_repeat
        val += sms[cut:]
        described.append(f"{len(sms)} SMS messages not in the spam val/test split ({cut} train x{sms_repeat}, "
                          f"{len(sms) - cut} val)")
    return train, val, described


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--preset", default="gpt-mini", help="model size (see gpt/config.py PRESETS)")
    p.add_argument("--corpus", default="novels+sms", choices=["novels+sms", "novels", "verdict"])
    p.add_argument("--sms-repeat", type=int, default=4, help="how often the SMS training messages are repeated")
    p.add_argument("--max-steps", type=int, default=None, help="optimizer steps (default: one pass over the corpus)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--min-lr", type=float, default=1e-4)
    p.add_argument("--warmup-steps", type=int, default=50)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--seed", type=int, default=123)
    p.add_argument("--device", default="auto")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (default on CUDA; on CPUs with AVX512-BF16 it is ~1.7x faster)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--out", default=str(ROOT / "runs" / "pretrain"), help="run folder: resumable state, final model, plot")
    p.add_argument("--no-resume", action="store_true")
    p.add_argument("--ship", default=None, help="also write a float16 checkpoint + manifest.json + loss plot here")
    p.add_argument("--quick", action="store_true", help="tiny model, The Verdict, 20 steps: a smoke test")
    args = p.parse_args(argv)
    if args.quick:
        args.preset, args.corpus, args.max_steps, args.eval_every, args.warmup_steps = "gpt-tiny", "verdict", 20, 10, 5
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    torch.manual_seed(args.seed)

    cfg = GPTConfig.from_preset(args.preset)
    train_texts, val_texts, described = build_corpus(args.corpus, args.sms_repeat, args.seed)
    window = cfg.context_length
    train_data = TokenWindows(tokenize_documents(train_texts), window)
    val_data = TokenWindows(tokenize_documents(val_texts), window)
    max_steps = args.max_steps or len(train_data) // args.batch_size
    tcfg = PretrainConfig(max_steps=max_steps, batch_size=args.batch_size, grad_accum=args.grad_accum, lr=args.lr,
                          min_lr=args.min_lr, warmup_steps=args.warmup_steps, eval_every=args.eval_every,
                          save_every=args.eval_every, seed=args.seed, bf16=True if args.bf16 else None)
    model = GPTModel(cfg).to(device)
    print(f"{args.preset}: {count_parameters(model):,} parameters | {len(train_data):,} training windows of "
          f"{window} tokens | {max_steps} steps of {args.batch_size} windows on {device}")
    samples_before = {q: generate_text(model, q, 20) for q in PROMPTS}
    t0 = time.perf_counter()
    history = pretrain(model, train_data, val_data, tcfg, args.out, device=device, resume=not args.no_resume)
    seconds = time.perf_counter() - t0
    out = Path(args.out)
    plot_losses(history, out / "loss.png", title=f"pre-training {args.preset}")
    samples_after = {q: generate_text(model, q, 30) for q in PROMPTS}
    for q in PROMPTS:
        print(f"\nbefore: {samples_before[q]!r}\nafter:  {samples_after[q]!r}")
    print(f"final train loss {history.train_loss[-1]:.3f} | val loss {history.val_loss[-1]:.3f} | {seconds / 60:.1f} min")

    if args.ship:
        ship = Path(args.ship)
        ckpt = save_model(model.cpu(), ship / "model.safetensors", dtype=torch.float16)
        plot_losses(history, ship / "loss.png", title=f"pre-training {args.preset}")
        manifest = {
            "name": args.preset,
            "config": cfg.to_dict(),
            "parameters": count_parameters(model),
            "corpus": described,
            "domain_adaptive_pretraining": "unlabelled SMS messages outside the spam validation/test split"
            if args.corpus == "novels+sms" else None,
            "window_tokens": window,
            "steps": max_steps,
            "tokens_seen": history.tokens[-1],
            "final_train_loss": round(history.train_loss[-1], 4),
            "final_val_loss": round(history.val_loss[-1], 4),
            "wall_time_minutes": round(seconds / 60, 1),
            "device": str(device) + (f" ({torch.get_num_threads()} threads)" if device.type == "cpu" else ""),
            "weights_dtype": "float16 (upcast to float32 on load)",
            "command": "python scripts/pretrain.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "torch": torch.__version__,
            "samples": samples_after,
            "sha256": hashlib.sha256(ckpt.read_bytes()).hexdigest(),
        }
        (ship / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        print(f"shipped {ckpt} ({ckpt.stat().st_size / 1e6:.1f} MB), sha256 {manifest['sha256']}")
    return history


if __name__ == "__main__":
    main()
