"""Turn a GPT language model into a classifier: a new output head, read at the last real token.

The book (chapter 6): replace `out_head` (emb_dim -> vocab_size) with a small
`nn.Linear(emb_dim, num_classes)` and classify from the output of the LAST token, the only
position whose causal attention has seen the whole message. With padded batches the last
column is usually padding, so here the output is read at each row's last REAL token
(`lengths - 1`), which makes the prediction independent of how much padding a batch has.

`set_trainable` selects what full, last-block and head-only fine-tuning train (the book's
chapter 6 trains the last block, the final norm and the head); LoRA lives in `lora/` and is
applied by the scripts, which keeps this package free of it.
"""

from __future__ import annotations

import torch
from torch import nn

from gpt.distributed import unwrap  # the model inside a DDP wrapper (or the model itself)

TRAINABLE_CHOICES = ("full", "last-block", "head")


def add_classification_head(model: nn.Module, num_classes: int = 2) -> nn.Linear:
    """Replace `model.out_head` (emb_dim -> vocab_size) with nn.Linear(emb_dim, num_classes), in place.

    The new head has a bias (like the book's) and PyTorch's default initialisation; call
    torch.manual_seed first for reproducible weights. If the old head was TIED to the token
    embedding (GPT-2, gpt-mini), replacing it unties them: the embedding keeps its weights,
    the language-model head simply no longer exists. Returns the new head.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    inner = unwrap(model)
    if not isinstance(getattr(inner, "out_head", None), nn.Linear):
        raise TypeError(f"{type(inner).__name__} has no nn.Linear `out_head` to replace")
    emb_dim = inner.out_head.in_features
    device = inner.out_head.weight.device
    inner.out_head = nn.Linear(emb_dim, num_classes).to(device)
    return inner.out_head


def last_token_logits(logits: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
    """Pick each row's output at its last real token. logits: (b, T, C); lengths: (b,) real tokens per row
    (None: every row is full length). Returns (b, C)."""
    b, T, _ = logits.shape
    if lengths is None:
        return logits[:, -1, :]
    lengths = lengths.to(logits.device)
    if lengths.shape != (b,):
        raise ValueError(f"lengths must have shape ({b},), got {tuple(lengths.shape)}")
    if bool((lengths < 1).any()) or bool((lengths > T).any()):
        raise ValueError(f"lengths must be in [1, {T}], got {lengths.tolist()}")
    return logits[torch.arange(b, device=logits.device), lengths - 1]  # (b, C)


def class_logits(model: nn.Module, input_ids: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
    """Class scores from each row's last real token.

    input_ids: (b, T) token ids, right-padded; lengths: (b,) number of real tokens per row
    (None: every row is full length). Returns (b, C) logits.
    The full model is called (not just its head) so that a DistributedDataParallel wrapper sees
    the forward pass and synchronises gradients.
    """
    return last_token_logits(model(input_ids), lengths)  # model(...): (b, T, C)


@torch.no_grad()
def predict_texts(model: nn.Module, texts: list[str], max_length: int) -> list[tuple[torch.Tensor, bool, int]]:
    """Classify raw texts one at a time on the model's device: for each, (class probabilities (C,) on
    the CPU, truncated?, tokens used). Texts longer than max_length keep their first max_length
    tokens (as in training); the caller says so. Dropout is off while this runs."""
    from classify.dataset import encode_for_classification

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    for text in texts:
        ids, truncated = encode_for_classification(text, max_length)
        logits = class_logits(model, torch.tensor([ids], device=device), torch.tensor([len(ids)], device=device))
        out.append((torch.softmax(logits[0].float(), dim=-1).cpu(), truncated, len(ids)))  # (C,)
    model.train(was_training)
    return out


def set_trainable(model: nn.Module, method: str) -> nn.Module:
    """Freeze all parameters, then unfreeze what `method` trains:

    "full"       everything (the embeddings too);
    "last-block" the last transformer block, final_norm and out_head (the book's chapter 6);
    "head"       out_head only (a linear probe on the frozen features).
    """
    if method not in TRAINABLE_CHOICES:
        raise ValueError(f"unknown fine-tuning method {method!r}; choose one of {TRAINABLE_CHOICES}")
    inner = unwrap(model)
    for p in inner.parameters():
        p.requires_grad = method == "full"
    if method == "last-block":
        for module in (inner.trf_blocks[-1], inner.final_norm, inner.out_head):
            for p in module.parameters():
                p.requires_grad = True
    elif method == "head":
        for p in inner.out_head.parameters():
            p.requires_grad = True
    return model


__all__ = ["TRAINABLE_CHOICES", "add_classification_head", "class_logits", "last_token_logits", "predict_texts", "set_trainable",
           "unwrap"]
