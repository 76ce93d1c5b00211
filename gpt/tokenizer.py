"""The GPT-2 byte-pair encoding, built offline from the vocabulary file shipped in data/.

`tiktoken.get_encoding("gpt2")` downloads its vocabulary on first use and fails without a
network. The same encoding is three things, all available locally:
  1. the mergeable ranks: 50,256 byte strings and their merge priority (data/gpt2.tiktoken,
     one "base64(token) rank" per line; sha256 checked on load),
  2. the pre-tokenisation regex that splits text into words before merging (GPT-2's pattern),
  3. one special token, <|endoftext|> = 50256.
tests/test_tokenizer.py checks the result token for token against tiktoken's own r50k_base.
"""

from __future__ import annotations

import base64
import functools
import hashlib
from pathlib import Path

import tiktoken

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
VOCAB_FILE = DATA_DIR / "gpt2.tiktoken"
VOCAB_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"

# GPT-2's split pattern (tiktoken's r50k_base): contractions, letter runs, digit runs,
# punctuation runs, whitespace; each with an optional leading space.
GPT2_SPLIT_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
END_OF_TEXT = "<|endoftext|>"
END_OF_TEXT_ID = 50256


def load_mergeable_ranks(path: str | Path = VOCAB_FILE, expected_sha256: str | None = VOCAB_SHA256) -> dict[bytes, int]:
    """Read a .tiktoken vocabulary file into {token bytes: rank}, checking its sha256."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"GPT-2 vocabulary file not found: {path}")
    data = path.read_bytes()
    if expected_sha256 is not None:
        actual = hashlib.sha256(data).hexdigest()
        if actual != expected_sha256:
            raise ValueError(
                f"GPT-2 vocabulary file {path} has sha256 {actual}, expected {expected_sha256}: "
                f"the file is corrupt or is not the GPT-2 vocabulary"
            )
    ranks = {}
    for line_number, line in enumerate(data.splitlines(), start=1):
        if not line:
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
        except ValueError as err:
            raise ValueError(f"{path}, line {line_number}: expected 'base64-token rank', got {line[:60]!r}") from err
    return ranks


@functools.lru_cache(maxsize=None)
def _cached_encoding(path: str, expected_sha256: str | None) -> tiktoken.Encoding:
    ranks = load_mergeable_ranks(path, expected_sha256)
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=GPT2_SPLIT_PATTERN,
        mergeable_ranks=ranks,
        special_tokens={END_OF_TEXT: END_OF_TEXT_ID},
        explicit_n_vocab=END_OF_TEXT_ID + 1,
    )


def get_tokenizer(path: str | Path = VOCAB_FILE, expected_sha256: str | None = VOCAB_SHA256) -> tiktoken.Encoding:
    """The GPT-2 encoding (identical to tiktoken.get_encoding("gpt2")), built without a network.

    >>> tok = get_tokenizer()
    >>> tok.encode("Hello, world.")
    [15496, 11, 995, 13]
    """
    return _cached_encoding(str(Path(path).resolve()), expected_sha256)


def text_to_token_ids(text: str, tokenizer: tiktoken.Encoding | None = None):
    """str -> (1, T) LongTensor, with <|endoftext|> allowed in the text."""
    import torch

    tokenizer = tokenizer or get_tokenizer()
    return torch.tensor(tokenizer.encode(text, allowed_special={END_OF_TEXT})).unsqueeze(0)


def token_ids_to_text(token_ids, tokenizer: tiktoken.Encoding | None = None) -> str:
    """(1, T) or (T,) tensor or list of ids -> str."""
    tokenizer = tokenizer or get_tokenizer()
    if hasattr(token_ids, "tolist"):
        token_ids = token_ids.squeeze(0).tolist() if token_ids.dim() > 1 else token_ids.tolist()
    return tokenizer.decode(token_ids)
