"""classify/dataset.py: padding with <|endoftext|>, stated truncation, and batch trimming that does
not change the classifier's output."""

import pytest
import torch

from classify.data import Example
from classify.dataset import (PAD_TOKEN_ID, ClassificationDataset, collate_full, collate_trim,
                              encode_for_classification, encode_text, make_loader)
from classify.model import add_classification_head, class_logits
from gpt import GPTConfig, GPTModel

HELLO = [15496, 11, 995, 13]  # "Hello, world."
LONG = [15496, 11, 995, 13, 1148, 428, 438, 257, 1332, 30]  # "Hello, world. Is this-- a test?"


def test_pads_with_endoftext_to_the_longest_training_text():
    ds = ClassificationDataset([Example("Hello, world.", 0), Example("Hello, world. Is this-- a test?", 1)])
    assert PAD_TOKEN_ID == 50256
    assert ds.max_length == 10 and ds.longest == 10 and ds.num_truncated == 0
    assert ds.input_ids.tolist() == [HELLO + [50256] * 6, LONG]
    assert ds.lengths == [4, 10]
    ids, length, label = ds[0]
    assert ids.tolist() == HELLO + [50256] * 6 and length == 4 and int(label) == 0


def test_longer_eval_texts_are_truncated_and_counted():
    train = ClassificationDataset([Example("Hello, world.", 0)])
    val = ClassificationDataset([Example("Hello, world. Is this-- a test?", 1), Example("Hello, world.", 0)],
                                max_length=train.max_length)
    assert val.max_length == 4
    assert val.num_truncated == 1
    assert val.input_ids.tolist() == [LONG[:4], HELLO]  # the START is kept
    assert val.lengths == [4, 4]
    assert "1 truncated to 4 tokens" in val.describe("val")
    assert "none truncated" in train.describe("train")


def test_context_length_caps_the_padding_length():
    ds = ClassificationDataset([Example("Hello, world. Is this-- a test?", 1)], context_length=6)
    assert ds.max_length == 6 and ds.num_truncated == 1 and ds.input_ids.tolist() == [LONG[:6]]


def test_literal_endoftext_in_a_message_is_plain_text():
    ids = encode_text("a <|endoftext|> b")
    assert PAD_TOKEN_ID not in ids
    assert len(ids) > 3


def test_encode_for_classification_states_truncation():
    assert encode_for_classification("Hello, world.", 64) == (HELLO, False)
    assert encode_for_classification("Hello, world. Is this-- a test?", 3) == (LONG[:3], True)
    with pytest.raises(ValueError, match="empty"):
        encode_for_classification("", 64)


def test_empty_examples_are_rejected():
    with pytest.raises(ValueError, match="no examples"):
        ClassificationDataset([])


def test_collate_trim_drops_only_all_padding_columns():
    ds = ClassificationDataset([Example("Hello, world.", 0), Example("Hi", 1), Example("Hello, world. Is this-- a test?", 1)])
    ids, lengths, labels = collate_trim([ds[0], ds[1]])
    assert ids.shape == (2, 4)
    assert lengths.tolist() == [4, 1] and labels.tolist() == [0, 1]
    assert ids[0].tolist() == HELLO
    full, _, _ = collate_full([ds[0], ds[1]])
    assert full.shape == (2, 10)


@pytest.mark.parametrize("attention", ["separate", "fused"])
def test_trimming_does_not_change_the_last_real_tokens_logits(attention):
    texts = ["Hello, world.", "Free entry in 2 a wkly comp to win FA Cup final tkts", "Ok lar...", "Hi"]
    ds = ClassificationDataset([Example(t, i % 2) for i, t in enumerate(texts)], max_length=40)
    model = GPTModel(GPTConfig.from_preset("gpt-tiny", attention=attention, drop_rate=0.0)).eval()
    add_classification_head(model, 2)
    batch = [ds[i] for i in range(len(ds))]
    full_ids, lengths, _ = collate_full(batch)
    trim_ids, lengths2, _ = collate_trim(batch)
    assert full_ids.shape[1] == 40 and trim_ids.shape[1] == max(ds.lengths) < 40
    with torch.no_grad():
        full = class_logits(model, full_ids, lengths)
        trimmed = class_logits(model, trim_ids, lengths2)
        book_last_column = model(full_ids)[:, -1, :]  # what reading the last (padding) column gives
    torch.testing.assert_close(trimmed, full, rtol=1e-5, atol=1e-6)  # fp32, same math, other shapes
    # The padding columns DO change the output at the last column: reading there would differ.
    assert not torch.allclose(book_last_column, full, atol=1e-3)


def test_loader_order_depends_only_on_the_seed():
    ds = ClassificationDataset([Example(f"message {i}", i % 2) for i in range(20)])
    order = lambda seed: [lab.tolist() + ids[:, 1].tolist() for ids, _, lab in make_loader(ds, 4, True, seed=seed)]
    torch.manual_seed(0)
    a = order(5)
    torch.manual_seed(1)  # the global random state does not matter
    assert order(5) == a
    assert order(6) != a
    with pytest.raises(ValueError, match="at most one"):
        make_loader(ds, 4, shuffle=True, sampler=torch.utils.data.SequentialSampler(ds))


def test_sort_by_length_batches_similar_lengths():
    texts = ["a b c d e f g h", "a", "a b c d", "a b", "a b c d e f", "a b c"]
    ds = ClassificationDataset([Example(t, 0) for t in texts])
    batches = [(ids.shape[1], lengths.tolist()) for ids, lengths, _ in make_loader(ds, 2, sort_by_length=True)]
    assert batches == [(2, [1, 2]), (4, [3, 4]), (8, [6, 8])]
