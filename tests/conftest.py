"""Shared by every test: one torch thread, a fixed seed, a tqdm lock of its own, and the one tiny GPT
the tests build.

The tiny model is the preset gpt-tiny (gpt/config.py: emb_dim 32, 2 blocks of 4 heads, context 64,
tied head; 1,635,552 parameters), built by `make_tiny_gpt` and offered as the fixtures `tiny_gpt` (the
builder) and `tiny_classifier` (with a 2-class head). A test file that needs its own variant wraps the
builder (`from conftest import make_tiny_gpt`) rather than building a GPTConfig of its own.

Markers (pyproject.toml): `slow` leaves the fast tier (`pytest -m "not slow"`), `gpu` needs real CUDA,
`browser` drives headless Chromium.
"""

import threading

import pytest
import torch
from tqdm import tqdm

from gpt import GPTConfig, GPTModel

# One thread: the tests are small, and on a shared 2-core machine two OpenMP threads stall each
# other (a quick run measured 7x slower with 2 threads under load).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(123)


@pytest.fixture(autouse=True)
def _tqdm_lock_of_this_process(monkeypatch):
    """A progress bar (pretrain's, train_classifier's) takes tqdm's lock, by default a multiprocessing
    semaphore shared with every process forked from this one, which tqdm's monitor thread also takes
    every 10 s. Mutation testing forks one process per mutant: one that exits while the monitor holds
    the lock would hang every later one. A thread lock and no monitor thread: nothing shared."""
    monkeypatch.setattr(tqdm, "_lock", threading.RLock(), raising=False)
    monkeypatch.setattr(tqdm, "monitor_interval", 0)


@pytest.fixture(autouse=True)
def _one_thread():
    """Back to one thread after every test: a script under test may have set its own --threads."""
    yield
    torch.set_num_threads(1)


def make_tiny_gpt(seed: int | None = 0, *, classes: int | None = None, **overrides) -> GPTModel:
    """gpt-tiny with `overrides` (GPTConfig fields, e.g. drop_rate=0.0, qkv_bias=True, attention="fused"),
    its weights drawn after torch.manual_seed(seed) (seed=None: from the current random state, so two
    calls in one test give two different models). classes: replace the LM head by a new
    `classes`-way head (classify.model.add_classification_head), drawn right after the model."""
    if seed is not None:
        torch.manual_seed(seed)
    model = GPTModel(GPTConfig.from_preset("gpt-tiny", **overrides))
    if classes is not None:
        from classify.model import add_classification_head  # gpt-only tests do not need classify/

        add_classification_head(model, classes)
    return model


@pytest.fixture
def tiny_gpt():
    """The builder make_tiny_gpt, for a test that takes it as an argument: tiny_gpt(seed, **overrides)."""
    return make_tiny_gpt


@pytest.fixture
def tiny_classifier() -> GPTModel:
    """gpt-tiny without dropout and with a 2-class head (spam / ham), seed 123, in eval mode."""
    return make_tiny_gpt(123, classes=2, drop_rate=0.0).eval()
