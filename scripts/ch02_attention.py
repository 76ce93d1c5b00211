"""Chapter 2 script: attention (notebooks/02_attention.ipynb) from the command line.

    python scripts/ch02_attention.py                                   # the shipped gpt-mini, block 0, head 0
    python scripts/ch02_attention.py --layer 5 --head 3 --text "Call now to claim your prize"
    python scripts/ch02_attention.py --model random:gpt-mini           # the same shape, untrained
    python scripts/ch02_attention.py --quick                           # a random gpt-tiny (tests, CI)

What it does, in order:
 1. Runs a sentence through the model up to block --layer, takes that block's queries and keys
    (gpt.attention's own projections) and draws one head's causal attention weights as a heatmap
    (--out/02_attention_heatmap.png): row i = how token i spreads its attention over tokens 0..i.
 2. Converts the model to one fused qkv projection (gpt.model.convert_attention) and checks that the
    logits are equal up to float32 rounding, and that the fused weight is the three separate weights
    stacked: [W_query; W_key; W_value].
 3. Times block 0's attention module in both layouts on a (batch, tokens, emb_dim) input (a rough CPU
    number; benchmarks/bench_attention.py measures it properly): one (d -> 3d) matmul instead of three
    (d -> d) ones, the same FLOPs.

Everything runs on --device (auto: CUDA, then Apple MPS, then CPU); the numbers come back to the CPU
for printing, plotting and results.json.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from common.cli import ArgumentParser, parse_with_quick, run_main
from common.files import atomic_write
from gpt.attention import attention_weights
from gpt.device import add_device_argument, pick_device, synchronize
from gpt.model import convert_attention
from gpt.pretrained import DEFAULT_BASE, load_base
from gpt.tokenizer import get_tokenizer
from plots.figures import new_figure, save_figure

ROOT = Path(__file__).resolve().parent.parent

QUICK = dict(model="random:gpt-tiny", repeats=3, timing_tokens=32)


def plot_heatmap(weights: torch.Tensor, tokens: list[str], title: str, path: Path) -> Path:
    T = len(tokens)
    size = min(8.0, 2.5 + 0.35 * T)
    fig, ax = new_figure(figsize=(size + 1, size), dpi=100)
    im = ax.imshow(weights.numpy(), cmap="viridis", vmin=0, vmax=1)
    ax.set_xticks(range(T), tokens, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(T), tokens, fontsize=8)
    ax.set_xlabel("key (attended to)")
    ax.set_ylabel("query (attending)")
    if T <= 16:
        for i in range(T):
            for j in range(i + 1):
                ax.text(j, i, f"{weights[i, j]:.2f}", ha="center", va="center", fontsize=6,
                        color="white" if weights[i, j] < 0.5 else "black")
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, shrink=0.8)
    fig.tight_layout()
    save_figure(fig, path)
    return path


@torch.no_grad()
def forward_ms(model, x: torch.Tensor, repeats: int) -> float:
    """Best wall time of model(x) over `repeats` tries, in milliseconds (after one warm-up).
    A GPU runs asynchronously: synchronize() makes the timer wait for the work, not just its launch."""
    model(x)
    best = float("inf")
    for _ in range(repeats):
        synchronize(x.device)
        t0 = time.perf_counter()
        model(x)
        synchronize(x.device)
        best = min(best, time.perf_counter() - t0)
    return 1e3 * best


def build_parser() -> ArgumentParser:
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=DEFAULT_BASE,
                   help="a gpt.checkpoint folder/file (the shipped data/gpt-mini), random[:preset], or gpt2-small..")
    p.add_argument("--text", default="Every effort moves you forward, one small step at a time.",
                   help="the sentence whose attention is drawn")
    p.add_argument("--layer", type=int, default=0, help="transformer block (0 = first)")
    p.add_argument("--head", type=int, default=0, help="attention head within the block")
    p.add_argument("--seed", type=int, default=123, help="weights of a random model; timing input")
    p.add_argument("--repeats", type=int, default=10, help="timed forward passes per layout (best is kept)")
    p.add_argument("--timing-batch", type=int, default=4)
    p.add_argument("--timing-tokens", type=int, default=128, help="tokens per timed sequence (<= context)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--out", default=str(ROOT / "runs" / "ch02"), help="folder for the PNG and results.json")
    add_device_argument(p)
    p.add_argument("--quick", action="store_true", help=f"smoke test: {QUICK}")
    return p


def main(argv=None) -> dict:
    parser = build_parser()
    args = parse_with_quick(parser, QUICK, argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    model = load_base(args.model, attention="separate", drop_rate=0.0, seed=args.seed).to(device).eval()
    cfg = model.cfg
    if not 0 <= args.layer < cfg.n_layers:
        raise ValueError(f"--layer must be in [0, {cfg.n_layers}), got {args.layer}")
    if not 0 <= args.head < cfg.n_heads:
        raise ValueError(f"--head must be in [0, {cfg.n_heads}), got {args.head}")
    tokenizer = get_tokenizer()
    ids = tokenizer.encode(args.text, disallowed_special=())
    if not ids:
        raise ValueError("--text is empty: there is nothing to attend to")
    if len(ids) > cfg.context_length:
        raise ValueError(f"--text has {len(ids)} tokens, the model's context is {cfg.context_length}")
    tokens = [tokenizer.decode([i]) for i in ids]
    print(f"model {args.model}: {cfg.n_layers} blocks x {cfg.n_heads} heads, emb_dim {cfg.emb_dim} | "
          f"{len(ids)} tokens: {tokens} | {device}")

    # 1. One head's attention weights.
    x = torch.tensor([ids], device=device)  # (1, T)
    weights = attention_weights(model, x, args.layer)  # (H, T, T)
    w = weights[args.head].float().cpu()  # (T, T): printed, plotted and saved from the CPU
    row_sums = w.sum(dim=-1)
    above = w.triu(diagonal=1)
    print(f"block {args.layer}, head {args.head}: rows sum to 1 (max error {(row_sums - 1).abs().max():.1e}), "
          f"weights above the diagonal are {above.abs().max():.0f} (causal mask)")
    strongest = [(tokens[i], tokens[int(w[i].argmax())], round(float(w[i].max()), 3)) for i in range(len(ids))]
    print("each token's strongest key: " + ", ".join(f"{q!r}->{k!r} {p:.2f}" for q, k, p in strongest))
    png = plot_heatmap(w, tokens, f"{Path(args.model).name}: block {args.layer}, head {args.head}",
                       Path(args.out) / "02_attention_heatmap.png")
    print(f"saved {png}")

    # 2. Fused qkv = separate W_query, W_key, W_value.
    fused = convert_attention(model, "fused").eval()
    att_s, att_f = model.trf_blocks[0].att, fused.trf_blocks[0].att
    stacked = torch.cat([att_s.W_query.weight, att_s.W_key.weight, att_s.W_value.weight], dim=0)  # (3d, d)
    if not torch.equal(att_f.qkv.weight, stacked):
        raise AssertionError("the fused qkv weight is not [W_query; W_key; W_value]")
    with torch.no_grad():
        logits_s, logits_f = model(x), fused(x)
    max_diff = float((logits_s - logits_f).abs().max())
    torch.testing.assert_close(logits_f, logits_s, rtol=1e-5, atol=1e-5)
    print(f"fused vs separate: qkv.weight {tuple(att_f.qkv.weight.shape)} = [W_query; W_key; W_value]; "
          f"max |logits difference| = {max_diff:.1e} (float32 rounding); same parameter count: "
          f"{sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in fused.parameters())}")

    # 3. A rough timing of the attention module alone (the model's other layers are the same in both).
    T = min(args.timing_tokens, cfg.context_length)
    g = torch.Generator().manual_seed(args.seed)
    hidden = torch.randn(args.timing_batch, T, cfg.emb_dim, generator=g).to(device)  # (b, T, d), drawn on the CPU
    timing = {"separate": forward_ms(att_s, hidden, args.repeats), "fused": forward_ms(att_f, hidden, args.repeats)}
    where = f"{torch.get_num_threads()} thread(s)" if device.type == "cpu" else str(device)
    print(f"block 0 attention, {args.timing_batch} x {T} tokens, {where}, best of "
          f"{args.repeats}: separate {timing['separate']:.1f} ms, fused {timing['fused']:.1f} ms "
          f"(fused/separate {timing['fused'] / timing['separate']:.2f}; a rough number, see benchmarks/)")

    result = {"model": args.model, "layer": args.layer, "head": args.head, "tokens": tokens, "ids": ids,
              "weights": [[round(float(v), 6) for v in row] for row in w],
              "fused_max_abs_diff": max_diff, "timing_ms": timing, "timing_shape": [args.timing_batch, T],
              "device": str(device), "threads": torch.get_num_threads(), "figures": [str(png)]}
    with atomic_write(Path(args.out) / "results.json") as tmp:
        tmp.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    run_main(main)
