"""Exercise 5.2: the break-even rank and the first rank that costs more, checked with lora.counts on shapes of the
statement and of the check's own."""
from otter.test_files import test_case
from checks._guard import answer, close, keys, require
from lora.counts import full_parameter_count, lora_parameter_count

OK_FORMAT = False
name = "ex5_2"
points = 1


@test_case(points=1)
def ex5_2(env):
    for shapes in [((768, 768), (512, 64), (10, 8)), ((100, 60), (48, 48), (7, 3)), ((90, 45), (1000, 24))]:
        call = f"exercise_5_2(shapes={shapes})"
        result = answer(env, "exercise_5_2", shapes=shapes, returns=dict,
                        expects="a dict {(d, k): {'break_even': float, 'first_worse_rank': int}}")
        keys(result, set(shapes), call)
        for d, k in shapes:
            entry = result[(d, k)]
            require(isinstance(entry, dict), f"{call}[{(d, k)}] should be a dict, not {type(entry).__name__}.")
            keys(entry, {"break_even", "first_worse_rank"}, f"{call}[{(d, k)}]")
            even, first = entry["break_even"], entry["first_worse_rank"]
            require(isinstance(even, (int, float)) and not isinstance(even, bool)
                    and close(even * (d + k), d * k, rel=1e-9),
                    f"{call}[{(d, k)}]['break_even'] = {even!r}: at the break-even rank LoRA costs exactly as much as "
                    f"the full {d} x {k} matrix; solve the equation of section 5.5 for r (a float; the shape need "
                    f"not be square).")
            require(isinstance(first, int) and not isinstance(first, bool),
                    f"{call}[{(d, k)}]['first_worse_rank'] = {first!r} should be an int.")
            full = full_parameter_count(d, k)
            require(lora_parameter_count(d, k, first) > full and lora_parameter_count(d, k, first - 1) <= full,
                    f"{call}[{(d, k)}]['first_worse_rank'] = {first}: rank {first} costs "
                    f"{lora_parameter_count(d, k, first):,} and rank {first - 1} costs "
                    f"{lora_parameter_count(d, k, first - 1):,}, against {full:,} for the full matrix; the answer is "
                    f"the smallest rank that costs MORE. Hint: at a whole-number break-even, that rank costs the same.")
