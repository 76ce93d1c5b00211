"""Exercise 10.2: PiSSA's residual weight, against what lora.pissa.pissa_init leaves in a layer, at shapes and ranks
other than the statement's; and two properties that do not depend on the singular vectors' signs: its largest
singular value is W's (r+1)-th, and W minus it has rank r."""

import torch
from otter.test_files import test_case

from checks._guard import answer, require
from lora.layers import LinearWithLoRA
from lora.pissa import pissa_init

OK_FORMAT = False
name = "ex10_2"
points = 1


def pissa_residual(W: torch.Tensor, r: int) -> torch.Tensor:
    """What pissa_init leaves frozen in a layer holding W (the layer built without touching the global RNG)."""
    with torch.random.fork_rng(devices=[]):  # nn.Linear and LinearWithLoRA draw from the global RNG
        linear = torch.nn.Linear(W.shape[1], W.shape[0], bias=False)
        with torch.no_grad():
            linear.weight.copy_(W)
        layer = LinearWithLoRA(linear, rank=r, alpha=r)
    pissa_init(layer)
    return layer.linear.weight.detach().double()


@test_case(points=1)
def ex10_2(env):
    for (d_out, d_in), r, seed in [((48, 32), 4, 0), ((20, 40), 7, 1), ((64, 64), 1, 2)]:
        W = torch.randn(d_out, d_in, generator=torch.Generator().manual_seed(seed))
        call = f"exercise_10_2(W of shape {(d_out, d_in)}, r={r})"
        got = answer(env, "exercise_10_2", W.clone(), r=r, returns=torch.Tensor,
                     expects="a float tensor of W's shape: the residual weight")
        require(tuple(got.shape) == (d_out, d_in), f"{call} should have W's shape {(d_out, d_in)}, got "
                                                   f"{tuple(got.shape)}.")
        require(got.is_floating_point(), f"{call} should be a float tensor, got {got.dtype}.")
        got = got.detach().double()
        S = torch.linalg.svdvals(W.double())
        tol = 1e-4 * float(S[0])
        top = float(torch.linalg.svdvals(got)[0])
        require(abs(top - float(S[r])) < tol,
                f"{call}: the largest singular value of your residual is {top:.4f}, but what remains of W after its "
                f"top {r} directions has W's singular value number {r + 1} as its largest; hint: take the SVD of W "
                f"(torch.linalg.svd, singular values in decreasing order) and subtract U_r diag(S_r) V_r^T, built "
                f"from the first r columns of U and the first r rows of Vh, with the `r` you are given.")
        removed = int(torch.linalg.matrix_rank(W.double() - got, atol=tol))
        require(removed == r,
                f"{call}: W minus your residual has rank {removed}, but PiSSA moves exactly the top {r} singular "
                f"directions into B A, a rank-{r} matrix; hint: subtract exactly r singular directions, the largest.")
        require(torch.allclose(got, pissa_residual(W, r), atol=tol),
                f"{call} is not the weight PiSSA leaves frozen (lora.pissa.pissa_init); hint: W minus its top-{r} "
                f"singular part, U[:, :r] * S[:r] @ Vh[:r], not the part itself.")
