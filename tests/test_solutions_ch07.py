"""The code solutions of chapter 7's exercises (solutions/ch07.py), with tiny models where a model is needed."""

import math

import pytest
import torch

from classify.data import Example, spam_splits
from classify.dataset import ClassificationDataset
from classify.train import batch_loss_terms
from gpt.tokenizer import END_OF_TEXT_ID
from solutions import ch07


def test_exercise_7_1_prefix_term_equals_the_package_and_ignores_padding(tiny_classifier):
    ids, lengths, labels = ch07.ambiguous_length_batch(seed=3)
    with torch.no_grad():
        expected = batch_loss_terms(tiny_classifier, (ids, lengths, labels), "cpu", bf16=False)[1]
    assert ch07.exercise_7_1(tiny_classifier, ids, lengths, labels) == pytest.approx(float(expected), rel=1e-5)
    # more padding after every message changes nothing: padding positions do not count
    wider = torch.cat([ids, torch.full((len(ids), 5), END_OF_TEXT_ID)], dim=1)
    assert ch07.exercise_7_1(tiny_classifier, wider, lengths, labels) == pytest.approx(float(expected), rel=1e-5)
    # the planted answer (a mean over all real tokens) weighs long messages more: another number on this batch
    wrong = ch07.wrong_exercise_7_1(tiny_classifier, ids, lengths, labels)
    assert abs(wrong - float(expected)) > 1e-3


def test_exercise_7_2_last_real_token_ignores_padding_last_column_does_not(tiny_classifier):
    out = ch07.exercise_7_2(tiny_classifier, "Call now to claim your free prize", widths=(7, 20, 64))
    reference = out[7]["last_real"]
    torch.testing.assert_close(out[7]["last_column"], reference)  # unpadded: the last column IS the last token
    for width in (20, 64):
        torch.testing.assert_close(out[width]["last_real"], reference, rtol=1e-4, atol=1e-5)
        assert (out[width]["last_column"] - reference).abs().max() > 1e-3  # reads a padding token's output
    with pytest.raises(ValueError, match="width"):
        ch07.exercise_7_2(tiny_classifier, "Call now to claim your free prize", widths=(3,))


def test_exercise_7_2_accuracy_both_ways(tiny_classifier):
    examples = spam_splits()["val"][:40]
    dataset = ClassificationDataset(examples, max_length=64)
    out = ch07.exercise_7_2_accuracy(tiny_classifier, dataset, batch_size=16)
    assert out["n"] == 40 and out["width"] == 64
    # The last-real-token reading must equal the package's class_logits on trimmed batches.
    probs, labels = ch07.spam_probabilities(tiny_classifier, dataset)
    expected = sum((p >= 0.5) == bool(y) for p, y in zip(probs, labels)) / 40
    assert out["last_real_accuracy"] == pytest.approx(expected)
    assert 0 <= out["predictions_that_differ"] <= 40
    # Messages that fill the whole width read the same position both ways: they can never differ.
    full = ClassificationDataset([Example("word " * 80, 1)] * 3, max_length=64)
    assert ch07.exercise_7_2_accuracy(tiny_classifier, full)["predictions_that_differ"] == 0


def test_exercise_7_3_precision_of_300_messages():
    out = ch07.precision_7_3()
    assert out["se"] == pytest.approx(math.sqrt(0.95 * 0.05 / 300)) and out["se"] == pytest.approx(0.012583, abs=1e-6)
    assert out["normal_interval"] == pytest.approx((0.92534, 0.97466), abs=1e-5)
    assert out["wilson_interval"] == pytest.approx((0.91915, 0.96947), abs=1e-5)
    assert out["messages_per_point"] == 3.0 and out["difference_messages"] == 4
    assert out["z"] == pytest.approx(0.8338, abs=1e-4) and out["z"] < 1.96  # not a significant difference
    with pytest.raises(ValueError):
        ch07.exercise_7_3(p=1.5)


def test_exercise_7_4_confusion_at_thresholds():
    p = [0.99, 0.95, 0.6, 0.4, 0.995, 0.2, 0.92, 0.05]
    y = [1, 1, 1, 1, 0, 0, 0, 0]
    out = ch07.exercise_7_4(p, y, thresholds=(0.5, 0.9, 0.99))
    assert {k: out[0.5][k] for k in ("tp", "fp", "fn", "tn")} == {"tp": 3, "fp": 2, "fn": 1, "tn": 2}
    assert {k: out[0.9][k] for k in ("tp", "fp", "fn", "tn")} == {"tp": 2, "fp": 2, "fn": 2, "tn": 2}
    assert {k: out[0.99][k] for k in ("tp", "fp", "fn", "tn")} == {"tp": 1, "fp": 1, "fn": 3, "tn": 3}
    assert out[0.5]["precision"] == pytest.approx(0.6) and out[0.5]["recall"] == pytest.approx(0.75)
    assert out[0.99]["accuracy"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="same non-zero length"):
        ch07.exercise_7_4([0.5], [1, 0])
    with pytest.raises(ValueError, match="labels"):
        ch07.exercise_7_4([0.5], [2])


def test_spam_probabilities_match_the_softmax(tiny_classifier):
    from classify.model import class_logits

    examples = spam_splits()["test"][:5]
    dataset = ClassificationDataset(examples, max_length=64)
    probs, labels = ch07.spam_probabilities(tiny_classifier, dataset)
    assert labels == [ex.label for ex in examples]
    with torch.no_grad():
        ids, n = dataset.input_ids[2:3], torch.tensor([dataset.lengths[2]])
        expected = torch.softmax(class_logits(tiny_classifier, ids, n), dim=-1)[0, 1].item()
    assert probs[2] == pytest.approx(expected, abs=1e-6)


def test_exercise_7_5_query_value_quick(tmp_path):
    result = ch07.exercise_7_5(quick=True, out=tmp_path / "qv")
    # gpt-tiny, r = 16 on W_query and W_value of 2 blocks: 2 x 2 x 16 x (32 + 32), plus the head 32 x 2 + 2.
    assert result["trainable_params"] == 2 * 2 * 16 * 64 + 66 == 4_162
    assert result["lora"]["targets"] == ["query", "value"]
    assert (tmp_path / "qv" / "adapter.safetensors").is_file() and 0 <= result["test_accuracy"] <= 1
