"""Exercise 9.2: where an adapter's update goes, per kind of matrix, against lora.analysis.update_norms."""

from pathlib import Path

import lora
import torch
from otter.test_files import test_case

from checks._guard import answer, keys, require
from lora.analysis import AdapterFactors, load_factors, update_norms

OK_FORMAT = False
name = "ex9_2"
points = 1

# The repository's results (otter runs this file without __file__; the lora package sits at the root).
RESULTS = Path(lora.__file__).resolve().parent.parent / "results" / "ch09" / "adapters"
KINDS = {"att.W_query": "query", "att.W_key": "key", "att.W_value": "value", "att.out_proj": "out_proj",
         "ff.layers.0": "ff_in", "ff.layers.2": "ff_out"}


def built_adapter() -> AdapterFactors:
    """Two layers, three kinds, random factors of rank 2 (scale 0.5)."""
    g = torch.Generator().manual_seed(9)
    shapes = {f"trf_blocks.{i}.{k}": s for i in range(2)
              for k, s in (("att.W_query", (8, 8)), ("att.W_value", (8, 8)), ("ff.layers.0", (32, 8)))}
    return AdapterFactors({n: torch.randn(s[1], 2, generator=g) for n, s in shapes.items()},
                          {n: torch.randn(2, s[0], generator=g) for n, s in shapes.items()}, 0.5)


@test_case(points=1)
def ex9_2(env):
    adapters = [("a built adapter (query, value, ff_in in 2 layers)", built_adapter())]
    if (RESULTS / "budget_attn_r9_s123.safetensors").is_file():
        adapters.append(("the attention-only adapter budget_attn_r9_s123",
                         load_factors(RESULTS / "budget_attn_r9_s123.safetensors")))
    for what, factors in adapters:
        got = answer(env, "exercise_9_2", factors, returns=dict, expects="a dict {kind: share of the squared norm}")
        norms = update_norms(factors)
        expected = {}
        for n, v in norms.items():
            kind = next(k2 for k, k2 in KINDS.items() if n.endswith(k))
            expected[kind] = expected.get(kind, 0.0) + v * v
        total = sum(expected.values())
        keys(got, set(expected), f"exercise_9_2({what})", " (one entry per kind of matrix the adapter adapts)")
        for kind, share in got.items():
            require(isinstance(share, float), f"exercise_9_2({what})['{kind}'] should be a float, not "
                                              f"{type(share).__name__}.")
        require(abs(sum(got.values()) - 1) < 1e-6, f"exercise_9_2({what}): the shares add up to "
                                                    f"{sum(got.values()):.6f}, not 1.")
        for kind, share in got.items():
            require(abs(share - expected[kind] / total) < 1e-6,
                    f"exercise_9_2({what})['{kind}'] = {share:.4f} is not that kind's share; hint: Frobenius norms "
                    f"of different matrices do not add up, their squares do (sum the squared norms per kind, "
                    f"then divide by the sum over all kinds).")
