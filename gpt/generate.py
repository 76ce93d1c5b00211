"""Autoregressive text generation: greedy, temperature sampling and top-k, stopping at
<|endoftext|>, with or without a KV cache.

Without the cache every step runs the model over the whole sequence so far (the book's
`generate_text_simple`); with `use_cache=True` the prompt runs once and each later step feeds
only the newest token, reusing the keys and values of the earlier ones (the book's chapter-4
bonus KV cache; gpt/attention.py). Both give the same tokens: the logits agree to float rounding.

Shape legend: b = batch, T = prompt tokens, V = vocab_size.
"""

from __future__ import annotations

import torch


@torch.no_grad()
def generate(model, idx, max_new_tokens: int, context_size: int | None = None, temperature: float = 0.0,
             top_k: int | None = None, eos_id: int | None = None, generator: torch.Generator | None = None,
             use_cache: bool = False):
    """Extend `idx` (b, T) by up to `max_new_tokens` tokens; returns (b, T + new).

    temperature == 0 picks the most likely token (greedy); temperature > 0 samples from
    softmax(logits / temperature), optionally restricted to the `top_k` most likely tokens.
    Generation stops early when every sequence has produced `eos_id` (which is kept).
    The model sees at most the last `context_size` tokens (default: its context length).

    use_cache=True keeps every token's keys and values in the model's KV cache, emptied before
    and after the call. Cached positions cannot slide, so the prompt and the new tokens must fit
    in `context_size` together (T + max_new_tokens <= context_size); without the cache the window
    slides over the last `context_size` tokens instead.
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_k is not None and top_k <= 0:
        raise ValueError(f"top_k must be a positive integer, got {top_k}")
    context_size = context_size or model.cfg.context_length
    T = idx.shape[1]
    if use_cache and T + max_new_tokens > context_size:
        raise ValueError(
            f"cached generation keeps every token in place: the prompt's {T} tokens plus max_new_tokens="
            f"{max_new_tokens} make {T + max_new_tokens}, more than the context length {context_size}; "
            f"ask for at most {max(context_size - T, 0)} new tokens, or use use_cache=False, which slides the "
            f"window over the last {context_size} tokens"
        )
    was_training = model.training
    model.eval()
    if use_cache:
        model.reset_kv_cache()  # nothing left over from an earlier call
    finished = torch.zeros(idx.shape[0], dtype=torch.bool, device=idx.device)
    try:
        for step in range(max_new_tokens):
            if not use_cache:
                logits = model(idx[:, -context_size:])[:, -1, :]  # (b, V): only the last position predicts
            elif step == 0:
                logits = model(idx, use_cache=True)[:, -1, :]  # the prompt fills the cache
            else:
                logits = model(idx[:, -1:], use_cache=True)[:, -1, :]  # only the newest token runs
            next_id = next_token(logits, temperature, top_k, generator)  # (b, 1)
            if eos_id is not None:
                # A sequence that already ended keeps emitting eos_id so the batch stays rectangular.
                next_id = torch.where(finished.unsqueeze(1), torch.full_like(next_id, eos_id), next_id)
                finished |= next_id.squeeze(1) == eos_id
            idx = torch.cat([idx, next_id], dim=1)
            if eos_id is not None and bool(finished.all()):
                break
    finally:
        if use_cache:
            model.reset_kv_cache()  # frees the memory; the next call starts clean even after an error
        model.train(was_training)
    return idx


def next_token(logits, temperature: float = 0.0, top_k: int | None = None,
               generator: torch.Generator | None = None):
    """The next token id from the last position's logits (b, V): greedy when temperature == 0,
    else sampled from softmax(logits / temperature) over the `top_k` most likely. Returns (b, 1)."""
    if top_k is not None:
        kth_largest = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]
        logits = logits.masked_fill(logits < kth_largest, float("-inf"))
    if temperature > 0:
        probs = torch.softmax(logits / temperature, dim=-1)
        return torch.multinomial(probs, num_samples=1, generator=generator)  # (b, 1)
    return logits.argmax(dim=-1, keepdim=True)  # (b, 1)


def generate_text(model, prompt: str, max_new_tokens: int = 50, tokenizer=None, **kwargs) -> str:
    """Prompt in, prompt plus continuation out."""
    from gpt.tokenizer import END_OF_TEXT_ID, get_tokenizer, text_to_token_ids, token_ids_to_text

    tokenizer = tokenizer or get_tokenizer()
    device = next(model.parameters()).device
    idx = text_to_token_ids(prompt, tokenizer).to(device)
    kwargs.setdefault("eos_id", END_OF_TEXT_ID)
    out = generate(model, idx, max_new_tokens=max_new_tokens, **kwargs)
    return token_ids_to_text(out[0], tokenizer)
