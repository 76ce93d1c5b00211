"""Chapter 6 script: LoRA layers (notebooks/06_lora_layers.ipynb) from the command line.

    python scripts/ch06_lora_layers.py                                    # GPT-2 small, r=8 on query + value
    python scripts/ch06_lora_layers.py --targets all-linear --rank 16 --head-classes 2   # the spam recipe
    python scripts/ch06_lora_layers.py --preset gpt2-xl --attention fused # any preset, either layout
    python scripts/ch06_lora_layers.py --quick                            # gpt-tiny (tests, CI)

What it does, in order:
 1. Prices LoRA on --preset: the model is built on the meta device (shapes only), LoRA is applied with
    lora.apply_lora and counted with lora.lora_parameter_report (total / trainable / frozen, per module);
    the same number is computed on paper with lora.lora_trainable_count and the two must agree
    (GPT-2 124M, r=8 on query and value: 294,912). --head-classes N first replaces the output head with an
    N-class head, trained in full (modules_to_save), as the spam classifier does.
 2. Merges and unmerges on a real model (--model, default the shipped data/gpt-mini): LoRA with the same
    settings, B filled with random numbers as if trained (a fresh B = 0 would make the check trivial),
    then W + scale * (A B)^T folded into each frozen weight (lora.merge_lora): the logits must not change
    beyond float32 rounding, and lora.unmerge_lora must give the original weights back.
 3. Plots the factor in front of x A B against the rank for alpha/r (LoRA paper, PEFT), alpha/sqrt(r)
    (rsLoRA) and alpha (the book's first printing) at --alpha (--out/06_scale_vs_rank.png): the figure of
    the notebooks' section 5.6 (chapter 6 shows the `scaling=` switch on a layer, section 6.7).

Pricing uses the meta device whatever --device says; the merge check runs on --device (auto: CUDA,
then Apple MPS, then CPU), in float32.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from classify.model import add_classification_head
from common.cli import ArgumentParser, parse_with_quick, run_main
from common.files import atomic_write
from gpt.config import GPT2_CHECKPOINT_SETTINGS, PRESETS, GPTConfig
from gpt.device import add_device_argument, pick_device
from gpt.model import GPTModel
from gpt.pretrained import DEFAULT_BASE, load_base
from lora import (SCALINGS, LoraConfig, apply_lora, is_merged, lora_modules, lora_parameter_report,
                  lora_trainable_count, merge_lora, scaling_factor, unmerge_lora)
from plots.figures import new_figure, save_figure

ROOT = Path(__file__).resolve().parent.parent

QUICK = dict(preset="gpt-tiny", model="random:gpt-tiny")
SCALE_RANKS = [1, 2, 4, 8, 16, 32, 64, 128, 256]


def lora_config(args) -> LoraConfig:
    return LoraConfig(rank=args.rank, alpha=args.alpha, targets=tuple(args.targets), scaling=args.scaling,
                      modules_to_save=("out_head",) if args.head_classes else ())


def price(args) -> dict:
    """LoRA's trainable parameters on --preset: counted on a meta-device model and on paper."""
    overrides = dict(GPT2_CHECKPOINT_SETTINGS) if args.released else {}
    gpt_cfg = GPTConfig.from_preset(args.preset, attention=args.attention, **overrides)
    with torch.device("meta"):  # shapes only: pricing gpt2-xl costs no memory
        model = GPTModel(gpt_cfg)
        if args.head_classes:
            add_classification_head(model, args.head_classes)
    cfg = lora_config(args)
    apply_lora(model, cfg)
    report = lora_parameter_report(model, depth=1)
    on_paper = None
    if all(t in {"query", "key", "value", "out_proj", "ff_in", "ff_out", "ff", "all-linear", "out_head"}
           for t in cfg.targets):  # lora_trainable_count prices aliases only
        on_paper = lora_trainable_count(gpt_cfg, cfg, head_out_features=args.head_classes or None,
                                        head_bias=bool(args.head_classes))
        if on_paper != report["trainable"]:
            raise AssertionError(f"on paper {on_paper:,} != counted {report['trainable']:,} trainable parameters")
    return {"preset": args.preset, "attention": args.attention, "lora": cfg.to_dict(),
            "total": report["total"], "trainable": report["trainable"], "frozen": report["frozen"],
            "lora_params": report["lora"], "modules_to_save": report["modules_to_save"],
            "on_paper": on_paper, "layers": len(lora_modules(model)), "table": report["table"]}


@torch.no_grad()
def merge_check(args, device: torch.device = torch.device("cpu")) -> dict:
    """Merge and unmerge LoRA on a real model on `device`; returns the largest differences seen."""
    model = load_base(args.model, attention=args.attention, drop_rate=0.0, seed=args.seed).to(device).eval()
    torch.manual_seed(args.seed)  # seeds the CPU and every GPU: the batch, LoRA's A and the random B below
    batch = torch.randint(0, model.cfg.vocab_size, (2, min(16, model.cfg.context_length))).to(device)  # (b, T)
    base_logits = model(batch)
    cfg = LoraConfig(rank=args.rank, alpha=args.alpha, targets=tuple(args.targets), scaling=args.scaling)
    apply_lora(model, cfg)  # A and B are created on the device of the layer they wrap
    for name, p in model.named_parameters():  # pretend the adapter was trained: B != 0
        if name.endswith("lora_B"):
            p.normal_(std=args.b_std)
    model.eval()
    weights_before = {n: m.linear.weight.detach().clone() for n, m in lora_modules(model)}
    unmerged = model(batch)  # frozen W plus the LoRA branch
    merge_lora(model)
    assert is_merged(model)
    merged = model(batch)  # W + Delta W, no branch
    unmerge_lora(model)
    restored = max(float((m.linear.weight - weights_before[n]).abs().max()) for n, m in lora_modules(model))
    after_unmerge = model(batch)
    out = {"model": args.model, "device": str(device), "layers": len(weights_before),
           "lora_changes_logits_by": float((unmerged - base_logits).abs().max()),
           "merged_vs_unmerged_max_abs_diff": float((merged - unmerged).abs().max()),
           "unmerged_again_vs_unmerged_max_abs_diff": float((after_unmerge - unmerged).abs().max()),
           "weights_restored_max_abs_diff": restored}
    torch.testing.assert_close(merged, unmerged, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(after_unmerge, unmerged, rtol=1e-4, atol=1e-4)
    return out


def plot_scales(alpha: float, path: Path) -> dict:
    labels = {"alpha/r": "alpha / r (LoRA paper, PEFT)", "alpha/sqrt(r)": "alpha / sqrt(r) (rsLoRA)",
              "alpha": "alpha (book, 1st printing)"}
    scales = {s: [scaling_factor(alpha, r, s) for r in SCALE_RANKS] for s in SCALINGS}
    fig, ax = new_figure(figsize=(6, 3.5), dpi=100)
    for s in SCALINGS:
        ax.loglog(SCALE_RANKS, scales[s], "o-", ms=3, label=labels[s])
    ax.axvline(16, color="gray", lw=0.8, ls=":")
    ax.set_xticks(SCALE_RANKS, [str(r) for r in SCALE_RANKS])
    ax.set_xlabel("rank r")
    ax.set_ylabel("scale (factor in front of x A B)")
    ax.set_title(f"LoRA scale against rank, alpha = {alpha:g}", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    return scales


def build_parser() -> ArgumentParser:
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="gpt2-small", choices=sorted(PRESETS), help="model size to price LoRA on")
    p.add_argument("--released", action="store_true", help="price --preset as released (qkv bias, tied head)")
    p.add_argument("--attention", default="separate", choices=["separate", "fused"],
                   help="separate W_query/W_key/W_value or one fused qkv (LoRA per slice: the same count)")
    p.add_argument("--targets", nargs="+", default=["query", "value"],
                   help="aliases (query key value out_proj ff_in ff_out ff all-linear out_head) or name suffixes")
    p.add_argument("--rank", type=int, default=8, help="LoRA rank r")
    p.add_argument("--alpha", type=float, default=16.0, help="LoRA alpha")
    p.add_argument("--scaling", default="alpha/r", choices=SCALINGS)
    p.add_argument("--head-classes", type=int, default=0,
                   help="replace the output head with an N-class head trained in full (0: keep the LM head)")
    p.add_argument("--model", default=DEFAULT_BASE, help="model for the merge/unmerge check (random[:preset] works too)")
    p.add_argument("--b-std", type=float, default=0.02, help="std of the random 'trained' B for the merge check")
    p.add_argument("--no-merge", action="store_true", help="skip the merge/unmerge check")
    p.add_argument("--seed", type=int, default=123)
    p.add_argument("--out", default=str(ROOT / "runs" / "ch06"), help="folder for the PNG and results.json")
    add_device_argument(p, note="For the merge check; pricing always runs on the meta device")
    p.add_argument("--quick", action="store_true", help=f"smoke test: {QUICK}")
    return p


def main(argv=None) -> dict:
    parser = build_parser()
    args = parse_with_quick(parser, QUICK, argv)
    if args.head_classes < 0 or args.head_classes == 1:
        raise ValueError(f"--head-classes must be 0 (keep the LM head) or >= 2, got {args.head_classes}")
    device = pick_device(args.device)

    priced = price(args)
    print(f"{args.preset} ({args.attention} attention), LoRA r={args.rank} alpha={args.alpha:g} ({args.scaling}) "
          f"on {' '.join(args.targets)}" + (f", new {args.head_classes}-class head trained in full" if args.head_classes else ""))
    print(priced["table"])
    paper = f"; on paper (lora_trainable_count): {priced['on_paper']:,}" if priced["on_paper"] is not None else ""
    print(f"trainable {priced['trainable']:,} of {priced['total']:,} ({100 * priced['trainable'] / priced['total']:.3f} %): "
          f"LoRA {priced['lora_params']:,} in {priced['layers']} layers + modules_to_save {priced['modules_to_save']:,}{paper}")
    result = {"pricing": {k: v for k, v in priced.items() if k != "table"}, "device": str(device)}

    if not args.no_merge:
        m = merge_check(args, device)
        print(f"\nmerge check on {args.model} ({device}), {m['layers']} LoRA layers with a random 'trained' B "
              f"(changes the logits by up to {m['lora_changes_logits_by']:.3f}):")
        print(f"  merged vs unmerged logits:  max |diff| = {m['merged_vs_unmerged_max_abs_diff']:.1e}")
        print(f"  after unmerge_lora: weights max |diff| = {m['weights_restored_max_abs_diff']:.1e}, "
              f"logits max |diff| = {m['unmerged_again_vs_unmerged_max_abs_diff']:.1e}  (float32 rounding)")
        result["merge"] = m

    scales = plot_scales(args.alpha, Path(args.out) / "06_scale_vs_rank.png")
    png = Path(args.out) / "06_scale_vs_rank.png"
    print(f"\nscale at r={args.rank}, alpha={args.alpha:g}: "
          + ", ".join(f"{s} {scaling_factor(args.alpha, args.rank, s):g}" for s in SCALINGS) + f"\nsaved {png}")
    result["scales"] = {"ranks": SCALE_RANKS, **scales}
    result["figures"] = [str(png)]
    with atomic_write(Path(args.out) / "results.json") as tmp:
        tmp.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    run_main(main)
