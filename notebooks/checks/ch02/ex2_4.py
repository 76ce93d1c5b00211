"""Exercise 2.4: the variance of q . k grows with d_k; dividing by sqrt(d_k) brings it back to 1. Measured on the
draws the statement pins down, at a seed, sample size and widths of the check's own: a variance stated from the
formula instead of measured does not match."""

import math

import torch
from otter.test_files import test_case

from checks._guard import answer, close, keys, require

OK_FORMAT = False
name = "ex2_4"
points = 1


def measured(dims, n, seed):
    """{d: (variance of q.k, variance of q.k / sqrt(d))}, q then k for each width from one generator."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for d in dims:
        q = torch.randn(n, d, generator=gen, dtype=torch.float64)
        k = torch.randn(n, d, generator=gen, dtype=torch.float64)
        dots = (q * k).sum(dim=-1)
        out[d] = (dots.var().item(), (dots / math.sqrt(d)).var().item())
    return out


@test_case(points=1)
def ex2_4(env):
    for dims, n, seed in [((2, 1024), 3_000, 7), ((8, 32, 128), 5_000, 1)]:
        call = f"exercise_2_4(dims={dims}, n={n}, seed={seed})"
        result = answer(env, "exercise_2_4", dims=dims, n=n, seed=seed, returns=dict,
                        expects="a dict {d_k: (raw variance, scaled variance)} of float pairs")
        keys(result, set(dims), call)
        truth = measured(dims, n, seed)
        for d in dims:
            pair = result[d]
            require(isinstance(pair, tuple) and len(pair) == 2 and all(isinstance(v, float) for v in pair),
                    f"{call}[{d}] = {pair!r}: a tuple of two Python floats (raw, scaled).")
            raw, scaled = pair
            require(close(raw / scaled, d, rel=1e-6),
                    f"{call}[{d}]: raw / scaled = {raw / scaled:.4g}; both variances should come from the same dot "
                    f"products, the second after dividing them by sqrt(d_k).")
            require(close(raw, truth[d][0], rel=1e-3),
                    f"{call}[{d}]: the raw variance {raw:.5g} is not the variance of these n = {n} dot products. "
                    f"Measure it: draw q, then k, for each d_k in order, from one generator seeded with seed, in "
                    f"float64, and take the sample variance; a value stated from theory is not a measurement.")
