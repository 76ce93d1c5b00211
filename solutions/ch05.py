"""Solutions to the exercises of chapter 5 (notebooks/05_low_rank_math.ipynb): the low-rank math.

Kept outside the notebooks so that a class can hand the notebooks out without the answers.
Each function returns the numbers the answer rests on; tests/test_solutions_ch05.py checks them.
The discussion parts are in solutions/ch05.md.
"""

from __future__ import annotations

import math

import torch

from lora.counts import full_parameter_count, lora_parameter_count
from lora.layers import LoRALayer


def exercise_5_1(d: int = 64, k: int = 48, r: int = 4, seed: int = 123) -> dict[str, int]:
    """Ranks of a LoRA update, of the sum of two, and of a merged weight.

    Answer: BA maps through an r-dimensional space (every column of BA is a combination of B's r columns),
    so rank(BA) <= r, with equality for random B and A. rank(X + Y) <= rank(X) + rank(Y), so two merged
    rank-r adapters add an update of rank <= 2r (here exactly 2r). W + BA for a full-rank W stays full-rank
    (min(d, k)): merging never makes a model "low-rank"; only the *change* is. Merging two adapters into
    one model therefore equals one adapter of rank 2r, not of rank r: their sum is not a rank-r LoRA.
    Computed in float64 so that the rank decisions are not blurred by float32 rounding.
    """
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    B1, A1, B2, A2 = randn(d, r), randn(r, k), randn(d, r), randn(r, k)
    W = randn(d, k)
    rank = lambda X: int(torch.linalg.matrix_rank(X))  # noqa: E731
    return {"rank_BA": rank(B1 @ A1), "rank_sum": rank(B1 @ A1 + B2 @ A2), "rank_W": rank(W),
            "rank_W_plus_BA": rank(W + B1 @ A1), "rank_zero_B": rank(torch.zeros(d, r, dtype=torch.float64) @ A1)}


def exercise_5_2(shapes=((768, 768), (512, 64), (10, 8))) -> dict[tuple[int, int], dict]:
    """The rank at which LoRA stops saving parameters: r (d + k) = d k  <=>  r* = d k / (d + k).

    Returns {(d, k): {"break_even": r* (float), "first_worse_rank": the smallest int rank that costs more}}.
    Answer: 768 x 768: r* = 384 exactly (r = 384 costs the same 589,824, r = 385 costs more);
    512 x 64: r* = 56.9, r = 57 is the first rank that costs more (32,832 > 32,768);
    10 x 8: r* = 4.44, r = 5 costs 90 > 80. At r* the "low-rank" update is no longer low-rank in any
    useful sense (for a square matrix r* = d / 2, half the full rank), so in practice r stays far below it.
    """
    out = {}
    for d, k in shapes:
        full = full_parameter_count(d, k)
        first_worse = next(r for r in range(1, min(d, k) + 2) if lora_parameter_count(d, k, r) > full)
        out[(d, k)] = {"break_even": d * k / (d + k), "first_worse_rank": first_worse}
    return out


def exercise_5_3(d_in: int = 32, d_out: int = 24, r: int = 16, seed: int = 123) -> dict[str, float]:
    """The three scalings are one function family: only the constant in front of x A B differs.

    Answer: "alpha" multiplies by alpha (16), "alpha/r" by alpha / r, "alpha/sqrt(r)" by alpha / sqrt(r).
    With the same A and B, alpha=16 under "alpha" equals alpha = 16 * 16 = 256 under "alpha/r", and
    alpha=16 under "alpha/sqrt(r)" equals alpha = 16 * 4 = 64 under "alpha/r" (outputs identical up to
    float rounding). They still train differently: AdamW normalises each parameter's step to about the
    learning rate whatever the gradient's size, so the change of A and B per step is the same in all
    three, and the change of the *output* is proportional to the scale. The first printing's "alpha" at
    r = 16 therefore moves the model 16x further per step than "alpha/r" at the same learning rate
    (roughly like a 16x larger learning rate), which notebook section 5.6 measures on the first update.
    """
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(d_in, r, generator=g)
    B = torch.randn(r, d_out, generator=g)
    x = torch.randn(5, d_in, generator=g)

    def branch(alpha, scaling):
        layer = LoRALayer(d_in, d_out, rank=r, alpha=alpha, scaling=scaling)
        with torch.no_grad():
            layer.lora_A.copy_(A)
            layer.lora_B.copy_(B)
        return layer(x).detach()

    first_printing, as_alpha_r = branch(16, "alpha"), branch(16 * r, "alpha/r")
    rslora, as_alpha_r_sqrt = branch(16, "alpha/sqrt(r)"), branch(16 * math.sqrt(r), "alpha/r")
    return {"max_diff_alpha": float((first_printing - as_alpha_r).abs().max()),
            "max_diff_sqrt": float((rslora - as_alpha_r_sqrt).abs().max()),
            "ratio_alpha_vs_alpha_r": float(first_printing.norm() / branch(16, "alpha/r").norm())}


def exercise_5_4(delta_w: torch.Tensor, r: int, alpha: float = 16.0) -> LoRALayer:
    """A LoRA branch whose update is the best rank-r approximation of `delta_w` (d_out, d_in).

    delta_w = U S V^T. The branch computes scale * x A B, i.e. its update in nn.Linear's layout is
    scale * (A B)^T = scale * B^T A^T. Put the singular values' square roots on both sides:
    A = V_r sqrt(S_r) (d_in, r), B = sqrt(S_r) U_r^T / scale (r, d_out); then scale * (A B)^T = U_r S_r V_r^T.
    Answer: at r = rank(delta_w) the branch computes x delta_w^T exactly (to float rounding); below it, the
    Frobenius error of its update is sqrt(sum of the left-out sigma^2), the Eckart-Young bound, and no rank-r
    update does better. (PiSSA, Meng et al. 2024, initialises LoRA from the SVD of W itself in the same way.)
    """
    d_out, d_in = delta_w.shape
    U, S, Vh = torch.linalg.svd(delta_w, full_matrices=False)
    layer = LoRALayer(d_in, d_out, rank=r, alpha=alpha)
    root = S[:r].sqrt()
    with torch.no_grad():
        layer.lora_A.copy_(Vh[:r].T * root)  # (d_in, r)
        layer.lora_B.copy_(root[:, None] * U[:, :r].T / layer.scale)  # (r, d_out)
    return layer


def svd_init_errors(d_out: int = 40, d_in: int = 30, true_rank: int = 4, seed: int = 123) -> dict[str, float]:
    """The numbers behind the answer to 5.4: a random rank-4 update, its branch at r = 4 and r = 2."""
    g = torch.Generator().manual_seed(seed)
    delta = torch.randn(d_out, true_rank, generator=g) @ torch.randn(true_rank, d_in, generator=g)
    S = torch.linalg.svdvals(delta)
    x = torch.randn(7, d_in, generator=g)
    exact, half = exercise_5_4(delta, true_rank), exercise_5_4(delta, 2)
    return {
        "output_error_r4": float((exact(x).detach() - x @ delta.T).abs().max()),
        "update_error_r4": float(torch.linalg.norm(exact.delta_weight().detach().T - delta)),
        "update_error_r2": float(torch.linalg.norm(half.delta_weight().detach().T - delta)),
        "eckart_young_r2": float(S[2:].square().sum().sqrt()),
        "norm": float(torch.linalg.norm(delta)),
    }


def exercise_5_5(d_in: int = 16, d_out: int = 12, r: int = 4, seed: int = 123) -> dict[str, dict[str, float]]:
    """Gradients of a LoRA branch at initialisation for three choices of which matrix starts at zero.

    With y = scale * x A B and a loss L: dL/dB = scale * (x A)^T g and dL/dA = scale * x^T (g B^T),
    g = dL/dy. Answer:
      * A random, B = 0 (LoRA's choice): the branch outputs 0 (the model starts exactly at the base);
        B gets a non-zero gradient, A's gradient is 0 for this first step only. After one step B != 0
        and both learn.
      * A = 0, B random: also starts at 0, mirrored: only A gets a gradient at first. It works too; the
        convention simply follows Hu et al. (and PEFT, loralib).
      * both 0: both gradients are 0 forever (each contains the other matrix): the adapter never learns.
      * both random: learns, but the model no longer starts at the pre-trained function.
    """
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(8, d_in, generator=g)
    target = torch.randn(8, d_out, generator=g)
    out = {}
    for case in ("A random, B zero", "A zero, B random", "both zero", "both random"):
        layer = LoRALayer(d_in, d_out, rank=r, alpha=2 * r)
        with torch.no_grad():
            layer.lora_A.copy_(torch.randn(d_in, r, generator=g) if "A random" in case or case == "both random"
                               else torch.zeros(d_in, r))
            layer.lora_B.copy_(torch.randn(r, d_out, generator=g) if "B random" in case or case == "both random"
                               else torch.zeros(r, d_out))
        y = layer(x)
        loss = (y - target).square().mean()
        loss.backward()
        out[case] = {"output_norm": float(y.detach().norm()), "grad_A": float(layer.lora_A.grad.norm()),
                     "grad_B": float(layer.lora_B.grad.norm())}
    return out


# ---------------------------------------------------------------------------------------------------------------
# Planted wrong answers: each makes one mistake a student could make; the exercise checks must reject them.

def wrong_exercise_5_1(d: int = 64, k: int = 48, r: int = 4, seed: int = 123) -> dict[str, int]:
    """Adds the same adapter to itself (2 B A) instead of drawing a second one: the sum keeps rank r."""
    out = exercise_5_1(d, k, r, seed)
    g = torch.Generator().manual_seed(seed)
    B, A = torch.randn(d, r, generator=g, dtype=torch.float64), torch.randn(r, k, generator=g, dtype=torch.float64)
    out["rank_sum"] = int(torch.linalg.matrix_rank(B @ A + B @ A))
    return out


def wrong_exercise_5_2(shapes=((768, 768), (512, 64), (10, 8))) -> dict[tuple[int, int], dict]:
    """Rounds the break-even rank up: at a whole-number break-even that rank costs the same, not more."""
    return {(d, k): {"break_even": d * k / (d + k), "first_worse_rank": math.ceil(d * k / (d + k))} for d, k in shapes}


def wrong_exercise_5_3(d_in: int = 32, d_out: int = 24, r: int = 16, seed: int = 123) -> dict[str, float]:
    """Matches "alpha" with alpha * sqrt(r) under "alpha/r" (the rsLoRA factor), instead of alpha * r."""
    g = torch.Generator().manual_seed(seed)
    A, B, x = torch.randn(d_in, r, generator=g), torch.randn(r, d_out, generator=g), torch.randn(5, d_in, generator=g)

    def branch(alpha, scaling):
        layer = LoRALayer(d_in, d_out, rank=r, alpha=alpha, scaling=scaling)
        with torch.no_grad():
            layer.lora_A.copy_(A)
            layer.lora_B.copy_(B)
        return layer(x).detach()

    return {"max_diff_alpha": float((branch(16, "alpha") - branch(16 * math.sqrt(r), "alpha/r")).abs().max()),
            "max_diff_sqrt": float((branch(16, "alpha/sqrt(r)") - branch(16 * math.sqrt(r), "alpha/r")).abs().max()),
            "ratio_alpha_vs_alpha_r": float(branch(16, "alpha").norm() / branch(16, "alpha/r").norm())}


def wrong_exercise_5_4(delta_w: torch.Tensor, r: int, alpha: float = 16.0) -> LoRALayer:
    """Forgets the branch's scale alpha / r: the update comes out scale times too large."""
    d_out, d_in = delta_w.shape
    U, S, Vh = torch.linalg.svd(delta_w, full_matrices=False)
    layer = LoRALayer(d_in, d_out, rank=r, alpha=alpha)
    with torch.no_grad():
        layer.lora_A.copy_(Vh[:r].T * S[:r].sqrt())
        layer.lora_B.copy_(S[:r].sqrt()[:, None] * U[:, :r].T)
    return layer


def wrong_exercise_5_5(d_in: int = 16, d_out: int = 12, r: int = 4, seed: int = 123) -> dict[str, dict[str, float]]:
    """Starts B at zero in every case (LoRA's habit), so "A zero, B random" and "both random" are not what they say."""
    g = torch.Generator().manual_seed(seed)
    x, target = torch.randn(8, d_in, generator=g), torch.randn(8, d_out, generator=g)
    out = {}
    for case in ("A random, B zero", "A zero, B random", "both zero", "both random"):
        layer = LoRALayer(d_in, d_out, rank=r, alpha=2 * r)
        with torch.no_grad():
            layer.lora_A.copy_(torch.zeros(d_in, r) if case in ("A zero, B random", "both zero")
                               else torch.randn(d_in, r, generator=g))
            layer.lora_B.zero_()
        y = layer(x)
        (y - target).square().mean().backward()
        out[case] = {"output_norm": float(y.detach().norm()), "grad_A": float(layer.lora_A.grad.norm()),
                     "grad_B": float(layer.lora_B.grad.norm())}
    return out


# ---------------------------------------------------------------------------------------------------------------
# What students really write instead (tests/test_exercise_checks.py: each check must reject both).

def typed_in_exercise_5_1(d: int = 64, k: int = 48, r: int = 4, seed: int = 123) -> dict[str, int]:
    """Types in the ranks of the statement's setting (d = 64, k = 48, r = 4) for every call."""
    return {"rank_BA": 4, "rank_sum": 8, "rank_W": 48, "rank_W_plus_BA": 48, "rank_zero_B": 0}


def shortcut_exercise_5_1(d: int = 64, k: int = 48, r: int = 4, seed: int = 123) -> dict[str, int]:
    """States the ranks from the rules (r, 2r, min(d, k), ...) instead of measuring them on drawn matrices."""
    return {"rank_BA": r, "rank_sum": min(2 * r, d, k), "rank_W": min(d, k), "rank_W_plus_BA": min(d, k),
            "rank_zero_B": 0}


def typed_in_exercise_5_2(shapes=((768, 768), (512, 64), (10, 8))) -> dict[tuple[int, int], dict]:
    """Types in the answers for the statement's three shapes, whatever shapes it is asked for."""
    return {(768, 768): {"break_even": 384.0, "first_worse_rank": 385},
            (512, 64): {"break_even": 512 * 64 / 576, "first_worse_rank": 57},
            (10, 8): {"break_even": 80 / 18, "first_worse_rank": 5}}


def shortcut_exercise_5_2(shapes=((768, 768), (512, 64), (10, 8))) -> dict[tuple[int, int], dict]:
    """No shortcut to forbid; a second plausible mistake: the square-matrix rule r* = d / 2 used for every shape
    (min(d, k) / 2), which is right for 768 x 768 only."""
    out = {}
    for d, k in shapes:
        even = min(d, k) / 2
        out[(d, k)] = {"break_even": even, "first_worse_rank": math.floor(even) + 1}
    return out


def typed_in_exercise_5_3(d_in: int = 32, d_out: int = 24, r: int = 16, seed: int = 123) -> dict[str, float]:
    """Types in the statement's outcome at r = 16 (identical outputs, ratio 16) for every call."""
    return {"max_diff_alpha": 0.0, "max_diff_sqrt": 0.0, "ratio_alpha_vs_alpha_r": 16.0}


def shortcut_exercise_5_3(d_in: int = 32, d_out: int = 24, r: int = 16, seed: int = 123) -> dict[str, float]:
    """Writes down what the formulas predict (no difference, ratio r) without building and running the layers."""
    return {"max_diff_alpha": 0.0, "max_diff_sqrt": 0.0, "ratio_alpha_vs_alpha_r": float(r)}


def typed_in_exercise_5_4(delta_w: torch.Tensor, r: int, alpha: float = 16.0) -> LoRALayer:
    """Types in the statement's alpha = 16 for the layer (LoRALayer(..., alpha=16)) whatever alpha it is given."""
    return exercise_5_4(delta_w, r, alpha=16.0)


def shortcut_exercise_5_4(delta_w: torch.Tensor, r: int, alpha: float = 16.0) -> LoRALayer:
    """Skips the SVD: keeps r orthonormal directions of delta_w's rows from a QR decomposition. Exact at the update's
    rank, but below it these are not the r strongest directions, so the error is above Eckart-Young's."""
    d_out, d_in = delta_w.shape
    Q, _ = torch.linalg.qr(delta_w.T)  # (d_in, min): an orthonormal basis of the row space, in no useful order
    layer = LoRALayer(d_in, d_out, rank=r, alpha=alpha)
    with torch.no_grad():
        layer.lora_A.copy_(Q[:, :r])  # (d_in, r)
        layer.lora_B.copy_(Q[:, :r].T @ delta_w.T / layer.scale)  # (r, d_out): the best fit inside those directions
    return layer


def typed_in_exercise_5_5(d_in: int = 16, d_out: int = 12, r: int = 4, seed: int = 123) -> dict[str, dict[str, float]]:
    """Types in the zero / non-zero pattern the statement's question leads to (1.0 for "non-zero") for every call."""
    def e(out, grad_a, grad_b):
        return {"output_norm": out, "grad_A": grad_a, "grad_B": grad_b}
    return {"A random, B zero": e(0.0, 0.0, 1.0), "A zero, B random": e(0.0, 1.0, 0.0), "both zero": e(0.0, 0.0, 0.0),
            "both random": e(1.0, 1.0, 1.0)}


def shortcut_exercise_5_5(d_in: int = 16, d_out: int = 12, r: int = 4, seed: int = 123) -> dict[str, dict[str, float]]:
    """Computes the gradients from the chain-rule formulas with plain tensors, skipping LoRALayer and backward()."""
    g = torch.Generator().manual_seed(seed)
    x, target = torch.randn(8, d_in, generator=g), torch.randn(8, d_out, generator=g)
    scale, out = 2.0, {}
    for case in ("A random, B zero", "A zero, B random", "both zero", "both random"):
        A = torch.randn(d_in, r, generator=g) if case in ("A random, B zero", "both random") else torch.zeros(d_in, r)
        B = torch.randn(r, d_out, generator=g) if case in ("A zero, B random", "both random") else torch.zeros(r, d_out)
        y = scale * x @ A @ B
        grad_y = 2 * (y - target) / y.numel()
        out[case] = {"output_norm": float(y.norm()), "grad_A": float((scale * x.T @ grad_y @ B.T).norm()),
                     "grad_B": float((scale * (x @ A).T @ grad_y).norm())}
    return out
