"""Token-id data sets for classification: tokenise, truncate (and say so), pad, batch.

The book (Raschka, *Build a Large Language Model From Scratch*, chapter 6, `SpamDataset`):
every message is encoded with the GPT-2 tokenizer and padded with <|endoftext|> (id 50256)
to the length of the longest TRAINING message; validation and test messages that are longer
are truncated to that length, keeping their start. Two additions:

* Truncation is counted and reported (`ClassificationDataset.num_truncated`, and the
  `describe()` line the scripts print), never silent. A text longer than the model's context
  window is cut to the context as well; `encode_for_classification` does the same for a single
  text at classification time and returns whether it cut.
* The classifier reads the output at the last REAL token of each row (classify/model.py), not
  at the last column as the book does. With a causal mask no token attends to a later one, so
  columns that are padding in every row of a batch cannot change any real token's output:
  `collate_trim` drops them, which makes training on short SMS messages ~2-3x faster on a CPU.
  (tests/test_classify_dataset.py checks that the logits are equal with and without trimming.)

Each item is (input_ids (T,), length, label): `length` is the number of real tokens.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch.utils.data import Dataset

from classify.data import Example
from gpt.tokenizer import END_OF_TEXT_ID, get_tokenizer

PAD_TOKEN_ID = END_OF_TEXT_ID  # GPT-2 has no padding token; the book pads with <|endoftext|>


def encode_text(text: str, tokenizer=None) -> list[int]:
    """GPT-2 token ids of `text`, read as plain text: a literal "<|endoftext|>" typed in a message is
    encoded as ordinary characters, never as the special token (which marks padding here)."""
    tokenizer = tokenizer or get_tokenizer()
    return tokenizer.encode(text, disallowed_special=())


def encode_for_classification(text: str, max_length: int, tokenizer=None) -> tuple[list[int], bool]:
    """Token ids of one text for the classifier, cut to at most `max_length` tokens keeping the
    START of the text (like training; the last kept token is then the one classified).
    Returns (ids, truncated). An empty text is a ValueError (there is no token to classify)."""
    if max_length <= 0:
        raise ValueError(f"max_length must be positive, got {max_length}")
    ids = encode_text(text, tokenizer)
    if not ids:
        raise ValueError("cannot classify an empty text: it has no tokens")
    return ids[:max_length], len(ids) > max_length


class ClassificationDataset(Dataset):
    """Labelled texts as padded token ids.

    examples: Example(text, label) items (classify/data.py).
    max_length: pad/truncate length; None = the longest text of THESE examples (use None for the
        training set, then pass `train_set.max_length` to the validation and test sets).
    context_length: the model's context window; texts are never longer than it.
    """

    def __init__(self, examples: Sequence[Example], max_length: int | None = None,
                 context_length: int | None = None, pad_token_id: int = PAD_TOKEN_ID, tokenizer=None):
        if len(examples) == 0:
            raise ValueError("ClassificationDataset: no examples")
        encoded = [encode_text(ex.text, tokenizer) for ex in examples]
        for i, ids in enumerate(encoded):
            if not ids:
                raise ValueError(f"ClassificationDataset: example {i} has an empty text")
        self.longest = max(len(ids) for ids in encoded)  # before any truncation
        limit = self.longest if max_length is None else max_length
        if context_length is not None:
            limit = min(limit, context_length)
        if limit <= 0:
            raise ValueError(f"max_length must be positive, got {limit}")
        self.max_length = limit
        self.pad_token_id = pad_token_id
        self.num_truncated = sum(len(ids) > limit for ids in encoded)
        self.lengths = [min(len(ids), limit) for ids in encoded]
        # (N, max_length): each row = its first `length` tokens, then padding.
        self.input_ids = torch.full((len(encoded), limit), pad_token_id, dtype=torch.long)
        for row, ids in enumerate(encoded):
            self.input_ids[row, : self.lengths[row]] = torch.tensor(ids[:limit], dtype=torch.long)
        self.labels = torch.tensor([ex.label for ex in examples], dtype=torch.long)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        return self.input_ids[i], self.lengths[i], self.labels[i]

    def describe(self, name: str = "data") -> str:
        """One line for the log, stating truncation explicitly."""
        cut = (f"{self.num_truncated} truncated to {self.max_length} tokens (start kept)"
               if self.num_truncated else "none truncated")
        return (f"{name}: {len(self):,} texts, padded to {self.max_length} tokens, longest {self.longest} tokens, "
                f"{cut}")


def split_datasets(splits: dict[str, Sequence[Example]], context_length: int | None = None,
                   tokenizer=None) -> dict[str, ClassificationDataset]:
    """{"train", "val", "test"} example lists -> data sets, the book's way: the training set is padded to
    its longest text (at most `context_length` tokens), validation and test to that same length
    (longer texts truncated, keeping their start, and counted)."""
    missing = {"train", "val", "test"} - set(splits)
    if missing:
        raise ValueError(f"split_datasets: no {sorted(missing)} split (got {sorted(splits)})")
    train = ClassificationDataset(splits["train"], context_length=context_length, tokenizer=tokenizer)
    return {"train": train,
            "val": ClassificationDataset(splits["val"], max_length=train.max_length, tokenizer=tokenizer),
            "test": ClassificationDataset(splits["test"], max_length=train.max_length, tokenizer=tokenizer)}


def spam_datasets(context_length: int | None = None, path=None, seed: int = 123) -> dict[str, ClassificationDataset]:
    """The book's balanced SMS spam split (classify.data.spam_splits: 1,045 / 149 / 300 messages) as
    {"train", "val", "test"} data sets (split_datasets). path: the SMSSpamCollection file (default: shipped)."""
    from classify.data import SMS_SPAM_FILE, spam_splits

    return split_datasets(spam_splits(SMS_SPAM_FILE if path is None else path, seed), context_length)


def collate_trim(batch):
    """Stack items into (input_ids (b, T), lengths (b,), labels (b,)) and drop the trailing columns
    that are padding in every row (T = the longest row of this batch). Exact for a causal model
    read at each row's last real token."""
    input_ids = torch.stack([item[0] for item in batch])  # (b, max_length)
    lengths = torch.as_tensor([int(item[1]) for item in batch], dtype=torch.long)  # (b,)
    labels = torch.stack([torch.as_tensor(item[2]) for item in batch])  # (b,)
    return input_ids[:, : int(lengths.max())], lengths, labels


def collate_full(batch):
    """Like collate_trim but keeps every column (the book's fixed-width batches)."""
    input_ids = torch.stack([item[0] for item in batch])
    lengths = torch.as_tensor([int(item[1]) for item in batch], dtype=torch.long)
    labels = torch.stack([torch.as_tensor(item[2]) for item in batch])
    return input_ids, lengths, labels


def make_loader(dataset: ClassificationDataset, batch_size: int = 8, shuffle: bool = False, drop_last: bool = False,
                seed: int = 123, trim: bool = True, sampler=None, sort_by_length: bool = False, num_workers: int = 0):
    """A DataLoader whose shuffling depends only on `seed` (a generator of its own, not the global
    random state). Pass a DistributedSampler as `sampler` for multi-process training (then
    `shuffle` must be False; the sampler shuffles).

    sort_by_length=True (for evaluation, where the order does not matter): the examples go
    shortest first, so each trimmed batch holds texts of similar length and carries almost no
    padding; large evaluation batches then cost little more than their real tokens.
    """
    from torch.utils.data import DataLoader

    if sum([shuffle, sampler is not None, sort_by_length]) > 1:
        raise ValueError("make_loader: give at most one of shuffle=True, a sampler, sort_by_length=True")
    if sort_by_length:
        sampler = sorted(range(len(dataset)), key=lambda i: dataset.lengths[i])
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last, sampler=sampler,
                      generator=torch.Generator().manual_seed(seed), num_workers=num_workers,
                      collate_fn=collate_trim if trim else collate_full)


__all__ = ["PAD_TOKEN_ID", "ClassificationDataset", "collate_trim", "collate_full", "encode_text",
           "encode_for_classification", "make_loader", "spam_datasets", "split_datasets"]
