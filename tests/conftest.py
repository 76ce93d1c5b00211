
import pytest
import torch

# One thread: the tests are small, and on a shared 2-core machine two OpenMP threads stall each
# other (a quick run measured 7x slower with 2 threads under load).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(123)


@pytest.fixture(autouse=True)
def _one_thread():
    """Back to one thread after every test: a script under test may have set its own --threads."""
    yield
    torch.set_num_threads(1)
