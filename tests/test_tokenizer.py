"""The offline GPT-2 tokenizer (gpt/tokenizer.py) against published ids and against tiktoken's
own r50k_base encoding (the GPT-2 BPE), built without a network.

tiktoken.get_encoding("r50k_base") normally downloads
https://openaipublic.blob.core.windows.net/encodings/r50k_base.tiktoken. It first looks in
$TIKTOKEN_CACHE_DIR for a file named by the sha1 of that URL (tiktoken/load.py,
read_file_cached) and checks its sha256. Putting our data/gpt2.tiktoken there under that name
lets tiktoken build its reference encoding offline; reading from the network is patched to
fail, so the test cannot pass by downloading.
"""

import hashlib
import random
import shutil

import pytest
import tiktoken
import tiktoken.load
import tiktoken.registry

from gpt.tokenizer import END_OF_TEXT, END_OF_TEXT_ID, VOCAB_FILE, get_tokenizer, load_mergeable_ranks, \
    text_to_token_ids, token_ids_to_text

R50K_URL = "https://openaipublic.blob.core.windows.net/encodings/r50k_base.tiktoken"

# From the project's data sources (SOURCES.md), the GPT-2 encoding's known outputs.
REFERENCE = [
    ("Hello, world. Is this-- a test?", [15496, 11, 995, 13, 1148, 428, 438, 257, 1332, 30]),
    ("Hello, do you like tea? <|endoftext|> In the sunlit terraces of someunknownPlace.",
     [15496, 11, 466, 345, 588, 8887, 30, 220, 50256, 554, 262, 4252, 18250, 8812, 2114, 286, 617, 34680,
      27271, 13]),
]

TEXTS = [
    "Hello, world. Is this-- a test?",
    "I'm sure they'll say it's what we've done; you'd think I'M SHOUTING. We're 'quoted'.",
    "Numbers: 3.14159, 1,000,000, 2024-01-31, 0x1F, 12345678901234567890 and 42nd.",
    "Whitespace:  two,   three,\ttab,\n\nnewlines,   \n  trailing   ",
    "    leading spaces, then \r\n Windows line endings\r\n",
    "Unicode: naïve café, Übermaß, 日本語のテキスト, русский текст, emoji 🤖🚀👍🏽, ZWJ 👩‍💻, math ∑∫√.",
    "Code: def f(x):\n    return x**2  # square\n\tif (a != b) { c += d; }",
    "",
    " ",
    "<|endoftext|> is special only when allowed",
]


@pytest.fixture(scope="module")
def tokenizer():
    return get_tokenizer()


@pytest.fixture(scope="module")
def tiktoken_r50k(tmp_path_factory):
    """tiktoken.get_encoding("r50k_base"), from our vocabulary file, with the network forbidden."""
    cache = tmp_path_factory.mktemp("tiktoken-cache")
    shutil.copy(VOCAB_FILE, cache / hashlib.sha1(R50K_URL.encode()).hexdigest())
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TIKTOKEN_CACHE_DIR", str(cache))

        def no_network(blobpath):
            raise AssertionError(f"tiktoken tried to download {blobpath}")

        mp.setattr(tiktoken.load, "read_file", no_network)
        mp.delitem(tiktoken.registry.ENCODINGS, "r50k_base", raising=False)  # build it, don't reuse
        encoding = tiktoken.get_encoding("r50k_base")
        mp.delitem(tiktoken.registry.ENCODINGS, "r50k_base", raising=False)  # leave no global state
    return encoding


@pytest.mark.parametrize("text, ids", REFERENCE)
def test_reference_ids(tokenizer, text, ids):
    assert tokenizer.encode(text, allowed_special={END_OF_TEXT}) == ids
    assert text_to_token_ids(text, tokenizer).tolist() == [ids]
    assert token_ids_to_text(ids, tokenizer) == text


def test_vocabulary_size(tokenizer, tiktoken_r50k):
    assert tokenizer.n_vocab == tiktoken_r50k.n_vocab == 50257
    assert tokenizer.eot_token == tiktoken_r50k.eot_token == END_OF_TEXT_ID == 50256
    assert tokenizer.special_tokens_set == tiktoken_r50k.special_tokens_set == {END_OF_TEXT}
    assert len(load_mergeable_ranks()) == 50256


@pytest.mark.parametrize("text", TEXTS)
def test_equals_tiktoken_r50k_base(tokenizer, tiktoken_r50k, text):
    assert tokenizer.encode_ordinary(text) == tiktoken_r50k.encode_ordinary(text)
    assert tokenizer.encode(text, allowed_special="all") == tiktoken_r50k.encode(text, allowed_special="all")
    assert tokenizer.decode(tokenizer.encode(text, allowed_special="all")) == text


def test_equals_tiktoken_on_random_text(tokenizer, tiktoken_r50k):
    """Random strings from a pool of letters, digits, punctuation, spaces and non-ASCII."""
    rng = random.Random(0)
    pool = list("abcXYZ019 .,;:'\"!?-_()\n\t  ") + list("éßøñ你好こんにちは🙂∑") + ["'s", "'ll", "  ", "\r\n"]
    for _ in range(200):
        text = "".join(rng.choice(pool) for _ in range(rng.randint(1, 60)))
        ids = tokenizer.encode_ordinary(text)
        assert ids == tiktoken_r50k.encode_ordinary(text), repr(text)
        assert tokenizer.decode(ids) == text


def test_special_token_only_when_allowed(tokenizer):
    with pytest.raises(ValueError, match="disallowed special token"):
        tokenizer.encode("a <|endoftext|> b")
    assert END_OF_TEXT_ID not in tokenizer.encode_ordinary("a <|endoftext|> b")


def test_wrong_hash_vocabulary(tmp_path):
    bad = tmp_path / "gpt2.tiktoken"
    data = bytearray(VOCAB_FILE.read_bytes())
    data[-3] = ord("9") if data[-3] != ord("9") else ord("8")  # change one digit of the last rank
    bad.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256"):
        get_tokenizer(bad)


def test_missing_vocabulary(tmp_path):
    with pytest.raises(FileNotFoundError, match="vocabulary file not found"):
        get_tokenizer(tmp_path / "nowhere.tiktoken")
