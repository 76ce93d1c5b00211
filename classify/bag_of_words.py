"""A baseline without a GPT: logistic regression on which GPT-2 tokens a message contains.

No pre-training, no word order, no attention: each message becomes a 0/1 vector over the token ids seen
in the training messages, and one linear layer maps it to class scores. What the fine-tuned GPT scores
above this is what the pre-trained model and word order buy on the task.

    bow = fit_bag_of_words(spam_splits()["train"])
    bow.accuracy(spam_splits()["test"])           # fraction correct
    bow.predict_proba(["You won a free cruise, call now"])   # (1, 2): p(ham), p(spam)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from classify.data import Example
from classify.dataset import encode_text


@dataclass
class BagOfWords:
    vocab: dict[int, int]  # token id -> feature column; ids never seen in training are ignored
    linear: nn.Linear  # (len(vocab) features) -> (classes)

    def features(self, texts: list[str]) -> torch.Tensor:
        """(n, len(vocab)) float tensor: 1 where the text contains the token, 0 elsewhere."""
        x = torch.zeros(len(texts), len(self.vocab))
        for row, text in enumerate(texts):
            columns = [self.vocab[i] for i in set(encode_text(text)) if i in self.vocab]
            x[row, columns] = 1.0
        return x

    @torch.no_grad()
    def predict_proba(self, texts: list[str]) -> torch.Tensor:
        """(n, classes) class probabilities."""
        return torch.softmax(self.linear(self.features(texts)), dim=-1)

    def accuracy(self, examples: list[Example]) -> float:
        predicted = self.predict_proba([ex.text for ex in examples]).argmax(dim=-1)
        return float((predicted == torch.tensor([ex.label for ex in examples])).float().mean())

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.linear.parameters())


def fit_bag_of_words(examples: list[Example], num_classes: int = 2, steps: int = 300, lr: float = 0.05,
                     weight_decay: float = 0.01, seed: int = 123) -> BagOfWords:
    """Full-batch AdamW on the cross-entropy of all training examples at once (a few seconds on a CPU).
    The settings are not tuned: they are a plain logistic regression's usual ones."""
    if not examples:
        raise ValueError("fit_bag_of_words needs at least one training example")
    labels = torch.tensor([ex.label for ex in examples])
    if int(labels.min()) < 0 or int(labels.max()) >= num_classes:
        raise ValueError(f"labels must be in [0, {num_classes - 1}], got {sorted(set(labels.tolist()))}")
    token_ids = sorted({i for ex in examples for i in encode_text(ex.text)})
    generator = torch.Generator().manual_seed(seed)
    linear = nn.Linear(len(token_ids), num_classes)
    with torch.no_grad():  # a seeded init, independent of the global RNG
        linear.weight.uniform_(-0.01, 0.01, generator=generator)
        linear.bias.zero_()
    model = BagOfWords({token: column for column, token in enumerate(token_ids)}, linear)
    x = model.features([ex.text for ex in examples])  # (n, V)
    optimizer = torch.optim.AdamW(linear.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(steps):
        optimizer.zero_grad()
        F.cross_entropy(linear(x), labels).backward()
        optimizer.step()
    return model
