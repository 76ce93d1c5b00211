"""Making and saving matplotlib figures without pyplot, and the pre-training loss curve.

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
