"""Chapter 3 script: the GPT model (notebooks/03_gpt_model.ipynb) from the command line.

    python scripts/ch03_gpt_model.py                                  # GPT-2 small: tables, untrained generation
    python scripts/ch03_gpt_model.py --preset gpt2-xl --no-generate   # count any preset (meta device: no memory)
    python scripts/ch03_gpt_model.py --model data/gpt-mini            # generate with the shipped pre-trained model
    python scripts/ch03_gpt_model.py --quick                          # gpt-tiny (tests, CI)

What it does, in order:
 1. Builds --preset on the meta device (shapes only, so even gpt2-xl costs no memory) and prints the
    per-module parameter table (gpt.params.parameter_table), the whole model and one block.
 2. The weight-tying story for GPT-2 small: 163,009,536 parameters with a separate output head (the
    book's GPTConfig), 124,412,160 when out_head shares tok_emb's weight (50,257 x 768 fewer), 124,439,808
    as released (plus the query/key/value biases). Checked on real tensors with data_ptr(), not assumed.
 3. Generates from an untrained model of --preset (random tokens: it has learned nothing) or from
    --model (e.g. the shipped data/gpt-mini), greedy and with temperature + top-k sampling.
 4. Plots where the parameters are (embeddings, attention, feed-forward, layer norms, output head) for
    --preset (--out/03_parameters_by_module.png).

Counting uses the meta device whatever --device says (shapes only, no memory, no arithmetic); the
generation runs on --device (auto: CUDA, then Apple MPS, then CPU). The untrained model's weights are
drawn on the CPU and then moved, so they are the same on every device. The greedy text is the same
too unless two candidates' logits are within float rounding of each other; the sampled text draws from
a random generator on the device, so it differs from device to device.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from common.cli import ArgumentParser, parse_with_quick, run_main
from common.files import atomic_write
from gpt.config import GPT2_CHECKPOINT_SETTINGS, PRESETS, GPTConfig
from gpt.device import add_device_argument, pick_device
from gpt.generate import generate_text
from gpt.model import GPTModel
from gpt.params import count_parameters, parameter_table, tied_parameters
from gpt.pretrained import load_base
from plots.figures import new_figure, save_figure

ROOT = Path(__file__).resolve().parent.parent

QUICK = dict(preset="gpt-tiny", max_new_tokens=5)
KINDS = ("embeddings", "attention", "feed-forward", "layer norms", "output head")


def meta_model(cfg: GPTConfig) -> GPTModel:
    """A GPTModel with shapes but no storage: counting parameters of any size for free."""
    with torch.device("meta"):
        return GPTModel(cfg)


def parameters_by_kind(model: torch.nn.Module) -> dict[str, int]:
    """Parameters per kind of module; a tied output head is counted once, with the embeddings."""
    counts = dict.fromkeys(KINDS, 0)
    for name, p in model.named_parameters():  # tied weights appear once, under their first name
        kind = ("embeddings" if name.startswith(("tok_emb", "pos_emb")) else
                "attention" if ".att." in name else
                "feed-forward" if ".ff." in name else
                "layer norms" if "norm" in name else
                "output head")
        counts[kind] += p.numel()
    return counts


def tying_numbers(seed: int) -> dict[str, int]:
    """GPT-2 small untied / tied / released, and the tie checked on real tensors of a small model."""
    counts = {
        "untied, no qkv bias (book)": count_parameters(meta_model(GPTConfig())),
        "tied, no qkv bias": count_parameters(meta_model(GPTConfig(tie_weights=True))),
        "tied + qkv bias (released)": count_parameters(meta_model(GPTConfig(**GPT2_CHECKPOINT_SETTINGS))),
    }
    # Meta tensors have no storage, so the sharing itself is checked on a real (tiny) model.
    torch.manual_seed(seed)
    tiny = GPTModel(GPTConfig.from_preset("gpt-tiny"))
    if tiny.out_head.weight.data_ptr() != tiny.tok_emb.weight.data_ptr():
        raise AssertionError("tie_weights=True should make out_head.weight and tok_emb.weight one tensor")
    return counts


def plot_by_kind(by_kind: dict[str, int], preset: str, path: Path) -> Path:
    total = sum(by_kind.values())
    kinds = [k for k in KINDS if by_kind[k] > 0]
    fig, ax = new_figure(figsize=(6.5, 3.2), dpi=100)
    bars = ax.barh(kinds, [by_kind[k] / 1e6 for k in kinds],
                   color=["tab:gray", "tab:blue", "tab:orange", "tab:green", "tab:purple"][:len(kinds)])
    for bar, k in zip(bars, kinds):
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2,
                f" {by_kind[k]:,} ({100 * by_kind[k] / total:.1f} %)", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.45 * max(by_kind.values()) / 1e6)
    ax.set_xlabel("parameters (millions)")
    ax.set_title(f"{preset}: {total:,} parameters by module", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)
    return path


def build_parser() -> ArgumentParser:
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="gpt2-small", choices=sorted(PRESETS), help="model size to count")
    p.add_argument("--released", action="store_true",
                   help="count --preset as OpenAI released it (qkv bias, tied head) instead of the book's config")
    p.add_argument("--tie-weights", action="store_true", help="share out_head with tok_emb in --preset")
    p.add_argument("--model", default=None,
                   help="generate with this model (data/gpt-mini, gpt2-small, ...); default: an untrained --preset")
    p.add_argument("--prompt", default="Every effort moves you")
    p.add_argument("--max-new-tokens", type=int, default=15)
    p.add_argument("--temperature", type=float, default=1.0, help="for the sampled generation")
    p.add_argument("--top-k", type=int, default=50, help="for the sampled generation")
    p.add_argument("--no-generate", action="store_true", help="only count (no model is built in memory)")
    p.add_argument("--seed", type=int, default=123, help="weights of an untrained model and the sampling")
    p.add_argument("--out", default=str(ROOT / "runs" / "ch03"), help="folder for the PNG and results.json")
    add_device_argument(p, note="Used for the generation only: counting always runs on the meta device")
    p.add_argument("--quick", action="store_true", help=f"smoke test: {QUICK}")
    return p


def main(argv=None) -> dict:
    parser = build_parser()
    args = parse_with_quick(parser, QUICK, argv)
    if args.max_new_tokens < 0:
        raise ValueError(f"--max-new-tokens must be >= 0, got {args.max_new_tokens}")
    device = pick_device(args.device)  # checked first, even with --no-generate: a wrong device is an error
    overrides = dict(GPT2_CHECKPOINT_SETTINGS) if args.released else {}
    if args.tie_weights:
        overrides["tie_weights"] = True
    cfg = GPTConfig.from_preset(args.preset, **overrides)
    model = meta_model(cfg)
    total = count_parameters(model)
    print(f"{args.preset} ({'released' if args.released else 'book'} config: qkv_bias={cfg.qkv_bias}, "
          f"tie_weights={cfg.tie_weights}): {total:,} parameters")
    print(parameter_table(model, depth=1))
    print()
    print(parameter_table(model.trf_blocks[0], depth=2))
    print()

    tying = tying_numbers(args.seed)
    V, d = GPTConfig().vocab_size, GPTConfig().emb_dim
    print("GPT-2 small and weight tying:")
    for name, n in tying.items():
        print(f"  {name:28} {n:>13,}")
    print(f"  tying saves the {V:,} x {d} output head = {V * d:,}; the released checkpoint adds 12 x 3 x {d} "
          f"= {12 * 3 * d:,} qkv biases")

    by_kind = parameters_by_kind(model)
    png = plot_by_kind(by_kind, args.preset, Path(args.out) / "03_parameters_by_module.png")
    print("by module: " + ", ".join(f"{k} {v:,}" for k, v in by_kind.items()) + f"\nsaved {png}")

    result = {"preset": args.preset, "config": cfg.to_dict(), "parameters": total, "by_kind": by_kind,
              "gpt2_small_tying": tying, "device": str(device), "figures": [str(png)]}
    if not args.no_generate:
        if args.model is None:
            torch.manual_seed(args.seed)
            gen_model, source = GPTModel(cfg).eval(), f"untrained {args.preset} (seed {args.seed})"
        else:
            gen_model, source = load_base(args.model, drop_rate=0.0).eval(), args.model
        gen_model.to(device)  # built on the CPU (the same weights everywhere), then moved
        print(f"\ngenerating with {source} on {device}: {count_parameters(gen_model):,} parameters, tied: "
              f"{tied_parameters(gen_model) or 'none'}")
        greedy = generate_text(gen_model, args.prompt, max_new_tokens=args.max_new_tokens)
        sampled = generate_text(gen_model, args.prompt, max_new_tokens=args.max_new_tokens,
                                temperature=args.temperature, top_k=args.top_k,
                                generator=torch.Generator(device=device).manual_seed(args.seed))
        print(f"  {'greedy:':22} {greedy!r}")
        print(f"  {f'T={args.temperature:g}, top-{args.top_k}:':22} {sampled!r}")
        result["generation"] = {"model": source, "prompt": args.prompt, "greedy": greedy, "sampled": sampled}

    with atomic_write(Path(args.out) / "results.json") as tmp:
        tmp.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    run_main(main)
