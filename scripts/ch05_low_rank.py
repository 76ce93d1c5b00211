"""Chapter 5 script: the low-rank measurements of notebooks/05_low_rank_math.ipynb, from the command line.

    python scripts/ch05_low_rank.py                # the math in seconds, then gpt-mini fully fine-tuned for 100 steps
                                                   # (150 s on one CPU thread; it prints the notebook's numbers)
    python scripts/ch05_low_rank.py --quick        # a random gpt-tiny for 4 steps (tests, CI)
    python scripts/ch05_low_rank.py --device cuda  # the fine-tune of 5.7 on a GPU

What it measures, section by section of the notebook (figures and results.json go to --out):
 5.1-5.3 rank and the SVD: a 3 x 3 matrix of rank 2 written as B (3 x 2) @ A (2 x 3); the truncated SVD's error
     equals sqrt(sum of the left-out sigma_i^2) (Eckart-Young) and beats a random subspace of the same rank;
     the relative error of the best rank-r approximation of a random and of a rank-8-plus-noise 256 x 256 matrix
     (05_rank_r_error.png).
 5.4 Delta W ~ B A: x W0^T + scale * x A B written out with tensors, and the paper's (W0 + alpha/r B A) x with
     column vectors, against lora.LinearWithLoRA (64 inputs -> 512 outputs, r = 8, a random "trained" B).
 5.5 what it saves: r (d + k) against d k for the seeds' shapes (512 x 64 at r = 8: 4,608 instead of 32,768),
     GPT-2 small with r = 8 on query and value (294,912), gpt-mini with r = 16 on every block linear layer
     (442,368) (05_params_vs_rank.png).
 5.6 the scale: alpha / r, alpha / sqrt(r) (rsLoRA) and alpha (the book's first printing) against r
     (05_scale_vs_rank.png), and ||Delta W||_F after ONE AdamW step (lr 1e-3, alpha = 16) of LoRA on a frozen
     64 -> 512 layer at r = 1, 4, 16, 64 under each scaling (05_first_update_vs_rank.png). What the scale does to
     the spam classifier is chapter 7.4's measurement (scripts/compare_finetuning.py); this script reads it from
     results/spam_comparison.json.
 5.7 is a real update low-rank? gpt-mini's blocks fully fine-tuned (embeddings and the tied output layer frozen,
     no weight decay) for --steps steps on the SMS spam texts with chapter 4's next-token loss (gpt.train.pretrain);
     then the singular values of Delta W = W_finetuned - W_pretrained for every block matrix, against W and a
     random matrix of the same shape: the energy in the top 8 and 16 directions (05_delta_w_singular_values.png).

Devices: the fine-tune of 5.7 runs on --device (auto: CUDA, then Apple MPS, then CPU); everything else, the SVDs
of 5.7 included, runs on the CPU in float32 (small matrices, the same numbers whatever trained the weights).

Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models", arXiv:2106.09685 (section 7 analyses the
rank of Delta W); Eckart & Young 1936; Kalajdzievski 2023, rsLoRA, arXiv:2312.03732.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from classify.data import load_sms_spam
from common.cli import ArgumentParser, parse_with_quick, run_main
from common.files import atomic_write
from gpt import GPTConfig, GPTModel, count_parameters
from gpt.data import TokenWindows, tokenize_documents
from gpt.device import add_device_argument, pick_device
from gpt.pretrained import DEFAULT_BASE, describe_base, load_base
from gpt.train import PretrainConfig, evaluate_lm, pretrain
from lora import (SCALINGS, LinearWithLoRA, LoraConfig, full_parameter_count, lora_parameter_count,
                  lora_trainable_count, reduction, scaling_factor)
from lora.analysis import energy
from plots.figures import new_figure, save_figure

ROOT = Path(__file__).resolve().parent.parent
SPAM_COMPARISON = ROOT / "results" / "spam_comparison.json"

QUICK = dict(model="random:gpt-tiny", steps=4)  # flags given explicitly still win
SEED_EXAMPLES = [(512, 64, 8), (100, 100, 1), (10, 8, 3), (768, 768, 8)]  # (d, k, r): d outputs, k inputs
FIRST_UPDATE_RANKS = (1, 4, 16, 64)
MATRIX_KINDS = ("att.W_query", "att.W_key", "att.W_value", "att.out_proj", "ff.layers.0", "ff.layers.2")
WINDOW = 64  # tokens per training window of 5.7


def _save(fig, path: Path) -> str:
    fig.tight_layout()
    return str(save_figure(fig, path, dpi=100))


def relative_errors(S: torch.Tensor, ranks) -> list[float]:
    """||W - W_r||_F / ||W||_F of the best rank-r approximation for every r, from W's singular values S."""
    return [max(0.0, 1.0 - energy(S, r)) ** 0.5 for r in ranks]  # Eckart-Young; energy(S, 0) = 0


# ----------------------------------------------------------------------------- 5.1-5.3 rank and the SVD

def rank_and_svd(seed: int, out: Path) -> dict:
    M = torch.tensor([[1.0, 2.0, 3.0], [2.0, 4.0, 6.0], [1.0, 0.0, 1.0]])
    A = M[[0, 2]]  # (2, 3): two independent rows
    B = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]])  # (3, 2): how each row of M combines them
    S_M = torch.linalg.svdvals(M)
    result = {"M_rank": int(torch.linalg.matrix_rank(M)), "M_equals_B_at_A": bool(torch.equal(B @ A, M)),
              "M_singular_values": [round(float(s), 6) for s in S_M]}
    print(f"5.1-5.2  M (3 x 3) has rank {result['M_rank']} = B (3 x 2) @ A (2 x 3): {result['M_equals_B_at_A']}; "
          f"singular values {result['M_singular_values']}")

    torch.manual_seed(seed)
    d = k = 256
    matrices = {"random 256 x 256": torch.randn(d, k),
                "rank-8 signal + noise": torch.randn(d, 8) @ torch.randn(8, k) + 2.0 * torch.randn(d, k)}
    structured = matrices["rank-8 signal + noise"]
    U, S, Vh = torch.linalg.svd(structured, full_matrices=False)
    truncated = {}
    for r in (4, 8, 16):
        err = float(torch.linalg.norm(structured - U[:, :r] * S[:r] @ Vh[:r]))  # the truncated SVD's error
        Q, _ = torch.linalg.qr(torch.randn(d, r))  # a random r-dimensional subspace and the best fit inside it
        err_random = float(torch.linalg.norm(structured - Q @ (Q.T @ structured)))
        truncated[r] = {"svd_error": err, "eckart_young": float(S[r:].square().sum().sqrt()),
                        "random_subspace_error": err_random}
        print(f"5.3  r = {r:2}: truncated SVD error {err:7.2f} (sqrt of the left-out sigma^2: "
              f"{truncated[r]['eckart_young']:7.2f}); random rank-{r} subspace {err_random:7.2f}")
    result["truncated_svd"] = truncated

    ranks = list(range(0, k + 1, 4))
    fig, axes = new_figure(1, 2, figsize=(10, 3.6))
    result["relative_error"] = {}
    for name, W in matrices.items():
        S_W = torch.linalg.svdvals(W)
        errors = relative_errors(S_W, ranks)
        axes[0].plot(range(1, len(S_W) + 1), (S_W / S_W[0]).numpy(), label=name)
        axes[1].plot(ranks, errors, label=name)
        result["relative_error"][name] = {r: e for r, e in zip(ranks, errors) if r in (8, 16, 64)}
        print(f"5.3  {name:>22}: relative error at r = 8: {errors[2]:.2f}, r = 16: {errors[4]:.2f}, "
              f"r = 64: {errors[16]:.2f}")
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
    result["figure"] = _save(fig, out / "05_rank_r_error.png")
    return result


# ----------------------------------------------------------------------------- 5.4 the notation

@torch.no_grad()
def notation_check(seed: int, d_out: int = 512, d_in: int = 64, r: int = 8, alpha: float = 16.0) -> dict:
    """lora.LinearWithLoRA against the formula written out: ours with row vectors, the paper's with columns."""
    torch.manual_seed(seed)
    layer = LinearWithLoRA(nn.Linear(d_in, d_out, bias=False), rank=r, alpha=alpha)
    branch = layer.lora["default"]
    branch.lora_B.normal_(std=0.1)  # pretend it was trained (B starts at zero)
    x = torch.randn(5, d_in)  # 5 row vectors
    W0, A, B = layer.linear.weight, branch.lora_A, branch.lora_B  # (d_out, d_in), (d_in, r), (r, d_out)
    inline = x @ W0.T + alpha / r * (x @ A @ B)  # ours: x W0^T + scale x A B
    A_paper, B_paper = A.T, B.T  # (r, k), (d, r)
    paper = ((W0 + alpha / r * B_paper @ A_paper) @ x.T).T  # the paper: h = (W0 + alpha/r B A) x, columns
    y = layer(x)
    delta = alpha / r * B_paper @ A_paper
    result = {"scale": branch.scale, "lora_A_shape": list(A.shape), "lora_B_shape": list(B.shape),
              "inline_vs_layer_max_abs_diff": float((inline - y).abs().max()),
              "paper_vs_layer_max_abs_diff": float((paper - y).abs().max()),
              "delta_w_shape": list(delta.shape), "delta_w_rank": int(torch.linalg.matrix_rank(delta))}
    print(f"5.4  LinearWithLoRA({d_in} -> {d_out}, r = {r}): lora_A {tuple(A.shape)}, lora_B {tuple(B.shape)}, "
          f"scale {branch.scale:g} | x W0^T + scale x A B vs the layer: max |diff| "
          f"{result['inline_vs_layer_max_abs_diff']:.1e} | the paper's (W0 + alpha/r B A) x: "
          f"{result['paper_vs_layer_max_abs_diff']:.1e} | Delta W {tuple(delta.shape)} of rank {result['delta_w_rank']}")
    return result


# ----------------------------------------------------------------------------- 5.5 parameter counts

def parameter_counts(out: Path) -> dict:
    result = {}
    for d, k, r in SEED_EXAMPLES:
        full, lora_n = full_parameter_count(d, k), lora_parameter_count(d, k, r)
        result[f"{d}x{k} r={r}"] = {"full": full, "lora": lora_n, "fewer_percent": round(100 * reduction(d, k, r), 1)}
        print(f"5.5  {d} x {k}, r = {r}: full {full:,} | LoRA {lora_n:,} | {100 * reduction(d, k, r):.1f} % fewer")
    result["gpt2-small r=8 query+value"] = lora_trainable_count(GPTConfig.from_preset("gpt2-small"),
                                                                LoraConfig(rank=8, targets=("query", "value")))
    mini = GPTConfig.from_preset("gpt-mini")
    result["gpt-mini r=16 all-linear"] = lora_trainable_count(mini, LoraConfig(rank=16, targets="all-linear"))
    with torch.device("meta"):  # shapes only: no memory, no time
        result["gpt-mini total"] = count_parameters(GPTModel(mini))
    print(f"5.5  GPT-2 small, r = 8 on query and value: {result['gpt2-small r=8 query+value']:,} | gpt-mini, r = 16 on "
          f"all {6 * mini.n_layers} block linear layers: {result['gpt-mini r=16 all-linear']:,} of "
          f"{result['gpt-mini total']:,} ({100 * result['gpt-mini r=16 all-linear'] / result['gpt-mini total']:.1f} %)")

    d = 768
    rs = list(range(1, d + 1))
    fig, ax = new_figure()
    ax.plot(rs, [lora_parameter_count(d, d, r) for r in rs], label="LoRA: r (d + k)")
    ax.axhline(full_parameter_count(d, d), color="tab:red", ls="--", label="full fine-tuning: d k")
    for r in (1, 8, 16, 64):
        ax.plot(r, lora_parameter_count(d, d, r), "ko", ms=4)
        ax.annotate(f"r={r}: {lora_parameter_count(d, d, r):,}", (r, lora_parameter_count(d, d, r)),
                    textcoords="offset points", xytext=(6, -10), fontsize=8)
    ax.set_ylim(5e2, 3e6)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("rank r")
    ax.set_ylabel("trainable parameters")
    ax.set_title(f"one {d} x {d} weight matrix")
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    result["figure"] = _save(fig, out / "05_params_vs_rank.png")
    return result


# ----------------------------------------------------------------------------- 5.6 the scale

def first_update(seed: int, alpha: float = 16.0, lr: float = 1e-3) -> dict[str, dict[int, float]]:
    """||Delta W||_F after one AdamW step of LoRA on a frozen 64 -> 512 layer, for every scaling and rank.

    The task: 32 random inputs, the target the frozen layer plus a rank-4 change of 20 % of its norm."""
    torch.manual_seed(seed)
    frozen = nn.Linear(64, 512, bias=False)
    target = torch.randn(512, 4) @ torch.randn(4, 64)
    target *= 0.2 * frozen.weight.norm() / target.norm()
    x = torch.randn(32, 64)
    y = x @ (frozen.weight + target).detach().T
    sizes = {}
    for scaling in SCALINGS:
        sizes[scaling] = {}
        for r in FIRST_UPDATE_RANKS:
            torch.manual_seed(seed)  # the same A directions at every scaling
            layer = LinearWithLoRA(frozen, rank=r, alpha=alpha, scaling=scaling)
            branch = layer.lora["default"]
            optimizer = torch.optim.AdamW([branch.lora_A, branch.lora_B], lr=lr, weight_decay=0.0)
            (layer(x) - y).square().mean().backward()
            optimizer.step()
            with torch.no_grad():
                sizes[scaling][r] = float(branch.delta_weight().norm())
    return sizes


def spam_pointer(path: Path = SPAM_COMPARISON) -> dict | None:
    """Chapter 7.4's alpha/r vs alpha runs of the spam classifier, as scripts/compare_finetuning.py saved them."""
    if not path.is_file():
        print(f"5.6  chapter 7.4's spam classifier with alpha vs alpha/r: {path} is missing "
              f"(python scripts/compare_finetuning.py writes it)")
        return None
    rows = json.loads(path.read_text())["rows"]
    pick = {s: rows[f"scale-{s}"] for s in ("alpha/r", "alpha") if f"scale-{s}" in rows}
    result = {s: {"test_accuracy": row["test_accuracy"], "test_accuracy_std": row["test_accuracy_std"],
                  "seeds": row["seeds"]} for s, row in pick.items()}
    print("5.6  chapter 7.4 (" + str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path) + "), the spam "
          "classifier: " + "; ".join(f"{s}: test accuracy {100 * v['test_accuracy']:.2f} % (std "
                                     f"{100 * v['test_accuracy_std']:.2f} %, seeds {v['seeds']})" for s, v in result.items()))
    return result


def _by_scaling_vs_rank(ranks: list[int], values: dict[str, list[float]], ylabel: str, title: str, path: Path,
                        **plot_kwargs) -> str:
    """One log-log line per scaling convention against the rank; saved to `path`."""
    fig, ax = new_figure()
    for scaling, style in zip(SCALINGS, ("-", "-.", "--")):
        ax.plot(ranks, values[scaling], style, label=scaling, **plot_kwargs)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.set_xlabel("rank r")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def the_scale(seed: int, out: Path) -> dict:
    rs = list(range(1, 257))
    figures = [_by_scaling_vs_rank(rs, {s: [scaling_factor(16, r, s) for r in rs] for s in SCALINGS},
                                   "scale applied to x A B", "LoRA scaling conventions (alpha = 16)",
                                   out / "05_scale_vs_rank.png")]

    sizes = first_update(seed)
    print("5.6  ||Delta W||_F after one AdamW step (lr 1e-3, alpha = 16), 64 -> 512 layer:\n"
          f"{'scaling':>14} | " + " | ".join(f"r = {r:<3}" for r in FIRST_UPDATE_RANKS))
    for scaling in SCALINGS:
        print(f"{scaling:>14} | " + " | ".join(f"{sizes[scaling][r]:7.4f}" for r in FIRST_UPDATE_RANKS))
    ratio = sizes["alpha"][16] / sizes["alpha/r"][16]
    print(f"5.6  at r = 16, alpha / (alpha/r): {ratio:.1f}x")
    figures.append(_by_scaling_vs_rank(FIRST_UPDATE_RANKS,
                                       {s: [sizes[s][r] for r in FIRST_UPDATE_RANKS] for s in SCALINGS},
                                       "||Delta W||_F after one AdamW step",
                                       "the seed's 64 -> 512 layer, alpha = 16, lr 1e-3",
                                       out / "05_first_update_vs_rank.png", marker="o"))
    return {"scales_at_r16": {s: scaling_factor(16, 16, s) for s in SCALINGS}, "first_update_norm": sizes,
            "alpha_over_alpha_r_at_r16": ratio, "spam_classifier_chapter_7_4": spam_pointer(), "figures": figures}


# ----------------------------------------------------------------------------- 5.7 a real Delta W

def _weight(model, name: str) -> torch.Tensor:
    """A linear layer's weight (d_out, d_in), on the CPU for the analysis."""
    return model.get_submodule(name).weight.detach().float().cpu()


def real_delta_w(args, device: torch.device, out: Path) -> dict:
    spam_texts = [m.text for m in load_sms_spam() if m.label == 1]  # the messages' text; the labels are not used
    cut = int(0.9 * len(spam_texts))
    train = TokenWindows(tokenize_documents(spam_texts[:cut]), WINDOW)
    val = TokenWindows(tokenize_documents(spam_texts[cut:]), WINDOW)
    print(f"5.7  {len(spam_texts)} spam messages: {len(train)} training and {len(val)} validation windows of "
          f"{WINDOW} tokens; fully fine-tuning {args.model}'s blocks for {args.steps} steps on {device}")
    pretrained = load_base(args.model, seed=args.seed).eval()
    model = load_base(args.model, seed=args.seed).to(device)
    model.tok_emb.requires_grad_(False)  # also the output layer (tied): the update of the blocks alone
    model.pos_emb.requires_grad_(False)
    before = evaluate_lm(model, val, 8, device)
    cfg = PretrainConfig(max_steps=args.steps, batch_size=8, lr=1e-4, min_lr=1e-4, warmup_steps=0, weight_decay=0.0,
                         eval_every=max(1, args.steps // 2), eval_batches=8, save_every=args.steps, seed=args.seed)
    t0 = time.perf_counter()
    quiet = contextlib.redirect_stderr(io.StringIO()) if args.no_progress else contextlib.nullcontext()
    with tempfile.TemporaryDirectory() as tmp, quiet:  # pretrain's checkpoint is not kept: Delta W is in memory
        pretrain(model, train, val, cfg, tmp, device=device, resume=False)
    seconds = time.perf_counter() - t0
    after = evaluate_lm(model, val, 8, device)
    print(f"5.7  full fine-tuning: {args.steps} steps in {seconds:.0f} s | validation loss {before:.3f} -> {after:.3f} nats")

    n_layers = pretrained.cfg.n_layers
    torch.manual_seed(args.seed)
    rows, spectra = [], {}
    for i in range(n_layers):
        for kind in MATRIX_KINDS:
            name = f"trf_blocks.{i}.{kind}"
            W = _weight(pretrained, name)
            delta = _weight(model, name) - W
            S = {"delta_w": torch.linalg.svdvals(delta), "w": torch.linalg.svdvals(W),
                 "random": torch.linalg.svdvals(torch.randn_like(W))}
            spectra[name] = S
            rows.append({"name": name, "shape": list(W.shape), "relative_change": float(delta.norm() / W.norm()),
                         **{key: {"energy_top8": energy(s, 8), "energy_top16": energy(s, 16)} for key, s in S.items()}})
    shown = ["trf_blocks.0.att.W_query", f"trf_blocks.{n_layers // 2}.att.W_value",
             f"trf_blocks.{n_layers // 2}.ff.layers.0", f"trf_blocks.{n_layers - 1}.att.out_proj"]
    fig, axes = new_figure(2, 2, figsize=(9, 5.8))
    for ax, name in zip(axes.flat, shown):
        for key, label, style in (("delta_w", "Delta W (full fine-tune)", "-"), ("w", "W (pre-trained)", "--"),
                                  ("random", "random, same shape", ":")):
            S = spectra[name][key]
            ax.plot(range(1, len(S) + 1), (S / S[0]).numpy(), style, label=label)
        ax.axvline(16, color="gray", ls=":", lw=1)
        ax.set_yscale("log")
        ax.set_ylim(1e-4, 1.5)
        ax.set_title(f"{name}  {tuple(_weight(pretrained, name).shape)}", fontsize=9)
        ax.set_xlabel("index i")
        ax.set_ylabel("sigma_i / sigma_1")
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    figure = _save(fig, out / "05_delta_w_singular_values.png")

    def median(values) -> float:
        return float(torch.tensor(values).median())

    medians = {key: {m: median([r[key][m] for r in rows]) for m in ("energy_top8", "energy_top16")}
               for key in ("delta_w", "w", "random")}
    best16 = [max(0.0, 1.0 - r["delta_w"]["energy_top16"]) ** 0.5 for r in rows]  # Eckart-Young
    print(f"5.7  {len(rows)} matrices; ||Delta W|| / ||W||: median {median([r['relative_change'] for r in rows]):.4f}\n"
          f"5.7  energy in the top m singular values (m = 8 | m = 16):\n"
          f"{'matrix':>28} | {'Delta W':>13} | {'W':>13} | {'random':>13}")
    by_name = {r["name"]: r for r in rows}
    for name in shown:
        print(f"{name:>28} | " + " | ".join(f"{by_name[name][key]['energy_top8']:5.2f} | "
                                            f"{by_name[name][key]['energy_top16']:5.2f}" for key in medians))
    print(f"{'all ' + str(len(rows)) + ' matrices, median':>28} | " + " | ".join(
        f"{v['energy_top8']:5.2f} | {v['energy_top16']:5.2f}" for v in medians.values()))
    print(f"5.7  best rank-16 approximation of Delta W, relative error: median {median(best16):.2f}, "
          f"range {min(best16):.2f} to {max(best16):.2f}")
    return {"model": args.model, "steps": args.steps, "device": str(device), "seconds": round(seconds, 1),
            "val_loss_before": before, "val_loss_after": after,
            "median_relative_change": median([r["relative_change"] for r in rows]), "median_energy": medians,
            "best_rank16_relative_error": {"median": median(best16), "min": min(best16), "max": max(best16)},
            "shown": shown, "matrices": rows, "figure": figure}


# ----------------------------------------------------------------------------- command line

def build_parser() -> ArgumentParser:
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=DEFAULT_BASE,
                   help="base of 5.7's full fine-tune: a gpt.checkpoint folder, gpt2-small..., random[:preset]")
    p.add_argument("--steps", type=int, default=100, help="optimizer steps of 5.7's full fine-tune")
    p.add_argument("--seed", type=int, default=123, help="seeds every random matrix and the fine-tune")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (on a CPU shared with other programs, 2 threads can be 10x slower than 1)")
    add_device_argument(p, note="For 5.7's fine-tune; the math and the SVDs run on the CPU")
    p.add_argument("--no-progress", action="store_true", help="no progress bar during the fine-tune")
    p.add_argument("--out", default=str(ROOT / "runs" / "ch05"), help="folder for the PNGs and results.json")
    p.add_argument("--quick", action="store_true", help=f"smoke test: {QUICK}")
    return p


def main(argv=None) -> dict:
    parser = build_parser()
    args = parse_with_quick(parser, QUICK, argv)
    for name in ("steps", "threads"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name} must be positive, got {getattr(args, name)}")
    device = pick_device(args.device)  # before any work: a device that does not exist is a clear error
    describe_base(args.model)  # a missing base is refused before anything is written
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {"command": "python scripts/ch05_low_rank.py " + " ".join(sys.argv[1:] if argv is None else argv),
               "device": str(device), "seed": args.seed,
               "rank_and_svd": rank_and_svd(args.seed, out), "notation": notation_check(args.seed),
               "parameter_counts": parameter_counts(out), "scale": the_scale(args.seed, out),
               "delta_w": real_delta_w(args, device, out)}
    with atomic_write(out / "results.json") as tmp:
        tmp.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote the figures and results.json to {out}")
    return results


if __name__ == "__main__":
    run_main(main)
