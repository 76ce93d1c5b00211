"""Exercise 6.2: fused q, k, v LoRA at rank r against one plain LoRA of rank 3r with a block-diagonal B."""

from otter.test_files import test_case

from checks._guard import answer, keys, require
from lora import lora_parameter_count

OK_FORMAT = False
name = "ex6_2"
points = 1


@test_case(points=1)
def ex6_2(env):
    for d, r in ((32, 4), (16, 2)):
        result = answer(env, "exercise_6_2", d, r, returns=dict,
                        expects="a dict {'max_diff': float, 'fused_params': int, 'plain_rank_3r_params': int}")
        call = f"exercise_6_2(d={d}, r={r})"
        keys(result, {"max_diff", "fused_params", "plain_rank_3r_params"}, call)
        diff = result["max_diff"]
        require(isinstance(diff, float) and 0 <= diff < 1e-5,
                f"{call}['max_diff'] = {diff!r}: the two layers should give the same output up to float rounding "
                f"(a float below 1e-5). Hint: put [A_q | A_k | A_v] into the plain LoRA's A and "
                f"torch.block_diag(B_q, B_k, B_v) into its B, and give both the same scale alpha / r.")
        fused = 3 * lora_parameter_count(d, d, r)
        plain = lora_parameter_count(d, 3 * d, 3 * r)
        require(result["fused_params"] == fused,
                f"{call}['fused_params'] = {result['fused_params']!r} is not right; hint: three (A_j, B_j) pairs, "
                f"each mapping d -> r -> d.")
        require(result["plain_rank_3r_params"] == plain,
                f"{call}['plain_rank_3r_params'] = {result['plain_rank_3r_params']!r} is not right; hint: one "
                f"LoRA of rank 3r on the whole qkv layer, d inputs and 3d outputs.")
