"""The pre-training loop (gpt/train.py): schedule, data order, gradient accumulation, exact resume.

All on a CPU with gpt-tiny on The Verdict, a few steps each. The resume test is the one that
matters: a run interrupted midway and resumed from its checkpoint must give bit-identical
history and weights (torch.equal) to a run that never stopped, with dropout on, so that the
saved random state is part of what is checked.
"""

import contextlib
import dataclasses
import importlib
import io
import math
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from gpt.checkpoint import load_model, load_training_state
from gpt.config import GPTConfig
from gpt.data import TokenWindows, tokenize_documents
from gpt.model import GPTModel
from gpt.train import (History, PretrainConfig, _restore_rng, _rng_states, _warn_if_config_changed, batch_indices,
                       evaluate_lm, learning_rate, lm_loss, pretrain)
from conftest import make_tiny_gpt

gpt_train = importlib.import_module("gpt.train")  # the module (to stand in for torchrun's rank and world size)

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


def test_learning_rate_exact_values_at_given_steps():
    """Warm-up: lr * (step + 1) / warmup_steps; cosine from lr to min_lr over the remaining steps
    (exact to float rounding, rel=1e-12)."""
    exact = dict(rel=1e-12)
    assert [learning_rate(s, 100, 1e-3, 4, 1e-4) for s in range(4)] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3], **exact)
    # 40 decay steps after 10 of warm-up: a quarter of the way, half and three quarters.
    assert learning_rate(20, 50, 1e-3, 10, 1e-4) == pytest.approx(1e-4 + 4.5e-4 * (1 + math.sqrt(0.5)), **exact)
    assert learning_rate(30, 50, 1e-3, 10, 1e-4) == pytest.approx(5.5e-4, **exact)
    assert learning_rate(40, 50, 1e-3, 10, 1e-4) == pytest.approx(1e-4 + 4.5e-4 * (1 - math.sqrt(0.5)), **exact)
    assert learning_rate(50, 50, 1e-3, 10, 1e-4) == pytest.approx(1e-4, **exact)
    # No warm-up: the full lr at step 0.
    assert learning_rate(0, 10, 2e-3, 0, 0.0) == pytest.approx(2e-3, **exact)
    # All steps are warm-up (max_steps == warmup_steps): past it, min_lr (no division by zero).
    assert learning_rate(5, 5, 1e-3, 5, 1e-4) == pytest.approx(1e-3, **exact)
    assert learning_rate(6, 5, 1e-3, 5, 1e-4) == pytest.approx(1e-4, **exact)


def test_batch_indices_are_slices_of_a_seeded_permutation_per_epoch():
    """The order of epoch e is torch.randperm(n_items) drawn from a generator seeded with
    seed * 100_003 + e; step s of the epoch takes windows [s * batch_size, (s + 1) * batch_size)
    of it, micro-batch m the m-th quarter/half/... of those. A checkpoint written by this version
    resumes with the same data in later versions only while this holds."""
    cfg = quick_config(batch_size=8, grad_accum=2, seed=3)
    n_items = 37  # 4 steps per epoch

    def order(epoch):
        return torch.randperm(n_items, generator=torch.Generator().manual_seed(3 * 100_003 + epoch)).tolist()

    assert batch_indices(0, 0, n_items, cfg) == order(0)[0:4]
    assert batch_indices(0, 1, n_items, cfg) == order(0)[4:8]
    assert batch_indices(3, 1, n_items, cfg) == order(0)[28:32]
    assert batch_indices(4, 0, n_items, cfg) == order(1)[0:4]
    assert batch_indices(9, 1, n_items, cfg) == order(2)[12:16]
    one = quick_config(batch_size=8, grad_accum=1, seed=3)
    assert batch_indices(1, 0, n_items, one) == order(0)[8:16]


def test_lm_loss_is_the_mean_next_token_cross_entropy():
    """lm_loss = -mean over every (row, position) of log softmax(logits)[target], by hand."""
    model = tiny_model(0, drop_rate=0.0).eval()
    inputs = torch.randint(0, 50257, (2, 5), generator=torch.Generator().manual_seed(1))
    targets = torch.randint(0, 50257, (2, 5), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        logp = torch.log_softmax(model(inputs), dim=-1)  # (2, 5, V)
        by_hand = -sum(logp[b, t, targets[b, t]] for b in range(2) for t in range(5)) / 10
        assert lm_loss(model, inputs, targets).item() == pytest.approx(by_hand.item(), rel=1e-6)


@pytest.mark.parametrize("changes, message", [
    (dict(max_steps=0), "PretrainConfig.max_steps must be a positive integer, got 0"),
    (dict(batch_size=-4), "PretrainConfig.batch_size must be a positive integer, got -4"),
    (dict(grad_accum=True), "PretrainConfig.grad_accum must be a positive integer, got True"),
    (dict(eval_every=1.5), "PretrainConfig.eval_every must be a positive integer, got 1.5"),
    (dict(eval_batches=0), "PretrainConfig.eval_batches must be a positive integer, got 0"),
    (dict(save_every="2"), "PretrainConfig.save_every must be a positive integer, got '2'"),
    (dict(batch_size=6, grad_accum=4), "batch_size=6 is not divisible by grad_accum=4"),
    (dict(lr=0.0), "PretrainConfig.lr must be a finite number > 0, got 0.0"),
    (dict(lr=float("inf")), "PretrainConfig.lr must be a finite number > 0, got inf"),
    (dict(lr=float("nan")), "PretrainConfig.lr must be a finite number > 0, got nan"),
    (dict(min_lr=-1e-5), "PretrainConfig.min_lr must be a finite number >= 0, got -1e-05"),
    (dict(min_lr=float("nan")), "PretrainConfig.min_lr must be a finite number >= 0, got nan"),
    (dict(warmup_steps=-1), "PretrainConfig.warmup_steps must be an integer >= 0, got -1"),
    (dict(warmup_steps=2.0), "PretrainConfig.warmup_steps must be an integer >= 0, got 2.0"),
    (dict(weight_decay=-0.1), "PretrainConfig.weight_decay must be >= 0, got -0.1"),
    (dict(weight_decay=float("inf")), "PretrainConfig.weight_decay must be >= 0, got inf"),
    (dict(grad_clip=0.0), r"PretrainConfig.grad_clip must be > 0 or None \(no clipping\), got 0.0"),
    (dict(grad_clip=float("nan")), r"PretrainConfig.grad_clip must be > 0 or None \(no clipping\), got nan"),
])
def test_pretrain_config_refuses_bad_values(changes, message):
    """Each bad setting is refused when the config is made, with a message naming it and its value."""
    with pytest.raises(ValueError, match=f"^{message}$"):
        quick_config(**changes)


def test_pretrain_config_accepts_the_boundary_values():
    """The smallest allowed values: 1 for the counts, 0 for min_lr, warm-up and weight decay, no clipping."""
    cfg = quick_config(max_steps=1, batch_size=1, grad_accum=1, eval_every=1, eval_batches=1, save_every=1,
                       min_lr=0.0, warmup_steps=0, weight_decay=0.0, grad_clip=None)
    assert (cfg.max_steps, cfg.min_lr, cfg.warmup_steps, cfg.weight_decay, cfg.grad_clip) == (1, 0.0, 0, 0.0, None)
    assert PretrainConfig().grad_clip == 1.0 and PretrainConfig(batch_size=8, grad_accum=8).grad_accum == 8


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



def test_collate_stacks_inputs_and_targets_on_the_device():
    """(input, target) pairs -> (b, T) inputs and (b, T) targets, both moved to `device` (the
    meta device stands in for a GPU: a tensor left on the CPU would show)."""
    items = [(torch.tensor([1, 2, 3]), torch.tensor([2, 3, 4])), (torch.tensor([5, 6, 7]), torch.tensor([6, 7, 8]))]
    inputs, targets = gpt_train._collate(items, torch.device("cpu"))
    assert inputs.tolist() == [[1, 2, 3], [5, 6, 7]] and targets.tolist() == [[2, 3, 4], [6, 7, 8]]
    on_meta = gpt_train._collate(items, torch.device("meta"))
    assert [t.device.type for t in on_meta] == ["meta", "meta"] and [t.shape for t in on_meta] == [(2, 3), (2, 3)]

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


# ----------------------------------------------------------------------------- pretrain, step by step

# Four steps of two micro-batches, dropout on (gpt-tiny: 0.1), a gradient clipped on every step,
# an evaluation at steps 3 and 4 (eval_every=3, and the last step), a checkpoint at steps 2 and 4.
STEP_CFG = dict(max_steps=4, batch_size=4, grad_accum=2, lr=1e-3, min_lr=1e-4, warmup_steps=2, weight_decay=0.1,
                grad_clip=0.05, eval_every=3, eval_batches=2, save_every=2, seed=11)


def _by_hand(model, train, val, cfg):
    """pretrain's algorithm written out: AdamW (betas 0.9, 0.95) with weight decay on the matrices
    only, the scheduled lr, the mean loss over micro-batches, the gradient clipped to grad_clip,
    dropout seeded with cfg.seed. Returns (train loss, val loss) after every step."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], betas=(0.9, 0.95))
    torch.manual_seed(cfg.seed)
    model.train()
    losses = []
    for step in range(cfg.max_steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, cfg.max_steps, cfg.lr, cfg.warmup_steps, cfg.min_lr)
        optimizer.zero_grad()
        total = 0.0
        for micro in range(cfg.grad_accum):
            batch = [train[i] for i in batch_indices(step, micro, len(train), cfg)]
            loss = lm_loss(model, torch.stack([x for x, _ in batch]), torch.stack([y for _, y in batch])) / cfg.grad_accum
            loss.backward()
            total += loss.item()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        losses.append((total, evaluate_lm(model, val, cfg.batch_size, torch.device("cpu"), cfg.eval_batches)))
    return losses


@pytest.fixture
def four_steps(windows, tmp_path):
    """One 4-step pretrain run (STEP_CFG) with what it printed and what on_eval saw. Run afresh
    for each test that uses it (not once per module): mutation testing reruns only the tests
    that call pretrain themselves."""
    train, val = windows
    cfg = quick_config(**STEP_CFG)
    out = tmp_path / "four-steps"
    model = tiny_model(0)
    seen = []

    def on_eval(step, m):
        # The gradient of the step just taken is still in .grad (zeroed only at the next step).
        grad_norm = torch.sqrt(sum(p.grad.pow(2).sum() for p in m.parameters())).item()
        saved = load_training_state(out / "train_state.pt")["step"] if (out / "train_state.pt").exists() else None
        seen.append(dict(step=step, same_model=m is model, grad_norm=grad_norm, saved_step=saved))

    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        history = pretrain(model, train, val, cfg, out, on_eval=on_eval)
    return SimpleNamespace(cfg=cfg, out=out, model=model, history=history, seen=seen, stdout=stdout.getvalue(),
                           stderr=stderr.getvalue(), rng_after=torch.get_rng_state())


def test_pretrain_steps_are_the_hand_written_algorithm(four_steps, windows):
    """Every weight after 4 steps equals the by-hand AdamW run (same float operations: exactly),
    and the recorded train and val losses are its losses after steps 3 and 4."""
    run = four_steps
    reference = tiny_model(0)
    by_hand = _by_hand(reference, *windows, run.cfg)
    for (name, a), b in zip(run.model.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(a, b), name
    assert run.history.train_loss == pytest.approx([by_hand[2][0], by_hand[3][0]], rel=1e-6)
    assert run.history.val_loss == pytest.approx([by_hand[2][1], by_hand[3][1]], rel=1e-6)
    # Every parameter trained (weight-decayed matrices and undecayed vectors alike): none kept its initial value.
    initial = tiny_model(0).state_dict()
    assert [k for k, v in run.model.state_dict().items() if torch.equal(v, initial[k])] == []


def test_pretrain_history_holds_steps_tokens_and_the_scheduled_lr(four_steps):
    """Evaluations at step 3 (eval_every) and 4 (the last); tokens = step x 4 windows x 32;
    lr of the step taken: warm-up 5e-4, 1e-3, then cosine 1e-3 (start) and 5.5e-4 (halfway)."""
    history = four_steps.history
    assert history.steps == [3, 4]
    assert history.tokens == [3 * 4 * CONTEXT, 4 * 4 * CONTEXT] == [384, 512]
    assert history.lr == pytest.approx([1e-3, 5.5e-4], rel=1e-12)


def test_pretrain_clips_the_gradient_to_grad_clip_and_calls_on_eval(four_steps):
    """on_eval(step, model) runs at each evaluation with the model itself; the gradient the
    optimizer used has norm grad_clip = 0.05 (the raw one is about 20 times larger, see the next
    test). Tolerance: clip_grad_norm_ measures the norm in float32 over 1.6 M squares, which was
    off by 3e-5 (relative) here; hence rel=1e-4."""
    seen = four_steps.seen
    assert [s["step"] for s in seen] == [3, 4] and all(s["same_model"] for s in seen)
    assert [s["grad_norm"] for s in seen] == pytest.approx([0.05, 0.05], rel=1e-4)


def test_pretrain_without_clipping_keeps_the_raw_gradient(windows, tmp_path):
    """grad_clip=None: the gradient of step 1 is the plain gradient of its batch's loss
    (norm > 0.05, so the clipping above did act)."""
    train, val = windows
    cfg = quick_config(max_steps=1, grad_clip=None, eval_every=1, save_every=1, seed=11)
    norms = []
    pretrain(tiny_model(0, drop_rate=0.0), train, val, cfg, tmp_path,
             on_eval=lambda step, m: norms.append(torch.sqrt(sum(p.grad.pow(2).sum() for p in m.parameters())).item()))
    model = tiny_model(0, drop_rate=0.0)
    batch = [train[i] for i in batch_indices(0, 0, len(train), cfg)]
    lm_loss(model, torch.stack([x for x, _ in batch]), torch.stack([y for _, y in batch])).backward()
    raw = torch.sqrt(sum(p.grad.pow(2).sum() for p in model.parameters())).item()
    assert raw > 0.5
    assert norms == pytest.approx([raw], rel=1e-5)


def test_pretrain_checkpoints_every_save_every_steps_and_at_the_end(four_steps):
    """save_every=2: at the evaluation of step 3 the file holds step 2 (step 4's is written after
    its evaluation). The final state holds everything a resume needs, by value."""
    run = four_steps
    assert [s["saved_step"] for s in run.seen] == [2, 2]
    state = load_training_state(run.out / "train_state.pt")
    assert state["step"] == 4 and state["world_size"] == 1
    assert state["history"] == dataclasses.asdict(run.history)
    assert state["config"] == dataclasses.asdict(run.cfg)
    assert torch.equal(state["torch_rng"], run.rng_after)  # the random state at the end of step 4
    assert all(torch.equal(v, run.model.state_dict()[k]) for k, v in state["model"].items())
    groups = state["optimizer"]["param_groups"]
    assert [(g["weight_decay"], g["betas"], len(g["params"])) for g in groups] == [(0.1, (0.9, 0.95), 14),
                                                                                  (0.0, (0.9, 0.95), 16)]
    assert groups[0]["lr"] == pytest.approx(5.5e-4, rel=1e-12)
    assert sorted(p.name for p in run.out.iterdir()) == ["model.safetensors", "train_state.pt"]
    final = load_model(run.out / "model.safetensors")
    assert all(torch.equal(a, b) for a, b in zip(final.state_dict().values(), run.model.state_dict().values()))


def test_pretrain_prints_one_line_per_evaluation_and_a_progress_bar(four_steps):
    """stdout: 'step N | tokens T | loss L | val V | lr R | S s' at each evaluation, numbers from
    the history; stderr: the progress bar 'pre-training', in steps, ending at 4/4 with the last
    numbers."""
    run = four_steps
    h = run.history
    lines = run.stdout.splitlines()
    assert len(lines) == 2
    for line, i in zip(lines, range(2)):
        head = (f"step {h.steps[i]:>5} | tokens {h.tokens[i]:>9,} | loss {h.train_loss[i]:.3f} | "
                f"val {h.val_loss[i]:.3f} | lr {h.lr[i]:.2e} | ")
        assert line.startswith(head), line
        assert re.fullmatch(r"\d+ s", line[len(head):]) and int(line[len(head):-2]) < 120  # seconds since the start
    assert lines[0].startswith("step     3 | tokens       384 | loss ")
    bar = run.stderr
    assert "pre-training: 100%" in bar and "| 4/4 [" in bar.split("\r")[-1]  # the bar's last state
    assert re.search(r"\d(step/s|s/step)", bar)
    assert f"loss {h.train_loss[-1]:.3f} | val {h.val_loss[-1]:.3f} | lr {h.lr[-1]:.1e}" in bar


def test_pretrain_resumes_with_a_message_and_a_note_on_the_changed_config(windows, tmp_path, capsys):
    """2 steps, then resumed to 3 (the warm-up is the first 2 steps either way): the same weights
    and history as 3 steps in one go; it says where it resumed and what changed. resume=False
    starts afresh even where a checkpoint exists."""
    train, val = windows
    cfg = dict(batch_size=4, warmup_steps=2, eval_every=1, save_every=1, seed=5)
    straight = tiny_model(0)
    h_straight = pretrain(straight, train, val, quick_config(max_steps=3, **cfg), tmp_path / "straight")
    capsys.readouterr()

    pretrain(tiny_model(0), train, val, quick_config(max_steps=2, **cfg), tmp_path / "resumed")
    capsys.readouterr()
    resumed = tiny_model(3)  # other initial weights: they must come from the checkpoint
    h_resumed = pretrain(resumed, train, val, quick_config(max_steps=3, **cfg), tmp_path / "resumed")
    out, err = capsys.readouterr()
    assert out.splitlines()[:2] == [
        f"resumed from {tmp_path / 'resumed' / 'train_state.pt'} at step 2",
        "note: resuming with a changed training config (max_steps: 2 -> 3); the run will differ from an "
        "uninterrupted one",
    ]
    assert "| 3/3 [" in err and "| 1/3 [" not in err  # the bar starts at the resumed step
    assert h_resumed == h_straight and h_resumed.steps == [1, 2, 3]
    assert all(torch.equal(a, b) for a, b in zip(resumed.state_dict().values(), straight.state_dict().values()))

    again = tiny_model(0)
    h_again = pretrain(again, train, val, quick_config(max_steps=3, **cfg), tmp_path / "straight", resume=False)
    assert "resumed from" not in capsys.readouterr().out
    assert h_again == h_straight
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), straight.state_dict().values()))


def test_pretrain_resumes_a_checkpoint_of_another_world_size_with_reseeded_dropout(windows, tmp_path, capsys):
    """A checkpoint written by 2 processes, resumed by 1: a note, then dropout seeded with
    seed + 1_000_003 x step (weights and data order still resume exactly)."""
    train, val = windows
    cfg = quick_config(max_steps=3, eval_every=3, save_every=2, seed=5)
    pretrain(tiny_model(0), train, val, quick_config(max_steps=2, eval_every=3, save_every=2, seed=5), tmp_path)
    state = load_training_state(tmp_path / "train_state.pt")
    state["world_size"] = 2
    torch.save(state, tmp_path / "train_state.pt")
    capsys.readouterr()
    model = tiny_model(0)
    pretrain(model, train, val, cfg, tmp_path)
    assert ("note: the checkpoint was written by 2 process(es), this run has 1; dropout masks are re-seeded"
            in capsys.readouterr().out.splitlines())
    # The same step 3 by hand: the saved weights and optimizer, dropout seeded as the note says.
    reference = tiny_model(0)
    reference.load_state_dict(state["model"])
    decay = [p for p in reference.parameters() if p.dim() >= 2]
    no_decay = [p for p in reference.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], betas=(0.9, 0.95))
    optimizer.load_state_dict(state["optimizer"])
    for group in optimizer.param_groups:
        group["lr"] = learning_rate(2, 3, cfg.lr, cfg.warmup_steps, cfg.min_lr)
    torch.manual_seed(5 + 1_000_003 * 2)
    reference.train()
    batch = [train[i] for i in batch_indices(2, 0, len(train), cfg)]
    lm_loss(reference, torch.stack([x for x, _ in batch]), torch.stack([y for _, y in batch])).backward()
    torch.nn.utils.clip_grad_norm_(reference.parameters(), cfg.grad_clip)
    optimizer.step()
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reference.state_dict().values()))


def test_pretrain_on_rank_1_of_2_is_quiet_and_seeds_its_own_dropout(windows, tmp_path, monkeypatch, capsys):
    """Under torchrun (rank 1 of 2 stood in, no second process): this rank prints nothing, shows
    no progress bar, writes no file and never calls on_eval; it trains on its half of the batch
    (windows 1 and 3 of each micro-batch) with dropout seeded by seed + rank."""
    train, val = windows
    monkeypatch.setattr(gpt_train, "get_rank", lambda: 1)
    monkeypatch.setattr(gpt_train, "get_world_size", lambda: 2)
    cfg = quick_config(max_steps=1, eval_every=1, save_every=1, seed=5)
    called = []
    model = tiny_model(0)
    history = pretrain(model, train, val, cfg, tmp_path / "rank1", on_eval=lambda *args: called.append(args))
    assert capsys.readouterr() == ("", "")
    assert not (tmp_path / "rank1").exists() and called == [] and history.steps == [1]
    reference = tiny_model(0)
    decay = [p for p in reference.parameters() if p.dim() >= 2]
    no_decay = [p for p in reference.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], betas=(0.9, 0.95),
                                  lr=learning_rate(0, 1, cfg.lr, cfg.warmup_steps, cfg.min_lr))
    torch.manual_seed(5 + 1)
    batch = [train[i] for i in batch_indices(0, 0, len(train), cfg)[1::2]]
    lm_loss(reference, torch.stack([x for x, _ in batch]), torch.stack([y for _, y in batch])).backward()
    torch.nn.utils.clip_grad_norm_(reference.parameters(), cfg.grad_clip)
    optimizer.step()
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reference.state_dict().values()))

def test_pretrain_hands_the_device_bf16_and_gradient_sync_on(windows, tmp_path, monkeypatch):
    """What only shows on a GPU or under torchrun, seen through stand-ins around the real
    functions: the model is wrapped for `device`, every batch goes to `device`, cfg.bf16 reaches
    autocast, and of a step's micro-batches only the last synchronises gradients (DDP's no_sync
    before it)."""
    train, val = windows
    calls = dict(wrap=[], sync=[], collate=[], autocast=[])
    collate, autocast = gpt_train._collate, gpt_train.autocast
    monkeypatch.setattr(gpt_train, "wrap_model", lambda m, d: calls["wrap"].append((m, d)) or m)
    monkeypatch.setattr(gpt_train, "sync_gradients",
                        lambda m, sync: calls["sync"].append((m, sync)) or contextlib.nullcontext())
    monkeypatch.setattr(gpt_train, "_collate", lambda items, d: calls["collate"].append(d) or collate(items, d))
    monkeypatch.setattr(gpt_train, "autocast", lambda d, bf16: calls["autocast"].append((d, bf16)) or autocast(d, bf16))
    model, device = tiny_model(0), torch.device("cpu")
    pretrain(model, train, val, quick_config(max_steps=2, grad_accum=2, bf16=False, eval_every=2, save_every=2),
             tmp_path, device=device)
    assert calls["wrap"] == [(model, device)]
    assert calls["sync"] == [(model, False), (model, True)] * 2
    assert calls["collate"] == [device] * 6  # 2 steps x 2 micro-batches, then 2 evaluation batches
    assert calls["autocast"] == [(device, False)] * 6

def test_pretrain_refuses_a_checkpoint_of_another_model_size(windows, tmp_path):
    train, val = windows
    cfg = quick_config(max_steps=1, eval_every=1, save_every=1)
    pretrain(tiny_model(0), train, val, cfg, tmp_path)
    with pytest.raises(ValueError, match=re.escape(
            f"{tmp_path / 'train_state.pt'} was saved by a model of another size (emb_dim=32, n_layers=2, "
            f"context_length=32) than this run's (emb_dim=32, n_layers=3, context_length=32); pass --no-resume")):
        pretrain(tiny_model(0, n_layers=3), train, val, quick_config(max_steps=2, eval_every=1, save_every=1), tmp_path)


def test_pretrain_refuses_what_cannot_run(windows, tmp_path, monkeypatch):
    """A batch that grad_accum does not divide (a config changed after it was checked), fewer
    windows than one batch (exactly one batch is enough), a micro-batch that the processes
    cannot share evenly: each refused with its message, before anything is written."""
    train, val = windows
    cfg = quick_config(max_steps=1, eval_every=1, save_every=1)
    cfg.grad_accum = 3
    with pytest.raises(ValueError, match="^batch_size=4 is not divisible by grad_accum=3$"):
        pretrain(tiny_model(0), train, val, cfg, tmp_path / "a")
    with pytest.raises(ValueError, match="^3 training windows are fewer than one batch of 4$"):
        pretrain(tiny_model(0), _Take(train, 3), val, quick_config(max_steps=1), tmp_path / "b")
    history = pretrain(tiny_model(0, drop_rate=0.0), _Take(train, 4), val,
                       quick_config(max_steps=1, eval_every=1, save_every=1), tmp_path / "c")
    assert history.steps == [1]
    monkeypatch.setattr(gpt_train, "get_world_size", lambda: 3)
    with pytest.raises(ValueError, match=r"^a micro-batch of 2 windows \(batch_size=4 / grad_accum=2\) cannot be "
                                         r"split evenly over 3 processes$"):
        pretrain(tiny_model(0), train, val, quick_config(max_steps=1, grad_accum=2), tmp_path / "d")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists() and not (tmp_path / "d").exists()


def test_pretrain_stops_on_a_non_finite_loss_or_gradient_before_the_step(windows, tmp_path):
    """A nan loss, or a finite loss with an infinite gradient, raises FloatingPointError naming
    the step, the loss and the lr, before the optimizer step: the weights are untouched."""
    train, val = windows
    cfg = quick_config(max_steps=2)  # warm-up over 2 steps: lr 5.00e-04 at step 0
    model = tiny_model(0)
    with torch.no_grad():
        model.final_norm.scale.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match=r"^training loss became nan at step 0; lower the learning rate "
                                                 r"\(now 5.00e-04\) or check the data$"):
        pretrain(model, train, val, cfg, tmp_path / "nan")
    model = tiny_model(0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.final_norm.shift.register_hook(lambda g: torch.full_like(g, float("inf")))
    with pytest.raises(FloatingPointError, match=r"^gradient norm became inf at step 0 \(loss 1\d\.\d{4}\); lower the "
                                                 r"learning rate \(now 5.00e-04\) or use bf16/fp32 instead of fp16$"):
        pretrain(model, train, val, cfg, tmp_path / "inf")
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert not (tmp_path / "inf" / "train_state.pt").exists()


# ----------------------------------------------------------------------------- random state and config notes

def _state_after(seed):
    """(torch's CPU random state right after manual_seed(seed), the next torch.rand(3) drawn from it)."""
    torch.manual_seed(seed)
    return torch.get_rng_state(), torch.rand(3)


def test_rng_states_hold_this_process_s_state(monkeypatch):
    """One process on the CPU: torch_rng only; on a GPU also cuda_rng of that device; under
    torchrun (N > 1) also every rank's, gathered (here: a stand-in gather)."""
    state, _ = _state_after(42)
    torch.set_rng_state(state)
    assert set(_rng_states("cpu", 1)) == {"torch_rng"} and torch.equal(_rng_states("cpu", 1)["torch_rng"], state)
    cuda_state = torch.arange(16, dtype=torch.uint8)
    asked = []
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": asked.append(device) or cuda_state)
    on_gpu = _rng_states(torch.device("cuda", 0), 1)
    assert set(on_gpu) == {"torch_rng", "cuda_rng"} and torch.equal(on_gpu["cuda_rng"], cuda_state)
    assert asked == [torch.device("cuda", 0)]
    monkeypatch.setattr(gpt_train, "all_gather_tensor", lambda t: [t, t + 1])
    two = _rng_states(torch.device("cuda", 0), 2)
    assert set(two) == {"torch_rng", "cuda_rng", "torch_rng_per_rank", "cuda_rng_per_rank"}
    assert torch.equal(two["torch_rng_per_rank"][1], state + 1) and torch.equal(two["cuda_rng_per_rank"][1], cuda_state + 1)


def test_restore_rng_sets_the_saved_state(capsys):
    """Same world size (a checkpoint without world_size counts as one process): the saved state
    is restored, so the next draws are the saved run's; nothing is printed."""
    state, expected = _state_after(42)
    for saved in ({"torch_rng": state}, {"torch_rng": state, "world_size": 1}):
        torch.manual_seed(0)
        _restore_rng(saved, "cpu", seed=7, step=4)
        assert torch.equal(torch.rand(3), expected)
    assert capsys.readouterr().out == ""


def test_restore_rng_reseeds_when_the_world_size_changed(capsys):
    """Written by 2 processes, resumed by 1: a note, and the seed seed + 1_000_003 * step + rank."""
    state, _ = _state_after(42)
    _restore_rng({"torch_rng": state, "world_size": 2}, "cpu", seed=7, step=4)
    drawn = torch.rand(3)
    assert torch.equal(drawn, _state_after(7 + 1_000_003 * 4)[1])
    assert capsys.readouterr().out == ("note: the checkpoint was written by 2 process(es), this run has 1; dropout "
                                       "masks are re-seeded\n")


def test_restore_rng_picks_this_rank_s_state_under_torchrun(monkeypatch, capsys):
    """Rank 1 of 2 restores the second of the per-rank states; with another world size it seeds
    with seed + 1_000_003 * step + 1 and prints nothing (only rank 0 prints)."""
    monkeypatch.setattr(gpt_train, "get_rank", lambda: 1)
    monkeypatch.setattr(gpt_train, "get_world_size", lambda: 2)
    (s0, e0), (s1, e1) = _state_after(40), _state_after(41)
    _restore_rng({"world_size": 2, "torch_rng": s0, "torch_rng_per_rank": [s0, s1]}, "cpu", seed=7, step=4)
    assert torch.equal(torch.rand(3), e1)
    _restore_rng({"world_size": 4, "torch_rng": s0, "torch_rng_per_rank": [s0, s1, s0, s1]}, "cpu", seed=7, step=4)
    assert torch.equal(torch.rand(3), _state_after(7 + 1_000_003 * 4 + 1)[1])
    assert capsys.readouterr().out == ""


def test_restore_rng_sets_the_cuda_state_only_on_a_gpu_that_has_one_saved(monkeypatch):
    """On a CUDA device the saved cuda_rng (this rank's under torchrun) goes back to that device;
    on the CPU, or from a checkpoint written on a CPU (no cuda_rng), CUDA's state is left alone."""
    calls = []
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device="cuda": calls.append((state, device)))
    cpu_state, _ = _state_after(42)
    c0, c1 = torch.zeros(8, dtype=torch.uint8), torch.ones(8, dtype=torch.uint8)
    gpu = torch.device("cuda", 0)
    _restore_rng({"torch_rng": cpu_state, "cuda_rng": c0}, gpu, seed=7, step=4)
    assert len(calls) == 1 and torch.equal(calls[0][0], c0) and calls[0][1] == gpu
    _restore_rng({"torch_rng": cpu_state, "cuda_rng": c0}, "cpu", seed=7, step=4)
    _restore_rng({"torch_rng": cpu_state}, gpu, seed=7, step=4)
    assert len(calls) == 1
    monkeypatch.setattr(gpt_train, "get_rank", lambda: 1)
    monkeypatch.setattr(gpt_train, "get_world_size", lambda: 2)
    _restore_rng({"world_size": 2, "torch_rng_per_rank": [cpu_state, cpu_state], "cuda_rng": c0,
                  "cuda_rng_per_rank": [c0, c1]}, gpu, seed=7, step=4)
    assert len(calls) == 2 and torch.equal(calls[1][0], c1) and calls[1][1] == gpu


def test_a_changed_config_is_named_on_resume(capsys):
    """Each changed field as 'name: old -> new', in the config's order; nothing for an equal
    config, for a checkpoint without one, or for fields an older checkpoint did not save."""
    cfg = quick_config(max_steps=8, seed=9)
    saved = dataclasses.asdict(cfg)
    _warn_if_config_changed(None, cfg)
    _warn_if_config_changed({}, cfg)
    _warn_if_config_changed(dict(saved), cfg)
    _warn_if_config_changed({k: v for k, v in saved.items() if k != "bf16"}, cfg)
    assert capsys.readouterr().out == ""
    _warn_if_config_changed({**saved, "max_steps": 6, "seed": 7, "bf16": False}, cfg)
    assert capsys.readouterr().out == ("note: resuming with a changed training config (max_steps: 6 -> 8, seed: 7 -> 9, "
                                       "bf16: False -> None); the run will differ from an uninterrupted one\n")


def test_history_round_trips_through_the_checkpoint(tmp_path):
    h = History(steps=[1], tokens=[64], train_loss=[10.5], val_loss=[10.6], lr=[1e-3])
    from dataclasses import asdict

    from gpt.checkpoint import save_training_state

    save_training_state(tmp_path / "s.pt", history=asdict(h))
    assert History(**load_training_state(tmp_path / "s.pt")["history"]) == h
