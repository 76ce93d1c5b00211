"""Exercise 4.2: top-k with k = 1 is greedy at any temperature; softmax(z / T) goes one-hot as T -> 0, uniform as
T -> inf. The check hands over logits of its own and compares with softmax at the two temperatures the statement
names: the limits stated instead of computed do not match."""

import torch
from otter.test_files import test_case

from checks._guard import answer, keys, require

OK_FORMAT = False
name = "ex4_2"
points = 1
COLD, HOT = 0.01, 1e4  # the statement's temperatures


@test_case(points=1)
def ex4_2(env):
    for temperatures, z in [((0.7, 2.0), (0.3, 0.1, 0.25, -0.2, 0.28, 0.0)), ((0.1, 10.0), (-1.0, 0.5, 0.46))]:
        call = f"exercise_4_2(temperatures={temperatures}, z={z})"
        result = answer(env, "exercise_4_2", temperatures=temperatures, z=z, returns=dict, timeout=30,
                        expects="a dict {'top1_equals_greedy': {T: bool}, 'cold': tensor, 'hot': tensor}")
        keys(result, {"top1_equals_greedy", "cold", "hot"}, call)
        same = result["top1_equals_greedy"]
        require(isinstance(same, dict) and set(same) == set(temperatures),
                f"{call}['top1_equals_greedy'] should be a dict with one entry per temperature {temperatures}.")
        require(all(v is True for v in same.values()),
                f"{call}['top1_equals_greedy'] = {same}: with top_k=1 the sampled text should equal the greedy one at "
                f"every temperature; compare the token ids with torch.equal.")
        logits = torch.tensor(z, dtype=torch.float64)
        for key, temperature, atol in (("cold", COLD, 1e-6), ("hot", HOT, 1e-7)):
            p = result[key]
            require(isinstance(p, torch.Tensor) and tuple(p.shape) == (len(z),),
                    f"{call}['{key}'] should be a tensor of {len(z)} probabilities, one per logit of z.")
            expected = torch.softmax(logits / temperature, dim=-1)
            require(torch.allclose(p.detach().double().cpu(), expected, rtol=0, atol=atol),
                    f"{call}['{key}'] = {p}: not the softmax of these logits at temperature {temperature:g}. Compute "
                    f"it (section 4.5) rather than writing down the limit it tends to: at a finite temperature the "
                    f"probabilities are close to the limit, not equal to it.")
