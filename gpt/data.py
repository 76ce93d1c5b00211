"""Language-model data: token streams cut into (input, target) windows shifted by one token.

The book's `GPTDatasetV1`: a window of `max_length` tokens starting every `stride` tokens; the
target is the same window moved one token to the right, so position t learns to predict t + 1.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from gpt.tokenizer import END_OF_TEXT, get_tokenizer


def tokenize_documents(texts: list[str], tokenizer=None) -> list[int]:
    """One token stream: each document followed by <|endoftext|>, so the model learns where
    documents end and never attends across a boundary without seeing the marker."""
    tokenizer = tokenizer or get_tokenizer()
    ids: list[int] = []
    for text in tokenizer.encode_batch(texts, allowed_special={END_OF_TEXT}):
        ids += text + [tokenizer.eot_token]
    return ids


class TokenWindows(Dataset):
    """Sliding windows over one token stream: item i = (ids[s:s+L], ids[s+1:s+L+1]), s = i * stride."""

    def __init__(self, token_ids: list[int] | torch.Tensor, max_length: int, stride: int | None = None):
        stride = stride or max_length
        if max_length <= 0 or stride <= 0:
            raise ValueError(f"max_length and stride must be positive, got {max_length}, {stride}")
        self.ids = torch.as_tensor(token_ids, dtype=torch.long)
        if len(self.ids) < max_length + 1:
            raise ValueError(f"a stream of {len(self.ids)} tokens is too short for one window of {max_length} + 1 tokens")
        self.max_length, self.stride = max_length, stride
        self.starts = range(0, len(self.ids) - max_length, stride)

    def __len__(self):
        return len(self.starts)

    def __getitem__(self, i):
        s = self.starts[i]
        chunk = self.ids[s : s + self.max_length + 1]
        return chunk[:-1], chunk[1:]  # (L,), (L,)
