"""Exercise 5.1: ranks of a LoRA update, of the sum of two, of a merged weight: the properties of random matrices."""

from otter.test_files import test_case

from checks._guard import answer, keys, require

OK_FORMAT = False
name = "ex5_1"
points = 1

RANKS = {"rank_BA", "rank_sum", "rank_W", "rank_W_plus_BA", "rank_zero_B"}


@test_case(points=1)
def ex5_1(env):
    for kwargs in [{}, {"d": 20, "k": 30, "r": 3, "seed": 1}, {"d": 12, "k": 10, "r": 5, "seed": 2}]:
        d, k, r = kwargs.get("d", 64), kwargs.get("k", 48), kwargs.get("r", 4)
        call = f"exercise_5_1({', '.join(f'{a}={b}' for a, b in kwargs.items())})"
        result = answer(env, "exercise_5_1", **kwargs, returns=dict,
                        expects="a dict of five ints {'rank_BA', 'rank_sum', 'rank_W', 'rank_W_plus_BA', 'rank_zero_B'}")
        keys(result, RANKS, call)
        for key, value in result.items():
            require(isinstance(value, int) and not isinstance(value, bool),
                    f"{call}['{key}'] = {value!r}: a rank is an int (int(torch.linalg.matrix_rank(...))).")
        require(result["rank_BA"] == r, f"{call}['rank_BA'] = {result['rank_BA']}: for random B ({d} x {r}) and "
                f"A ({r} x {k}), BA has rank r = {r}. Hint: draw both at random (float64) and use matrix_rank.")
        require(result["rank_sum"] == min(2 * r, d, k),
                f"{call}['rank_sum'] = {result['rank_sum']}: two independent random rank-{r} updates add up to rank "
                f"min(2r, d, k) = {min(2 * r, d, k)}. Hint: draw a second pair B2, A2; do not add B A to itself.")
        require(result["rank_W"] == min(d, k) and result["rank_W_plus_BA"] == min(d, k),
                f"{call}: rank(W) = {result['rank_W']}, rank(W + BA) = {result['rank_W_plus_BA']}; a random "
                f"{d} x {k} matrix is full-rank, min(d, k) = {min(d, k)}, and adding BA does not change that.")
        require(result["rank_zero_B"] == 0, f"{call}['rank_zero_B'] = {result['rank_zero_B']}: with B = 0 the "
                f"update 0 @ A is the zero matrix, rank 0.")
