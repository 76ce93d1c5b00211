"""Exercise 9.1: the similarity of random subspaces, against its expected value max(i, j) / k."""

from otter.test_files import test_case

from checks._guard import answer, require

OK_FORMAT = False
name = "ex9_1"
points = 1


@test_case(points=1)
def ex9_1(env):
    # Other settings than the statement's, with i != j (where min and max differ); the mean of many draws
    # is within a few percent of max(i, j) / k.
    for i, j, k in [(4, 16, 64), (12, 3, 96), (8, 8, 128)]:
        call = f"exercise_9_1(i={i}, j={j}, k={k}, trials=300, seed=1)"
        got = answer(env, "exercise_9_1", i=i, j=j, k=k, trials=300, seed=1, returns=float, timeout=30,
                     expects="a Python float: the mean phi over the trials (use float(...))")
        require(0 <= got <= 1, f"{call} = {got}: phi is normalised, so it lies between 0 and 1.")
        expected = max(i, j) / k
        require(abs(got - expected) < 0.12 * expected,
                f"{call} = {got:.4f} is not near the expected similarity of two random subspaces; hint: "
                f"draw orthonormal bases (torch.linalg.qr of a Gaussian matrix) of dimensions i and j, and divide "
                f"||U^T V||_F^2 by min(i, j), not by max(i, j) or by k.")
