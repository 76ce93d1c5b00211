"""Autoregressive text generation: greedy, temperature sampling and top-k, stopping at
<|endoftext|>."""

from __future__ import annotations

import torch


@torch.no_grad()
def generate(model, idx, max_new_tokens: int, context_size: int | None = None, temperature: float = 0.0,
             top_k: int | None = None, eos_id: int | None = None, generator: torch.Generator | None = None):
    """Extend `idx` (b, T) by up to `max_new_tokens` tokens; returns (b, T + new).

    temperature == 0 picks the most likely token (greedy); temperature > 0 samples from
    softmax(logits / temperature), optionally restricted to the `top_k` most likely tokens.
    Generation stops early when every sequence has produced `eos_id` (which is kept).
    The model sees at most the last `context_size` tokens (default: its context length).
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_k is not None and top_k <= 0:
        raise ValueError(f"top_k must be a positive integer, got {top_k}")
    context_size = context_size or model.cfg.context_length
    was_training = model.training
    model.eval()
    finished = torch.zeros(idx.shape[0], dtype=torch.bool, device=idx.device)
    for _ in range(max_new_tokens):
        logits = model(idx[:, -context_size:])[:, -1, :]  # (b, V): only the last position predicts
        if top_k is not None:
            kth_largest = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]
            logits = logits.masked_fill(logits < kth_largest, float("-inf"))
        if temperature > 0:
            probs = torch.softmax(logits / temperature, dim=-1)
            next_id = torch.multinomial(probs, num_samples=1, generator=generator)  # (b, 1)
        else:
            next_id = logits.argmax(dim=-1, keepdim=True)  # (b, 1)
        if eos_id is not None:
            # A sequence that already ended keeps emitting eos_id so the batch stays rectangular.
            next_id = torch.where(finished.unsqueeze(1), torch.full_like(next_id, eos_id), next_id)
            finished |= next_id.squeeze(1) == eos_id
        idx = torch.cat([idx, next_id], dim=1)
        if eos_id is not None and bool(finished.all()):
            break
    model.train(was_training)
    return idx


def generate_text(model, prompt: str, max_new_tokens: int = 50, tokenizer=None, **kwargs) -> str:
    """Prompt in, prompt plus continuation out."""
    from gpt.tokenizer import END_OF_TEXT_ID, get_tokenizer, text_to_token_ids, token_ids_to_text

    tokenizer = tokenizer or get_tokenizer()
    device = next(model.parameters()).device
    idx = text_to_token_ids(prompt, tokenizer).to(device)
    kwargs.setdefault("eos_id", END_OF_TEXT_ID)
    out = generate(model, idx, max_new_tokens=max_new_tokens, **kwargs)
    return token_ids_to_text(out[0], tokenizer)
