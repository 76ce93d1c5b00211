"""Training loop for a GPT classifier: cross-entropy on the last real token, periodic evaluation.

The book's `train_classifier_simple` (chapter 6) with a few things a reader will want:
a progress bar, a history that says how many examples the model had seen at each evaluation,
a clear error when the loss becomes NaN/inf (which step, which learning rate), a seed, an
optional learning-rate schedule and gradient clipping (plots.figures.plot_history draws the curves).

It also runs unchanged under DistributedDataParallel: the model is only ever called as a
whole (`class_logits(model, ...)`), a DistributedSampler gets `set_epoch` so every epoch has
a new order, counts and sums are all-reduced across processes before they are reported, and
only rank 0 draws a progress bar.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from tqdm import tqdm

from classify.model import last_token_logits
from gpt.device import autocast
from gpt.distributed import all_reduce_sum, get_world_size, is_main_process, sync_gradients


def batch_loss_terms(model, batch, device, bf16: bool | None = None, prefix: bool = True):
    """One batch -> (last-token loss, prefix loss, number correct, batch size); the losses are scalar
    tensors (nats per message), prefix loss None when prefix=False. See batch_loss for what each term is."""
    input_ids, lengths, labels = (t.to(device) for t in batch)
    with autocast(torch.device(device), bf16):
        logits_all = model(input_ids)  # (b, T, C); the whole model is called, so DDP sees the forward pass
    logits_all = logits_all.float()  # the loss in float32 even under bf16 autocast
    logits = last_token_logits(logits_all, lengths)  # (b, C)
    last = F.cross_entropy(logits, labels)
    prefix_loss = None
    if prefix:
        b, T, C = logits_all.shape
        per_token = F.cross_entropy(logits_all.reshape(b * T, C), labels.repeat_interleave(T),
                                    reduction="none").view(b, T)  # (b, T)
        real = torch.arange(T, device=per_token.device)[None, :] < lengths[:, None]  # (b, T): not padding
        prefix_loss = ((per_token * real).sum(1) / lengths).mean()
    correct = int((logits.argmax(dim=-1) == labels).sum())
    return last, prefix_loss, correct, labels.numel()


def training_loss(last: torch.Tensor, prefix_loss: torch.Tensor | None, prefix_weight: float) -> torch.Tensor:
    """The loss trained on, from batch_loss_terms' two terms: last + prefix_weight * prefix_loss (scalar, nats
    per message); with prefix_weight 0 the last-token loss alone (the book's), prefix_loss may then be None."""
    return last + prefix_weight * prefix_loss if prefix_weight else last


def batch_loss(model, batch, device, bf16: bool | None = None, prefix_weight: float = 0.0):
    """One batch -> (loss (scalar tensor), number correct, batch size).

    batch: (input_ids (b, T), lengths (b,), labels (b,)) from classify.dataset.collate_trim.
    The loss is the mean cross-entropy at each message's last real token, the prediction the
    classifier makes. prefix_weight > 0 adds that weight times the same loss at EVERY real token,
    averaged over each message's tokens: with causal attention the output at token t is the
    classification of the message cut after t, so this trains on all the prefixes of every message
    at no extra forward cost. Why: in the SMS data spam is long and ham is often short, and a classifier
    trained on whole messages only learns "short means ham" (the main job, classify.finetune.FinetuneConfig,
    uses prefix_weight 1; the default here and in train_classifier, 0, is the book's loss, so that a call written
    as the book writes it trains as the book does).
    Accuracy is always counted at the last real token.
    """
    last, prefix_loss, correct, n = batch_loss_terms(model, batch, device, bf16, prefix=bool(prefix_weight))
    return training_loss(last, prefix_loss, prefix_weight), correct, n


@torch.no_grad()
def evaluate(model, loader, device, max_batches: int | None = None, bf16: bool | None = None) -> dict:
    """Accuracy and mean loss (per example) over `loader` (or its first max_batches batches), with
    dropout off. Under torch.distributed the totals of all processes are combined, so give each
    process its own shard (a DistributedSampler, which repeats a few examples to make the shards
    equal: exact only when the set divides evenly); with the same full loader on every process
    the accuracy is still right and "n" counts each example once per process.
    Returns {"accuracy": fraction in [0, 1], "loss": the last-token cross-entropy in nats per example,
    "prefix_loss": the same at every real token (batch_loss's prefix term, unweighted), "n": examples}."""
    was_training = model.training
    model.eval()
    loss_sum, prefix_sum, correct, n = 0.0, 0.0, 0, 0
    for i, batch in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        last, prefix_loss, c, b = batch_loss_terms(model, batch, device, bf16)
        loss_sum += last.item() * b
        prefix_sum += prefix_loss.item() * b
        correct += c
        n += b
    model.train(was_training)
    loss_sum, prefix_sum, correct, n = all_reduce_sum([loss_sum, prefix_sum, correct, n], device)
    if n == 0:
        raise ValueError("evaluate: the loader yielded no examples")
    return {"accuracy": correct / n, "loss": loss_sum / n, "prefix_loss": prefix_sum / n, "n": int(n)}


@dataclass
class ClassifierHistory:
    """One entry per evaluation. train_* are running averages over the training batches since the
    previous evaluation (free: no extra forward pass; dropout on, weights changing);
    val_* are measured on the validation loader with dropout off. Both sides record the same two
    losses, so a curve is only ever drawn against its like: *_loss is the cross-entropy at each
    message's last token (the classifier's prediction), *_prefix_loss the same at every token (the
    prefix term of batch_loss, unweighted). The loss trained on is loss + prefix_weight * prefix_loss."""

    step: list[int] = field(default_factory=list)  # optimizer steps done
    examples_seen: list[int] = field(default_factory=list)  # training examples seen, all processes
    epoch: list[float] = field(default_factory=list)  # fractional epochs done
    lr: list[float] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)  # last token, nats per message
    train_prefix_loss: list[float] = field(default_factory=list)  # every token, nats per message
    train_accuracy: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_prefix_loss: list[float] = field(default_factory=list)
    val_accuracy: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)  # wall time since the start of training

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ClassifierHistory":
        return cls(**d)


def split_batch(batch, micro_batches: int) -> list[tuple]:
    """Split one (input_ids (b, T), lengths (b,), labels (b,)) batch into `micro_batches` smaller ones
    (sizes differ by at most one), each trimmed to its own longest message: less padding, less memory."""
    input_ids, lengths, labels = batch
    parts = []
    for ids, lens, labs in zip(*(torch.tensor_split(t, micro_batches) for t in (input_ids, lengths, labels))):
        if len(labs):
            parts.append((ids[:, : int(lens.max())], lens, labs))
    return parts


def train_classifier(model, train_loader, val_loader, optimizer, epochs: int, device,
                     eval_every: int = 50, eval_batches: int | None = None, seed: int | None = None,
                     grad_clip: float | None = None, lr_schedule: Callable[[int], float] | None = None,
                     max_steps: int | None = None, bf16: bool | None = None, progress: bool = True,
                     grad_accum: int = 1, prefix_weight: float = 0.0,
                     log: Callable[[str], None] | None = tqdm.write) -> ClassifierHistory:
    """Fine-tune `model` (only its parameters with requires_grad) in place; returns the history.

    epochs: passes over train_loader. eval_every: evaluate every this many optimizer steps, and at
    the end of every epoch. eval_batches: limit the validation pass (None = all of it).
    seed: torch's global seed (dropout, LoRA dropout), set once at the start. The data order comes
    from the loader's own generator (classify.dataset.make_loader) or its DistributedSampler.
    lr_schedule: step -> learning rate, applied to every parameter group before each step
    (None = the optimizer's constant rate, as in the book). max_steps: stop early (quick runs).
    grad_accum: gradient accumulation. Every batch of the loader is cut into this many micro-batches
    that go forward and backward one at a time; their gradients add up (each loss weighted by its
    share of the batch) before the one optimizer step. The step is the one the whole batch gives, up
    to float rounding (tests/test_classify_train.py), at the activation memory of a micro-batch: a
    small machine can use the batch size a result needs. Steps, eval_every and max_steps still
    count optimizer steps (= loader batches).
    prefix_weight: also train on every prefix of each message (see batch_loss); 0 (the default) = the book's
    loss, the main job passes 1 (FinetuneConfig.prefix_weight).
    grad_clip: clip the gradient norm to this positive number (None: no clipping, the book).
    Raises FloatingPointError when the loss stops being finite, ValueError for settings that would
    train nothing (no epochs, no batches, no steps) or not as asked (a clip norm <= 0).
    """
    if epochs <= 0:
        raise ValueError(f"epochs must be positive, got {epochs}")
    if grad_clip is not None and not (isinstance(grad_clip, (int, float)) and math.isfinite(grad_clip) and grad_clip > 0):
        raise ValueError(f"grad_clip must be a positive number (the largest gradient norm; None for no clipping), "
                         f"got {grad_clip!r}")
    if max_steps is not None and max_steps < 1:
        raise ValueError(f"max_steps must be at least 1 (None: no limit), got {max_steps!r}")
    if len(train_loader) == 0:
        raise ValueError("the training loader yields no batches: the batch size is larger than the training set "
                         "and incomplete batches are dropped; use a smaller batch size")
    if isinstance(grad_accum, bool) or not isinstance(grad_accum, int) or grad_accum < 1:
        raise ValueError(f"grad_accum must be a positive integer (micro-batches per batch), got {grad_accum!r}")
    if not prefix_weight >= 0:
        raise ValueError(f"prefix_weight must be >= 0, got {prefix_weight}")
    if seed is not None:
        torch.manual_seed(seed)
    history = ClassifierHistory()
    steps_per_epoch = len(train_loader)
    total = steps_per_epoch * epochs if max_steps is None else min(max_steps, steps_per_epoch * epochs)
    world = get_world_size()
    step, seen = 0, 0
    run_loss, run_prefix, run_correct, run_n = 0.0, 0.0, 0, 0
    t0 = time.perf_counter()
    bar = tqdm(total=total, desc="fine-tuning", unit="step", dynamic_ncols=True,
               disable=(None if progress else True) if is_main_process() else True)

    def record(epoch_float: float) -> None:
        nonlocal run_loss, run_prefix, run_correct, run_n
        val = evaluate(model, val_loader, device, eval_batches, bf16)
        loss_sum, prefix_sum, correct, n = all_reduce_sum([run_loss, run_prefix, run_correct, run_n], device)
        history.step.append(step)
        history.examples_seen.append(seen)
        history.epoch.append(round(epoch_float, 4))
        history.lr.append(optimizer.param_groups[0]["lr"])
        history.train_loss.append(loss_sum / n if n else float("nan"))
        history.train_prefix_loss.append(prefix_sum / n if n else float("nan"))
        history.train_accuracy.append(correct / n if n else float("nan"))
        history.val_loss.append(val["loss"])
        history.val_prefix_loss.append(val["prefix_loss"])
        history.val_accuracy.append(val["accuracy"])
        history.seconds.append(time.perf_counter() - t0)
        run_loss, run_prefix, run_correct, run_n = 0.0, 0.0, 0, 0
        bar.set_postfix_str(f"loss {history.train_loss[-1]:.3f} | val acc {100 * val['accuracy']:.1f}%")
        if log is not None and is_main_process():
            log(f"epoch {epoch_float:5.2f} | step {step:>5} | seen {seen:>6,} | train loss {history.train_loss[-1]:.3f} "
                f"acc {100 * history.train_accuracy[-1]:5.1f}% | val loss {val['loss']:.3f} "
                f"acc {100 * val['accuracy']:5.1f}% | {history.seconds[-1]:.0f} s")

    model.train()
    for epoch in range(epochs):
        sampler = getattr(train_loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):  # DistributedSampler: a new shuffle every epoch
            sampler.set_epoch(epoch)
        for i, batch in enumerate(train_loader):
            if max_steps is not None and step >= max_steps:
                break
            if lr_schedule is not None:
                for g in optimizer.param_groups:
                    g["lr"] = lr_schedule(step)
            optimizer.zero_grad(set_to_none=True)
            micro = split_batch(batch, grad_accum) if grad_accum > 1 else [batch]
            step_examples = sum(len(labels) for _, _, labels in micro)
            for j, micro_batch in enumerate(micro):
                # Under DDP, synchronise gradients once per step (on the last micro-batch), not per micro-batch.
                last = j == len(micro) - 1
                with sync_gradients(model, last):
                    # Both terms are computed (and logged) whatever prefix_weight is: the same forward pass.
                    last, prefix_loss, correct, b = batch_loss_terms(model, micro_batch, device, bf16)
                    loss = training_loss(last, prefix_loss, prefix_weight)
                    value = loss.item()
                    if not math.isfinite(value):
                        raise FloatingPointError(
                            f"the training loss became {value} at step {step} (epoch {epoch + 1}), learning rate "
                            f"{optimizer.param_groups[0]['lr']:.2e}: lower the learning rate (or, for LoRA, alpha) "
                            f"or clip gradients")
                    # mean over the step's examples = sum over micro-batches of (batch mean x batch share)
                    (loss * (b / step_examples)).backward()
                run_loss += last.item() * b
                run_prefix += prefix_loss.item() * b
                run_correct += correct
                run_n += b
            if grad_clip is not None:
                torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], grad_clip)
            optimizer.step()
            step += 1
            seen += step_examples * world
            bar.update(1)
            if eval_every and step % eval_every == 0:
                record(epoch + (i + 1) / steps_per_epoch)
        else:
            if not history.step or history.step[-1] != step:
                record(epoch + 1.0)
            continue
        break  # max_steps reached inside the epoch
    if not history.step or history.step[-1] != step:
        record(step / steps_per_epoch)
    bar.close()
    return history


__all__ = ["ClassifierHistory", "batch_loss", "batch_loss_terms", "evaluate", "split_batch", "train_classifier",
           "training_loss"]
