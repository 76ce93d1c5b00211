"""Exercise 6.3: the merge + unmerge round trip in float32 and in bf16, and whether it grows with more cycles."""

from otter.test_files import test_case

from checks._guard import answer, keys, require

OK_FORMAT = False
name = "ex6_3"
points = 1


@test_case(points=1)
def ex6_3(env):
    results = {}
    for cycles in (1, 20):
        result = answer(env, "exercise_6_3", cycles, returns=dict,
                        expects="a dict {'float32': float, 'bfloat16': float}")
        call = f"exercise_6_3(cycles={cycles})"
        keys(result, {"float32", "bfloat16"}, call)
        f32, bf16 = result["float32"], result["bfloat16"]
        require(all(isinstance(v, float) for v in (f32, bf16)),
                f"{call} should hold two floats (use .item()), got {type(f32).__name__} and {type(bf16).__name__}.")
        require(0 <= f32 < 1e-6,
                f"{call}['float32'] = {f32:.3g}: after unmerging, a float32 weight is back to its original value up "
                f"to one rounding (far below 1e-6). Hint: measure W after merge AND unmerge against a copy of W "
                f"taken before, as floats.")
        require(1e-5 < bf16 < 1e-2,
                f"{call}['bfloat16'] = {bf16:.3g}: a bf16 weight of size 0.02 keeps 8 bits of mantissa, so the round "
                f"trip should leave errors between 1e-5 and 1e-2. Hint: make the base layer bf16 with .to(torch.bfloat16) "
                f"before wrapping it, and merge, then unmerge.")
        results[cycles] = result
    require(results[20] == results[1],
            f"exercise_6_3(cycles=20) = {results[20]} differs from cycles=1: {results[1]}. With the same seed, "
            f"repeated round trips reproduce the weights the first one left. Hint: build the layer from the seed "
            f"inside the function, and run the cycles on one layer.")
