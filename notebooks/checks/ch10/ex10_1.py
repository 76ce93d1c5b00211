"""Exercise 10.1: NormalFloat levels at other widths and offsets, checked against lora.nf4 at 4 bits and, at the
other settings, against what the levels must be: quantiles of N(0, 1) at evenly spaced probabilities."""

import math

import torch
from otter.test_files import test_case

from checks._guard import answer, require
from lora.nf4 import nf4_levels

OK_FORMAT = False
name = "ex10_1"
points = 1


def normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1 + torch.special.erf(x / math.sqrt(2)))


@test_case(points=1)
def ex10_1(env):
    expects = "a sorted float32 tensor of 2**bits levels in [-1, 1]"
    got = answer(env, "exercise_10_1", 4, returns=torch.Tensor, expects=expects)
    require(got.dtype == torch.float32 and got.shape == (16,),
            f"exercise_10_1(4) should be a float32 tensor of shape (16,), got {got.dtype} of shape {tuple(got.shape)}.")
    require(torch.allclose(got, nf4_levels(), atol=1e-6),
            "exercise_10_1(4) is not NF4's 16 levels (lora.nf4.nf4_levels()); hint: 8 quantiles above zero, 7 below, "
            "one exact zero, all divided by the largest.")
    for bits, delta in [(3, (1 / 30 + 1 / 32) / 2), (5, 0.05), (4, 0.1)]:
        call = f"exercise_10_1(bits={bits}, delta={delta:g})"
        got = answer(env, "exercise_10_1", bits=bits, delta=delta, returns=torch.Tensor, expects=expects)
        n = 2 ** bits
        require(got.shape == (n,) and got.dtype == torch.float32,
                f"{call} should have {n} float32 levels, got {got.dtype} of shape {tuple(got.shape)}.")
        require(bool((got[1:] > got[:-1]).all()), f"{call}: the levels should be sorted and all different.")
        require(int((got == 0).sum()) == 1 and float(got.max()) == 1.0 and float(got.min()) == -1.0,
                f"{call}: there should be one exact 0, and the levels should run from -1 to 1 (divide by the largest).")
        positive, negative = got[got > 0].double(), -got[got < 0].flip(0).double()
        require(positive.numel() == n // 2 and negative.numel() == n // 2 - 1,
                f"{call}: want {n // 2} levels above zero and {n // 2 - 1} below, got {positive.numel()} and "
                f"{negative.numel()}.")
        # Undo the division by the largest: the outermost level is the quantile at 1 - delta. Then each half's
        # levels must sit at evenly spaced probabilities from 0.5 (excluded) to 1 - delta.
        top = math.sqrt(2) * torch.special.erfinv(torch.tensor(2 * (1 - delta) - 1, dtype=torch.float64))
        for half, count in ((positive, n // 2), (negative, n // 2 - 1)):
            p = normal_cdf(half * top)
            want = torch.linspace(0.5, 1 - delta, count + 1, dtype=torch.float64)[1:]
            require(torch.allclose(p, want, atol=2e-5),
                    f"{call}: the levels are not quantiles of N(0, 1) at evenly spaced probabilities between 0.5 and "
                    f"1 - delta (one half has {count}); hint: torch.linspace(1 - delta, 0.5, count + 1)[:-1], then the "
                    f"quantile function sqrt(2) * erfinv(2p - 1), and use `delta` and `bits`, not NF4's numbers.")
