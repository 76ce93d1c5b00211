"""Exercise 6.3: the merge + unmerge round trip in float32 and in bf16, compared with the statement's recipe run by the
check itself (lora.LinearWithLoRA) at cycles, sizes and seeds of its own, and whether it grows with more cycles."""
import torch
from otter.test_files import test_case
from torch import nn
from checks._guard import answer, close, keys, require
from lora import LinearWithLoRA

OK_FORMAT = False
name = "ex6_3"
points = 1


def _round_trip(dtype, cycles, d, r, seed):
    """The statement's setting, step by step; every random number comes from the seeded generator g."""
    g = torch.Generator().manual_seed(seed)
    linear = nn.Linear(d, d, bias=False)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(d, d, generator=g) * 0.02)
    layer = LinearWithLoRA(linear.to(dtype), rank=r, alpha=16)
    with torch.no_grad():
        layer.lora["default"].lora_A.copy_(torch.randn(d, r, generator=g) * 0.05)
        layer.lora["default"].lora_B.copy_(torch.randn(r, d, generator=g) * 0.02)
    before = layer.linear.weight.detach().clone()
    for _ in range(cycles):
        layer.merge("default")
        layer.unmerge("default")
    return (layer.linear.weight.float() - before.float()).abs().max().item()


@test_case(points=1)
def ex6_3(env):
    results = {}
    for kwargs in [{"cycles": 1}, {"cycles": 20}, {"cycles": 3, "d": 8, "r": 2, "seed": 5}]:
        call = f"exercise_6_3({', '.join(f'{a}={b}' for a, b in kwargs.items())})"
        result = answer(env, "exercise_6_3", **kwargs, returns=dict,
                        expects="a dict {'float32': float, 'bfloat16': float}")
        keys(result, {"float32", "bfloat16"}, call)
        f32, bf16 = result["float32"], result["bfloat16"]
        require(all(isinstance(v, float) for v in (f32, bf16)),
                f"{call} should hold two floats (use .item()), got {type(f32).__name__} and {type(bf16).__name__}.")
        setting = {"d": 256, "r": 8, "seed": 123, **kwargs}
        with torch.random.fork_rng():  # LinearWithLoRA draws A from the global RNG before the recipe overwrites it
            want = {"float32": _round_trip(torch.float32, **setting),
                    "bfloat16": _round_trip(torch.bfloat16, **setting)}
        require(close(f32, want["float32"], rel=1e-6, abs_=1e-15),
                f"{call}['float32'] = {f32:.4g} is not what the round trip in float32 leaves in this setting. Hint: "
                f"follow the statement step by step (the seeded generator g for W, A and B, in that order), and "
                f"measure W after merge AND unmerge against a copy taken before, as floats.")
        require(close(bf16, want["bfloat16"], rel=1e-6, abs_=1e-15),
                f"{call}['bfloat16'] = {bf16:.4g} is not what the round trip of a bf16 base weight leaves in this "
                f"setting. Hint: make the base layer bf16 with .to(torch.bfloat16) BEFORE wrapping it, then merge "
                f"and unmerge on it.")
        results[kwargs["cycles"]] = result
    require(results[20] == results[1],
            f"exercise_6_3(cycles=20) = {results[20]} differs from cycles=1: {results[1]}. Hint: build the layer "
            f"from the seed inside the function, and run the cycles on one layer.")
