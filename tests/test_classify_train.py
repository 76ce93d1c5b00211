"""classify/train.py: the loop learns, is reproducible, stops on a NaN loss with a clear message, gives
the same result under DistributedDataParallel (one process), and plots its curves."""

import pytest
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data.distributed import DistributedSampler

from classify.data import Example
from classify.dataset import ClassificationDataset, make_loader
from classify.model import add_classification_head, class_logits, set_trainable
from classify.train import ClassifierHistory, batch_loss, evaluate, split_batch, train_classifier
from plots.figures import plot_history
from gpt import GPTConfig, GPTModel

# A toy task the tiny model learns in a few steps: does the message contain "free"?
WORDS = ["call", "me", "later", "ok", "see", "you", "at", "home", "lunch", "now", "tomorrow", "please"]


def toy_examples(n=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        words = [WORDS[j] for j in torch.randint(len(WORDS), (int(torch.randint(2, 8, (1,), generator=g)),), generator=g)]
        if i % 2:
            words.insert(int(torch.randint(len(words) + 1, (1,), generator=g)), "FREE")
        out.append(Example(" ".join(words), i % 2))
    return out


def make_model(seed=123):
    torch.manual_seed(seed)
    model = GPTModel(GPTConfig.from_preset("gpt-tiny", drop_rate=0.0))
    add_classification_head(model, 2)
    return set_trainable(model, "full")


def run(seed=123, epochs=1, **kw):
    model = make_model(seed)
    train = ClassificationDataset(toy_examples())
    val = ClassificationDataset(toy_examples(16, seed=1), max_length=train.max_length)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1)
    hist = train_classifier(model, make_loader(train, 8, shuffle=True, seed=seed), make_loader(val, 8), opt,
                            epochs, "cpu", eval_every=4, seed=seed, progress=False, log=None, **kw)
    return model, hist, val


def test_learns_and_records_history():
    model, hist, val = run(epochs=5)
    # every 4th step and at the end of each epoch (6 steps of 8 examples per epoch)
    assert hist.step == [4, 6, 8, 12, 16, 18, 20, 24, 28, 30]
    assert hist.examples_seen == [8 * s for s in hist.step]
    assert hist.epoch == [pytest.approx(s / 6, abs=1e-4) for s in hist.step]
    assert hist.val_loss[-1] < hist.val_loss[0]
    assert hist.val_accuracy[-1] >= 0.9
    result = evaluate(model, make_loader(val, 5), "cpu")
    assert result["n"] == 16
    assert result["accuracy"] == pytest.approx(hist.val_accuracy[-1])
    assert result["loss"] == pytest.approx(hist.val_loss[-1], rel=1e-5)
    assert ClassifierHistory.from_dict(hist.to_dict()) == hist


def test_same_seed_same_numbers_other_seed_other_numbers():
    m1, h1, _ = run(seed=7, epochs=1)
    m2, h2, _ = run(seed=7, epochs=1)
    m3, h3, _ = run(seed=8, epochs=1)
    assert h1.train_loss == h2.train_loss and h1.val_loss == h2.val_loss
    assert all(torch.equal(a, b) for a, b in zip(m1.parameters(), m2.parameters()))
    assert h3.train_loss != h1.train_loss


def test_max_steps_stops_early():
    _, hist, _ = run(epochs=3, max_steps=5)
    assert hist.step == [4, 5]


def test_lr_schedule_is_applied():
    _, hist, _ = run(epochs=1, lr_schedule=lambda step: 1e-3 * (step + 1))
    assert hist.lr == [pytest.approx(4e-3), pytest.approx(6e-3)]  # the rate of the last step before each eval


def test_nan_loss_names_step_and_learning_rate():
    model = make_model()
    with torch.no_grad():
        model.out_head.weight.fill_(float("nan"))
    ds = ClassificationDataset(toy_examples(16))
    opt = torch.optim.AdamW(model.parameters(), lr=2.5e-4)
    with pytest.raises(FloatingPointError, match=r"nan at step 0 \(epoch 1\), learning rate 2.50e-04"):
        train_classifier(model, make_loader(ds, 8), make_loader(ds, 8), opt, 1, "cpu", progress=False, log=None)


def test_distributed_data_parallel_one_process_matches_plain(tmp_path):
    """The loop under DDP + DistributedSampler (world size 1, gloo) gives the plain loop's numbers."""
    train = ClassificationDataset(toy_examples())
    val = ClassificationDataset(toy_examples(16, seed=1), max_length=train.max_length)

    def fit(model, train_loader, val_loader):
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1)
        return train_classifier(model, train_loader, val_loader, opt, 2, "cpu", eval_every=4, seed=1,
                                progress=False, log=None)

    plain = fit(make_model(), make_loader(train, 8, shuffle=False), make_loader(val, 8))
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        sampler = DistributedSampler(train, num_replicas=1, rank=0, shuffle=False)
        ddp = DistributedDataParallel(make_model())
        wrapped = fit(ddp, make_loader(train, 8, sampler=sampler), make_loader(val, 8))
    finally:
        dist.destroy_process_group()
    assert wrapped.step == plain.step and wrapped.examples_seen == plain.examples_seen
    torch.testing.assert_close(torch.tensor(wrapped.val_loss), torch.tensor(plain.val_loss), rtol=1e-5, atol=1e-6)
    assert wrapped.val_accuracy == plain.val_accuracy


def test_plot_history_writes_a_png(tmp_path):
    _, hist, _ = run(epochs=1)
    path = plot_history(hist, tmp_path / "curves.png", title="toy")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["curves.png"]


def test_zero_epochs_is_an_error():
    model = make_model()
    ds = ClassificationDataset(toy_examples(8))
    with pytest.raises(ValueError, match="epochs"):
        train_classifier(model, make_loader(ds), make_loader(ds), torch.optim.SGD(model.parameters(), lr=0.1), 0, "cpu")


# ----------------------------------------------------------------------------- gradient accumulation

def test_split_batch_keeps_every_example_once_and_trims_padding():
    ds = ClassificationDataset(toy_examples(8))
    batch = next(iter(make_loader(ds, 8)))
    parts = split_batch(batch, 3)
    assert [len(labels) for _, _, labels in parts] == [3, 3, 2]
    assert torch.equal(torch.cat([labels for _, _, labels in parts]), batch[2])
    assert torch.equal(torch.cat([lengths for _, lengths, _ in parts]), batch[1])
    for ids, lengths, _ in parts:
        assert ids.shape[1] == int(lengths.max())  # each micro-batch only as wide as its longest message
    assert len(split_batch(batch, 20)) == 8  # more parts than rows: one example each, no empty micro-batch


@pytest.mark.slow
@pytest.mark.parametrize("grad_accum", [2, 3, 8])
def test_gradient_accumulation_takes_the_same_steps_as_the_whole_batch(grad_accum):
    """Batches of 8 cut into 2, 3 (uneven: 3+3+2) or 8 micro-batches: the same trained weights and the same
    history as the uncut batches, up to float rounding (float32, 2 epochs of 6 AdamW steps)."""
    m1, h1, _ = run(seed=5, epochs=2)
    m2, h2, _ = run(seed=5, epochs=2, grad_accum=grad_accum)
    assert h2.step == h1.step and h2.examples_seen == h1.examples_seen
    torch.testing.assert_close(torch.tensor(h2.train_loss), torch.tensor(h1.train_loss), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.tensor(h2.val_loss), torch.tensor(h1.val_loss), rtol=1e-5, atol=1e-6)
    for (name, a), b in zip(m1.named_parameters(), m2.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.slow
def test_gradient_accumulation_is_not_the_same_as_small_batches():
    """Control: 4 micro-batches of 2 per step is NOT the same as steps of 2 (4x the steps): the test above
    would catch an implementation that stepped after every micro-batch."""
    _, h_accum, _ = run(seed=5, epochs=1, grad_accum=4)
    model = make_model(5)
    train = ClassificationDataset(toy_examples())
    val = ClassificationDataset(toy_examples(16, seed=1), max_length=train.max_length)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1)
    h_small = train_classifier(model, make_loader(train, 2, shuffle=True, seed=5), make_loader(val, 8), opt, 1, "cpu",
                               eval_every=4, seed=5, progress=False, log=None)
    assert h_small.step[-1] == 4 * h_accum.step[-1]
    assert h_small.val_loss[-1] != pytest.approx(h_accum.val_loss[-1], rel=1e-3)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_grad_accum_must_be_a_positive_integer(bad):
    model = make_model()
    ds = ClassificationDataset(toy_examples(8))
    opt = torch.optim.AdamW(model.parameters())
    with pytest.raises(ValueError, match="grad_accum"):
        train_classifier(model, make_loader(ds, 8), make_loader(ds, 8), opt, 1, "cpu", progress=False, log=None,
                         grad_accum=bad)


# ----------------------------------------------------------------------------- prefix loss

def test_prefix_loss_is_the_loss_of_every_cut_message_read_at_its_end():
    """prefix_weight w adds w x (mean over messages of the mean over their real tokens t of the cross-entropy of the
    message CUT after t, classified at its last token). Reference: each prefix run through the model on its own."""
    import torch.nn.functional as F

    model = make_model().eval()
    ds = ClassificationDataset(toy_examples(6))
    batch = next(iter(make_loader(ds, 6)))
    ids, lengths, labels = batch
    with torch.no_grad():
        plain, correct, n = batch_loss(model, batch, "cpu")
        mixed, correct_mixed, _ = batch_loss(model, batch, "cpu", prefix_weight=0.5)
        whole = F.cross_entropy(class_logits(model, ids, lengths), labels)
        per_message = []
        for row, length, label in zip(ids, lengths, labels):
            cut = [F.cross_entropy(class_logits(model, row[None, :t]), label[None]) for t in range(1, int(length) + 1)]
            per_message.append(torch.stack(cut).mean())
        prefixes = torch.stack(per_message).mean()
    torch.testing.assert_close(plain, whole, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(mixed, whole + 0.5 * prefixes, rtol=1e-5, atol=1e-6)
    assert (correct, n) == (correct_mixed, 6)  # accuracy is still read at the last real token
    assert abs(prefixes - whole) > 0.01  # the prefixes' term is its own number (0.77 vs 0.80 here), not a copy


def test_prefix_weight_must_not_be_negative():
    model = make_model()
    ds = ClassificationDataset(toy_examples(8))
    opt = torch.optim.AdamW(model.parameters())
    with pytest.raises(ValueError, match="prefix_weight must be >= 0"):
        train_classifier(model, make_loader(ds, 8), make_loader(ds, 8), opt, 1, "cpu", progress=False, log=None,
                         prefix_weight=-1.0)


def test_train_and_validation_curves_measure_the_same_quantities():
    """With learning rate 0 (the weights never move), no dropout, and the training set as the validation set,
    the running training losses equal the validation losses: both curves are the last-token loss, and both
    prefix curves the prefix term alone, whatever prefix_weight the training objective uses."""
    model = make_model()
    train = ClassificationDataset(toy_examples(16))
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    hist = train_classifier(model, make_loader(train, 8), make_loader(train, 8), opt, 1, "cpu", eval_every=0,
                            progress=False, log=None, prefix_weight=1.0)
    assert hist.step == [2]
    assert hist.train_loss[0] == pytest.approx(hist.val_loss[0], rel=1e-5)
    assert hist.train_prefix_loss[0] == pytest.approx(hist.val_prefix_loss[0], rel=1e-5)
    assert hist.train_prefix_loss[0] != pytest.approx(hist.train_loss[0], rel=1e-5)  # two different quantities


# ----------------------------------------------------------------------------- the loop's promises, by value
# A tiny causal classifier and hand-made batches, so that every number the loop reports can be computed by
# hand here: token ids 0..9, an embedding of 4 dimensions, the running mean of the embeddings up to each token
# (causal: padding after a message cannot change its outputs), a linear 2-class head. 40 + 10 parameters.

import io
import math
import os
import sys

import torch.nn.functional as F
from torch import nn

import classify.train as classify_train
from classify.train import batch_loss_terms, training_loss


class CumMeanClassifier(nn.Module):
    def __init__(self, seed=0, dropout=0.0):
        super().__init__()
        torch.manual_seed(seed)
        self.tok_emb = nn.Embedding(10, 4)
        self.drop = nn.Dropout(dropout)
        self.out_head = nn.Linear(4, 2)
        self.forward_shapes = []  # (b, T) of every forward pass in training mode

    def forward(self, input_ids):  # (b, T) -> (b, T, 2)
        if self.training:
            self.forward_shapes.append(tuple(input_ids.shape))
        T = input_ids.shape[1]
        h = self.tok_emb(input_ids).cumsum(1) / torch.arange(1, T + 1)[None, :, None]
        return self.out_head(self.drop(h))


def tiny(seed=0, dropout=0.0, frozen_embedding=True):
    model = CumMeanClassifier(seed, dropout)
    model.tok_emb.weight.requires_grad = not frozen_embedding
    return model


def make_batch(rows, labels, width=None):
    """(input_ids (b, width) padded with 0, lengths (b,), labels (b,)), as classify.dataset.collate_trim gives."""
    width = width or max(map(len, rows))
    ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
    return ids, torch.tensor([len(r) for r in rows]), torch.tensor(labels)


# 3 batches of 3, 2 and 4 messages; the first padded one column wider than its longest message
BATCHES = [make_batch([[1, 2, 3], [4, 5], [6, 7, 8, 9]], [0, 1, 1], width=5),
           make_batch([[2, 2], [9, 1, 3]], [1, 0]),
           make_batch([[5], [3, 4, 6, 7], [8, 8, 1], [7]], [0, 1, 0, 1])]
VAL = [make_batch([[1, 1, 4], [6, 2], [3]], [1, 0, 1]), make_batch([[7, 5], [2, 8, 8, 4]], [0, 1])]


def by_hand(model, batch):
    """(last-token loss, prefix loss, number correct, n) of one batch, written out message by message."""
    ids, lengths, labels = batch
    logits = model(ids).float()
    last, prefix, correct = [], [], 0
    for row, length, label in zip(logits, lengths.tolist(), labels):
        ce = [F.cross_entropy(row[t][None], label[None]) for t in range(length)]
        last.append(ce[-1])
        prefix.append(torch.stack(ce).mean())
        correct += int(row[length - 1].argmax() == label)
    return torch.stack(last).mean(), torch.stack(prefix).mean(), correct, len(labels)


def eval_by_hand(model, batches):
    """evaluate's numbers, by hand: per-example means over `batches` with dropout off."""
    was = model.training
    model.eval()
    with torch.no_grad():
        terms = [by_hand(model, b) for b in batches]
    model.train(was)
    n = sum(t[3] for t in terms)
    return {"loss": sum(t[0].item() * t[3] for t in terms) / n, "prefix_loss": sum(t[1].item() * t[3] for t in terms) / n,
            "accuracy": sum(t[2] for t in terms) / n}


def sgd_by_hand(model, batches, steps, lr, grad_clip=None, prefix_weight=0.0, eval_at=(), val=VAL):
    """Plain SGD written out: per step, the gradient of last + prefix_weight * prefix over the trainable
    parameters, scaled to norm grad_clip when it is longer (torch's clip_grad_norm_: max_norm / (norm + 1e-6)),
    p -= lr(step) * g. Returns the per-step (last, prefix, correct, n) before each update, the evaluations
    after the steps in eval_at, and the raw gradient norm of each step."""
    params = [p for p in model.parameters() if p.requires_grad]
    log, evals, norms = [], {}, []
    for step in range(steps):
        last, prefix, correct, n = by_hand(model, batches[step % len(batches)])
        grads = torch.autograd.grad(last + prefix_weight * prefix, params)
        norm = math.sqrt(sum(float((g.double() ** 2).sum()) for g in grads))
        norms.append(norm)
        if grad_clip is not None:
            grads = [g * min(1.0, grad_clip / (norm + 1e-6)) for g in grads]
        with torch.no_grad():
            for p, g in zip(params, grads):
                p -= lr(step) * g
        log.append((last.item(), prefix.item(), correct, n))
        if step + 1 in eval_at:
            evals[step + 1] = eval_by_hand(model, val)
    return log, evals, norms


def fit(model, epochs=1, batches=BATCHES, val=VAL, lr=0.1, **kw):
    kw = {"progress": False, "log": None, "eval_every": 0, **kw}
    opt = torch.optim.SGD(model.parameters(), lr=lr)  # every parameter, the frozen ones too
    return train_classifier(model, batches, val, opt, epochs, "cpu", **kw)


def window_means(log, windows):
    """Running means of the training terms over each window of steps (1-based, inclusive), weighted by n."""
    out = {"loss": [], "prefix_loss": [], "accuracy": []}
    for a, b in windows:
        part = log[a - 1:b]
        n = sum(t[3] for t in part)
        out["loss"].append(sum(t[0] * t[3] for t in part) / n)
        out["prefix_loss"].append(sum(t[1] * t[3] for t in part) / n)
        out["accuracy"].append(sum(t[2] for t in part) / n)
    return out


LRS = [0.5, 0.0, 0.25, 1.0, 0.125, 0.75]


def test_history_and_weights_equal_sgd_written_out_by_hand():
    """2 epochs of the 3 batches (3, 2, 4 messages), eval_every=2, the learning rate from a schedule: the
    evaluation points (every 2nd step and each epoch's end), examples seen, fractional epochs rounded to 4
    places, the rate of the last step before each evaluation, the running training means over the steps since
    the previous evaluation (weighted by messages), the validation numbers at each point, and the final weights
    all equal plain SGD written out by hand; the frozen embedding stays bit-for-bit as it was."""
    model, ref = tiny(), tiny()
    emb_before = model.tok_emb.weight.detach().clone()
    hist = fit(model, epochs=2, eval_every=2, lr_schedule=lambda s: LRS[s])
    log, evals, _ = sgd_by_hand(ref, BATCHES, 6, lambda s: LRS[s], eval_at=(2, 3, 4, 6))
    assert hist.step == [2, 3, 4, 6]
    assert hist.examples_seen == [5, 9, 12, 18]
    assert hist.epoch == [0.6667, 1.0, 1.3333, 2.0]
    assert hist.lr == [0.0, 0.25, 1.0, 0.75]
    train = window_means(log, [(1, 2), (3, 3), (4, 4), (5, 6)])
    assert hist.train_loss == pytest.approx(train["loss"], rel=1e-6)
    assert hist.train_prefix_loss == pytest.approx(train["prefix_loss"], rel=1e-6)
    assert hist.train_accuracy == pytest.approx(train["accuracy"], rel=1e-12)
    assert hist.val_loss == pytest.approx([evals[s]["loss"] for s in hist.step], rel=1e-6)
    assert hist.val_prefix_loss == pytest.approx([evals[s]["prefix_loss"] for s in hist.step], rel=1e-6)
    assert hist.val_accuracy == pytest.approx([evals[s]["accuracy"] for s in hist.step], rel=1e-12)
    assert len(set(hist.train_accuracy)) > 1 and 0 not in hist.train_accuracy  # the accuracies say something
    torch.testing.assert_close(model.out_head.weight, ref.out_head.weight, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(model.out_head.bias, ref.out_head.bias, rtol=1e-6, atol=1e-7)
    assert not torch.equal(model.out_head.weight, tiny().out_head.weight)  # the head trained
    assert torch.equal(model.tok_emb.weight, emb_before)  # the frozen embedding did not move at all
    assert model.training  # left in training mode


@pytest.mark.parametrize("grad_clip, prefix_weight", [(None, 0.5), (0.05, 0.0), (0.05, 1.0), (100.0, 0.0)])
def test_clipping_and_prefix_weight_equal_sgd_written_out_by_hand(grad_clip, prefix_weight):
    """3 steps of SGD (lr 0.5) with the embedding trainable too: the gradient of last + prefix_weight x prefix,
    clipped to norm grad_clip when it is longer, gives the same weights as by hand (100 never binds here)."""
    model, ref = tiny(frozen_embedding=False), tiny(frozen_embedding=False)
    hist = fit(model, lr=0.5, grad_clip=grad_clip, prefix_weight=prefix_weight)
    log, _, norms = sgd_by_hand(ref, BATCHES, 3, lambda s: 0.5, grad_clip, prefix_weight)
    if grad_clip == 0.05:
        assert min(norms) > 0.1  # the clip binds at every step
    elif grad_clip == 100.0:
        assert max(norms) < 10
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7, msg=name)
    # the history records the two terms unweighted, whatever the weight trained on
    assert hist.train_loss == pytest.approx(window_means(log, [(1, 3)])["loss"], rel=1e-6)
    assert hist.train_prefix_loss == pytest.approx(window_means(log, [(1, 3)])["prefix_loss"], rel=1e-6)


def test_one_clipped_step_moves_the_weights_by_exactly_the_max_norm():
    """SGD with lr 1, one step, grad_clip 0.01: the update is the gradient scaled to length 0.01 (same direction)."""
    model = tiny(frozen_embedding=False)
    before = [p.detach().clone() for p in model.parameters()]
    last, _, _, _ = by_hand(model, BATCHES[0])
    grads = torch.autograd.grad(last, list(model.parameters()))
    raw = torch.cat([g.flatten() for g in grads])
    assert raw.norm() > 0.1
    fit(model, lr=1.0, grad_clip=0.01, max_steps=1)
    delta = torch.cat([(b - p.detach()).flatten() for b, p in zip(before, model.parameters())])
    assert float(delta.norm()) == pytest.approx(0.01, rel=1e-4)
    # per element: float32 rounding of weights of size ~1 (6e-8 each) is the tolerance
    torch.testing.assert_close(delta, raw * 0.01 / raw.norm(), rtol=1e-4, atol=2e-7)


@pytest.mark.parametrize("grad_accum", [2, 3])
def test_micro_batches_are_trimmed_synced_once_and_give_the_whole_batch_step(grad_accum, monkeypatch):
    """grad_accum cuts every batch into micro-batches, each as wide as its longest message, which go forward one at
    a time; under DDP gradients are synchronised on the last micro-batch of each step only; the weights equal
    those the whole batches give (float rounding)."""
    syncs = []
    real_sync = classify_train.sync_gradients

    def recording_sync(model, sync):
        syncs.append((model, sync))
        return real_sync(model, sync)

    monkeypatch.setattr(classify_train, "sync_gradients", recording_sync)
    whole, cut = tiny(frozen_embedding=False), tiny(frozen_embedding=False)
    fit(whole, lr=0.5)
    assert whole.forward_shapes == [(3, 5), (2, 3), (4, 4)]  # the whole batches, as the loader gave them
    syncs.clear()
    fit(cut, lr=0.5, grad_accum=grad_accum)
    if grad_accum == 2:  # lengths (3, 2, 4) -> (3, 2) + (4,); (2, 3) -> (2,) + (3,); (1, 4, 3, 1) -> (1, 4) + (3, 1)
        assert cut.forward_shapes == [(2, 3), (1, 4), (1, 2), (1, 3), (2, 4), (2, 3)]
        assert [s for _, s in syncs] == [False, True] * 3
    else:  # 3 parts: (3,) (2,) (4,); (2,) (3,); (1, 4) (3,) (1,)
        assert cut.forward_shapes == [(1, 3), (1, 2), (1, 4), (1, 2), (1, 3), (2, 4), (1, 3), (1, 1)]
        assert [s for _, s in syncs] == [False, False, True, False, True, False, False, True]
    assert all(m is cut for m, _ in syncs)
    for (name, p), q in zip(whole.named_parameters(), cut.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-7, msg=name)


def test_default_evaluation_every_50_steps_and_at_the_end():
    """eval_every defaults to 50: 60 batches in one epoch are evaluated after steps 50 and 60."""
    model = tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    hist = train_classifier(model, BATCHES * 20, VAL, opt, 1, "cpu", progress=False, log=None)
    assert hist.step == [50, 60]
    assert hist.epoch == [0.8333, 1.0]


def test_max_steps_one_and_a_stop_inside_the_epoch():
    """max_steps=1 is allowed (one step); a stop inside an epoch records the fraction of the epoch done."""
    assert fit(tiny(), max_steps=1).step == [1]
    hist = fit(tiny(), epochs=3, max_steps=2)
    assert (hist.step, hist.epoch, hist.examples_seen) == ([2], [0.6667], [5])
    hist = fit(tiny(), epochs=3, max_steps=5)
    assert (hist.step, hist.epoch, hist.examples_seen) == ([3, 5], [1.0, 1.6667], [9, 14])


def test_eval_batches_limits_the_validation_pass():
    """eval_batches=1: the validation numbers are those of the first validation batch only."""
    model = tiny()
    hist = fit(model, eval_batches=1)
    first = eval_by_hand(model, VAL[:1])
    assert hist.val_loss == pytest.approx([first["loss"]], rel=1e-6)
    assert hist.val_accuracy == [first["accuracy"]]
    assert first["loss"] != pytest.approx(eval_by_hand(model, VAL)["loss"], rel=1e-3)  # a different number


def test_bf16_reaches_training_and_evaluation():
    """bf16=True on the CPU: both the training terms and the validation pass run under bf16 autocast (learning
    rate 0: the weights stay put, so the numbers are those of the starting model)."""
    model = tiny()
    hist = fit(model, lr=0.0, bf16=True)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        log = [by_hand(model, b) for b in BATCHES]
        val = eval_by_hand(model, VAL)
    train_bf16 = sum(t[0].item() * t[3] for t in log) / 9
    assert hist.train_loss == pytest.approx([train_bf16], rel=1e-6)
    assert hist.val_loss == pytest.approx([val["loss"]], rel=1e-6)
    fp32 = eval_by_hand(model, VAL)["loss"]
    assert abs(fp32 - val["loss"]) > 1e-4  # bf16 is a measurably different number here


def test_examples_seen_counts_every_process(monkeypatch):
    """Under torch.distributed each process counts the examples of all processes (world size x its own)."""
    monkeypatch.setattr(classify_train, "get_world_size", lambda: 2)
    assert fit(tiny(), epochs=1, eval_every=2).examples_seen == [10, 18]


def test_seconds_are_wall_time_since_the_start():
    import time

    t0 = time.perf_counter()
    hist = fit(tiny(), epochs=2, eval_every=1)
    wall = time.perf_counter() - t0
    assert len(hist.seconds) == 6
    assert 0 <= hist.seconds[0] and hist.seconds == sorted(hist.seconds) and hist.seconds[-1] <= wall


def test_seed_sets_the_global_random_state_once_at_the_start():
    """With dropout 0.5: seed=3 gives bit-identical weights whatever the random state before the call, the same
    weights as torch.manual_seed(3) before a call without seed, and seed=4 other weights."""
    def weights(seed, before):
        model = tiny(dropout=0.5)
        torch.manual_seed(before)
        fit(model, epochs=2, lr=0.5, seed=seed)
        return model.out_head.weight.detach().clone()

    a = weights(3, before=0)
    assert torch.equal(weights(3, before=1), a)
    assert torch.equal(weights(None, before=3), a)
    assert not torch.equal(weights(4, before=0), a)


def test_a_distributed_sampler_gets_a_new_epoch_each_epoch():
    """A DistributedSampler is told the epoch (set_epoch) before each one, so every epoch has its own order: with
    learning rate 0 and an evaluation after every step, each step's training loss is its batch's, in the order
    the sampler gives for that epoch."""
    from torch.utils.data import DataLoader

    items = list(zip(*make_batch(*_rows_labels())))  # 9 single examples: (ids (4,), length, label)
    sampler = DistributedSampler(items, num_replicas=1, rank=0, shuffle=True, seed=0)
    loader = DataLoader(items, batch_size=3, sampler=sampler,
                        collate_fn=lambda b: (torch.stack([i for i, _, _ in b]), torch.stack([n for _, n, _ in b]),
                                              torch.stack([y for _, _, y in b])))
    model = tiny()
    hist = fit(model, epochs=3, batches=loader, lr=0.0, eval_every=1)
    expected = []
    orders = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        orders.append(list(iter(sampler)))
        expected += [by_hand(model, b)[0].item() for b in loader]
    assert orders[0] != orders[1] and orders[1] != orders[2]  # the three epochs have different orders
    assert hist.train_loss == pytest.approx(expected, rel=1e-6)


def _rows_labels():
    """The 9 messages of BATCHES as (rows, labels), for a Dataset of single examples."""
    rows, labels = [], []
    for ids, lengths, ys in BATCHES:
        rows += [r[:n].tolist() for r, n in zip(ids, lengths)]
        labels += ys.tolist()
    return rows, labels


# ----------------------------------------------------------------------------- refusals and their messages

def test_nan_loss_message_names_the_step_epoch_and_scheduled_rate():
    """Rates 0.1, 0.1, inf, 0.125 over 2 epochs of 2 batches: the infinite step (step 2, counted from 0) makes the
    weights non-finite, so the loss of step 3 (epoch 2's second batch) is refused, naming that step, its epoch and
    the rate the schedule gives it."""
    rates = [0.1, 0.1, math.inf, 0.125]
    with pytest.raises(FloatingPointError) as err:
        fit(tiny(), epochs=2, batches=BATCHES[:2], lr_schedule=lambda s: rates[s])
    assert str(err.value) == ("the training loss became nan at step 3 (epoch 2), learning rate 1.25e-01: lower the "
                              "learning rate (or, for LoRA, alpha) or clip gradients")


@pytest.mark.parametrize("bad", [0, -1.0, math.inf, math.nan, "1"])
def test_grad_clip_must_be_a_positive_finite_number(bad):
    with pytest.raises(ValueError) as err:
        fit(tiny(), grad_clip=bad)
    assert str(err.value) == ("grad_clip must be a positive number (the largest gradient norm; None for no clipping), "
                              f"got {bad!r}")


@pytest.mark.parametrize("bad", [0, -3])
def test_max_steps_must_be_at_least_one(bad):
    with pytest.raises(ValueError) as err:
        fit(tiny(), max_steps=bad)
    assert str(err.value) == f"max_steps must be at least 1 (None: no limit), got {bad}"


def test_an_empty_training_loader_is_refused_with_what_to_do():
    with pytest.raises(ValueError) as err:
        fit(tiny(), batches=[])
    assert str(err.value) == ("the training loader yields no batches: the batch size is larger than the training set "
                              "and incomplete batches are dropped; use a smaller batch size")


def test_epochs_and_prefix_weight_messages():
    with pytest.raises(ValueError, match=r"^epochs must be positive, got -1$"):
        fit(tiny(), epochs=-1)
    with pytest.raises(ValueError, match=r"^prefix_weight must be >= 0, got nan$"):
        fit(tiny(), prefix_weight=math.nan)


# ----------------------------------------------------------------------------- what the user sees while it runs

def test_log_lines_say_epoch_step_examples_and_both_losses():
    """One line per evaluation, numbers from the history (checked by hand above) in a fixed layout."""
    lines = []
    hist = fit(tiny(), epochs=2, eval_every=2, log=lines.append)
    assert len(lines) == 4
    assert lines[0].startswith("epoch  0.67 | step     2 | seen      5 | train loss ")
    assert lines[1].startswith("epoch  1.00 | step     3 | seen      9 | train loss ")
    for line, e in zip(lines, range(4)):
        head, seconds = line.rsplit(" | ", 1)
        assert head.endswith(f"train loss {hist.train_loss[e]:.3f} acc {100 * hist.train_accuracy[e]:5.1f}% | "
                             f"val loss {hist.val_loss[e]:.3f} acc {100 * hist.val_accuracy[e]:5.1f}%")
        assert seconds == f"{hist.seconds[e]:.0f} s"
    assert {round(100 * a, 1) for a in hist.train_accuracy} != {0.0, 100.0}  # percentages, not 0 or 1


class Terminal(io.StringIO):
    """A stand-in for sys.stderr that is a terminal (tqdm draws its bar only on one) whose width is that of a
    real pseudo-terminal, so it can be resized while the loop runs."""

    def __init__(self, columns):
        super().__init__()
        self.master, self.slave = os.openpty()
        self.resize(columns)

    def isatty(self):
        return True

    def fileno(self):
        return self.slave

    def resize(self, columns):
        import fcntl
        import struct
        import termios

        fcntl.ioctl(self.slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))

    def last_frame(self):
        return self.getvalue().rstrip("\n").split("\r")[-1]

    def shut(self):
        os.close(self.master)
        os.close(self.slave)


@pytest.fixture
def terminal(monkeypatch):
    if not hasattr(os, "openpty"):
        pytest.skip("needs a pseudo-terminal (POSIX)")
    term = Terminal(120)
    yield term  # each test puts it in place of sys.stderr itself: pytest swaps its capture back in after setup
    term.shut()


def test_progress_bar_counts_steps_and_shows_loss_and_accuracy(terminal, monkeypatch):
    """progress is on by default: a bar 'fine-tuning' counting steps up to the total (epochs x batches), with the
    last running loss and validation accuracy, as wide as the terminal is when it is drawn (it follows a resize)."""
    monkeypatch.setattr(sys, "stderr", terminal)
    model = tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    hist = train_classifier(model, BATCHES, VAL, opt, 2, "cpu", eval_every=0,
                            log=lambda line: terminal.resize(100))  # the terminal gets narrower at each evaluation
    frame = terminal.last_frame()
    assert frame.startswith("fine-tuning: 100%|")
    assert "| 6/6 [" in frame and "step/s, " in frame
    assert frame.endswith(f", loss {hist.train_loss[-1]:.3f} | val acc {100 * hist.val_accuracy[-1]:.1f}%]")
    assert 0 < hist.val_accuracy[-1] < 1
    assert len(frame) == 99  # the width at the end (100 columns, less the one tqdm keeps free)


def test_progress_bar_total_stops_at_max_steps(terminal, monkeypatch):
    monkeypatch.setattr(sys, "stderr", terminal)
    fit(tiny(), epochs=2, max_steps=4, progress=True)
    assert "| 4/4 [" in terminal.last_frame()


def test_progress_false_and_other_processes_draw_nothing(terminal, monkeypatch):
    """progress=False: no bar; a process other than rank 0 draws no bar and writes no log line, even if asked."""
    monkeypatch.setattr(sys, "stderr", terminal)
    fit(tiny(), progress=False)
    assert terminal.getvalue() == ""
    lines = []
    monkeypatch.setattr(classify_train, "is_main_process", lambda: False)
    fit(tiny(), progress=True, log=lines.append)
    assert terminal.getvalue() == "" and lines == []


# ----------------------------------------------------------------------------- one batch's loss

def test_batch_loss_terms_without_prefix_and_under_bf16():
    """prefix=False gives no prefix term (None); bf16=True reaches the forward pass (CPU autocast), in
    batch_loss_terms and in batch_loss (with and without the prefix term)."""
    model = tiny().eval()
    with torch.no_grad():
        last, prefix, correct, n = batch_loss_terms(model, BATCHES[0], "cpu", prefix=False)
        assert prefix is None
        ref_last, ref_prefix, ref_correct, _ = by_hand(model, BATCHES[0])
        assert (float(last), correct, n) == (pytest.approx(float(ref_last), rel=1e-6), ref_correct, 3)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf_last, bf_prefix, _, _ = by_hand(model, BATCHES[0])
        assert float(batch_loss(model, BATCHES[0], "cpu", bf16=True)[0]) == pytest.approx(float(bf_last), rel=1e-6)
        mixed = batch_loss(model, BATCHES[0], "cpu", bf16=True, prefix_weight=0.5)[0]
        assert float(mixed) == pytest.approx(float(bf_last + 0.5 * bf_prefix), rel=1e-6)
        assert abs(float(bf_last) - float(ref_last)) > 1e-5  # bf16 is a measurably different number here (4e-5)


def test_training_loss_is_last_plus_weight_times_prefix():
    assert float(training_loss(torch.tensor(0.5), torch.tensor(2.0), 0.25)) == 1.0
    assert float(training_loss(torch.tensor(0.5), None, 0.0)) == 0.5  # weight 0: the book's loss, no prefix needed
