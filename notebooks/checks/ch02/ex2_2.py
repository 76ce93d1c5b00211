"""Exercise 2.2: parameters of one attention layer, by formula and counted, in both layouts and with or without qkv bias."""

import torch
from otter.test_files import test_case

from checks._guard import answer, keys, require
from gpt.attention import FusedMultiHeadAttention, MultiHeadAttention

OK_FORMAT = False
name = "ex2_2"
points = 1


def counted(cls, d, num_heads, qkv_bias):
    with torch.device("meta"):  # shapes only
        module = cls(d, d, context_length=8, dropout=0.0, num_heads=num_heads, qkv_bias=qkv_bias)
    return sum(p.numel() for p in module.parameters())


@test_case(points=1)
def ex2_2(env):
    for d, num_heads in [(768, 12), (96, 4)]:
        call = f"exercise_2_2(d={d}, num_heads={num_heads})"
        result = answer(env, "exercise_2_2", d=d, num_heads=num_heads, returns=dict,
                        expects="a dict {'without qkv bias': {...}, 'with qkv bias': {...}} of three ints each")
        keys(result, {"without qkv bias", "with qkv bias"}, call)
        for key, qkv_bias in (("without qkv bias", False), ("with qkv bias", True)):
            entry = result[key]
            require(isinstance(entry, dict), f"{call}['{key}'] should be a dict, not {type(entry).__name__}.")
            keys(entry, {"formula", "separate", "fused"}, f"{call}['{key}']")
            truth = counted(MultiHeadAttention, d, num_heads, qkv_bias)
            require(entry["separate"] == truth and entry["fused"] == counted(FusedMultiHeadAttention, d, num_heads,
                                                                            qkv_bias),
                    f"{call}['{key}']: counted {entry['separate']!r} (separate) and {entry['fused']!r} (fused); count "
                    f"the modules' parameters with qkv_bias={qkv_bias} (sum of p.numel()).")
            require(entry["formula"] == truth,
                    f"{call}['{key}']['formula'] = {entry['formula']!r} does not match the count {truth:,}. Hint: "
                    f"three projections, their biases if qkv_bias, and out_proj with its bias.")
