"""Exercise 10.2: PiSSA's residual weight, against what lora.pissa.pissa_init leaves in a layer, at shapes and ranks
other than the statement's, and its largest singular value against W's (r+1)-th."""

import torch
from otter.test_files import test_case

from checks._guard import answer, require
from lora.layers import LinearWithLoRA
from lora.pissa import pissa_init

OK_FORMAT = False
name = "ex10_2"
points = 1


@test_case(points=1)
def ex10_2(env):
    for (d_out, d_in), r, seed in [((48, 32), 4, 0), ((20, 40), 7, 1), ((64, 64), 1, 2)]:
        W = torch.randn(d_out, d_in, generator=torch.Generator().manual_seed(seed))
        call = f"exercise_10_2(W of shape {(d_out, d_in)}, r={r})"
        got = answer(env, "exercise_10_2", W.clone(), r=r, returns=torch.Tensor,
                     expects="a float tensor of W's shape: the residual weight")
        require(tuple(got.shape) == (d_out, d_in), f"{call} should have W's shape {(d_out, d_in)}, got "
                                                   f"{tuple(got.shape)}.")
        linear = torch.nn.Linear(d_in, d_out, bias=False)
        with torch.no_grad():
            linear.weight.copy_(W)
        layer = LinearWithLoRA(linear, rank=r, alpha=r)
        pissa_init(layer)
        residual = layer.linear.weight.detach().double()
        S = torch.linalg.svdvals(W.double())
        top = float(torch.linalg.svdvals(got.detach().double())[0])
        require(abs(top - float(S[r])) < 1e-4 * float(S[0]),
                f"{call}: the largest singular value of your residual is {top:.4f}, but what remains of W after its "
                f"top {r} directions has W's singular value number {r + 1} as its largest; hint: take the SVD of W "
                f"(torch.linalg.svd) and subtract U_r diag(S_r) V_r^T, the first r columns and rows.")
        require(torch.allclose(got.detach().double(), residual, atol=1e-4 * float(S[0])),
                f"{call} is not the weight PiSSA leaves frozen (lora.pissa.pissa_init); hint: W minus its top-{r} "
                f"singular part, not the part itself.")
