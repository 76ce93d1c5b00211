"""Exercise 7.1: the prefix term of the recipe's loss, by hand, on models and batches of the check's own."""

import torch
from otter.test_files import test_case

import classify.train
from checks._guard import answer, close, require
from classify.model import add_classification_head
from gpt import GPTConfig, GPTModel
from gpt.tokenizer import END_OF_TEXT_ID

OK_FORMAT = False
name = "ex7_1"
points = 1

FORBIDDEN = "the check forbids classify.train's loss functions here: write the prefix term yourself"
PACKAGE = ("batch_loss", "batch_loss_terms")


def refuse(*args, **kwargs):
    raise RuntimeError(FORBIDDEN)


def batch(seed, b, T):
    """A padded batch of the check's own: random token ids, lengths from 1 to T - 2, both labels."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, T - 1, (b,), generator=g)
    lengths[0], lengths[1] = 1, T - 2
    ids = torch.randint(0, END_OF_TEXT_ID, (b, T), generator=g)
    ids[torch.arange(T)[None, :] >= lengths[:, None]] = END_OF_TEXT_ID
    return ids, lengths, (torch.arange(b) + seed) % 2


@test_case(points=1)
def ex7_1(env):
    for seed, b, T in ((31, 5, 12), (47, 7, 19)):
        torch.manual_seed(seed)
        model = GPTModel(GPTConfig.from_preset("gpt-tiny", drop_rate=0.0))
        add_classification_head(model, 2)
        model.eval()
        ids, lengths, labels = batch(seed, b, T)
        with torch.no_grad():
            _, expected, _, _ = classify.train.batch_loss_terms(model, (ids, lengths, labels), "cpu", bf16=False)
        kept = {name: getattr(classify.train, name) for name in PACKAGE}
        in_notebook = {name: env[name] for name in PACKAGE if name in env}
        for name in PACKAGE:
            setattr(classify.train, name, refuse)
        env.update({name: refuse for name in in_notebook})
        try:
            got = answer(env, "exercise_7_1", model, ids, lengths, labels, returns=(float, torch.Tensor),
                         expects="a float: the prefix term, nats per message")
        finally:
            for name, fn in kept.items():
                setattr(classify.train, name, fn)
            env.update(in_notebook)
        got = float(got)
        call = f"exercise_7_1(model, input_ids {tuple(ids.shape)}, lengths {lengths.tolist()}, labels)"
        require(close(got, float(expected), rel=1e-4),
                f"{call} = {got:.4f}, but the prefix term of this batch is another number. Hint: padding positions "
                f"must not count, and every message must count once whatever its length (section 7.3 writes the "
                f"loss out).")
