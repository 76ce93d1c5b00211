"""The pre-training loop (gpt/train.py): schedule, data order, gradient accumulation, exact resume.

All on a CPU with gpt-tiny on The Verdict, a few steps each. The resume test is the one that
matters: a run interrupted midway and resumed from its checkpoint must give bit-identical
history and weights (torch.equal) to a run that never stopped, with dropout on, so that the
saved random state is part of what is checked.
"""

from pathlib import Path

import pytest
import torch

from gpt.checkpoint import load_model, load_training_state
from gpt.config import GPTConfig
from gpt.data import TokenWindows, tokenize_documents
from gpt.model import GPTModel
from gpt.train import History, PretrainConfig, batch_indices, evaluate_lm, learning_rate, lm_loss, pretrain
from conftest import make_tiny_gpt

VERDICT = Path(__file__).resolve().parent.parent / "data" / "pretrain" / "the-verdict.txt"
CONTEXT = 32  # shorter windows than gpt-tiny's 64: more of them, faster steps


@pytest.fixture(scope="module")
def windows():
    text = VERDICT.read_text(encoding="utf-8")
    cut = int(0.9 * len(text))
    return TokenWindows(tokenize_documents([text[:cut]]), CONTEXT), TokenWindows(tokenize_documents([text[cut:]]), CONTEXT)


def tiny_model(seed: int, **overrides) -> GPTModel:
    return make_tiny_gpt(seed, context_length=CONTEXT, **overrides)  # tests/conftest.py


def quick_config(**changes) -> PretrainConfig:
    base = dict(max_steps=6, batch_size=4, grad_accum=1, lr=1e-3, min_lr=1e-4, warmup_steps=2, eval_every=2,
                eval_batches=2, save_every=2, seed=7)
    return PretrainConfig(**{**base, **changes})


def test_learning_rate_schedule_values():
    # Linear warm-up: step 0 gets lr / warmup, step warmup - 1 the full lr.
    assert learning_rate(0, 100, 1e-3, 10, 1e-4) == pytest.approx(1e-4)
    assert learning_rate(9, 100, 1e-3, 10, 1e-4) == pytest.approx(1e-3)
    # Cosine: full lr right after warm-up, the midpoint halfway, min_lr at the end and after.
    assert learning_rate(10, 100, 1e-3, 10, 1e-4) == pytest.approx(1e-3)
    assert learning_rate(55, 100, 1e-3, 10, 1e-4) == pytest.approx(5.5e-4)
    assert learning_rate(100, 100, 1e-3, 10, 1e-4) == pytest.approx(1e-4)
    assert learning_rate(150, 100, 1e-3, 10, 1e-4) == pytest.approx(1e-4)


def test_batch_indices_cover_each_epoch_once_and_are_pure():
    cfg = quick_config(batch_size=8, grad_accum=2, seed=3)
    n_items = 37  # 4 full batches per epoch; the 5 left-over windows wait for the next epoch's order
    epoch0 = [i for step in range(4) for micro in range(2) for i in batch_indices(step, micro, n_items, cfg)]
    assert len(epoch0) == 32 and len(set(epoch0)) == 32  # no window twice within an epoch
    assert all(0 <= i < n_items for i in epoch0)
    assert all(len(batch_indices(s, m, n_items, cfg)) == 4 for s in range(10) for m in range(2))
    epoch1 = [i for step in range(4, 8) for micro in range(2) for i in batch_indices(step, micro, n_items, cfg)]
    assert epoch1 != epoch0  # a new order every epoch
    # A pure function of (step, micro): what makes resuming exact.
    assert batch_indices(5, 1, n_items, cfg) == batch_indices(5, 1, n_items, cfg)
    assert batch_indices(0, 0, n_items, quick_config(batch_size=8, grad_accum=2, seed=4)) != batch_indices(0, 0, n_items, cfg)


def test_evaluate_lm_is_the_mean_of_batch_losses(windows):
    _, val = windows
    data = _Take(val, 7)  # batches of 3, 3 and 1 windows
    model = tiny_model(0)
    model.eval()
    with torch.no_grad():
        expected = []
        for s, e in ((0, 3), (3, 6), (6, 7)):
            inputs = torch.stack([data[i][0] for i in range(s, e)])
            targets = torch.stack([data[i][1] for i in range(s, e)])
            expected.append(lm_loss(model, inputs, targets).item())
    model.train()
    assert evaluate_lm(model, data, 3, torch.device("cpu")) == pytest.approx(sum(expected) / 3, rel=1e-6)
    assert evaluate_lm(model, data, 3, torch.device("cpu"), max_batches=1) == pytest.approx(expected[0], rel=1e-6)
    assert model.training  # dropout is back on after evaluating


class _Take(torch.utils.data.Dataset):
    def __init__(self, data, n):
        self.data, self.n = data, n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return self.data[i]


@pytest.mark.slow
def test_pretraining_lowers_the_loss_and_writes_its_files(windows, tmp_path):
    train, val = windows
    model = tiny_model(0, drop_rate=0.0)
    history = pretrain(model, train, val, quick_config(max_steps=8, lr=3e-3, eval_every=4, save_every=4), tmp_path)
    assert history.steps == [4, 8]
    assert history.tokens == [4 * 4 * CONTEXT, 8 * 4 * CONTEXT]
    assert history.val_loss[-1] < history.val_loss[0] < 10.9  # ln(50257) = 10.82 at random init
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors", "train_state.pt"]
    reloaded = load_model(tmp_path / "model.safetensors")
    assert all(torch.equal(a, b) for a, b in zip(reloaded.state_dict().values(), model.state_dict().values()))
    state = load_training_state(tmp_path / "train_state.pt")
    assert state["step"] == 8 and state["world_size"] == 1 and state["history"]["val_loss"] == history.val_loss


def test_gradient_accumulation_matches_one_big_batch(windows, tmp_path):
    """batch 4 in one go == batch 4 as 2 micro-batches of 2 (dropout off).

    Tolerance: the float summation order differs, and Adam divides every update by the root of
    its squared gradient, so for weights whose gradient is nearly zero that rounding noise
    becomes a visible difference: up to ~2e-6 after 3 steps here. A wrong batch (a micro-batch
    dropped or counted twice) moves weights by about one step size, lr = 1e-3. Hence atol=1e-5;
    the losses, which Adam does not amplify, agree to 1e-6."""
    train, val = windows
    cfg = dict(max_steps=3, eval_every=3, save_every=3)
    one = tiny_model(0, drop_rate=0.0)
    h1 = pretrain(one, train, val, quick_config(grad_accum=1, **cfg), tmp_path / "one")
    two = tiny_model(0, drop_rate=0.0)
    h2 = pretrain(two, train, val, quick_config(grad_accum=2, **cfg), tmp_path / "two")
    assert h1.train_loss == pytest.approx(h2.train_loss, rel=1e-6)
    for (name, a), b in zip(one.state_dict().items(), two.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5, msg=name)
    # The accumulated steps really trained (a no-op would also "match"): weights moved.
    assert not torch.equal(one.trf_blocks[0].att.W_query.weight, tiny_model(0).trf_blocks[0].att.W_query.weight)


class _Interrupt(torch.utils.data.Dataset):
    """The training windows, until the `stop_at`-th access: then a KeyboardInterrupt (Ctrl-C)."""

    def __init__(self, data, stop_at: int):
        self.data, self.stop_at, self.calls = data, stop_at, 0

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        self.calls += 1
        if self.calls == self.stop_at:
            raise KeyboardInterrupt("simulated Ctrl-C in the middle of a step")
        return self.data[i]


@pytest.mark.slow
def test_resume_is_bit_identical_to_an_uninterrupted_run(windows, tmp_path, capsys):
    train, val = windows
    cfg = quick_config()  # 6 steps, a checkpoint every 2, dropout on (gpt-tiny: 0.1)
    assert GPTConfig.from_preset("gpt-tiny").drop_rate > 0

    straight = tiny_model(0)
    h_straight = pretrain(straight, train, val, cfg, tmp_path / "straight")

    # Interrupted in the middle of step 5 (index 4): after the checkpoint of step 4 was written.
    # Accesses so far: 1 (pretrain reads window 0 for its shape) + 4 steps x 4 windows, then 2 more.
    crashed = _Interrupt(train, stop_at=1 + 4 * 4 + 2)
    with pytest.raises(KeyboardInterrupt):
        pretrain(tiny_model(0), crashed, val, cfg, tmp_path / "resumed")
    state = load_training_state(tmp_path / "resumed" / "train_state.pt")
    assert state["step"] == 4 and state["history"]["steps"] == [2, 4]
    assert not (tmp_path / "resumed" / "model.safetensors").exists()  # the run never finished

    resumed = tiny_model(999)  # other initial weights: everything must come from the checkpoint
    h_resumed = pretrain(resumed, train, val, cfg, tmp_path / "resumed")
    assert "resumed from" in capsys.readouterr().out

    assert h_resumed == h_straight  # every float of the history, exactly
    assert h_straight.steps == [2, 4, 6]
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    final = load_model(tmp_path / "resumed" / "model.safetensors")
    assert all(torch.equal(a, b) for a, b in zip(final.state_dict().values(), straight.state_dict().values()))


@pytest.mark.slow
def test_resume_depends_on_the_saved_random_state(windows, tmp_path):
    """The control for the test above: resuming with another dropout random state gives other
    weights, so the equality there is evidence that the random state is restored."""
    train, val = windows
    cfg = quick_config(max_steps=4)
    straight = tiny_model(0)
    pretrain(straight, train, val, cfg, tmp_path / "straight")
    with pytest.raises(KeyboardInterrupt):
        pretrain(tiny_model(0), _Interrupt(train, stop_at=1 + 2 * 4 + 1), val, cfg, tmp_path / "bad")
    path = tmp_path / "bad" / "train_state.pt"
    state = load_training_state(path)
    state["torch_rng"] = torch.Generator().manual_seed(12345).get_state()
    torch.save(state, path)
    tampered = tiny_model(0)
    pretrain(tampered, train, val, cfg, tmp_path / "bad")
    assert not torch.equal(tampered.trf_blocks[0].att.W_query.weight, straight.trf_blocks[0].att.W_query.weight)


def test_history_round_trips_through_the_checkpoint(tmp_path):
    h = History(steps=[1], tokens=[64], train_loss=[10.5], val_loss=[10.6], lr=[1e-3])
    from dataclasses import asdict

    from gpt.checkpoint import save_training_state

    save_training_state(tmp_path / "s.pt", history=asdict(h))
    assert History(**load_training_state(tmp_path / "s.pt")["history"]) == h
