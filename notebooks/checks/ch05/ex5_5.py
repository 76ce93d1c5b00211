"""Exercise 5.5: a LoRA branch's output and gradients at initialisation, for four choices of which matrix is zero;
the returned norms must be those of the lora.LoRALayer objects the answer built and ran (the check watches them)."""
from otter.test_files import test_case
from checks._guard import answer, close, keys, require
from lora.layers import LoRALayer

OK_FORMAT = False
name = "ex5_5"
points = 1

CASES = {"A random, B zero", "A zero, B random", "both zero", "both random"}


def _norm(t):
    return None if t is None else float(t.detach().norm())


@test_case(points=1)
def ex5_5(env):
    for kwargs in [{}, {"d_in": 9, "d_out": 5, "r": 2, "seed": 3}, {"d_in": 11, "d_out": 7, "r": 3, "seed": 41}]:
        call = f"exercise_5_5({', '.join(f'{a}={b}' for a, b in kwargs.items())})"
        original, runs = LoRALayer.forward, []

        def watched(self, x):  # keep each layer and its output: the gradients are read after the answer returns
            out = original(self, x)
            runs.append((self, out))
            return out

        LoRALayer.forward = watched
        try:
            result = answer(env, "exercise_5_5", **kwargs, returns=dict,
                            expects="a dict {case: {'output_norm': float, 'grad_A': float, 'grad_B': float}} for four cases")
        finally:
            LoRALayer.forward = original
        keys(result, CASES, call)
        for case, entry in result.items():
            require(isinstance(entry, dict), f"{call}['{case}'] should be a dict, not {type(entry).__name__}.")
            keys(entry, {"output_norm", "grad_A", "grad_B"}, f"{call}['{case}']")
            require(all(isinstance(v, float) and v >= 0 for v in entry.values()),
                    f"{call}['{case}'] = {entry}: three norms, Python floats >= 0.")
        measured = [(_norm(out), _norm(layer.lora_A.grad), _norm(layer.lora_B.grad)) for layer, out in runs]
        hint = "Hint: look at which matrix each gradient of the branch x A B contains (section 5.4)."
        for case in sorted(CASES):
            e = result[case]
            got = (e["output_norm"], e["grad_A"], e["grad_B"])
            require(any(None not in m and all(close(g, v, rel=1e-4, abs_=1e-7) for g, v in zip(got, m))
                        for m in measured),
                    f"{call}['{case}'] = {e}: no lora.LoRALayer that your answer ran has this output norm and these "
                    f"gradient norms. Build a LoRALayer per case, run it, call backward() on the loss and read "
                    f"lora_A.grad and lora_B.grad.")
            zero_A, zero_B = case in ("A zero, B random", "both zero"), case in ("A random, B zero", "both zero")
            expected = (not (zero_A or zero_B), not zero_B, not zero_A)
            require(tuple(v > 0 for v in got) == expected,
                    f"{call}['{case}']: (output, grad_A, grad_B) non-zero = {tuple(v > 0 for v in got)}, which is not "
                    f"what this initialisation gives. {hint}")
