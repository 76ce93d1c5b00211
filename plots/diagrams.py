"""Diagrams of the ideas, drawn in code: the LoRA branch, LoRA on a fused qkv projection, adapters on one base.

Each function returns a matplotlib Figure (made with new_figure: no pyplot, no window); save it with
save_figure. The chapters show them where the idea is taught (chapter 6: the LoRA layer and the fused qkv;
chapter 8: adapters). `python -m plots.diagrams FOLDER` writes all three PNGs.

Colours, as in the chapters' other figures: grey = frozen, orange = A (random init), teal = B (zero init).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Polygon, Rectangle

from plots.figures import new_figure, save_figure

FROZEN, A_COLOR, B_COLOR, SUM_COLOR, OFF = "#c8c8c8", "#f4a261", "#2a9d8f", "#ffffff", "#eeeeee"
TEXT = "#222222"


def _arrow(ax, start, end, color=TEXT, style="-|>", lw=1.3, ls="-", rad=0.0):
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle=style, mutation_scale=12, color=color, lw=lw, ls=ls,
                                 shrinkA=0, shrinkB=0, connectionstyle=f"arc3,rad={rad}"))


def _box(ax, x, y, w, h, color, label=None, fontsize=10, ls="-", lw=1.0, round_=True, **text_kw):
    """A box with its lower-left corner at (x, y) and `label` in its middle."""
    style = "round,pad=0,rounding_size=0.12" if round_ else "square,pad=0"
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle=style, facecolor=color, edgecolor=TEXT, lw=lw, ls=ls))
    if label:
        ax.text(x + w / 2, y + h / 2, label, ha="center", va="center", fontsize=fontsize, color=TEXT, **text_kw)


def _trapezoid(ax, x, y_mid, w, h_left, h_right, color, label):
    """A factor drawn as a trapezoid whose heights are its input and output widths (the LoRA paper's picture)."""
    pts = [(x, y_mid - h_left / 2), (x + w, y_mid - h_right / 2), (x + w, y_mid + h_right / 2),
           (x, y_mid + h_left / 2)]
    ax.add_patch(Polygon(pts, closed=True, facecolor=color, edgecolor=TEXT, lw=1.0))
    ax.text(x + w / 2, y_mid, label, ha="center", va="center", fontsize=10, color=TEXT)


def _circle(ax, x, y, label, r=0.32, fontsize=14):
    ax.add_patch(FancyBboxPatch((x - r, y - r), 2 * r, 2 * r, boxstyle=f"circle,pad=0", facecolor=SUM_COLOR,
                                edgecolor=TEXT, lw=1.2))
    ax.text(x, y, label, ha="center", va="center", fontsize=fontsize, color=TEXT)


def _finish(ax, xlim, ylim):
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    ax.set_aspect("equal")
    ax.axis("off")


def lora_branch_diagram():
    """The LoRA layer: x goes through the frozen W and, beside it, through A (d_in -> r) and B (r -> d_out),
    scaled by alpha / r; the two outputs are added: y = x W + (alpha / r) x A B."""
    fig, ax = new_figure(figsize=(9, 4.4), dpi=100)
    y_top, y_bot = 3.2, 0.9  # the frozen path and the LoRA branch
    # input
    ax.text(0.35, 2.05, r"$x$", ha="center", va="center", fontsize=16, color=TEXT)
    ax.text(0.35, 1.6, r"$(\ldots, d_\mathrm{in})$", ha="center", va="center", fontsize=8, color="#555555")
    _arrow(ax, (0.7, 2.2), (1.6, y_top), rad=-0.15)
    _arrow(ax, (0.7, 1.9), (1.6, y_bot), rad=0.15)
    # frozen path
    _box(ax, 1.6, y_top - 0.75, 3.9, 1.5, FROZEN)
    ax.text(3.55, y_top + 0.2, r"$W$  (frozen)", ha="center", va="center", fontsize=12, color=TEXT)
    ax.text(3.55, y_top - 0.3, r"$d_\mathrm{in} \times d_\mathrm{out}$, pre-trained, never updated",
            ha="center", va="center", fontsize=8, color="#444444")
    _arrow(ax, (5.5, y_top), (7.08, y_top))
    ax.text(6.3, y_top + 0.2, r"$xW$", ha="center", va="bottom", fontsize=11, color=TEXT)
    # LoRA branch: A narrows d_in to r, B widens r to d_out
    _trapezoid(ax, 1.6, y_bot, 1.35, 1.3, 0.4, A_COLOR, r"$A$")
    ax.text(2.27, y_bot - 0.85, r"$d_\mathrm{in} \times r$" + "\nrandom init", ha="center", va="top", fontsize=8,
            color="#444444")
    _arrow(ax, (2.95, y_bot), (3.55, y_bot))
    ax.text(3.25, y_bot + 0.12, r"$r$", ha="center", va="bottom", fontsize=9, color="#444444")
    _trapezoid(ax, 3.55, y_bot, 1.35, 0.4, 1.3, B_COLOR, r"$B$")
    ax.text(4.22, y_bot - 0.85, r"$r \times d_\mathrm{out}$" + "\nzero init", ha="center", va="top", fontsize=8,
            color="#444444")
    _arrow(ax, (4.9, y_bot), (5.62, y_bot))
    _box(ax, 5.62, y_bot - 0.32, 0.86, 0.64, "#fff3cd", r"$\times\,\alpha/r$", fontsize=11)
    ax.text(6.05, y_bot - 0.55, "scale", ha="center", va="top", fontsize=8, color="#444444")
    _arrow(ax, (6.48, y_bot), (7.4, y_top - 0.32), rad=0.25)
    ax.text(7.55, 1.35, r"$\frac{\alpha}{r}\,xAB$", ha="left", va="center", fontsize=11, color=TEXT)
    ax.add_patch(Rectangle((1.45, y_bot - 1.75), 5.2, 2.65, facecolor="none", edgecolor=B_COLOR, lw=1.2, ls="--"))
    ax.text(6.6, y_bot - 1.67, r"trainable: $r\,(d_\mathrm{in} + d_\mathrm{out})$ numbers",
            ha="right", va="bottom", fontsize=8, color=B_COLOR)
    # the sum
    _circle(ax, 7.4, y_top, "+")
    _arrow(ax, (7.72, y_top), (8.5, y_top))
    ax.text(8.6, y_top, r"$y$", ha="left", va="center", fontsize=16, color=TEXT)
    ax.text(7.4, 4.55, r"$y = xW + \frac{\alpha}{r}\,xAB$", ha="center", va="center", fontsize=13, color=TEXT)
    ax.text(7.4, 4.05, r"$B = 0$ at the start: $y = xW$ exactly", ha="center", va="center", fontsize=8,
            color="#444444")
    ax.set_title("The LoRA layer: a trainable low-rank branch beside the frozen weight", fontsize=11)
    _finish(ax, (0, 9.2), (-0.95, 4.9))
    fig.tight_layout()
    return fig


def fused_qkv_diagram(enable=(True, False, True)):
    """LoRA on a fused qkv projection: qkv (d -> 3d) gives [q | k | v]; one matmul x [A_q | A_v] gives the codes of
    the enabled slices, and each code times its own B_j is added into its slice only. `enable` = (q, k, v)."""
    names = ("q", "k", "v")
    on = [n for n, e in zip(names, enable) if e]
    fig, ax = new_figure(figsize=(9.2, 4.8), dpi=100)
    # input and the frozen fused projection
    ax.text(0.35, 3.0, r"$x$", ha="center", va="center", fontsize=16, color=TEXT)
    ax.text(0.35, 2.55, r"$(\ldots, d)$", ha="center", va="center", fontsize=8, color="#555555")
    _arrow(ax, (0.7, 3.15), (1.4, 4.0), rad=-0.15)
    _arrow(ax, (0.7, 2.85), (1.4, 1.45), rad=0.15)
    _box(ax, 1.4, 3.4, 2.6, 1.2, FROZEN)
    ax.text(2.7, 4.15, r"qkv  (frozen)", ha="center", va="center", fontsize=12, color=TEXT)
    ax.text(2.7, 3.7, r"$d \times 3d$: one matmul", ha="center", va="center", fontsize=8, color="#444444")
    _arrow(ax, (4.0, 4.0), (4.6, 4.0))
    # the three output slices
    slice_x = {n: 4.6 + 1.35 * i for i, n in enumerate(names)}
    for i, n in enumerate(names):
        _box(ax, slice_x[n], 3.55, 1.2, 0.9, FROZEN if enable[i] else OFF, round_=False)
        ax.text(slice_x[n] + 0.6, 4.0, f"{n}", ha="center", va="center", fontsize=13, color=TEXT)
        ax.text(slice_x[n] + 0.6, 4.62, r"$d$ columns", ha="center", va="bottom", fontsize=7, color="#555555")
    ax.text(slice_x["q"], 4.95, r"output $[\,q \mid k \mid v\,]$: $3d$ wide", ha="left", va="bottom", fontsize=9,
            color=TEXT)
    # one A for every enabled slice
    a_label = r"$A = [" + r" \mid ".join(f"A_{n}" for n in on) + r"]$"
    _trapezoid(ax, 1.4, 1.45, 1.4, 1.3, 0.55, A_COLOR, a_label)
    ax.text(2.1, 0.6, rf"$d \times {len(on)}r$: one matmul" + "\nfor every enabled slice", ha="center", va="top",
            fontsize=8, color="#444444")
    # the codes, one block of r per enabled slice, each to its own B
    ax.text(3.25, 1.45, r"$\times\,\alpha/r$", ha="center", va="center", fontsize=10, color=TEXT)
    for j, n in enumerate(on):
        cy = 1.45 + (0.3 if len(on) > 1 and j == 0 else -0.3 if len(on) > 1 else 0.0)
        _box(ax, 3.7, cy - 0.13, 0.35, 0.26, A_COLOR, round_=False)
        ax.text(3.875, cy, r"$r$", ha="center", va="center", fontsize=7, color=TEXT)
    for n in names:
        i = names.index(n)
        bx = slice_x[n] + 0.15
        if n in on:
            j = on.index(n)
            cy = 1.45 + (0.3 if len(on) > 1 and j == 0 else -0.3 if len(on) > 1 else 0.0)
            _arrow(ax, (4.05, cy), (bx, 1.45 if i == 0 else 1.2), rad=0.0 if i == 0 else 0.15)
            _trapezoid(ax, bx, 1.45, 0.9, 0.35, 0.9, B_COLOR, rf"$B_{n}$")
            ax.text(bx + 0.95, 1.75, r"$r \times d$", ha="left", va="center", fontsize=7, color="#444444")
            _circle(ax, slice_x[n] + 0.6, 2.8, "+", r=0.22, fontsize=11)
            _arrow(ax, (bx + 0.45, 1.9), (slice_x[n] + 0.6, 2.58))
            _arrow(ax, (slice_x[n] + 0.6, 3.02), (slice_x[n] + 0.6, 3.55))
        else:
            _box(ax, bx, 1.55, 0.9, 0.7, "none", ls="--", lw=0.8)
            ax.text(bx + 0.45, 1.9, f"no LoRA\non {n}", ha="center", va="center", fontsize=8, color="#777777")
    ax.add_patch(Rectangle((1.25, 0.05), 8.95 - 1.25, 2.3, facecolor="none", edgecolor=B_COLOR, lw=1.2, ls="--"))
    ax.text(8.8, 0.12, rf"trainable: ${len(on)}\,r\,(d + d)$", ha="right", va="bottom", fontsize=8, color=B_COLOR)
    ax.text(0.2, -0.35, r"Each update $\frac{\alpha}{r}\,xA_jB_j$ goes into its own slice; the $d \times 3d$ update"
            r" (zero on the slices without LoRA) is never built.", ha="left", va="center", fontsize=9, color=TEXT)
    ax.set_title("LoRA on a fused qkv projection: one LoRA per enabled slice", fontsize=11)
    _finish(ax, (0, 9.3), (-0.6, 5.35))
    fig.tight_layout()
    return fig


def adapters_diagram():
    """One frozen base, two adapters: left, swapped in and out by set_active_adapter (each adapter its own
    A, B and head); right, one adapter merged into the weights by merge_lora (W + (alpha / r) A B, no branch)."""
    fig, ax = new_figure(figsize=(10, 4.0), dpi=100)
    grey = "#555555"
    # left: one base, two adapters, one active
    ax.text(4.1, 7.55, "Swapped: one base, two adapters", ha="center", va="center", fontsize=11, color=TEXT)
    _box(ax, 0.3, 3.0, 3.6, 2.2, FROZEN)
    ax.text(2.1, 4.35, "base (frozen)", ha="center", va="center", fontsize=11, color=TEXT)
    ax.text(2.1, 3.65, r"every $W$, shared by all tasks", ha="center", va="center", fontsize=8, color=grey)
    for name, y, active in (("spam", 5.3, True), ("sentiment", 1.6, False)):
        _box(ax, 5.3, y - 0.8, 2.7, 1.6, B_COLOR if active else OFF, ls="-" if active else "--")
        ax.text(6.65, y + 0.25, name, ha="center", va="center", fontsize=11, color="white" if active else TEXT,
                fontweight="bold")
        ax.text(6.65, y - 0.35, r"$A$, $B$ per layer + head", ha="center", va="center", fontsize=7,
                color="white" if active else grey)
        _arrow(ax, (5.3, y), (3.9, 4.1 + (0.6 if active else -0.6)), color=TEXT if active else "#aaaaaa",
               ls="-" if active else "--", style="-|>" if active else "-", lw=1.5 if active else 1.0)
        ax.text(4.5, 5.45 if active else 2.45, "active" if active else "idle", ha="right", va="center",
                fontsize=8, color=B_COLOR if active else "#888888")
    _arrow(ax, (8.2, 5.1), (8.2, 1.8), rad=-0.45, color=A_COLOR, lw=1.6, style="<|-|>")
    ax.text(8.75, 3.45, "set_active_adapter:\ninstant, no weights\ncopied", ha="left", va="center", fontsize=8,
            color=TEXT)
    ax.text(0.3, 1.35, r"$y = xW + \frac{\alpha}{r}\,xA_\mathrm{spam}B_\mathrm{spam}$", ha="left", va="center",
            fontsize=11, color=TEXT)
    ax.text(0.3, 0.6, "the branches run beside every W", ha="left", va="center", fontsize=8, color=grey)
    ax.plot([11.4, 11.4], [0.2, 7.8], color="#bbbbbb", lw=1)
    # right: the spam adapter merged
    ax.text(16.1, 7.55, "Merged: spam folded into the weights", ha="center", va="center", fontsize=11, color=TEXT)
    _box(ax, 12.6, 3.0, 7.0, 2.2, "#a8d5cf")
    ax.text(16.1, 4.45, r"$W' = W + \frac{\alpha}{r}\,A_\mathrm{spam}B_\mathrm{spam}$", ha="center",
            va="center", fontsize=12, color=TEXT)
    ax.text(16.1, 3.5, "merge_lora: one plain matmul per layer", ha="center", va="center",
            fontsize=8, color=grey)
    ax.text(12.0, 4.1, r"$x$", ha="center", va="center", fontsize=14, color=TEXT)
    _arrow(ax, (12.2, 4.1), (12.6, 4.1))
    _arrow(ax, (19.6, 4.1), (20.1, 4.1))
    ax.text(20.2, 4.1, r"$y$", ha="left", va="center", fontsize=14, color=TEXT)
    _box(ax, 14.8, 1.0, 2.6, 1.2, OFF, ls="--")
    ax.text(16.1, 1.6, "sentiment (idle)", ha="center", va="center", fontsize=9, color="#777777")
    ax.text(16.1, 0.45, "switching is refused until unmerge_lora restores W", ha="center", va="center",
            fontsize=8, color="#777777")
    _finish(ax, (0, 20.8), (0, 8.1))
    fig.tight_layout()
    return fig


DIAGRAMS = {"05_lora_branch.png": lora_branch_diagram, "06_fused_qkv_lora.png": fused_qkv_diagram,
            "08_adapters_swap_merge.png": adapters_diagram}


def save_diagrams(folder: str | Path) -> list[Path]:
    """Draw every diagram and write it to `folder` as PNG (the chapters' file names)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return [save_figure(draw(), folder / name) for name, draw in DIAGRAMS.items()]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("folder", nargs="?", default="notebooks/figures", help="where the PNGs go")
    for path in save_diagrams(parser.parse_args(argv).folder):
        print(path)


if __name__ == "__main__":
    main()
