"""Exercise 2.3: the book's single-head CausalAttention equals MultiHeadAttention(num_heads=1) with out_proj = identity."""

import math

from otter.test_files import test_case

from checks._guard import answer, require

OK_FORMAT = False
name = "ex2_3"
points = 1


@test_case(points=1)
def ex2_3(env):
    for kwargs in [{}, {"seed": 5, "d_in": 4, "d_out": 10, "T": 7}]:
        call = f"exercise_2_3({', '.join(f'{a}={b}' for a, b in kwargs.items())})"
        diff = answer(env, "exercise_2_3", **kwargs, returns=float,
                      expects="a Python float: the largest absolute difference between the two outputs (.item())")
        require(math.isfinite(diff) and diff >= 0, f"{call} = {diff}: a largest absolute difference is >= 0.")
        require(diff < 1e-5,
                f"{call} = {diff:.3g}: the two modules differ. Hint: copy W_query, W_key and W_value across, set "
                f"out_proj's weight to the identity and its bias to 0 (under torch.no_grad()), and use eval mode.")
