"""The chapter 1 exercise solutions (solutions/ch01.py) give the stated answers, checked with real numbers."""

import pytest

from gpt.tokenizer import get_tokenizer, load_mergeable_ranks
from solutions import ch01


def test_exercise_1_1_window_counts():
    result = ch01.exercise_1_1()
    assert result[128] == {"windows": 39, "target_tokens": 39 * 256, "distinct_targets": 5120}
    assert result[256] == {"windows": 20, "target_tokens": 20 * 256, "distinct_targets": 5120}


def test_exercise_1_2_tokens_and_merges():
    result = ch01.exercise_1_2()
    assert result["ids"] == [33901, 86, 343, 86, 220, 959]
    assert result["pieces"] == [b"Ak", b"w", b"ir", b"w", b" ", b"ier"]
    assert result["steps"][" ier"] == [[b" ", b"i", b"e", b"r"], [b" ", b"i", b"er"], [b" ", b"ier"]]
    assert result["steps"]["Akwirw"][-1] == [b"Ak", b"w", b"ir", b"w"]


@pytest.mark.parametrize("text", ["someunknownPlace", " Hello, world. Is this-- a test?", "naïve café 🤖 2024"])
def test_bpe_merge_equals_tiktoken(text):
    import regex

    from gpt.tokenizer import GPT2_SPLIT_PATTERN

    ranks = load_mergeable_ranks()
    pieces = regex.findall(GPT2_SPLIT_PATTERN, text)
    by_hand = [i for piece in pieces for i in ch01.bpe_merge(piece.encode("utf-8"), ranks)[0]]
    assert by_hand == get_tokenizer().encode(text)


def test_exercise_1_3_embedding_is_one_hot_matmul():
    embedding, linear = ch01.exercise_1_3()
    assert ch01.embedding_vs_linear_difference(embedding, linear) == pytest.approx(0.0, abs=1e-7)
    assert ch01.embedding_vs_linear_difference(*ch01.wrong_exercise_1_3()) > 0.1  # the weight not copied


def test_exercise_1_4_tokens_per_character():
    result = ch01.exercise_1_4()
    assert result["fewest"] == (4 / 32, "That seems unnecessarily hostile")
    assert result["most"] == (17 / 26, "S:)s.nervous  &lt;#&gt; :)")
