"""Exercise 9.1: the mean similarity of random subspaces drawn as the statement says, at settings of the check's."""

import torch
from otter.test_files import test_case

from checks._guard import answer, require
from lora.analysis import subspace_similarity

OK_FORMAT = False
name = "ex9_1"
points = 1


def mean_phi(i, j, k, trials, seed):
    g = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(trials):
        U = torch.linalg.qr(torch.randn(k, i, generator=g))[0]
        V = torch.linalg.qr(torch.randn(k, j, generator=g))[0]
        values.append(subspace_similarity(U, V))
    return sum(values) / len(values)


@test_case(points=1)
def ex9_1(env):
    # Other settings and seeds than the statement's, with i != j (where min and max differ) and few trials, so
    # the mean of these very draws differs from the formula max(i, j) / k by more than the tolerance.
    for i, j, k, trials, seed in [(4, 16, 64, 12, 11), (12, 3, 96, 9, 5), (8, 8, 40, 7, 2)]:
        call = f"exercise_9_1(i={i}, j={j}, k={k}, trials={trials}, seed={seed})"
        got = answer(env, "exercise_9_1", i=i, j=j, k=k, trials=trials, seed=seed, returns=float, timeout=30,
                     expects="a Python float: the mean phi over the trials (use float(...))")
        require(0 <= got <= 1, f"{call} = {got}: phi is normalised, so it lies between 0 and 1.")
        expected = mean_phi(i, j, k, trials, seed)
        require(abs(got - expected) < 1e-4 * expected + 1e-6,
                f"{call} = {got:.5f}, but the mean phi of those {trials} draws is not that (a formula or a number "
                f"typed in is not a measurement either); hint: draw with a torch.Generator seeded with `seed`, for "
                f"each trial first the k x i Gaussian matrix, then the k x j one, orthonormalise each with "
                f"torch.linalg.qr, and use phi as defined in section 9.4.")
