"""Solutions to the exercises of chapter 7 (notebooks/07_spam_lora.ipynb): the spam classifier with LoRA.

Kept outside the notebooks so that a class can hand the notebooks out without the answers.
Each function returns the numbers its answer rests on (the docstring gives the answer);
tests/test_solutions_ch07.py checks them. The discussion, with the numbers measured on the
shipped gpt-mini, is in solutions/ch07.md.
Shape legend: b = batch, T = tokens, C = classes, d = emb_dim.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from classify.dataset import ClassificationDataset, make_loader
from classify.model import class_logits
from gpt.tokenizer import END_OF_TEXT_ID, get_tokenizer

ROOT = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------- 7.1

def exercise_7_1(model: nn.Module, input_ids: torch.Tensor, lengths: torch.Tensor, labels: torch.Tensor) -> float:
    """The prefix term of the recipe's loss (section 7.3) for one batch, by hand: a float, nats per message.

    input_ids (b, T) padded with <|endoftext|> after each message, lengths (b,), labels (b,). One forward pass
    gives the class logits at every position (b, T, C); the cross-entropy of each REAL token against its
    message's label is averaged over that message's n_i tokens, then over the b messages.

    Answer to the question: averaging per message first makes every message count once, whatever its length. A
    mean over all real tokens of the batch would weigh each message by its length; spam messages are the long
    ones in this collection (section 7.6: only 4 of 517 training spams have 10 tokens or fewer), so the term
    would be mostly about spam.
    """
    with torch.no_grad():
        logits = model(input_ids).float()  # (b, T, C)
    b, T, C = logits.shape
    per_token = F.cross_entropy(logits.reshape(b * T, C), labels.repeat_interleave(T), reduction="none").view(b, T)
    real = torch.arange(T)[None, :] < lengths[:, None]  # (b, T): True on message tokens, False on padding
    return float(((per_token * real).sum(1) / lengths).mean())


def wrong_exercise_7_1(model: nn.Module, input_ids: torch.Tensor, lengths: torch.Tensor,
                       labels: torch.Tensor) -> float:
    """Averages over all real tokens of the batch at once: long messages weigh more than short ones."""
    with torch.no_grad():
        logits = model(input_ids).float()  # (b, T, C)
    b, T, C = logits.shape
    per_token = F.cross_entropy(logits.reshape(b * T, C), labels.repeat_interleave(T), reduction="none").view(b, T)
    real = torch.arange(T)[None, :] < lengths[:, None]
    return float((per_token * real).sum() / real.sum())


def typed_in_exercise_7_1(model: nn.Module, input_ids: torch.Tensor, lengths: torch.Tensor,
                          labels: torch.Tensor) -> float:
    """Types in the prefix term that section 7.3 prints for its training batch (0.4895 on gpt-mini's run)."""
    return 0.4895


def shortcut_exercise_7_1(model: nn.Module, input_ids: torch.Tensor, lengths: torch.Tensor,
                          labels: torch.Tensor) -> float:
    """Calls the package's loss (classify.train.batch_loss_terms) instead of writing the term: the statement
    forbids it, and the check makes that function fail."""
    import classify.train as train  # looked up at call time, as a student's notebook would

    _, prefix, _, _ = train.batch_loss_terms(model, (input_ids, lengths, labels), "cpu", bf16=False)
    return float(prefix)


def ambiguous_length_batch(seed: int = 0, b: int = 6, T: int = 14, vocab: int = 50_257):
    """A padded batch (input_ids (b, T), lengths (b,), labels (b,)) from a generator of its own: lengths from 1 to
    T - 2 (so every row has padding), both labels present."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, T - 1, (b,), generator=g)
    lengths[0], lengths[1] = 1, T - 2  # one very short and one long message
    ids = torch.randint(0, vocab - 1, (b, T), generator=g)
    ids[torch.arange(T)[None, :] >= lengths[:, None]] = END_OF_TEXT_ID
    labels = torch.arange(b) % 2
    return ids, lengths, labels


# ----------------------------------------------------------------------------- 7.2

@torch.no_grad()
def exercise_7_2(model: nn.Module, text: str = "Call now to claim your free prize",
                 widths: tuple[int, ...] = (7, 20, 64)) -> dict[int, dict[str, torch.Tensor]]:
    """One text padded with <|endoftext|> to each width: the class logits read at the last real token and at
    the last column. {width: {"last_real": (C,), "last_column": (C,)}}.

    Answer: "last_real" is the same for every width (causal attention: the real tokens never see the padding
    that follows them), "last_column" changes with the width: the output at a padding position depends on how
    many padding tokens precede it (positions, and attention spread over more <|endoftext|> tokens).
    """
    model.eval()
    ids = get_tokenizer().encode(text, disallowed_special=())
    if any(w < len(ids) for w in widths):
        raise ValueError(f"every width must be >= the text's {len(ids)} tokens, got {widths}")
    out = {}
    for width in widths:
        x = torch.tensor([ids + [END_OF_TEXT_ID] * (width - len(ids))])  # (1, width)
        out[width] = {"last_real": class_logits(model, x, torch.tensor([len(ids)]))[0],
                      "last_column": model(x)[0, -1]}
    return out


@torch.no_grad()
def wrong_exercise_7_2(model: nn.Module, text: str = "Call now to claim your free prize",
                       widths: tuple[int, ...] = (7, 20, 64)) -> dict[int, dict[str, torch.Tensor]]:
    """Reads the last real token for "last_column" too (position len(ids) - 1), not the last column of the row."""
    out = exercise_7_2(model, text, widths)
    return {w: {"last_real": v["last_real"], "last_column": v["last_real"].clone()} for w, v in out.items()}


def typed_in_exercise_7_2(model: nn.Module, text: str = "Call now to claim your free prize",
                          widths: tuple[int, ...] = (7, 20, 64)) -> dict[int, dict[str, torch.Tensor]]:
    """Types in fixed logits (what one run printed) for every width, whatever the model and the text."""
    fixed = torch.tensor([0.1234, -0.5678])
    return {w: {"last_real": fixed.clone(), "last_column": fixed.clone()} for w in widths}


@torch.no_grad()
def shortcut_exercise_7_2(model: nn.Module, text: str = "Call now to claim your free prize",
                          widths: tuple[int, ...] = (7, 20, 64)) -> dict[int, dict[str, torch.Tensor]]:
    """Pads with token id 0 ("!") instead of <|endoftext|>: the last column then reads another token's output."""
    model.eval()
    ids = get_tokenizer().encode(text, disallowed_special=())
    out = {}
    for width in widths:
        x = torch.tensor([ids + [0] * (width - len(ids))])  # (1, width)
        out[width] = {"last_real": class_logits(model, x, torch.tensor([len(ids)]))[0], "last_column": model(x)[0, -1]}
    return out


@torch.no_grad()
def exercise_7_2_accuracy(model: nn.Module, dataset: ClassificationDataset, batch_size: int = 32) -> dict:
    """Accuracy on `dataset` read at each row's last real token and at the last column of rows padded to the
    dataset's full width (the book), and the number of predictions that differ.

    Answer: see solutions/ch07.md for the numbers on the adapter trained in chapter 7. A model trained reading
    the last REAL token never saw a padding position's output during training, so reading the last column is a
    different, untrained read-out, and its predictions can change for any message shorter than the padding width. The
    book's model is trained and tested reading the same column of batches padded to the same width (120), so
    train and test match: the padding token at position 119 attends to the whole message and learns to carry
    the decision there. It works, but the prediction then depends on the padding width chosen.
    """
    model.eval()
    loader = make_loader(dataset, batch_size=batch_size, trim=False)  # every row padded to the full width
    correct_real = correct_column = differ = n = 0
    for input_ids, lengths, labels in loader:
        logits = model(input_ids)  # (b, T, C)
        real = logits[torch.arange(len(input_ids)), lengths - 1].argmax(-1)  # (b,)
        column = logits[:, -1].argmax(-1)  # (b,)
        correct_real += int((real == labels).sum())
        correct_column += int((column == labels).sum())
        differ += int((real != column).sum())
        n += len(labels)
    return {"last_real_accuracy": correct_real / n, "last_column_accuracy": correct_column / n,
            "predictions_that_differ": differ, "n": n, "width": dataset.max_length}


# ----------------------------------------------------------------------------- 7.3

def precision_7_3(p: float = 0.95, n: int = 300, a: float = 286 / 300, b: float = 290 / 300) -> dict:
    """How precise is an accuracy measured on n = 300 test messages?

    Answer: one message is 1/300 = 0.33 points, one point is 3 messages. At p = 0.95 the standard error is
    sqrt(0.95 x 0.05 / 300) = 1.26 points, a 95 % interval p +- 1.96 se = [92.5 %, 97.5 %] (Wilson's interval,
    better near 100 %: [91.9 %, 96.9 %]). Two independent runs at 95.33 % and 96.67 % (286 and 290 of 300)
    differ by 1.33 points =
    4 messages; the standard error of a difference is sqrt(se_a^2 + se_b^2) = 1.6 points, so z = 0.83: well
    within noise. (Both runs classify the same 300 messages, so a paired test such as McNemar's, which only
    looks at the messages they disagree on, is sharper; it needs the per-message predictions.)
    """
    if not (0 <= p <= 1 and 0 <= a <= 1 and 0 <= b <= 1) or n <= 0:
        raise ValueError(f"accuracies must be in [0, 1] and n positive, got p={p}, a={a}, b={b}, n={n}")
    se = math.sqrt(p * (1 - p) / n)
    z = 1.959964  # two-sided 95 %
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    se_diff = math.sqrt(a * (1 - a) / n + b * (1 - b) / n)
    return {"se": se, "normal_interval": (p - z * se, p + z * se), "wilson_interval": (centre - half, centre + half),
            "messages_per_point": n / 100, "points_per_message": 100 / n,
            "difference_points": 100 * (b - a), "difference_messages": round((b - a) * n),
            "se_difference": se_diff, "z": (b - a) / se_diff}


def exercise_7_3(p: float = 0.95, n: int = 300, a: float = 286 / 300, b: float = 290 / 300) -> dict:
    """{"se": standard error of an accuracy p on n messages, "interval": (low, high) the normal 95 % interval,
    "messages_per_point": messages per percentage point, "z": the difference b - a over its standard error}, all
    as fractions (not %). The answer is precision_7_3's docstring."""
    out = precision_7_3(p, n, a, b)
    return {"se": out["se"], "interval": out["normal_interval"], "messages_per_point": out["messages_per_point"],
            "z": out["z"]}


def wrong_exercise_7_3(p: float = 0.95, n: int = 300, a: float = 286 / 300, b: float = 290 / 300) -> dict:
    """Divides the difference by the standard error of ONE accuracy, not of the difference of two."""
    out = exercise_7_3(p, n, a, b)
    out["z"] = (b - a) / math.sqrt(a * (1 - a) / n)
    return out


def typed_in_exercise_7_3(p: float = 0.95, n: int = 300, a: float = 286 / 300, b: float = 290 / 300) -> dict:
    """Types in the answer for the statement's numbers (p = 0.95, n = 300, 286 and 290 of 300), whatever the
    arguments."""
    return exercise_7_3()


def shortcut_exercise_7_3(p: float = 0.95, n: int = 300, a: float = 286 / 300, b: float = 290 / 300) -> dict:
    """Gives the standard error and the interval's half-width in percentage points, not as fractions."""
    out = exercise_7_3(p, n, a, b)
    se = 100 * out["se"]
    return {"se": se, "interval": (p - 1.96 * se, p + 1.96 * se), "messages_per_point": out["messages_per_point"],
            "z": out["z"]}


# ----------------------------------------------------------------------------- 7.4

@torch.no_grad()
def spam_probabilities(model: nn.Module, dataset: ClassificationDataset, batch_size: int = 32,
                       spam_index: int = 1) -> tuple[list[float], list[int]]:
    """p(spam) for every example of `dataset` (softmax over the classes at the last real token), in the
    dataset's order, and the labels."""
    model.eval()
    probs, labels = [], []
    for input_ids, lengths, y in make_loader(dataset, batch_size=batch_size):  # trimmed, same logits
        p = torch.softmax(class_logits(model, input_ids, lengths).float(), dim=-1)[:, spam_index]  # (b,)
        probs += p.tolist()
        labels += y.tolist()
    return probs, labels


def exercise_7_4(p_spam, labels, thresholds=(0.5, 0.9, 0.99)) -> dict[float, dict]:
    """Confusion matrix, precision and recall for "spam" when p(spam) >= threshold.

    tp: spam caught, fp: ham flagged as spam (a real message hidden), fn: spam let through, tn: ham kept.
    precision = tp / (tp + fp): of what is flagged, how much is spam; recall = tp / (tp + fn): how much spam
    is caught. Raising the threshold trades recall for precision. Answer for the chapter's adapter (numbers in
    solutions/ch07.md): 0.5 hides 5 of 149 test hams and lets 4 of 151 spams through; 0.9 hides 1 ham (a bare URL,
    p(spam) = 0.989) and lets 10 spams through (recall 93 %); 0.99 hides none and lets 20 through (recall 87 %);
    beyond that recall collapses (51 % at 0.999). Ship 0.9 or 0.99. With 149 test hams, "no real message hidden"
    cannot be shown anyway: 0 of 149 only bounds the rate below about 2 % (rule of three: 3 / 149).
    """
    if len(p_spam) != len(labels) or not len(labels):
        raise ValueError(f"p_spam and labels must have the same non-zero length, got {len(p_spam)} and {len(labels)}")
    if any(y not in (0, 1) for y in labels):
        raise ValueError("labels must be 0 (ham) or 1 (spam)")
    out = {}
    for t in thresholds:
        flagged = [p >= t for p in p_spam]
        tp = sum(f and y == 1 for f, y in zip(flagged, labels))
        fp = sum(f and y == 0 for f, y in zip(flagged, labels))
        fn = sum((not f) and y == 1 for f, y in zip(flagged, labels))
        tn = sum((not f) and y == 0 for f, y in zip(flagged, labels))
        out[t] = {"tp": tp, "fp": fp, "fn": fn, "tn": tn,
                  "precision": tp / (tp + fp) if tp + fp else float("nan"),
                  "recall": tp / (tp + fn) if tp + fn else float("nan"),
                  "accuracy": (tp + tn) / len(labels)}
    return out


def wrong_exercise_7_4(p_spam, labels, thresholds=(0.5, 0.9, 0.99)) -> dict[float, dict]:
    """Flags spam only when p(spam) > threshold, not >= threshold as the statement says."""
    return exercise_7_4([p - 1e-12 for p in p_spam], labels, thresholds)


def typed_in_exercise_7_4(p_spam, labels, thresholds=(0.5, 0.9, 0.99)) -> dict[float, dict]:
    """Types in the counts of the chapter's adapter on its 300 test messages (solutions/ch07.md), whatever the
    probabilities."""
    counts = {0.5: (147, 5, 4, 144), 0.9: (141, 1, 10, 148), 0.99: (131, 0, 20, 149)}
    out = {}
    for t in thresholds:
        tp, fp, fn, tn = counts.get(t, counts[0.5])
        out[t] = {"tp": tp, "fp": fp, "fn": fn, "tn": tn, "precision": tp / (tp + fp), "recall": tp / (tp + fn),
                  "accuracy": (tp + tn) / 300}
    return out


def shortcut_exercise_7_4(p_spam, labels, thresholds=(0.5, 0.9, 0.99)) -> dict[float, dict]:
    """Takes the classifier's own decision (p(spam) >= 0.5, the argmax) for every threshold."""
    return {t: exercise_7_4(p_spam, labels, (0.5,))[0.5] for t in thresholds}


# ----------------------------------------------------------------------------- 7.5

def exercise_7_5(targets=("query", "value"), quick: bool = False, out: str | Path | None = None) -> dict:
    """Run the main job (classify.finetune, what scripts/finetune_spam.py runs) with LoRA on other target layers
    (default: query and value only, the LoRA paper) and return its result summary (trainable_params,
    train/val/test accuracy, train_seconds, steps, ...).

        exercise_7_5()                  # gpt-mini, the recipe's other settings
        exercise_7_5(quick=True)        # a tiny random model for a few steps (tests)

    Answer (measured numbers in solutions/ch07.md): query + value at r = 16 trains 98,818 parameters instead
    of 442,882 (4.5x fewer). On gpt-mini with the recipe (seed 123) it reached 96.00 % test / 94.63 %
    validation against 97.00 % / 96.64 % for all linear layers: three messages apart on each split, suggestive
    but not measurable on one seed (with the book's constant learning rate, on the first-stage base, the gap on
    validation was similar, 93.3 % against 95.3 %). A step costs about the same: every block carries LoRA either way, so
    the backward pass runs through the whole model, and the feed-forward branches add only
    r (d + 4d) / (4 d^2) = 8 % to those layers' frozen matmuls at r = 16, d = 256. Adapting the feed-forward
    layers changes what features the last token carries, adapting attention only where tokens look; on this
    easy task the frozen features are already good (the head alone reaches 90 %), so both suffice.
    """
    from classify.finetune import FinetuneConfig, finetune

    cfg = (FinetuneConfig.quick_run if quick else FinetuneConfig)(targets=tuple(targets), progress=False)
    return finetune(cfg, out=out or ROOT / "runs" / f"spam-lora-{'-'.join(targets)}")


__all__ = ["exercise_7_1", "ambiguous_length_batch", "exercise_7_2", "exercise_7_2_accuracy", "precision_7_3", "exercise_7_3",
           "spam_probabilities", "exercise_7_4", "exercise_7_5"]
