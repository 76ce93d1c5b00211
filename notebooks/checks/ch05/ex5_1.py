"""Exercise 5.1: ranks of a LoRA update, of the sum of two, of a merged weight, computed with torch.linalg.matrix_rank
on random matrices (the check counts the calls, and asks for sizes of its own, one with r above min(d, k))."""
import torch
from otter.test_files import test_case
from checks._guard import answer, keys, require

OK_FORMAT = False
name = "ex5_1"
points = 1

RANKS = {"rank_BA", "rank_sum", "rank_W", "rank_W_plus_BA", "rank_zero_B"}


@test_case(points=1)
def ex5_1(env):
    for kwargs in [{}, {"d": 20, "k": 30, "r": 3, "seed": 1}, {"d": 12, "k": 10, "r": 5, "seed": 2},
                   {"d": 6, "k": 5, "r": 7, "seed": 9}]:
        d, k, r = kwargs.get("d", 64), kwargs.get("k", 48), kwargs.get("r", 4)
        call = f"exercise_5_1({', '.join(f'{a}={b}' for a, b in kwargs.items())})"
        original, calls = torch.linalg.matrix_rank, []

        def counted(*args, **kw):  # the answer must measure the ranks, not state them
            calls.append(1)
            return original(*args, **kw)

        torch.linalg.matrix_rank = counted
        try:
            result = answer(env, "exercise_5_1", **kwargs, returns=dict,
                            expects="a dict of five ints {'rank_BA', 'rank_sum', 'rank_W', 'rank_W_plus_BA', 'rank_zero_B'}")
        finally:
            torch.linalg.matrix_rank = original
        keys(result, RANKS, call)
        for key, value in result.items():
            require(isinstance(value, int) and not isinstance(value, bool),
                    f"{call}['{key}'] = {value!r}: a rank is an int (int(torch.linalg.matrix_rank(...))).")
        require(len(calls) >= 5, f"{call} called torch.linalg.matrix_rank {len(calls)} times: the exercise measures "
                f"the five ranks on matrices you draw. Hint: build each matrix, then ask torch.linalg.matrix_rank.")
        require(result["rank_BA"] == min(r, d, k), f"{call}['rank_BA'] = {result['rank_BA']} is not the rank of "
                f"B ({d} x {r}) times A ({r} x {k}) for random B and A. Hint: draw both at random (float64).")
        require(result["rank_sum"] == min(2 * r, d, k),
                f"{call}['rank_sum'] = {result['rank_sum']} is not the rank of two independent random updates added "
                f"up. Hint: draw a second pair B2, A2; do not add B A to itself.")
        require(result["rank_W"] == min(d, k) and result["rank_W_plus_BA"] == min(d, k),
                f"{call}: rank(W) = {result['rank_W']}, rank(W + BA) = {result['rank_W_plus_BA']}; a random "
                f"{d} x {k} W is full-rank. Hint: W has shape d x k, and BA has W's shape.")
        require(result["rank_zero_B"] == 0, f"{call}['rank_zero_B'] = {result['rank_zero_B']} is not the rank of a "
                f"zero {d} x {r} matrix times A_1.")
