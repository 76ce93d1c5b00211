"""Exercise 5.3: the three scalings are re-parametrisations of each other, checked at two ranks."""

from otter.test_files import test_case

from checks._guard import answer, close, keys, require

OK_FORMAT = False
name = "ex5_3"
points = 1


@test_case(points=1)
def ex5_3(env):
    for kwargs in [{}, {"d_in": 10, "d_out": 6, "r": 4, "seed": 7}]:
        r = kwargs.get("r", 16)
        call = f"exercise_5_3({', '.join(f'{a}={b}' for a, b in kwargs.items())})"
        result = answer(env, "exercise_5_3", **kwargs, returns=dict,
                        expects="a dict of three floats {'max_diff_alpha', 'max_diff_sqrt', 'ratio_alpha_vs_alpha_r'}")
        keys(result, {"max_diff_alpha", "max_diff_sqrt", "ratio_alpha_vs_alpha_r"}, call)
        for key, value in result.items():
            require(isinstance(value, float), f"{call}['{key}'] = {value!r} should be a Python float (.item()).")
        require(0 <= result["max_diff_alpha"] < 1e-4,
                f"{call}['max_diff_alpha'] = {result['max_diff_alpha']:.3g}: 'alpha' with alpha = 16 and 'alpha/r' "
                f"with the matching alpha should compute the same output. Hint: which alpha makes alpha / r equal 16?")
        require(0 <= result["max_diff_sqrt"] < 1e-4,
                f"{call}['max_diff_sqrt'] = {result['max_diff_sqrt']:.3g}: 'alpha/sqrt(r)' with alpha = 16 and "
                f"'alpha/r' with the matching alpha should agree. Hint: solve alpha' / r = 16 / sqrt(r) for alpha'.")
        require(close(result["ratio_alpha_vs_alpha_r"], r, rel=1e-4),
                f"{call}['ratio_alpha_vs_alpha_r'] = {result['ratio_alpha_vs_alpha_r']:.4g}: with the same A, B and "
                f"alpha = 16, how much larger is the 'alpha' output than the 'alpha/r' one at r = {r}?")
