"""Text generation (gpt/generate.py): greedy decoding token for token equal to transformers'
on the same tiny checkpoint, top-k with k = 1 equal to greedy, <|endoftext|> stopping, and
seeded sampling that repeats itself."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything below is local

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from gpt import END_OF_TEXT_ID, generate, generate_text
from gpt.weights import load_gpt2

TINY = dict(n_embd=32, n_layer=2, n_head=4, n_positions=64, vocab_size=50257)
NEW = 12  # tokens to generate


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(ours, transformers') holding the same random tiny GPT-2, both in eval mode."""
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(**TINY))
    with torch.no_grad():
        for p in hf.parameters():  # non-trivial biases and LayerNorm scales
            p.add_(0.1 * torch.randn_like(p))
    path = tmp_path_factory.mktemp("tiny-gpt2")
    hf.save_pretrained(path)
    return load_gpt2(path), GPT2LMHeadModel.from_pretrained(path).eval()


@pytest.fixture(scope="module")
def prompt():
    return torch.randint(0, 50000, (2, 7), generator=torch.Generator().manual_seed(3))  # (b, T)


def greedy(model, prompt, **kwargs):
    return generate(model, prompt, max_new_tokens=NEW, **kwargs)


@pytest.fixture(scope="module")
def free(models, prompt):
    """Our greedy continuation of `prompt`, no eos: (2, 7 + NEW)."""
    return greedy(models[0], prompt)


def test_greedy_is_deterministic_and_equals_transformers(models, prompt, free):
    ours, hf = models
    out = free
    assert out.shape == (2, 7 + NEW)
    assert torch.equal(out[:, :7], prompt)
    assert torch.equal(greedy(ours, prompt), out)
    ref = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=NEW, do_sample=False,
                      pad_token_id=END_OF_TEXT_ID, eos_token_id=END_OF_TEXT_ID)
    assert torch.equal(out, ref)


def test_fused_attention_generates_the_same_tokens(models, prompt, free, tmp_path):
    models[1].save_pretrained(tmp_path)
    assert torch.equal(greedy(load_gpt2(tmp_path, attention="fused"), prompt), free)


def test_top_k_1_with_temperature_is_greedy(models, prompt, free):
    sampled = generate(models[0], prompt, max_new_tokens=NEW, temperature=0.8, top_k=1,
                       generator=torch.Generator().manual_seed(0))
    assert torch.equal(sampled, free)


def test_eos_stops_early_and_pads_finished_rows(models, prompt, free):
    ours, _ = models
    # Declare "end of text" a token that row 0 generates (not as its first new token) and row 1
    # never does; find where it first appears in row 0.
    row0, row1 = free[0, 7:].tolist(), free[1, 7:].tolist()
    k = next(k for k in range(1, NEW) if row0.index(row0[k]) == k and row0[k] not in row1)
    eos = row0[k]
    out = greedy(ours, prompt[:1], eos_id=eos)
    assert torch.equal(out[0], free[0, :7 + k + 1])  # stopped right after eos, eos kept
    # In a batch, generation goes on until every row has ended; a row that ended repeats eos.
    both = greedy(ours, prompt, eos_id=eos)
    assert both.shape == (2, 7 + NEW)
    assert torch.equal(both[0, :7 + k + 1], free[0, :7 + k + 1])
    assert (both[0, 7 + k:] == eos).all()
    assert torch.equal(both[1], free[1])


def test_seeded_sampling_repeats(models, prompt, free):
    def sample(seed):
        return generate(models[0], prompt, max_new_tokens=NEW, temperature=1.0, top_k=50,
                        generator=torch.Generator().manual_seed(seed))

    first = sample(123)
    assert torch.equal(sample(123), first)
    assert not torch.equal(sample(124), first)
    assert not torch.equal(first, free)


def test_bad_arguments(models, prompt):
    ours, _ = models
    with pytest.raises(ValueError, match="temperature"):
        generate(ours, prompt, max_new_tokens=1, temperature=-1.0)
    with pytest.raises(ValueError, match="top_k"):
        generate(ours, prompt, max_new_tokens=1, top_k=0)


def test_generate_text_round_trip(models):
    ours, _ = models
    text = generate_text(ours, "Hello, world.", max_new_tokens=5)
    assert text.startswith("Hello, world.") and len(text) > len("Hello, world.")
