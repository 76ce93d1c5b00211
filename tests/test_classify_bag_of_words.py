"""The bag-of-words baseline (classify/bag_of_words.py): its features, its size, and what it scores on the
book's spam split, the numbers chapter 7 and the README quote."""

import pytest
import torch

from classify.bag_of_words import fit_bag_of_words
from classify.data import Example, spam_splits
from classify.dataset import encode_text


@pytest.fixture(scope="module")
def splits():
    return spam_splits()


@pytest.fixture(scope="module")
def bow(splits):
    return fit_bag_of_words(splits["train"])


def test_features_mark_which_training_tokens_a_text_contains(bow):
    text = "Call now, call NOW"
    x = bow.features([text, ""])  # (2, V)
    ids = set(encode_text(text))
    assert x.shape == (2, len(bow.vocab))
    assert x[0].sum() == len(ids & set(bow.vocab)) and set(x[0].unique().tolist()) == {0.0, 1.0}
    assert x[1].sum() == 0  # no tokens, no features
    assert bow.features(["zxqvjk-unseen-zzzz"]).sum() < len(encode_text("zxqvjk-unseen-zzzz"))  # unseen ids ignored


def test_size_is_two_weights_per_training_token_plus_two_biases(bow, splits):
    vocab = {i for ex in splits["train"] for i in encode_text(ex.text)}
    assert len(bow.vocab) == len(vocab) == 4_788
    assert bow.num_parameters() == 2 * 4_788 + 2 == 9_578


def test_scores_on_the_spam_split_and_classifies_the_cruise_message(bow, splits):
    """No GPT: measured 95.97 % validation (143 of 149) and 96.00 % test accuracy (288 of 300), against the
    fine-tuned GPT's 97.1 % test; floors a point below, so that float rounding on another CPU cannot fail it.
    And it calls the cruise message spam (measured p = 0.79)."""
    assert bow.accuracy(splits["train"]) == 1.0
    assert bow.accuracy(splits["val"]) >= 0.95
    assert bow.accuracy(splits["test"]) >= 0.95
    p_spam = bow.predict_proba(["You won a free cruise, call now", "Are we still on for lunch tomorrow?"])[:, 1]
    assert p_spam[0] > 0.7 and p_spam[1] < 0.01
    torch.testing.assert_close(bow.predict_proba(["hello"]).sum(dim=-1), torch.ones(1))


def test_same_seed_same_model(bow, splits):
    again = fit_bag_of_words(splits["train"])
    assert torch.equal(again.linear.weight, bow.linear.weight) and again.vocab == bow.vocab


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="at least one training example"):
        fit_bag_of_words([])
    with pytest.raises(ValueError, match=r"labels must be in \[0, 1\]"):
        fit_bag_of_words([Example("hi", 2)])
