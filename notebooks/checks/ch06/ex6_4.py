"""Exercise 6.4: the bound of the book's kaiming_uniform_ on A (d_in, r), compared with torch's own fan-in."""

import math

import torch
from otter.test_files import test_case

from checks._guard import answer, close, keys, require

OK_FORMAT = False
name = "ex6_4"
points = 1


@test_case(points=1)
def ex6_4(env):
    for d_in, d_out, r in ((768, 768, 16), (256, 512, 4)):
        result = answer(env, "exercise_6_4", d_in, d_out, r, returns=dict,
                        expects="a dict {'book_bound': float, 'linear_bound': float, 'grad_B_ratio': float, "
                                "'grad_A_norm': float}")
        call = f"exercise_6_4(d_in={d_in}, d_out={d_out}, r={r})"
        keys(result, {"book_bound", "linear_bound", "grad_B_ratio", "grad_A_norm"}, call)
        require(all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in result.values()),
                f"{call}: every value should be a Python number (use .item()).")
        fan_in, _ = torch.nn.init._calculate_fan_in_and_fan_out(torch.empty(d_in, r))  # what torch reads
        require(close(result["book_bound"], 1 / math.sqrt(fan_in), rel=1e-6),
                f"{call}['book_bound'] = {result['book_bound']:.4g} is not the bound torch uses; hint: "
                f"kaiming_uniform_(t, a=sqrt(5)) gives U(-1/sqrt(fan_in), 1/sqrt(fan_in)), and for a 2-D tensor torch "
                f"takes fan_in from its SECOND dimension.")
        require(close(result["linear_bound"], 1 / math.sqrt(d_in), rel=1e-6),
                f"{call}['linear_bound'] = {result['linear_bound']:.4g}; hint: nn.Linear(d_in, r) stores (r, d_in).")
        require(close(result["grad_B_ratio"], result["book_bound"] / result["linear_bound"], rel=1e-4),
                f"{call}['grad_B_ratio'] = {result['grad_B_ratio']:.4g}: dL/dB = scale (x A)^T dL/dy is linear in A, "
                f"so with the same uniform draw scaled to each bound, the ratio of the two gradients' norms is the "
                f"ratio of the bounds. Hint: same x, same dL/dy, B = 0 in both.")
        require(result["grad_A_norm"] == 0,
                f"{call}['grad_A_norm'] = {result['grad_A_norm']:.3g}: at the first step dL/dA is proportional to B, "
                f"which starts at zero. Hint: B = torch.zeros(r, d_out).")
