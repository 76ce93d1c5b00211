"""Solutions to the exercises of chapter 1 (notebooks/01_text_to_tokens.ipynb): text to tokens.

Kept outside the notebooks so that a class can hand the notebooks out without the answers.
Each function returns the numbers the answer rests on; tests/test_solutions_ch01.py checks them.
"""

from __future__ import annotations

import torch
from torch import nn

from gpt.data import TokenWindows
from gpt.tokenizer import DATA_DIR, get_tokenizer, load_mergeable_ranks

VERDICT_FILE = DATA_DIR / "pretrain" / "the-verdict.txt"


def exercise_1_1(max_length: int = 256, strides: tuple[int, ...] = (128, 256)) -> dict[int, dict[str, int]]:
    """Windows over *The Verdict* (5,145 tokens) for max_length=256 at two strides.

    Answer: stride 128 gives 39 windows, stride 256 gives 20. Both cover the same 5,120 distinct target
    positions (tokens 1 ... 5,120 of the stream; the last 25 tokens never fit a full window): half-overlapping
    windows give about twice as many (input, target) pairs per epoch (39 * 256 = 9,984 vs 5,120), but every
    target token inside the overlap is simply trained on twice, with a different amount of left context.
    """
    ids = get_tokenizer().encode(VERDICT_FILE.read_text(encoding="utf-8"))
    result = {}
    for stride in strides:
        windows = TokenWindows(ids, max_length=max_length, stride=stride)
        targets = set()
        for start in windows.starts:
            targets.update(range(start + 1, start + max_length + 1))  # positions of the target tokens
        result[stride] = {"windows": len(windows), "target_tokens": len(windows) * max_length,
                          "distinct_targets": len(targets)}
    return result


def bpe_merge(piece: bytes, ranks: dict[bytes, int]) -> tuple[list[int], list[list[bytes]]]:
    """Byte-pair encode one pre-tokenised piece (the loop of notebook section 1.3): start from single bytes,
    merge the adjacent pair with the lowest rank until no adjacent pair is a token.
    Returns (token ids, the list of splits after each merge)."""
    parts = [bytes([b]) for b in piece]
    steps = [parts]
    while len(parts) > 1:
        candidates = [(ranks[parts[i] + parts[i + 1]], i) for i in range(len(parts) - 1)
                      if parts[i] + parts[i + 1] in ranks]
        if not candidates:
            break
        _, i = min(candidates)
        parts = parts[:i] + [parts[i] + parts[i + 1]] + parts[i + 2:]
        steps.append(parts)
    return [ranks[p] for p in parts], steps


def exercise_1_2(text: str = "Akwirw ier") -> dict:
    """The tokens of "Akwirw ier" and the merge steps of its pieces.

    Answer: [33901, 86, 343, 86, 220, 959] = 'Ak' 'w' 'ir' 'w' ' ' 'ier'. The split pattern first cuts the text
    into 'Akwirw' and ' ier' (the space belongs to the word after it). Merging ' ier' starts from
    ' ', 'i', 'e', 'r'; the lowest-ranked pairs are 'er' (263) and then 'i'+'er' = 'ier' (959); ' ier' is not in
    the vocabulary, so no merge involves the space and it stays a token of its own (220).
    'Akwirw' ends as 'Ak' 'w' 'ir' 'w': neither 'wir' nor 'irw' is a token.
    """
    tokenizer = get_tokenizer()
    ranks = load_mergeable_ranks()
    ids = tokenizer.encode(text)
    return {
        "ids": ids,
        "pieces": [tokenizer.decode_single_token_bytes(i) for i in ids],
        "steps": {word: bpe_merge(word.encode("utf-8"), ranks)[1] for word in ("Akwirw", " ier")},
    }


def exercise_1_3(vocab_size: int = 50257, emb_dim: int = 16, seed: int = 123) -> tuple[nn.Embedding, nn.Linear]:
    """(embedding, linear): an nn.Embedding and an nn.Linear on one-hot vectors that compute the same thing.

    Answer: with linear.weight = embedding.weight.T (nn.Linear stores (out, in) = (emb_dim, vocab_size)),
    one_hot(ids) @ W equals the lookup W[ids] (`embedding_vs_linear_difference` measures it: 0.0). The lookup is
    what you want: it reads T rows instead of multiplying a (T, 50,257) matrix that is 99.998 % zeros, and never
    allocates the one-hot tensor. (Backward is a sparse row update as well.) Chapter 8 uses the same fact for
    LoRA on an embedding: one_hot(ids) @ A @ B = A[ids] @ B.
    """
    torch.manual_seed(seed)
    embedding = nn.Embedding(vocab_size, emb_dim)
    linear = nn.Linear(vocab_size, emb_dim, bias=False)
    with torch.no_grad():
        linear.weight.copy_(embedding.weight.T)  # (emb_dim, vocab_size)
    return embedding, linear


def embedding_vs_linear_difference(embedding: nn.Embedding, linear: nn.Linear, seed: int = 123) -> float:
    """The largest absolute difference between the two layers' outputs on random token ids of shape (2, 8)."""
    ids = torch.randint(0, embedding.num_embeddings, (2, 8), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        one_hot = nn.functional.one_hot(ids, embedding.num_embeddings).float()  # (2, 8, V)
        return (linear(one_hot) - embedding(ids)).abs().max().item()


def exercise_1_4(min_chars: int = 20) -> dict[str, tuple[float, str]]:
    """SMS messages (at least `min_chars` characters) with the most and the fewest tokens per character.

    Answer: the cheapest are plain, common English words ("That seems unnecessarily hostile": 32 characters,
    4 tokens, 0.125 tokens per character). The most expensive is "S:)s.nervous  &lt;#&gt; :)" (26 characters,
    17 tokens, 0.654 per character): smileys, punctuation glued to letters, double spaces and the HTML entities
    `&lt;#&gt;` that the data set uses as a placeholder. BPE learned merges for frequent English character
    sequences; punctuation runs, rare letter sequences, digits (merged in short runs only) and unusual
    capitalisation fall apart into short pieces.
    """
    from classify.data import load_sms_spam

    tokenizer = get_tokenizer()
    texts = [e.text for e in load_sms_spam() if len(e.text) >= min_chars]
    ratios = [(len(ids) / len(text), text) for ids, text in zip(tokenizer.encode_ordinary_batch(texts), texts)]
    return {"fewest": min(ratios), "most": max(ratios)}


# Planted wrong answers: one per checked exercise, each a mistake a student could make. tests/test_exercise_checks.py
# requires the exercise's check (notebooks/checks/ch01/) to reject it, so a check that cannot fail is caught.

def wrong_exercise_1_1(max_length: int = 256, strides: tuple[int, ...] = (128, 256)) -> dict[int, dict[str, int]]:
    """Counts every target of every window as distinct, ignoring that overlapping windows share targets."""
    result = exercise_1_1(max_length, strides)
    for counts in result.values():
        counts["distinct_targets"] = counts["target_tokens"]
    return result


def wrong_exercise_1_2(text: str = "Akwirw ier") -> dict:
    """Merges the leftmost adjacent pair that is a token instead of the one with the lowest rank."""
    ranks = load_mergeable_ranks()

    def leftmost_merges(word: str) -> list[list[bytes]]:
        parts = [bytes([b]) for b in word.encode("utf-8")]
        steps = [parts]
        while True:
            i = next((i for i in range(len(parts) - 1) if parts[i] + parts[i + 1] in ranks), None)
            if i is None:
                return steps
            parts = parts[:i] + [parts[i] + parts[i + 1]] + parts[i + 2:]
            steps.append(parts)

    result = exercise_1_2(text)
    result["steps"] = {word: leftmost_merges(word) for word in ("Akwirw", " ier")}
    return result


def wrong_exercise_1_3(vocab_size: int = 50257, emb_dim: int = 16, seed: int = 123) -> tuple[nn.Embedding, nn.Linear]:
    """Forgets to copy the embedding's weight into the linear layer: two random layers differ."""
    torch.manual_seed(seed)
    return nn.Embedding(vocab_size, emb_dim), nn.Linear(vocab_size, emb_dim, bias=False)


def wrong_exercise_1_4(min_chars: int = 20) -> dict[str, tuple[float, str]]:
    """Ignores min_chars: the extremes over every message, short ones included."""
    return exercise_1_4(min_chars=0)


# What students really write instead of the computation (tests/test_exercise_checks.py: the checks reject them).

def typed_in_exercise_1_1(max_length: int = 256, strides: tuple[int, ...] = (128, 256)) -> dict[int, dict[str, int]]:
    """Types in the statement's setting's counts (max_length 256, strides 128 and 256) whatever is asked."""
    return {128: {"windows": 39, "target_tokens": 9_984, "distinct_targets": 5_120},
            256: {"windows": 20, "target_tokens": 5_120, "distinct_targets": 5_120}}


def shortcut_exercise_1_1(max_length: int = 256, strides: tuple[int, ...] = (128, 256)) -> dict[int, dict[str, int]]:
    """Takes every token but the first as a target ("distinct_targets" = tokens - 1) instead of looking at which
    positions the windows cover: wrong when stride > max_length leaves gaps, and at the text's end."""
    result = exercise_1_1(max_length, strides)
    n = len(get_tokenizer().encode(VERDICT_FILE.read_text(encoding="utf-8")))
    for entry in result.values():
        entry["distinct_targets"] = n - 1
    return result


def typed_in_exercise_1_2(text: str = "Akwirw ier") -> dict:
    """Types in the ids and pieces section 1.2 prints for "Akwirw ier", whatever text it is given."""
    return {"ids": [33901, 86, 343, 86, 220, 959], "pieces": [b"Ak", b"w", b"ir", b"w", b" ", b"ier"],
            "steps": exercise_1_2()["steps"]}


def shortcut_exercise_1_2(text: str = "Akwirw ier") -> dict:
    """Skips the merge loop: each word's "steps" are only its single bytes and its final tokens."""
    result = exercise_1_2(text)
    tokenizer = get_tokenizer()
    result["steps"] = {word: [[bytes([b]) for b in word.encode("utf-8")],
                              [tokenizer.decode_single_token_bytes(i) for i in tokenizer.encode(word)]]
                       for word in ("Akwirw", " ier")}
    return result


def typed_in_exercise_1_3(vocab_size: int = 50257, emb_dim: int = 16, seed: int = 123) -> tuple[nn.Embedding, nn.Linear]:
    """Builds the statement's sizes and seed (50,257 x 16, seed 123) whatever is asked."""
    return exercise_1_3()


def shortcut_exercise_1_3(vocab_size: int = 50257, emb_dim: int = 16, seed: int = 123) -> tuple[nn.Embedding, nn.Linear]:
    """Reshapes the embedding's (vocab_size, emb_dim) weight to (emb_dim, vocab_size) instead of transposing it:
    the shapes fit, the numbers land in the wrong places."""
    torch.manual_seed(seed)
    embedding = nn.Embedding(vocab_size, emb_dim)
    linear = nn.Linear(vocab_size, emb_dim, bias=False)
    with torch.no_grad():
        linear.weight.copy_(embedding.weight.reshape(emb_dim, vocab_size))
    return embedding, linear


def typed_in_exercise_1_4(min_chars: int = 20) -> dict[str, tuple[float, str]]:
    """Types in the statement's setting's answer (min_chars = 20) whatever min_chars is asked."""
    return {"fewest": (0.125, "That seems unnecessarily hostile"), "most": (17 / 26, "S:)s.nervous  &lt;#&gt; :)")}


def shortcut_exercise_1_4(min_chars: int = 20) -> dict[str, tuple[float, str]]:
    """Counts words (text.split()) instead of GPT-2 tokens: skips the tokenizer the exercise is about."""
    from classify.data import load_sms_spam

    texts = [m.text for m in load_sms_spam() if len(m.text) >= min_chars]
    ratios = [(len(t.split()) / len(t), t) for t in texts]
    return {"fewest": min(ratios), "most": max(ratios)}
