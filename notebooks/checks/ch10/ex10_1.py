"""Exercise 10.1: NormalFloat levels at other widths and offsets, checked against lora.nf4 at 4 bits and, at every
setting, against what the levels must be: quantiles of N(0, 1) at evenly spaced probabilities."""

import math

import torch
from otter.test_files import test_case

from checks._guard import answer, require
from lora.nf4 import NF4_DELTA, nf4_levels

OK_FORMAT = False
name = "ex10_1"
points = 1


def normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1 + torch.special.erf(x / math.sqrt(2)))


@test_case(points=1)
def ex10_1(env):
    expects = "a sorted float32 tensor of the 2**bits levels in [-1, 1]"
    # The statement's 4 bits first (against the package), then the settings the statement announces.
    for kwargs in [dict(bits=4), dict(bits=3), dict(bits=5, delta=0.05), dict(delta=0.1)]:
        bits, delta = kwargs.get("bits", 4), kwargs.get("delta", NF4_DELTA)
        call = "exercise_10_1(" + ", ".join(f"{k}={v!r}" for k, v in kwargs.items()) + ")"
        got = answer(env, "exercise_10_1", **kwargs, returns=torch.Tensor, expects=expects)
        n = 2 ** bits
        require(tuple(got.shape) == (n,), f"{call} should hold {n} levels, shape ({n},), not {tuple(got.shape)}; "
                                          f"hint: the number of levels follows `bits`.")
        require(got.dtype == torch.float32, f"{call} should be float32 (as lora.nf4 stores its table), not "
                                            f"{got.dtype}; hint: compute in float64, then .float().")
        got = got.detach()
        require(bool((got[1:] > got[:-1]).all()), f"{call}: the levels should be sorted and all different.")
        require(int((got == 0).sum()) == 1 and float(got.max()) == 1.0 and float(got.min()) == -1.0,
                f"{call}: there should be one exact 0, and the levels should run from -1 to 1 (divide by the largest "
                f"|level|, which is the quantile at 1 - delta).")
        positive, negative = got[got > 0].double(), -got[got < 0].flip(0).double()
        require(positive.numel() == n // 2 and negative.numel() == n // 2 - 1,
                f"{call}: want {n // 2} levels above zero and {n // 2 - 1} below, got {positive.numel()} and "
                f"{negative.numel()}; hint: the extra level goes to the positive half.")
        # Undo the division by the largest: the outermost level is the quantile at 1 - delta. Then each half's
        # levels must sit at evenly spaced probabilities from 0.5 (excluded) to 1 - delta.
        top = math.sqrt(2) * torch.special.erfinv(torch.tensor(2 * (1 - delta) - 1, dtype=torch.float64))
        for half, count in ((positive, n // 2), (negative, n // 2 - 1)):
            p = normal_cdf(half * top)
            want = torch.linspace(0.5, 1 - delta, count + 1, dtype=torch.float64)[1:]
            require(torch.allclose(p, want, atol=2e-5),
                    f"{call}: the levels are not quantiles of N(0, 1) at evenly spaced probabilities between 0.5 and "
                    f"1 - delta (one half has {count}); hint: torch.linspace(1 - delta, 0.5, count + 1)[:-1], then "
                    f"the quantile function sqrt(2) * erfinv(2p - 1); use `bits` and `delta`, and compute the levels "
                    f"rather than typing in the chapter's (rounded) numbers.")
        if bits == 4 and "delta" not in kwargs:
            require(torch.allclose(got, nf4_levels(), atol=1e-6),
                    f"{call} is close to NF4's levels but not within 1e-6 of lora.nf4.nf4_levels(); hint: compute "
                    f"the quantiles in float64, convert to float32, then divide by the largest.")
