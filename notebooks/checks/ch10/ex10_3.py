"""Exercise 10.3: VeRA's trained numbers, against peft_methods.vera.vera_parameter_count and against a model built
with apply_vera (no head: only VeRA's vectors train), at dimensions and ranks other than the statement's."""

import torch
from otter.test_files import test_case

from checks._guard import answer, require
from peft_methods.vera import apply_vera, vera_parameter_count

OK_FORMAT = False
name = "ex10_3"
points = 1


def trained_numbers(dims, rank: int) -> int:
    """The values that require a gradient in linear layers of these (d_in, d_out) after apply_vera."""
    with torch.random.fork_rng(devices=[]):  # nn.Linear draws its weights from the global RNG
        model = torch.nn.ModuleDict({f"layer{i}": torch.nn.Linear(d_in, d_out) for i, (d_in, d_out) in enumerate(dims)})
    apply_vera(model, rank=rank, targets=tuple(model))
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@test_case(points=1)
def ex10_3(env):
    for dims, rank in [(((16, 24), (24, 8)), 32), (((10, 10), (10, 30), (30, 10)), 5), (((64, 12),), 100)]:
        call = f"exercise_10_3(layer_dims={dims}, rank={rank})"
        got = answer(env, "exercise_10_3", dims, rank=rank, returns=int, expects="an int: the trained numbers")
        built = trained_numbers(dims, rank)
        require(built == vera_parameter_count(dims, rank), "the check's own model disagrees with vera_parameter_count")
        require(not isinstance(got, bool) and got == built,
                f"{call} = {got:,}, but VeRA trains a different number of values on these layers; hint: per layer one "
                f"vector for the r hidden directions and one for the layer's outputs; the shared random matrices "
                f"are frozen, and use `rank` and `layer_dims` as given.")
