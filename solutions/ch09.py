"""Solutions to the exercises of chapter 9 (notebooks/09_inside_an_adapter.ipynb): inside a trained adapter.

Kept outside the notebooks so that a class can hand the notebooks out without the answers. The checks in
notebooks/checks/ch09/ accept these functions and reject the planted wrong answers `wrong_exercise_9_M`, the
typed-in numbers `typed_in_exercise_9_M` and the shortcuts `shortcut_exercise_9_M` (tests/test_exercise_checks.py).
"""

from __future__ import annotations

import torch

from lora.analysis import AdapterFactors, amplification, subspace_similarity

KINDS = {"att.W_query": "query", "att.W_key": "key", "att.W_value": "value", "att.out_proj": "out_proj",
         "ff.layers.0": "ff_in", "ff.layers.2": "ff_out"}


def exercise_9_1(i: int = 8, j: int = 8, k: int = 256, trials: int = 200, seed: int = 0) -> float:
    """The mean normalised subspace similarity phi of two random subspaces of R^k, of dimension i and j.

    Answer: about max(i, j) / k: 8 / 256 = 0.031 at the statement's setting. E ||U^T V||_F^2 = i j / k (each of
    the i directions of U keeps j / k of its squared length in a random j-dimensional subspace), divided by
    min(i, j). This is the floor the heat maps of 9.4 and 9.5 are compared with.
    """
    g = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(trials):
        U = torch.linalg.qr(torch.randn(k, i, generator=g))[0]  # first the k x i draw, then the k x j one
        V = torch.linalg.qr(torch.randn(k, j, generator=g))[0]
        values.append(subspace_similarity(U, V))
    return float(sum(values) / len(values))


def wrong_exercise_9_1(i: int = 8, j: int = 8, k: int = 256, trials: int = 200, seed: int = 0) -> float:
    """Normalises ||U^T V||^2 by max(i, j) instead of min(i, j) (the same when i = j)."""
    return exercise_9_1(i, j, k, trials, seed) * min(i, j) / max(i, j)


def typed_in_exercise_9_1(i: int = 8, j: int = 8, k: int = 256, trials: int = 200, seed: int = 0) -> float:
    """The floor the chapter prints for i = j = 8, k = 256 (0.031), typed in instead of measured."""
    return 0.031


def shortcut_exercise_9_1(i: int = 8, j: int = 8, k: int = 256, trials: int = 200, seed: int = 0) -> float:
    """The expected value max(i, j) / k from the formula, without drawing a single subspace."""
    return max(i, j) / k


def exercise_9_2(factors: AdapterFactors) -> dict[str, float]:
    """The share of the whole update's squared Frobenius norm in each kind of matrix (query, key, value, out_proj,
    ff_in, ff_out), summed over the layers; the shares add up to 1.

    Answer for the main adapter (all linear, r = 16): the feed-forward matrices hold 40.0 % (ff_in and ff_out
    together), the attention projections the rest (notebook 9.8 prints the split).
    """
    squares: dict[str, float] = {}
    for name in factors.modules:
        kind = next(v for k, v in KINDS.items() if name.endswith(k))
        squares[kind] = squares.get(kind, 0.0) + float(factors.delta_weight(name).double().square().sum())
    total = sum(squares.values())
    return {kind: s / total for kind, s in squares.items()}


def wrong_exercise_9_2(factors: AdapterFactors) -> dict[str, float]:
    """Shares of the norms instead of the squared norms: norms do not add up, their squares do."""
    norms = {}
    for name in factors.modules:
        kind = next(v for k, v in KINDS.items() if name.endswith(k))
        norms[kind] = norms.get(kind, 0.0) + float(torch.linalg.norm(factors.delta_weight(name)))
    total = sum(norms.values())
    return {kind: n / total for kind, n in norms.items()}


def typed_in_exercise_9_2(factors: AdapterFactors) -> dict[str, float]:
    """The main adapter's split typed in from section 9.8 (40.0 % feed-forward, shared equally), for any adapter."""
    return {"query": 0.15, "key": 0.15, "value": 0.15, "out_proj": 0.15, "ff_in": 0.2, "ff_out": 0.2}


def shortcut_exercise_9_2(factors: AdapterFactors) -> dict[str, float]:
    """Shares of the LoRA parameters per kind (counted from A and B's shapes), not of the update's squared norm."""
    counts: dict[str, float] = {}
    for name in factors.modules:
        kind = next(v for k, v in KINDS.items() if name.endswith(k))
        counts[kind] = counts.get(kind, 0.0) + factors.lora_A[name].numel() + factors.lora_B[name].numel()
    total = sum(counts.values())
    return {kind: c / total for kind, c in counts.items()}


def exercise_9_3(delta: torch.Tensor, W: torch.Tensor, r: int = 4) -> float:
    """The LoRA paper's amplification factor ||Delta W||_F / ||U^T W V||_F, with U (d_out, r) and V (d_in, r) the
    top-r left and right singular vectors of Delta W, from torch.linalg.svd alone."""
    U, _, Vh = torch.linalg.svd(delta.double(), full_matrices=False)
    projected = U[:, :r].T @ W.double() @ Vh[:r].T
    return float(torch.linalg.norm(delta.double()) / torch.linalg.norm(projected))


def wrong_exercise_9_3(delta: torch.Tensor, W: torch.Tensor, r: int = 4) -> float:
    """Projects W onto W's own top-r directions instead of Delta W's: that is the table's "W" column."""
    U, _, Vh = torch.linalg.svd(W.double(), full_matrices=False)
    projected = U[:, :r].T @ W.double() @ Vh[:r].T
    return float(torch.linalg.norm(delta.double()) / torch.linalg.norm(projected))


def typed_in_exercise_9_3(delta: torch.Tensor, W: torch.Tensor, r: int = 4) -> float:
    """The median factor section 9.6 prints at r = 4 (2.5), typed in for any matrices."""
    return 2.5


def shortcut_exercise_9_3(delta: torch.Tensor, W: torch.Tensor, r: int = 4) -> float:
    """lora.analysis.amplification, which the statement forbids (the check makes it raise)."""
    return float(amplification(delta, W, r)["factor"])
