"""Exercise 9.3: the amplification factor from torch.linalg.svd alone, against lora.analysis.amplification."""

import torch
from otter.test_files import test_case

from checks._guard import answer, close, require
from lora.analysis import amplification

OK_FORMAT = False
name = "ex9_3"
points = 1


@test_case(points=1)
def ex9_3(env):
    g = torch.Generator().manual_seed(3)
    W = torch.randn(48, 32, generator=g) + 5 * torch.randn(48, 1, generator=g) @ torch.randn(1, 32, generator=g)
    cases = [(torch.randn(48, 3, generator=g) @ torch.randn(3, 32, generator=g) * 0.1, W, 3),
             (torch.diag(torch.tensor([0.0, 0.0, 3.0, 4.0])), torch.diag(torch.tensor([10.0, 5.0, 1.0, 0.5])), 2)]
    for delta, weight, r in cases:
        call = f"exercise_9_3(delta {tuple(delta.shape)}, W {tuple(weight.shape)}, r={r})"
        got = answer(env, "exercise_9_3", delta, weight, r, returns=float, expects="a Python float: the factor")
        expected = amplification(delta, weight, r)["factor"]
        require(close(got, expected, rel=1e-5),
                f"{call} = {got:.4f} is not the amplification factor; hint: U and V are the top-{r} singular "
                f"vectors of Delta W (not of W), V from the rows of Vh, and the factor is ||Delta W||_F divided "
                f"by ||U^T W V||_F.")
