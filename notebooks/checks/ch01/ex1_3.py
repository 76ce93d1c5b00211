"""Exercise 1.3: nn.Embedding equals nn.Linear on one-hot vectors: the answer reports a difference at rounding level."""

import math

from otter.test_files import test_case

from checks._guard import answer, require

OK_FORMAT = False
name = "ex1_3"
points = 1


@test_case(points=1)
def ex1_3(env):
    for kwargs in [{}, {"vocab_size": 1000, "emb_dim": 8, "seed": 0}]:
        call = f"exercise_1_3({', '.join(f'{k}={v}' for k, v in kwargs.items())})"
        diff = answer(env, "exercise_1_3", **kwargs, returns=float,
                      expects="a Python float: the largest absolute difference (use .item())")
        require(math.isfinite(diff) and diff >= 0,
                f"{call} = {diff}: a largest absolute difference is a finite number >= 0 (use .abs().max()).")
        require(diff < 1e-6,
                f"{call} = {diff:.3g}: the two layers do not compute the same thing. Hint: nn.Linear stores its "
                f"weight as (out_features, in_features) = (emb_dim, vocab_size); copy the embedding's weight "
                f"transposed into it (under torch.no_grad()), and feed it one-hot vectors as floats.")
