"""Chapter 5 script: the low-rank measurements of notebooks/05_low_rank_math.ipynb, from the command line.

    python scripts/ch05_low_rank.py                  # gpt-mini: the math figures + two LoRA runs + one full fine-tune
    python scripts/ch05_low_rank.py --quick          # a random gpt-tiny for a few steps (tests, CI)
    python scripts/ch05_low_rank.py --skip-training  # only the figures that need no training (seconds)

What it measures, and the PNG each result goes to (in --out):
 1. 05_rank_r_error.png: singular values, and the relative error of the best rank-r approximation
    (truncated SVD; Eckart-Young: sqrt(sum of the left-out sigma_i^2) / ||W||), for a random 256 x 256
    matrix and for a rank-8 signal plus noise.
 2. 05_params_vs_rank.png: trainable parameters r (d + k) against r for one 768 x 768 weight, with full
    fine-tuning (d k) as a line; results.json also has the seeds' examples (512 x 64 at r = 8: 4,608 instead
    of 32,768; 100 x 100 at r = 1: 200 instead of 10,000; 10 x 8 at r = 3: 54 instead of 80).
 3. 05_scale_vs_rank.png: the factor in front of x A B for alpha / r, alpha / sqrt(r) (rsLoRA) and alpha
    (the book's first printing) at alpha = 16.
 4. 05_alpha_scaling_curves.png: LoRA on the spam classifier (r = 16, alpha = 16, AdamW lr 8e-4, every
    linear layer + a new head) with the update scaled by alpha / r and by alpha: loss and validation accuracy.
 5. 05_delta_w_singular_values.png: a FULL fine-tune of the same base on the same task; the singular values
    of Delta W = W_finetuned - W_pretrained for four attention / feed-forward matrices, next to those of W
    and of a random matrix of the same shape, and the energy in the top 8 / 16 singular values of every
    block matrix (results.json). Weight decay is off for this run: AdamW's decay would add a multiple of
    W (full-rank, unrelated to the task) to Delta W.

Devices: the fine-tunes run on --device (auto: CUDA, then Apple MPS, then CPU; bf16 autocast on CUDA,
as in scripts/finetune_spam.py). The math figures (1-3) and the SVDs of step 5 run on the CPU: small
matrices, and the same numbers whatever device trained the weights.

Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models", arXiv:2106.09685 (section 7
analyses the rank of Delta W); Eckart & Young 1936; Kalajdzievski 2023, rsLoRA, arXiv:2312.03732.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from classify.data import spam_splits
from classify.dataset import ClassificationDataset, make_loader
from classify.model import add_classification_head, set_trainable
from classify.train import evaluate, train_classifier
from common.cli import ArgumentParser, parse_with_quick, run_main
from common.files import atomic_write
from gpt.device import add_device_argument, pick_device, use_bf16
from gpt.pretrained import describe_base, load_base
from lora import LoraConfig, apply_lora, full_parameter_count, lora_modules, lora_parameter_count
from lora import scaling_factor
from plots.figures import new_figure, save_figure

ROOT = Path(__file__).resolve().parent.parent

# --quick: a random gpt-tiny and a few steps (flags given explicitly still win).
QUICK = dict(model="random:gpt-tiny", max_steps=6, eval_every=3)
SEED_EXAMPLES = [(512, 64, 8), (100, 100, 1), (10, 8, 3), (768, 768, 8)]  # (d, k, r)
MATRIX_KINDS = ("att.W_query", "att.W_key", "att.W_value", "att.out_proj", "ff.layers.0", "ff.layers.2")


# ----------------------------------------------------------------------------- the math

def rank_r_approximation(W: torch.Tensor, r: int) -> torch.Tensor:
    """The truncated SVD of W (d, k): its r strongest rank-1 pieces, the best rank-r approximation."""
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)
    return U[:, :r] * S[:r] @ Vh[:r]  # (d, r) * (r,) @ (r, k) -> (d, k)


def energy(S: torch.Tensor, m: int) -> float:
    """Fraction of sum(sigma_i^2) held by the m largest singular values S (sorted, descending).
    1 - energy(S, m) is the squared relative error of the best rank-m approximation (Eckart-Young)."""
    S2 = S.double().square()
    return float(S2[:m].sum() / S2.sum())


def relative_errors(W: torch.Tensor, ranks) -> list[float]:
    """||W - W_r||_F / ||W||_F for every r in ranks, from the singular values alone."""
    S = torch.linalg.svdvals(W)
    return [(1.0 - energy(S, r)) ** 0.5 if r > 0 else 1.0 for r in ranks]


def _save(fig, path: Path) -> Path:
    return save_figure(fig, path, dpi=100)


def plot_rank_r_error(out: Path, seed: int) -> dict:
    torch.manual_seed(seed)
    d = k = 256
    matrices = {"random 256 x 256": torch.randn(d, k),
                "rank-8 signal + noise": torch.randn(d, 8) @ torch.randn(8, k) + 2.0 * torch.randn(d, k)}
    ranks = list(range(0, k + 1, 4))
    fig, axes = new_figure(1, 2, figsize=(10, 3.6))
    summary = {}
    for name, W in matrices.items():
        S = torch.linalg.svdvals(W)
        errors = relative_errors(W, ranks)
        axes[0].plot(range(1, len(S) + 1), (S / S[0]).numpy(), label=name)
        axes[1].plot(ranks, errors, label=name)
        summary[name] = {f"r={r}": round(e, 4) for r, e in zip(ranks, errors) if r in (8, 16, 64)}
    axes[0].set_yscale("log")
    axes[0].set_xlabel("index i")
    axes[0].set_ylabel("sigma_i / sigma_1")
    axes[0].set_title("singular values")
    axes[1].axvline(8, color="gray", ls=":")
    axes[1].set_xlabel("rank r of the approximation")
    axes[1].set_ylabel("||W - W_r||_F / ||W||_F")
    axes[1].set_title("error of the best rank-r approximation")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    _save(fig, out / "05_rank_r_error.png")
    return summary


def plot_params_vs_rank(out: Path, d: int = 768) -> dict:
    rs = list(range(1, d + 1))
    fig, ax = new_figure(figsize=(6, 3.5))
    ax.plot(rs, [lora_parameter_count(d, d, r) for r in rs], label="LoRA: r (d + k)")
    ax.axhline(full_parameter_count(d, d), color="tab:red", ls="--", label="full fine-tuning: d k")
    ax.axvline(d * d / (2 * d), color="gray", ls=":", label=f"break-even r = {d // 2}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("rank r")
    ax.set_ylabel("trainable parameters")
    ax.set_title(f"one {d} x {d} weight matrix")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, out / "05_params_vs_rank.png")
    return {f"{dd}x{k} r={r}": {"full": full_parameter_count(dd, k), "lora": lora_parameter_count(dd, k, r)}
            for dd, k, r in SEED_EXAMPLES}


def plot_scale_vs_rank(out: Path, alpha: float) -> None:
    rs = list(range(1, 257))
    fig, ax = new_figure(figsize=(6, 3.5))
    for scaling, style in (("alpha", "--"), ("alpha/sqrt(r)", "-."), ("alpha/r", "-")):
        ax.plot(rs, [scaling_factor(alpha, r, scaling) for r in rs], style, label=f"{scaling} (alpha = {alpha:g})")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.set_xlabel("rank r")
    ax.set_ylabel("scale applied to x A B")
    ax.set_title("LoRA scaling conventions")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, out / "05_scale_vs_rank.png")


# ----------------------------------------------------------------------------- the measurements

class SpamData:
    """The book's balanced spam split as padded token ids (classify/), for a base with this context."""

    def __init__(self, context_length: int):
        splits = spam_splits()
        self.train = ClassificationDataset(splits["train"], context_length=context_length)
        self.val = ClassificationDataset(splits["val"], max_length=self.train.max_length)
        self.test = ClassificationDataset(splits["test"], max_length=self.train.max_length)


def finetune(args, data: SpamData, method: str, scaling: str = "alpha/r", lr: float = 8e-4,
             weight_decay: float = 0.1, epochs: int = 2):
    """The base with a new 2-class head, fine-tuned on the spam data by `method` ("lora": LoRA with
    args.rank / args.alpha / `scaling` on every linear layer, head trained in full; "full": every weight).
    Trains on args.device; returns (model moved back to the CPU, history, test metrics, seconds)."""
    model = load_base(args.model, seed=args.seed)
    torch.manual_seed(args.seed)  # the same head (and LoRA A) initialisation in every run
    add_classification_head(model, 2)
    if method == "lora":
        apply_lora(model, LoraConfig(rank=args.rank, alpha=args.alpha, targets="all-linear", scaling=scaling,
                                     modules_to_save=("out_head",)))
    else:
        set_trainable(model, "full")
    model.to(args.device)  # head and LoRA A drawn on the CPU above: the same initial weights on every device
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay)
    train_loader = make_loader(data.train, 8, shuffle=True, drop_last=True, seed=args.seed)
    val_loader = make_loader(data.val, 8)
    t0 = time.perf_counter()
    bf16 = True if args.bf16 else None  # None: bf16 autocast on CUDA, float32 elsewhere (gpt.device.autocast)
    history = train_classifier(model, train_loader, val_loader, optimizer, epochs, args.device,
                               eval_every=args.eval_every, seed=args.seed, max_steps=args.max_steps, bf16=bf16,
                               progress=not args.no_progress, log=None)
    seconds = time.perf_counter() - t0
    test = evaluate(model, make_loader(data.test, 8), args.device, bf16=bf16)
    return model.cpu(), history, test, seconds


def measure_scaling(args, data: SpamData, out: Path) -> tuple[dict, torch.nn.Module]:
    """LoRA with alpha/r vs alpha (book's first printing), same everything else. Returns (results, alpha/r model)."""
    results, models = {}, {}
    fig, axes = new_figure(1, 2, figsize=(10, 3.6))
    for scaling in ("alpha/r", "alpha"):
        model, h, test, seconds = finetune(args, data, "lora", scaling=scaling, lr=args.lr, epochs=args.epochs)
        scale = scaling_factor(args.alpha, args.rank, scaling)
        label = f"{scaling} (x{scale:g})"
        axes[0].plot(h.examples_seen, h.train_loss, "o-", ms=3, label=label)
        axes[1].plot(h.examples_seen, [100 * a for a in h.val_accuracy], "o-", ms=3, label=label)
        results[scaling] = {"scale": scale, "steps": h.step[-1], "seconds": round(seconds, 1),
                            "train_loss": [round(x, 4) for x in h.train_loss], "val_accuracy": h.val_accuracy,
                            "examples_seen": h.examples_seen, "test_accuracy": test["accuracy"]}
        models[scaling] = model
        print(f"LoRA {scaling:8} (scale {scale:g}): {h.step[-1]} steps in {seconds:.0f} s | final train loss "
              f"{h.train_loss[-1]:.3f} | val acc {100 * h.val_accuracy[-1]:.1f} % | test acc {100 * test['accuracy']:.1f} %")
    axes[0].set_ylabel("training loss (running mean)")
    axes[1].set_ylabel("validation accuracy (%)")
    for ax in axes:
        ax.set_xlabel("training examples seen")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"LoRA r={args.rank}, alpha={args.alpha:g}, lr {args.lr:g} on {args.model}: alpha/r vs alpha",
                 fontsize=10)
    fig.tight_layout()
    _save(fig, out / "05_alpha_scaling_curves.png")
    return results, models["alpha/r"]


def _weight(model, name: str) -> torch.Tensor:
    """A linear layer's weight (d_out, d_in), wherever LoRA may have wrapped it."""
    module = model.get_submodule(name)
    return getattr(module, "linear", module).weight.detach()


def measure_delta_w(args, data: SpamData, out: Path, lora_model=None) -> dict:
    """Full fine-tune, then the singular values of Delta W against W and a random matrix."""
    full_model, h, test, seconds = finetune(args, data, "full", lr=args.full_lr, weight_decay=0.0,
                                            epochs=args.full_epochs)
    print(f"full fine-tuning (lr {args.full_lr:g}, no weight decay): {h.step[-1]} steps in {seconds:.0f} s | "
          f"val acc {100 * h.val_accuracy[-1]:.1f} % | test acc {100 * test['accuracy']:.1f} %")
    pretrained = load_base(args.model, seed=args.seed)
    n_layers = pretrained.cfg.n_layers
    torch.manual_seed(args.seed)
    rows, spectra = [], {}
    for i in range(n_layers):
        for kind in MATRIX_KINDS:
            name = f"trf_blocks.{i}.{kind}"
            W = _weight(pretrained, name)
            delta = _weight(full_model, name) - W
            S = {"delta_w": torch.linalg.svdvals(delta), "w": torch.linalg.svdvals(W),
                 "random": torch.linalg.svdvals(torch.randn_like(W))}
            spectra[name] = S
            rows.append({"name": name, "shape": list(W.shape), "relative_change": float(delta.norm() / W.norm()),
                         **{key: {"energy_top8": energy(s, 8), "energy_top16": energy(s, 16)} for key, s in S.items()}})
    shown = ["trf_blocks.0.att.W_query", f"trf_blocks.{n_layers // 2}.att.W_value",
             f"trf_blocks.{n_layers // 2}.ff.layers.0", f"trf_blocks.{n_layers - 1}.att.out_proj"]
    lora_layers = dict(lora_modules(lora_model)) if lora_model is not None else {}
    fig, axes = new_figure(2, 2, figsize=(10, 6.4))
    for ax, name in zip(axes.flat, shown):
        for key, label, style in (("delta_w", "Delta W (full fine-tune)", "-"), ("w", "W (pre-trained)", "--"),
                                  ("random", "random, same shape", ":")):
            S = spectra[name][key]
            ax.plot(range(1, len(S) + 1), (S / S[0]).numpy(), style, label=label)
        if name in lora_layers:
            S = torch.linalg.svdvals(lora_layers[name].lora["default"].delta_weight().detach())
            ax.plot(range(1, len(S) + 1), (S / S[0]).clamp_min(1e-8).numpy(), lw=1, alpha=0.6,
                    label=f"Delta W of LoRA r={args.rank}")
        ax.axvline(16, color="gray", ls=":", lw=1)
        ax.set_yscale("log")
        ax.set_ylim(1e-4, 1.5)
        ax.set_title(f"{name}  {tuple(_weight(pretrained, name).shape)}", fontsize=9)
        ax.set_xlabel("index i")
        ax.set_ylabel("sigma_i / sigma_1")
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    _save(fig, out / "05_delta_w_singular_values.png")
    medians = {key: {m: float(torch.tensor([r[key][m] for r in rows]).median()) for m in ("energy_top8", "energy_top16")}
               for key in ("delta_w", "w", "random")}
    print("energy in the top 8 | 16 singular values, median over all block matrices: "
          + "; ".join(f"{key} {v['energy_top8']:.2f} | {v['energy_top16']:.2f}" for key, v in medians.items()))
    return {"full_finetune": {"lr": args.full_lr, "weight_decay": 0.0, "epochs": args.full_epochs, "steps": h.step[-1],
                              "seconds": round(seconds, 1), "val_accuracy": h.val_accuracy[-1],
                              "test_accuracy": test["accuracy"]},
            "median_energy": medians, "shown": shown, "matrices": rows}


# ----------------------------------------------------------------------------- command line

def build_parser() -> ArgumentParser:
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="data/gpt-mini", help="base: a gpt.checkpoint folder, gpt2-small..., random[:preset]")
    p.add_argument("--rank", type=int, default=16, help="LoRA rank r of the scaling comparison")
    p.add_argument("--alpha", type=float, default=16.0, help="LoRA alpha of the scaling comparison")
    p.add_argument("--lr", type=float, default=8e-4, help="AdamW learning rate of the LoRA runs")
    p.add_argument("--epochs", type=int, default=2, help="epochs of each LoRA run")
    p.add_argument("--full-lr", type=float, default=1e-4, help="AdamW learning rate of the full fine-tune")
    p.add_argument("--full-epochs", type=int, default=2, help="epochs of the full fine-tune")
    p.add_argument("--max-steps", type=int, default=None, help="stop every run after this many steps")
    p.add_argument("--eval-every", type=int, default=13, help="evaluate on the validation set every N steps")
    p.add_argument("--seed", type=int, default=123)
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (on a CPU shared with other programs, 2 threads can be 10x slower than 1)")
    add_device_argument(p, note="For the fine-tunes; the math figures and the SVDs run on the CPU")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast while fine-tuning (default on CUDA)")
    p.add_argument("--skip-training", action="store_true", help="only the figures that need no training (1-3)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--out", default=str(ROOT / "runs" / "ch05_low_rank"), help="folder for the PNGs and results.json")
    p.add_argument("--quick", action="store_true", help=f"smoke test: {QUICK}")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    parser = build_parser()
    args = parse_with_quick(parser, QUICK, argv)
    for name in ("rank", "epochs", "full_epochs", "eval_every"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.max_steps is not None and args.max_steps <= 0:
        parser.error(f"--max-steps must be positive, got {args.max_steps}")
    for name in ("lr", "full_lr", "alpha"):
        if not getattr(args, name) > 0:
            parser.error(f"--{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.device = pick_device(args.device)  # before any work: a device that does not exist is a clear error
    bf16 = use_bf16(args.device, True if args.bf16 else None)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {"command": "python scripts/ch05_low_rank.py " + " ".join(sys.argv[1:] if argv is None else argv),
               "device": str(args.device), "bf16": bf16,
               "rank_r_error": plot_rank_r_error(out, args.seed), "parameter_counts": plot_params_vs_rank(out)}
    plot_scale_vs_rank(out, args.alpha)
    if not args.skip_training:
        describe_base(args.model)  # a clear FileNotFoundError before any work when the base is missing
        data = SpamData(load_base(args.model, seed=args.seed).cfg.context_length)
        print(f"fine-tuning {args.model} on {args.device}" + (" with bf16 autocast" if bf16 else ""))
        results["scaling_runs"], lora_model = measure_scaling(args, data, out)
        results["delta_w"] = measure_delta_w(args, data, out, lora_model)
    with atomic_write(out / "results.json") as tmp:
        tmp.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote the figures and results.json to {out}")
    return results


if __name__ == "__main__":
    run_main(main)
