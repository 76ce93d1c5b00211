"""Exercise 5.3: the three scalings are re-parametrisations of each other, measured on lora.LoRALayer (the check
watches that the layers run with each scaling) at ranks of the statement and of the check's own."""
import math

from otter.test_files import test_case
from checks._guard import answer, close, keys, require
from lora.layers import LoRALayer

OK_FORMAT = False
name = "ex5_3"
points = 1


@test_case(points=1)
def ex5_3(env):
    for kwargs in [{}, {"d_in": 10, "d_out": 6, "r": 4, "seed": 7}, {"d_in": 20, "d_out": 12, "r": 9, "seed": 3}]:
        r = kwargs.get("r", 16)
        call = f"exercise_5_3({', '.join(f'{a}={b}' for a, b in kwargs.items())})"
        original, seen = LoRALayer.forward, []

        def watched(self, x):  # which scalings (and alphas) the answer really ran
            seen.append((self.scaling, self.alpha))
            return original(self, x)

        LoRALayer.forward = watched
        try:
            result = answer(env, "exercise_5_3", **kwargs, returns=dict,
                            expects="a dict of three floats {'max_diff_alpha', 'max_diff_sqrt', 'ratio_alpha_vs_alpha_r'}")
        finally:
            LoRALayer.forward = original
        keys(result, {"max_diff_alpha", "max_diff_sqrt", "ratio_alpha_vs_alpha_r"}, call)
        for key, value in result.items():
            require(isinstance(value, float), f"{call}['{key}'] = {value!r} should be a Python float (.item()).")
        ran = {s for s, _ in seen}
        require({"alpha", "alpha/r", "alpha/sqrt(r)"} <= ran,
                f"{call} ran lora.LoRALayer with the scalings {sorted(ran)}: the exercise measures all three on "
                f"layers (scaling='alpha', 'alpha/r', 'alpha/sqrt(r)') with the same A and B. Hint: build them.")
        alphas = {a for s, a in seen if s == "alpha/r"}
        require(any(close(a, 16 * r, rel=1e-6) for a in alphas) and any(close(a, 16 * math.sqrt(r), rel=1e-6)
                                                                        for a in alphas),
                f"{call}: the 'alpha/r' layers ran with alpha in {sorted(alphas)}; two of them should match the "
                f"'alpha' layer and the 'alpha/sqrt(r)' layer at r = {r}. Hint: which alpha makes alpha / r equal "
                f"the other layer's scale?")
        require(0 <= result["max_diff_alpha"] < 1e-4,
                f"{call}['max_diff_alpha'] = {result['max_diff_alpha']:.3g}: 'alpha' with alpha = 16 and 'alpha/r' "
                f"with the matching alpha should compute the same output.")
        require(0 <= result["max_diff_sqrt"] < 1e-4,
                f"{call}['max_diff_sqrt'] = {result['max_diff_sqrt']:.3g}: 'alpha/sqrt(r)' with alpha = 16 and "
                f"'alpha/r' with the matching alpha should agree.")
        require(close(result["ratio_alpha_vs_alpha_r"], r, rel=1e-4),
                f"{call}['ratio_alpha_vs_alpha_r'] = {result['ratio_alpha_vs_alpha_r']:.4g}: with the same A, B and "
                f"alpha = 16, this is the norm of the 'alpha' output over the norm of the 'alpha/r' output at r = {r}.")
