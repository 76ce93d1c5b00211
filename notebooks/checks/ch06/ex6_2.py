"""Exercise 6.2: fused q, k, v LoRA at rank r against one plain LoRA of rank 3r with a block-diagonal B. The check
watches both layers run (FusedQKVWithLoRA and LinearWithLoRA, with a trained, non-zero B) and measures their
difference itself, at sizes of the statement and of its own."""
from otter.test_files import test_case
from checks._guard import answer, keys, require
from lora import FusedQKVWithLoRA, LinearWithLoRA, lora_parameter_count

OK_FORMAT = False
name = "ex6_2"
points = 1


@test_case(points=1)
def ex6_2(env):
    for d, r in ((32, 4), (16, 2), (24, 3)):
        runs = {FusedQKVWithLoRA: [], LinearWithLoRA: []}
        originals = {cls: cls.__dict__["forward"] for cls in runs}

        def watch(cls):
            def watched(self, x, *args, **kwargs):
                out = originals[cls](self, x, *args, **kwargs)
                if type(self) is cls:
                    runs[cls].append((self, x.detach(), out.detach()))
                return out
            return watched

        for cls in runs:
            cls.forward = watch(cls)
        try:
            result = answer(env, "exercise_6_2", d, r, returns=dict,
                            expects="a dict {'max_diff': float, 'fused_params': int, 'plain_rank_3r_params': int}")
        finally:
            for cls, forward in originals.items():
                cls.forward = forward
        call = f"exercise_6_2(d={d}, r={r})"
        keys(result, {"max_diff", "fused_params", "plain_rank_3r_params"}, call)
        diff = result["max_diff"]
        require(isinstance(diff, float) and 0 <= diff < 1e-5,
                f"{call}['max_diff'] = {diff!r}: the two layers should give the same output up to float rounding "
                f"(a float below 1e-5). Hint: the plain LoRA's A holds the three A blocks side by side, its B holds "
                f"the B blocks on its diagonal, and both layers need the same scale.")
        pairs = [(f, p) for f in runs[FusedQKVWithLoRA] for p in runs[LinearWithLoRA]
                 if f[1].shape == p[1].shape and bool((f[1] == p[1]).all())]
        require(pairs, f"{call}: the check saw no FusedQKVWithLoRA and LinearWithLoRA run on the same input. Hint: "
                f"build both layers, call both on one random x, and measure the difference of their outputs.")
        trained = [(f, p) for f, p in pairs if bool((f[0].lora["default"].lora_B != 0).any())
                   and all(f[0].lora["default"].enable)]
        require(trained, f"{call}: the fused layer that ran has a zero B or not all three projections enabled, so "
                f"the comparison shows nothing. Hint: enable=(True, True, True), then give lora_B random values.")
        require(min(float((f[2] - p[2]).abs().max()) for f, p in trained) < 1e-5,
                f"{call}: the two layers your answer ran differ by more than float rounding, so max_diff = {diff!r} is "
                f"not their difference. Hint: copy the fused layer's factors into the plain one as the statement says.")
        require(result["fused_params"] == 3 * lora_parameter_count(d, d, r),
                f"{call}['fused_params'] = {result['fused_params']!r} is not right; hint: three (A_j, B_j) pairs, "
                f"each mapping d -> r -> d.")
        require(result["plain_rank_3r_params"] == lora_parameter_count(d, 3 * d, 3 * r),
                f"{call}['plain_rank_3r_params'] = {result['plain_rank_3r_params']!r} is not right; hint: one "
                f"LoRA of rank 3r on the whole qkv layer, d inputs and 3d outputs.")
