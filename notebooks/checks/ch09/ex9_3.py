"""Exercise 9.3: the amplification factor from torch.linalg.svd alone, against lora.analysis.amplification."""

import contextlib
import types

import lora.analysis
import torch
from otter.test_files import test_case

from checks._guard import answer, close, lookup, require
from lora.analysis import amplification

OK_FORMAT = False
name = "ex9_3"
points = 1

FORBIDDEN = ("the statement asks for the factor without lora.analysis: compute it from torch.linalg.svd of "
             "Delta W yourself")


def _refuse(*args, **kwargs):
    raise RuntimeError(FORBIDDEN)


@contextlib.contextmanager
def no_analysis(fn):
    """Every function of lora.analysis raises while the answer runs, under any name the answer can see it by."""
    originals = {n: f for n, f in vars(lora.analysis).items()
                 if isinstance(f, types.FunctionType) and f.__module__ == "lora.analysis"}
    bound = {n: v for n, v in getattr(fn, "__globals__", {}).items()
             if isinstance(v, types.FunctionType) and v in originals.values()}
    namespace = getattr(fn, "__globals__", {})
    try:
        for n in originals:
            setattr(lora.analysis, n, _refuse)
        for n in bound:
            namespace[n] = _refuse
        yield
    finally:
        for n, f in originals.items():
            setattr(lora.analysis, n, f)
        namespace.update(bound)


@test_case(points=1)
def ex9_3(env):
    g = torch.Generator().manual_seed(3)
    W = torch.randn(48, 32, generator=g) + 5 * torch.randn(48, 1, generator=g) @ torch.randn(1, 32, generator=g)
    W2 = torch.randn(20, 30, generator=g)
    cases = [(torch.randn(48, 3, generator=g) @ torch.randn(3, 32, generator=g) * 0.1, W, 3),
             (torch.randn(20, 5, generator=g) @ torch.randn(5, 30, generator=g), W2, 2),
             (torch.diag(torch.tensor([0.0, 0.0, 3.0, 4.0])), torch.diag(torch.tensor([10.0, 5.0, 1.0, 0.5])), 2)]
    fn = lookup(env, "exercise_9_3")
    for delta, weight, r in cases:
        call = f"exercise_9_3(delta {tuple(delta.shape)}, W {tuple(weight.shape)}, r={r})"
        with no_analysis(fn):
            got = answer(env, "exercise_9_3", delta, weight, r, returns=float, expects="a Python float: the factor")
        expected = amplification(delta, weight, r)["factor"]
        require(close(got, expected, rel=1e-5),
                f"{call} = {got:.4f} is not the amplification factor of these matrices (the numbers of section "
                f"9.6 or of the paper are not it either); hint: the projection uses the top-{r} singular vectors "
                f"of Delta W, not of W, and torch.linalg.svd returns V transposed (section 9.6).")
