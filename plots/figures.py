"""Making and saving matplotlib figures without pyplot, and the curves of a run: a classifier's (accuracy and
both loss terms) and pre-training's loss.

new_figure gives (figure, axes) like plt.subplots, but the figure belongs to no pyplot state: no
window opens, nothing accumulates in pyplot's global figure list, and a notebook's plotting backend
is left alone when a script's plotting function runs there. save_figure writes it as a PNG
atomically (common/files.py), so an interrupted run never leaves half a picture.
"""

from __future__ import annotations

import sys
from pathlib import Path

from common.files import atomic_write


def new_figure(nrows: int = 1, ncols: int = 1, figsize=(6, 3.5), dpi: int = 100, **subplots_kwargs):
    """(figure, axes) as plt.subplots gives them, but without pyplot. Save it with save_figure."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=dpi)
    return fig, fig.subplots(nrows, ncols, **subplots_kwargs)


def save_figure(fig, path: str | Path, **savefig_kwargs) -> Path:
    """Write a matplotlib figure as a PNG atomically, then close it; returns the path."""
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png", **savefig_kwargs)
    if "matplotlib.pyplot" in sys.modules:  # a pyplot figure: free it (new_figure's figures need nothing)
        sys.modules["matplotlib.pyplot"].close(fig)
    return Path(path)


def plot_history(history, path: str | Path, title: str = "fine-tuning") -> Path:
    """The curves against examples seen, as a PNG: the last-token loss (train running average, solid;
    validation, dashed) and the prefix term at every token (the same two, lighter), then accuracy.
    Every training curve has its validation twin of the same quantity.

    history: a dict of equally long lists (examples_seen, train_loss, val_loss, train_accuracy, val_accuracy and,
    optionally, train_prefix_loss, val_prefix_loss) or anything with .to_dict() that gives one
    (classify.train.ClassifierHistory). Accuracies are fractions; the plot shows percent."""
    h = history if isinstance(history, dict) else history.to_dict()
    fig, (ax_loss, ax_acc) = new_figure(1, 2, figsize=(9, 3.4), dpi=100)
    x = h["examples_seen"]
    ax_loss.plot(x, h["train_loss"], color="C0", label="last token, train (running)")
    ax_loss.plot(x, h["val_loss"], color="C0", ls="--", label="last token, validation")
    if h.get("train_prefix_loss") and h.get("val_prefix_loss"):  # absent from histories saved before they existed
        ax_loss.plot(x, h["train_prefix_loss"], color="C1", label="every token, train (running)")
        ax_loss.plot(x, h["val_prefix_loss"], color="C1", ls="--", label="every token, validation")
    ax_loss.set_ylabel("cross-entropy (nats/message)")
    ax_acc.plot(x, [100 * a for a in h["train_accuracy"]], color="C0", label="train (running)")
    ax_acc.plot(x, [100 * a for a in h["val_accuracy"]], color="C0", ls="--", label="validation")
    ax_acc.set_ylabel("accuracy at the last token (%)")
    for ax in (ax_loss, ax_acc):
        ax.set_xlabel("training examples seen")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.3))  # below: no curve hidden
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path, bbox_inches="tight")  # the legends sit below the axes


def plot_losses(history, path: str | Path, title: str = "pre-training") -> Path:
    """The loss curves of a pre-training run against tokens seen.

    history: anything with equally long lists .tokens, .train_loss and .val_loss (gpt.train.History)."""
    fig, ax = new_figure(figsize=(6, 3.6), dpi=100)
    ax.plot(history.tokens, history.train_loss, label="train (last batch)")
    ax.plot(history.tokens, history.val_loss, label="validation")
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)
