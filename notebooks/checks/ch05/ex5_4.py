"""Exercise 5.4: a LoRA branch initialised from the SVD of an update: exact at its rank, the Eckart-Young error below it."""

import torch
from otter.test_files import test_case

from checks._guard import answer, close, require
from lora.layers import LoRALayer

OK_FORMAT = False
name = "ex5_4"
points = 1


@test_case(points=1)
def ex5_4(env):
    g = torch.Generator().manual_seed(2024)
    for d_out, d_in, rank in [(40, 30, 4), (24, 36, 3)]:
        delta = torch.randn(d_out, rank, generator=g) @ torch.randn(rank, d_in, generator=g)  # (d_out, d_in)
        x = torch.randn(7, d_in, generator=g)
        S = torch.linalg.svdvals(delta)
        for r, alpha in [(rank, 16.0), (rank - 2, 8.0)]:
            call = f"exercise_5_4(delta_w ({d_out} x {d_in}, rank {rank}), r={r}, alpha={alpha})"
            layer = answer(env, "exercise_5_4", delta, r, alpha=alpha, returns=LoRALayer,
                           expects="a lora.LoRALayer(d_in, d_out, rank=r, alpha=alpha) with lora_A and lora_B set")
            require(float(layer.alpha) == alpha and layer.rank == r,
                    f"{call}: the layer was built with alpha = {layer.alpha:g}, rank = {layer.rank}; build it with the "
                    f"alpha and r the function is given, so that its scale is alpha / r.")
            require(tuple(layer.lora_A.shape) == (d_in, r) and tuple(layer.lora_B.shape) == (r, d_out),
                    f"{call}: lora_A {tuple(layer.lora_A.shape)} and lora_B {tuple(layer.lora_B.shape)} should be "
                    f"(d_in, r) = {(d_in, r)} and (r, d_out) = {(r, d_out)}.")
            with torch.no_grad():
                update = layer(torch.eye(d_in)).T  # the branch's update in nn.Linear's layout (d_out, d_in)
                error = float(torch.linalg.norm(update - delta))
                bound = float(S[r:].square().sum().sqrt())
                if r == rank:
                    worst = float((layer(x) - x @ delta.T).abs().max())
                    require(worst < 1e-4 * float(delta.abs().max()),
                            f"{call}: the branch should compute x delta_w^T exactly at r = the update's rank, but "
                            f"differs by up to {worst:.3g}. Hint: the branch multiplies by scale = alpha / r; and "
                            f"nn.Linear's layout is (d_out, d_in) while the branch computes x A B.")
                else:
                    require(close(error, bound, rel=1e-3),
                            f"{call}: the update's Frobenius error is {error:.5g}, but the best rank-{r} update "
                            f"has error {bound:.5g} (Eckart-Young, section 5.3). Hint: any basis of r directions "
                            f"is not enough; which r directions does section 5.3 keep?")
