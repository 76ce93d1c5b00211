"""Exercise 4.2: top-k with k = 1 is greedy at any temperature; softmax(z / T) goes one-hot as T -> 0, uniform as T -> inf."""

import torch
from otter.test_files import test_case

from checks._guard import answer, keys, require

OK_FORMAT = False
name = "ex4_2"
points = 1


@test_case(points=1)
def ex4_2(env):
    for temperatures in [(0.5, 1.0, 3.0), (0.1, 10.0)]:
        call = f"exercise_4_2(temperatures={temperatures})"
        result = answer(env, "exercise_4_2", temperatures=temperatures, returns=dict, timeout=30,
                        expects="a dict {'top1_equals_greedy': {T: bool}, 'cold': tensor, 'hot': tensor}")
        keys(result, {"top1_equals_greedy", "cold", "hot"}, call)
        same = result["top1_equals_greedy"]
        require(isinstance(same, dict) and set(same) == set(temperatures),
                f"{call}['top1_equals_greedy'] should be a dict with one entry per temperature {temperatures}.")
        require(all(v is True for v in same.values()),
                f"{call}['top1_equals_greedy'] = {same}: with top_k=1 the sampled text should equal the greedy one at "
                f"every temperature; compare the token ids with torch.equal.")
        for key in ("cold", "hot"):
            p = result[key]
            require(isinstance(p, torch.Tensor) and p.shape == (4,) and abs(float(p.sum()) - 1) < 1e-5,
                    f"{call}['{key}'] should be a tensor of 4 probabilities that sum to 1.")
        z = torch.tensor([2.0, 1.0, 0.5, -1.0])
        require(int(result["cold"].argmax()) == int(z.argmax()) and float(result["cold"].max()) > 0.999,
                f"{call}['cold'] = {result['cold']}: at a temperature near 0 the softmax should put (almost) all its "
                f"mass on the largest logit.")
        require(float((result["hot"] - 0.25).abs().max()) < 1e-3,
                f"{call}['hot'] = {result['hot']}: at a very high temperature every probability should approach 1/4.")
