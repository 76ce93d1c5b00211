"""Exercise 2.1: with the causal mask the output at position 0 ignores the last token; without it, it does not."""

from otter.test_files import test_case

from checks._guard import answer, keys, require

OK_FORMAT = False
name = "ex2_1"
points = 1


@test_case(points=1)
def ex2_1(env):
    for kwargs in [{}, {"seed": 7, "d": 8, "num_heads": 4, "T": 9}]:
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
        require(result["without_mask"] > 1e-3,
                f"{call}['without_mask'] = {result['without_mask']:.3g}: without the mask position 0 sees every "
                f"token, so its output should move. Hint: F.scaled_dot_product_attention(..., is_causal=False) on "
                f"the module's own projections (project_qkv), then out_proj.")
