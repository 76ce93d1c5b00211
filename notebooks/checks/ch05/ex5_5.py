"""Exercise 5.5: a LoRA branch's output and gradients at initialisation, for four choices of which matrix is zero."""

from otter.test_files import test_case

from checks._guard import answer, keys, require

OK_FORMAT = False
name = "ex5_5"
points = 1

CASES = {"A random, B zero", "A zero, B random", "both zero", "both random"}


@test_case(points=1)
def ex5_5(env):
    for kwargs in [{}, {"d_in": 9, "d_out": 5, "r": 2, "seed": 3}]:
        call = f"exercise_5_5({', '.join(f'{a}={b}' for a, b in kwargs.items())})"
        result = answer(env, "exercise_5_5", **kwargs, returns=dict,
                        expects="a dict {case: {'output_norm': float, 'grad_A': float, 'grad_B': float}} for four cases")
        keys(result, CASES, call)
        for case, entry in result.items():
            require(isinstance(entry, dict), f"{call}['{case}'] should be a dict, not {type(entry).__name__}.")
            keys(entry, {"output_norm", "grad_A", "grad_B"}, f"{call}['{case}']")
            require(all(isinstance(v, float) and v >= 0 for v in entry.values()),
                    f"{call}['{case}'] = {entry}: three norms, Python floats >= 0.")

        def pattern(case):
            e = result[case]
            return tuple(e[key] > 0 for key in ("output_norm", "grad_A", "grad_B"))

        hint = ("Hint: dL/dB = scale (x A)^T g and dL/dA = scale x^T (g B^T), g = dL/dy; which of them vanish "
                "when A or B is zero?")
        for case in sorted(CASES):
            zero_A, zero_B = case in ("A zero, B random", "both zero"), case in ("A random, B zero", "both zero")
            expected = (not (zero_A or zero_B), not zero_B, not zero_A)
            require(pattern(case) == expected,
                    f"{call}['{case}']: (output, grad_A, grad_B) non-zero = {pattern(case)}, which is not what "
                    f"this initialisation gives. {hint}")
