"""Chapter 8's two tasks on one base, and training an adapter for one of them.

    tasks = load_tasks(model.cfg.context_length)        # {"spam": Task, "sentiment": Task}
    add_task_adapter(model, "sentiment", SENTIMENT_LORA)  # LoRA on the linear layers and the token embedding
    history = train_on_task(model, tasks["sentiment"], epochs=2, prefix_weight=PREFIX_WEIGHT["sentiment"])

* spam: the SMS Spam Collection, the book's balanced 70/10/20 split (classify.data.spam_splits).
* sentiment: the 3,000 review sentences of Kotzias et al. 2015 (Amazon, IMDb, Yelp), split 70/10/20 with
  seed 123 (classify.data.random_split).

The two adapters differ in one target. gpt-mini has read novels and SMS messages, not reviews: a LoRA on the
linear layers changes how the blocks combine token vectors but never the vectors themselves, so what the base
never learned about a review's words stays out of reach, and that adapter stays below a bag of words on the
sentiment split. LoRA on the token embedding (lora.EmbeddingWithLoRA, target "tok_emb") gives each token id
its own r numbers to learn; with it, and trained on every prefix of each sentence (chapter 7's loss), the
sentiment adapter is above the bag of words on validation and test (results/sentiment_comparison.md, made by
scripts/compare_sentiment.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from classify.data import Example, load_sentiment, random_split, spam_splits
from classify.dataset import ClassificationDataset, make_loader, split_datasets
from classify.train import ClassifierHistory, train_classifier
from lora import LoraConfig, adapter_configs, add_adapter, apply_lora, set_active_adapter

LABELS = {"spam": ["ham", "spam"], "sentiment": ["negative", "positive"]}  # class index -> name
TASKS = tuple(LABELS)
# Each adapter: LoRA r = 8, alpha = 16 and its own copy of the 2-class head (modules_to_save).
SPAM_LORA = LoraConfig(rank=8, alpha=16, targets=("all-linear",), modules_to_save=("out_head",))
SENTIMENT_LORA = LoraConfig(rank=8, alpha=16, targets=("all-linear", "tok_emb"), modules_to_save=("out_head",))
ADAPTERS = {"spam": SPAM_LORA, "sentiment": SENTIMENT_LORA}
# The weight of the loss at every prefix (classify.train.batch_loss; chapter 7). The sentiment adapter trains with
# it: the best validation accuracy of the recipes scripts/compare_sentiment.py measures.
PREFIX_WEIGHT = {"spam": 0.0, "sentiment": 1.0}


@dataclass
class Task:
    """One classification task: its labels, its texts and their tokenised data sets, and loaders."""

    name: str
    labels: list[str]
    splits: dict[str, list[Example]]  # "train" / "val" / "test" -> examples (texts and labels)
    train: ClassificationDataset
    val: ClassificationDataset
    test: ClassificationDataset
    batch_size: int = 8
    seed: int = 123

    @property
    def max_length(self) -> int:
        return self.train.max_length

    def loader(self, split: str):
        """Training batches shuffled with the task's seed (incomplete last batch dropped); validation and
        test batches of 4 x batch_size sorted by length (little padding)."""
        if split == "train":
            return make_loader(self.train, self.batch_size, shuffle=True, drop_last=True, seed=self.seed)
        return make_loader(getattr(self, split), 4 * self.batch_size, sort_by_length=True)


def task_splits(seed: int = 123) -> dict[str, dict[str, list[Example]]]:
    """The two tasks' texts and labels, untokenised: {"spam" | "sentiment": {"train" | "val" | "test": examples}}."""
    return {"spam": spam_splits(seed=seed),
            "sentiment": dict(zip(("train", "val", "test"), random_split(load_sentiment(), 0.7, 0.1, seed)))}


def load_tasks(context_length: int, batch_size: int = 8, seed: int = 123) -> dict[str, Task]:
    """The spam and sentiment tasks, tokenised and padded to their longest training text (at most
    context_length tokens)."""
    tasks = {}
    for name, s in task_splits(seed).items():
        d = split_datasets(s, context_length)
        tasks[name] = Task(name, LABELS[name], s, d["train"], d["val"], d["test"], batch_size, seed)
    return tasks


def tasks_for_base(model_spec: str, batch_size: int = 8, seed: int = 123) -> dict[str, Task]:
    """load_tasks at the context length of the base `model_spec` (a missing base: one clear error first)."""
    from gpt.pretrained import describe_base, load_base

    describe_base(model_spec)
    return load_tasks(load_base(model_spec, seed=0).cfg.context_length, batch_size, seed)


def add_task_adapter(model: nn.Module, name: str, cfg: LoraConfig, seed: int = 123) -> nn.Module:
    """Add LoRA adapter `name` (the model's first one with apply_lora, later ones with add_adapter) and make it
    the active and only trainable one. seed: torch's global seed, set first, so the adapter's random factors
    are the same whatever ran before."""
    torch.manual_seed(seed)
    if adapter_configs(model):
        add_adapter(model, name, cfg)
        set_active_adapter(model, name)
    else:
        apply_lora(model, cfg, adapter_name=name)
    return model


def train_on_task(model: nn.Module, task: Task, epochs: int, *, lr: float = 8e-4, weight_decay: float = 0.1,
                  device="cpu", seed: int = 123, eval_every: int = 50, max_steps: int | None = None,
                  prefix_weight: float = 0.0, bf16: bool | None = None, progress: bool = True,
                  log=print) -> ClassifierHistory:
    """Train the parameters of `model` that require gradients on `task`: AdamW at a constant rate, batches of
    task.batch_size, validation every eval_every steps (classify.train.train_classifier). Returns the history.
    prefix_weight: 0 (the default) is the book's loss, as in train_classifier; PREFIX_WEIGHT gives each task's."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("nothing to train: no parameter of the model requires gradients")
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=weight_decay)
    return train_classifier(model, task.loader("train"), task.loader("val"), optimizer, epochs, device,
                            eval_every=eval_every, seed=seed, max_steps=max_steps, bf16=bf16,
                            prefix_weight=prefix_weight, progress=progress, log=log)


__all__ = ["ADAPTERS", "LABELS", "PREFIX_WEIGHT", "SENTIMENT_LORA", "SPAM_LORA", "TASKS", "Task", "add_task_adapter",
           "load_tasks", "task_splits", "tasks_for_base", "train_on_task"]
