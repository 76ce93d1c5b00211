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
