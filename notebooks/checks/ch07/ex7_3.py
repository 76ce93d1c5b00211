"""Exercise 7.3: the standard error of an accuracy, its 95 % interval and the z of a difference, at other settings too."""

import math

from otter.test_files import test_case

from checks._guard import answer, close, keys, require

OK_FORMAT = False
name = "ex7_3"
points = 1


@test_case(points=1)
def ex7_3(env):
    for p, n, a, b in ((0.9, 149, 0.88, 0.93), (0.97, 512, 0.955, 0.972)):  # not the statement's numbers
        result = answer(env, "exercise_7_3", p, n, a, b, returns=dict,
                        expects="a dict {'se': float, 'interval': (low, high), 'messages_per_point': float, 'z': float}")
        call = f"exercise_7_3(p={p}, n={n}, a={a:.4f}, b={b:.4f})"
        keys(result, {"se", "interval", "messages_per_point", "z"}, call)
        se = result["se"]
        require(isinstance(se, float) and close(se * se * n, p * (1 - p), rel=1e-6),
                f"{call}['se'] = {se!r} is not the standard error of p on n messages; hint: use the statement's "
                f"formula with the arguments you were given, as a fraction (not in points).")
        low_high = result["interval"]
        require(isinstance(low_high, tuple) and len(low_high) == 2,
                f"{call}['interval'] should be a tuple (low, high), not {type(low_high).__name__}.")
        low, high = low_high
        require(close((low + high) / 2, p, rel=1e-6) and close((high - low) / 2, 1.96 * se, rel=1e-3),
                f"{call}['interval'] = ({low:.4f}, {high:.4f}) is not the normal 95 % interval; hint: it is centred "
                f"on p, and its width is stated in the exercise.")
        require(close(result["messages_per_point"], n / 100, rel=1e-9),
                f"{call}['messages_per_point'] = {result['messages_per_point']!r}: how many of the n messages make "
                f"one percentage point?")
        se_diff = math.sqrt(a * (1 - a) / n + b * (1 - b) / n)
        require(isinstance(result["z"], float) and close(result["z"] * se_diff, b - a, rel=1e-6),
                f"{call}['z'] = {result['z']!r} is not right; hint: the denominator is the standard error of a "
                f"DIFFERENCE of two independent accuracies, not of one of them.")
