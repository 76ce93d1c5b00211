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


EXTRA = 7  # parameters the check adds to both modules while it asks: a count sees them, a formula in d does not


def with_extra(init):
    def patched(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.check_extra = torch.nn.Parameter(torch.zeros(EXTRA))
    return patched


@test_case(points=1)
def ex2_2(env):
    for d, num_heads in [(96, 4), (40, 5)]:
        call = f"exercise_2_2(d={d}, num_heads={num_heads})"
        inits = (MultiHeadAttention.__init__, FusedMultiHeadAttention.__init__)
        MultiHeadAttention.__init__, FusedMultiHeadAttention.__init__ = (with_extra(i) for i in inits)
        try:
            result = answer(env, "exercise_2_2", d=d, num_heads=num_heads, returns=dict,
                            expects="a dict {'without qkv bias': {...}, 'with qkv bias': {...}} of three ints each")
        finally:
            MultiHeadAttention.__init__, FusedMultiHeadAttention.__init__ = inits
        keys(result, {"without qkv bias", "with qkv bias"}, call)
        for key, qkv_bias in (("without qkv bias", False), ("with qkv bias", True)):
            entry = result[key]
            require(isinstance(entry, dict), f"{call}['{key}'] should be a dict, not {type(entry).__name__}.")
            keys(entry, {"formula", "separate", "fused"}, f"{call}['{key}']")
            truth = counted(MultiHeadAttention, d, num_heads, qkv_bias)
            require(entry["separate"] == truth + EXTRA
                    and entry["fused"] == counted(FusedMultiHeadAttention, d, num_heads, qkv_bias) + EXTRA,
                    f"{call}['{key}']: counted {entry['separate']!r} (separate) and {entry['fused']!r} (fused); count "
                    f"the parameters of the modules you build with qkv_bias={qkv_bias} (the check adds {EXTRA} parameters "
                    f"to each while it asks, so that a count and a formula differ).")
            require(entry["formula"] == truth,
                    f"{call}['{key}']['formula'] = {entry['formula']!r} is not the layer's number of parameters for d = {d}. "
                    f"Compute it from d and qkv_bias, not by counting a module (the check's modules carry {EXTRA} "
                    f"extra parameters). Hint: list the layer's weight matrices and bias vectors (section 2.5).")
