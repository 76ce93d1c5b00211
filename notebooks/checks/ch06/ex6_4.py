"""Exercise 6.4: the bound of the book's kaiming_uniform_ on A (d_in, r), compared with torch's own fan-in; the
gradients must come from autograd (the check counts the backward calls), at sizes of the statement and of its own."""

import math

import torch
from otter.test_files import test_case

from checks._guard import answer, close, keys, require

OK_FORMAT = False
name = "ex6_4"
points = 1


@test_case(points=1)
def ex6_4(env):
    for d_in, d_out, r in ((768, 768, 16), (256, 512, 4), (100, 60, 9)):
        original, calls = torch.autograd.backward, []

        def counted(*args, **kwargs):  # Tensor.backward() goes through torch.autograd.backward
            calls.append(1)
            return original(*args, **kwargs)

        torch.autograd.backward = counted
        try:
            result = answer(env, "exercise_6_4", d_in, d_out, r, returns=dict,
                            expects="a dict {'book_bound': float, 'linear_bound': float, 'grad_B_ratio': float, "
                                    "'grad_A_norm': float}")
        finally:
            torch.autograd.backward = original
        call = f"exercise_6_4(d_in={d_in}, d_out={d_out}, r={r})"
        keys(result, {"book_bound", "linear_bound", "grad_B_ratio", "grad_A_norm"}, call)
        require(all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in result.values()),
                f"{call}: every value should be a Python number (use .item()).")
        require(len(calls) >= 2, f"{call} ran backward() {len(calls)} times: the exercise measures the gradients "
                f"with autograd, once per init. Hint: push x through each branch and call .backward(grad_out).")
        fan_in, _ = torch.nn.init._calculate_fan_in_and_fan_out(torch.empty(d_in, r))  # what torch reads
        require(close(result["book_bound"], 1 / math.sqrt(fan_in), rel=1e-6),
                f"{call}['book_bound'] = {result['book_bound']:.4g} is not the bound torch uses; hint: ask torch, "
                f"not the formula you expect: run the book's call on a tensor of A's shape and read which fan-in it "
                f"used (torch.nn.init._calculate_fan_in_and_fan_out).")
        require(close(result["linear_bound"], 1 / math.sqrt(d_in), rel=1e-6),
                f"{call}['linear_bound'] = {result['linear_bound']:.4g}; hint: nn.Linear(d_in, r) stores (r, d_in).")
        require(close(result["grad_B_ratio"], result["book_bound"] / result["linear_bound"], rel=1e-4),
                f"{call}['grad_B_ratio'] = {result['grad_B_ratio']:.4g} is not what the two inits give. Hint: the same "
                f"uniform draw scaled to each bound, the same x and the same output gradient, B = 0 in both.")
        require(result["grad_A_norm"] == 0,
                f"{call}['grad_A_norm'] = {result['grad_A_norm']:.3g} is not the first step's gradient of A. Hint: "
                f"B = torch.zeros(r, d_out), as a LoRA branch starts (exercise 5.5).")
