"""Exercise 2.4: the variance of q . k grows with d_k; dividing by sqrt(d_k) brings it back to 1."""

from otter.test_files import test_case

from checks._guard import answer, close, keys, require

OK_FORMAT = False
name = "ex2_4"
points = 1


@test_case(points=1)
def ex2_4(env):
    for dims in [(16, 64, 256), (2, 1024)]:
        call = f"exercise_2_4(dims={dims})"
        result = answer(env, "exercise_2_4", dims=dims, returns=dict,
                        expects="a dict {d_k: (raw variance, scaled variance)} of float pairs")
        keys(result, set(dims), call)
        for d in dims:
            pair = result[d]
            require(isinstance(pair, tuple) and len(pair) == 2 and all(isinstance(v, float) for v in pair),
                    f"{call}[{d}] = {pair!r}: a tuple of two Python floats (raw, scaled).")
            raw, scaled = pair
            require(close(raw / scaled, d, rel=1e-6),
                    f"{call}[{d}]: raw / scaled = {raw / scaled:.4g}; dividing the dot products by sqrt(d_k) divides "
                    f"their variance by d_k = {d}.")
            require(close(scaled, 1.0, rel=0.1),
                    f"{call}[{d}]: the scaled variance is {scaled:.3g}. With q, k ~ N(0, I) and enough samples "
                    f"(the default n) it should come out near its expected value; is each dot product a sum over "
                    f"d_k = {d} products of independent standard normals?")
