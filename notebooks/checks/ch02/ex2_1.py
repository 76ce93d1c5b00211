"""Exercise 2.1: with the causal mask the output at position 0 ignores the last token; without it, it does not."""

import torch
import torch.nn.functional as F
from otter.test_files import test_case

from checks._guard import answer, close, keys, require
from gpt.attention import MultiHeadAttention

OK_FORMAT = False
name = "ex2_1"
points = 1


def expected(seed=123, d=16, num_heads=2, T=6):
    """How far position 0's output moves without the mask, drawn as the statement says."""
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        attn = MultiHeadAttention(d, d, context_length=T, dropout=0.0, num_heads=num_heads).eval()
        x = torch.randn(1, T, d)
        changed = x.clone()
        changed[0, -1] = torch.randn(d)
        outs = []
        for inp in (x, changed):
            q, k, v = attn.project_qkv(inp)
            context = F.scaled_dot_product_attention(q, k, v, is_causal=False)
            outs.append(attn.out_proj(context.transpose(1, 2).reshape(1, T, d))[0, 0])
        return (outs[1] - outs[0]).abs().max().item()


@test_case(points=1)
def ex2_1(env):
    for kwargs in [{"seed": 7, "d": 8, "num_heads": 4, "T": 9}, {"seed": 1, "d": 12, "num_heads": 3, "T": 4}]:
        call = f"exercise_2_1({', '.join(f'{a}={b}' for a, b in kwargs.items())})"
        result = answer(env, "exercise_2_1", **kwargs, returns=dict,
                        expects="a dict of two floats {'with_mask', 'without_mask'}")
        keys(result, {"with_mask", "without_mask"}, call)
        for key, value in result.items():
            require(isinstance(value, float) and value >= 0,
                    f"{call}['{key}'] = {value!r}: the largest absolute change, a Python float >= 0 (.item()).")
        require(result["with_mask"] < 1e-7,
                f"{call}['with_mask'] = {result['with_mask']:.3g}: with the causal mask, position 0 attends only to "
                f"itself, so changing the LAST token must not move its output at all. Did you change the last token "
                f"(x[:, -1]) and compare the outputs at position 0 ([:, 0]), in eval mode?")
        require(close(result["without_mask"], expected(**kwargs), rel=1e-4),
                f"{call}['without_mask'] = {result['without_mask']:.3g} is not how far position 0 moves without the "
                f"mask for this seed and these sizes; measure it. Hint: draw as the statement says (the module, then "
                f"x, then the new last token, all after torch.manual_seed(seed)) and run the module's own "
                f"projections (project_qkv), F.scaled_dot_product_attention(..., is_causal=False), then out_proj.")
