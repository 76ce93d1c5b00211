"""Solutions to the exercises of chapter 10 (notebooks/10_lora_family.ipynb): the LoRA family.

Kept outside the notebooks so that a class can hand the notebooks out without the answers. The checks in
notebooks/checks/ch10/ accept these functions and reject the planted wrong answers `wrong_exercise_10_M`, the
typed-in numbers `typed_in_exercise_10_M` and the shortcuts `shortcut_exercise_10_M` (tests/test_exercise_checks.py).
"""

from __future__ import annotations

import math

import torch

NF4_DELTA = (1 / 30 + 1 / 32) / 2
BLOCK = ((256, 256),) * 4 + ((256, 1024), (1024, 256))  # gpt-mini's linear layers in one block, (d_in, d_out)


def _quantile(p: torch.Tensor) -> torch.Tensor:
    return math.sqrt(2) * torch.special.erfinv(2 * p - 1)


def exercise_10_1(bits: int = 4, delta: float = NF4_DELTA) -> torch.Tensor:
    """The 2**bits NormalFloat levels: 2**(bits-1) quantiles of N(0, 1) above zero and 2**(bits-1) - 1 below, at
    evenly spaced probabilities from 0.5 (excluded) to 1 - delta, one exact zero, divided by the largest.

    Answer at 4 bits: NF4's levels, -1.0000 -0.6962 ... 0.7230 1.0000 (section 10.2 prints them)."""
    half = 2 ** (bits - 1)
    positive = _quantile(torch.linspace(1 - delta, 0.5, half + 1, dtype=torch.float64)[:-1])
    negative = -_quantile(torch.linspace(1 - delta, 0.5, half, dtype=torch.float64)[:-1])
    levels = torch.cat([negative, torch.zeros(1, dtype=torch.float64), positive]).sort().values.float()
    return levels / levels.max()


def wrong_exercise_10_1(bits: int = 4, delta: float = NF4_DELTA) -> torch.Tensor:
    """The halves swapped: 2**(bits-1) levels below zero and one fewer above."""
    return -exercise_10_1(bits, delta).flip(0)


def typed_in_exercise_10_1(bits: int = 4, delta: float = NF4_DELTA) -> torch.Tensor:
    """NF4's 16 levels as the chapter prints them, typed in, whatever bits and delta ask for."""
    return torch.tensor([-1.0, -0.6962, -0.5251, -0.3949, -0.2844, -0.1848, -0.0910, 0.0, 0.0796, 0.1609, 0.2461,
                         0.3379, 0.4407, 0.5626, 0.7230, 1.0])


def shortcut_exercise_10_1(bits: int = 4, delta: float = NF4_DELTA) -> torch.Tensor:
    """Evenly spaced levels (int4's idea): no quantiles, and no exact zero for an even count."""
    return torch.linspace(-1, 1, 2 ** bits)


def exercise_10_2(W: torch.Tensor, r: int = 16) -> torch.Tensor:
    """The residual PiSSA leaves frozen: W - U_r diag(S_r) V_r^T, W's shape.

    Answer: its largest singular value is W's (r+1)-th; B A holds the rest (section 10.4)."""
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)
    return W - (U[:, :r] * S[:r]) @ Vh[:r]


def wrong_exercise_10_2(W: torch.Tensor, r: int = 16) -> torch.Tensor:
    """Subtracts the r SMALLEST singular directions (the last columns of U) instead of the largest."""
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)
    return W - (U[:, -r:] * S[-r:]) @ Vh[-r:]


def typed_in_exercise_10_2(W: torch.Tensor, r: int = 16) -> torch.Tensor:
    """The statement's r = 16, whatever r the caller asks for."""
    return exercise_10_2(W, 16)


def shortcut_exercise_10_2(W: torch.Tensor, r: int = 16) -> torch.Tensor:
    """The top-r part itself (what B A starts with), not what is left of W."""
    return W - exercise_10_2(W, r)


def exercise_10_3(layer_dims=BLOCK, rank: int = 256) -> int:
    """VeRA's trained numbers on layers of these (d_in, d_out): r + d_out each (the vectors lambda_d and lambda_b);
    the shared random A and B are frozen.

    Answer for one gpt-mini block at r = 256: 6 * 256 + 4 * 256 + 1024 + 256 = 3,840 (section 10.7)."""
    return sum(rank + d_out for _, d_out in layer_dims)


def wrong_exercise_10_3(layer_dims=BLOCK, rank: int = 256) -> int:
    """Counts d_in for lambda_b instead of d_out."""
    return sum(rank + d_in for d_in, _ in layer_dims)


def typed_in_exercise_10_3(layer_dims=BLOCK, rank: int = 256) -> int:
    """The chapter's 3,840 for one gpt-mini block, typed in."""
    return 3840


def shortcut_exercise_10_3(layer_dims=BLOCK, rank: int = 256) -> int:
    """LoRA's count r (d_in + d_out) per layer, as if VeRA trained A and B."""
    return sum(rank * (d_in + d_out) for d_in, d_out in layer_dims)


def exercise_10_4(model, lr: float = 8e-4, ratio: float = 16.0, embedding_lr: float = 1e-6) -> dict[str, float]:
    """LoRA+'s learning rate for every trained tensor: lora_B and every other 1-D tensor at lr * ratio, the
    embedding's LoRA factors at embedding_lr, the rest (lora_A, 2-D tensors trained in full) at lr."""
    embedding = {name for name, m in model.named_modules() if type(m).__name__ == "EmbeddingWithLoRA"}
    rates = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if any(name.startswith(e + ".lora.") for e in embedding):
            rates[name] = embedding_lr
        elif "lora_B" in name or p.ndim == 1:
            rates[name] = lr * ratio
        else:
            rates[name] = lr
    return rates


def wrong_exercise_10_4(model, lr: float = 8e-4, ratio: float = 16.0, embedding_lr: float = 1e-6) -> dict[str, float]:
    """A and B swapped in the linear layers' LoRA: lora_A gets the larger rate, lora_B the smaller."""
    return {n: (lr * ratio if "lora_A" in n and v == lr else lr if "lora_B" in n and v == lr * ratio else v)
            for n, v in exercise_10_4(model, lr, ratio, embedding_lr).items()}


def typed_in_exercise_10_4(model, lr: float = 8e-4, ratio: float = 16.0, embedding_lr: float = 1e-6) -> dict:
    """The statement's ratio 16 and embedding rate 1e-6, whatever the caller asks for."""
    return exercise_10_4(model, lr, 16.0, 1e-6)


def shortcut_exercise_10_4(model, lr: float = 8e-4, ratio: float = 16.0, embedding_lr: float = 1e-6) -> dict:
    """The embedding's LoRA treated like any other layer's (B at lr * ratio, A at lr)."""
    rates = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            rates[name] = lr * ratio if ("lora_B" in name or p.ndim == 1) else lr
    return rates
