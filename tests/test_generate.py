"""Text generation (gpt/generate.py): greedy decoding token for token equal to transformers'
on the same tiny checkpoint, top-k with k = 1 equal to greedy, <|endoftext|> stopping,
seeded sampling that repeats itself, and the KV cache: cached generation equal token for token
to uncached (greedy and sampled, both attention layouts, up to the context length), its logits
equal at every step (<= 1e-5), the cache emptied around every call, and a clear refusal past
the context length."""

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything below is local

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from gpt import END_OF_TEXT_ID, GPTConfig, GPTModel, convert_attention, generate, generate_text
from gpt.generate import next_token
from gpt.weights import load_gpt2

# The tests on the tiny GPT-2 are slow (they compare cached and uncached generation over whole
# contexts); those of next_token and generate_text on hand-made logits and stub models are fast.
slow = pytest.mark.slow

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


@slow
def test_greedy_is_deterministic_and_equals_transformers(models, prompt, free):
    ours, hf = models
    out = free
    assert out.shape == (2, 7 + NEW)
    assert torch.equal(out[:, :7], prompt)
    assert torch.equal(greedy(ours, prompt), out)
    ref = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=NEW, do_sample=False,
                      pad_token_id=END_OF_TEXT_ID, eos_token_id=END_OF_TEXT_ID)
    assert torch.equal(out, ref)


@slow
def test_fused_attention_generates_the_same_tokens(models, prompt, free, tmp_path):
    models[1].save_pretrained(tmp_path)
    assert torch.equal(greedy(load_gpt2(tmp_path, attention="fused"), prompt), free)


@slow
def test_top_k_1_with_temperature_is_greedy(models, prompt, free):
    sampled = generate(models[0], prompt, max_new_tokens=NEW, temperature=0.8, top_k=1,
                       generator=torch.Generator().manual_seed(0))
    assert torch.equal(sampled, free)


@slow
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


@slow
def test_seeded_sampling_repeats(models, prompt, free):
    def sample(seed):
        return generate(models[0], prompt, max_new_tokens=NEW, temperature=1.0, top_k=50,
                        generator=torch.Generator().manual_seed(seed))

    first = sample(123)
    assert torch.equal(sample(123), first)
    assert not torch.equal(sample(124), first)
    assert not torch.equal(first, free)


@slow
def test_bad_arguments(models, prompt):
    ours, _ = models
    with pytest.raises(ValueError, match="temperature"):
        generate(ours, prompt, max_new_tokens=1, temperature=-1.0)
    with pytest.raises(ValueError, match="top_k"):
        generate(ours, prompt, max_new_tokens=1, top_k=0)


@slow
def test_generate_text_round_trip(models):
    ours, _ = models
    text = generate_text(ours, "Hello, world.", max_new_tokens=5)
    assert text.startswith("Hello, world.") and len(text) > len("Hello, world.")


# ----------------------------------------------------------------------------- next_token on hand-made logits

ROWS = torch.tensor([[1.0, 4.0, 3.0, 2.0, 0.0]]).repeat(2000, 1)  # (b, V): 2000 rows, token 1 most likely


def test_next_token_greedy_is_the_argmax_of_each_row():
    """temperature 0: the argmax of every row, (b, 1), whatever top_k says and with no sampling
    (2000 identical rows: a sample would differ somewhere)."""
    logits = torch.tensor([[0.1, 2.0, -1.0, 0.5], [3.0, 0.0, 1.0, 2.9]])
    assert next_token(logits).tolist() == [[1], [0]]
    assert next_token(logits, 0.0, top_k=2).tolist() == [[1], [0]]
    assert torch.equal(next_token(ROWS), torch.ones(2000, 1, dtype=torch.long))


def test_next_token_samples_from_the_softmax_of_logits_over_temperature():
    """temperature 0.5: the very draws of torch.multinomial over softmax(logits / 0.5) with the
    same seeded generator; 1.0 and 0.5 give different draws (the temperature is applied)."""
    def reference(temperature, seed=5):
        probs = torch.softmax(ROWS / temperature, dim=-1)
        return torch.multinomial(probs, num_samples=1, generator=torch.Generator().manual_seed(seed))

    got = next_token(ROWS, 0.5, generator=torch.Generator().manual_seed(5))
    assert got.shape == (2000, 1)
    assert torch.equal(got, reference(0.5))
    assert not torch.equal(got, reference(1.0))
    at_one = next_token(ROWS, 1.0, generator=torch.Generator().manual_seed(5))
    assert torch.equal(at_one, reference(1.0))
    # Every token has a non-zero probability (the least likely 1.2 % at temperature 1): all five
    # are drawn, token 1 most often.
    counts = torch.bincount(at_one.flatten(), minlength=5)
    assert (counts > 0).all() and counts.argmax().item() == 1


def test_next_token_top_k_samples_only_the_k_largest():
    """top_k=2 leaves tokens 1 and 2 (logits 4 and 3), with probabilities softmax([4, 3]); a top_k
    larger than the vocabulary leaves every token."""
    gen = torch.Generator().manual_seed(9)
    got = next_token(ROWS, 1.0, top_k=2, generator=gen)
    assert set(got.flatten().tolist()) == {1, 2}
    masked = torch.tensor([[float("-inf"), 4.0, 3.0, float("-inf"), float("-inf")]]).repeat(2000, 1)
    expected = torch.multinomial(torch.softmax(masked, dim=-1), 1, generator=torch.Generator().manual_seed(9))
    assert torch.equal(got, expected)
    everything = next_token(ROWS, 1.0, top_k=7, generator=torch.Generator().manual_seed(9))
    assert torch.equal(everything, next_token(ROWS, 1.0, generator=torch.Generator().manual_seed(9)))
    assert set(everything.flatten().tolist()) == {0, 1, 2, 3, 4}


# ----------------------------------------------------------------------------- generate_text on stub models

class _Always(torch.nn.Module):
    """A stand-in GPT whose every position predicts token `token_id` (logits: 0, and 1 there)."""

    def __init__(self, token_id: int, vocab_size: int = 50257):
        super().__init__()
        self.cfg = GPTConfig.from_preset("gpt-tiny")  # generate reads cfg.context_length
        self.token_id, self.vocab_size = token_id, vocab_size
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # generate_text reads the device from a parameter

    def forward(self, idx):
        logits = torch.zeros(*idx.shape, self.vocab_size)
        logits[..., self.token_id] = 1.0
        return logits


class _Chars:
    """A toy tokenizer: one token per character, its code point."""

    def encode(self, text, allowed_special=()):
        return [ord(c) for c in text]

    def decode(self, ids):
        return "".join(chr(i) for i in ids)


def test_generate_text_uses_the_given_tokenizer_and_50_new_tokens_by_default():
    """The prompt is encoded and the result decoded with `tokenizer` (not GPT-2's); without
    max_new_tokens, 50 tokens are added ('!' is code point 33)."""
    assert generate_text(_Always(33), "Hi", tokenizer=_Chars()) == "Hi" + "!" * 50
    assert generate_text(_Always(33), "Hi", max_new_tokens=3, tokenizer=_Chars()) == "Hi!!!"


def test_generate_text_stops_at_end_of_text_unless_told_otherwise():
    """By default generation stops at <|endoftext|> (kept); keyword arguments reach generate, so
    eos_id=None keeps going and temperature/top_k sample."""
    eos_model = _Always(END_OF_TEXT_ID)
    assert generate_text(eos_model, "Hi", max_new_tokens=5) == "Hi<|endoftext|>"
    assert generate_text(eos_model, "Hi", max_new_tokens=5, eos_id=None) == "Hi" + "<|endoftext|>" * 5
    # top_k=1 with a temperature samples from one token: the same text; a negative temperature is refused.
    assert generate_text(_Always(33), "Hi", max_new_tokens=4, tokenizer=_Chars(), temperature=1.0, top_k=1) == "Hi!!!!"
    with pytest.raises(ValueError, match="temperature must be >= 0, got -1.0"):
        generate_text(_Always(33), "Hi", max_new_tokens=4, tokenizer=_Chars(), temperature=-1.0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_generate_text_moves_the_prompt_to_the_model_s_device():
    """A model on the GPU gets its prompt there too: the same text as on the CPU (greedy)."""
    model = GPTModel(GPTConfig.from_preset("gpt-tiny", drop_rate=0.0))
    on_cpu = generate_text(model, "Hello", max_new_tokens=5, eos_id=None)
    assert generate_text(model.to("cuda"), "Hello", max_new_tokens=5, eos_id=None) == on_cpu


# ----------------------------------------------------------------------------- the KV cache

CONTEXT = TINY["n_positions"]  # 64


@pytest.fixture(scope="module", params=["separate", "fused"])
def layout_model(request, models):
    """Our tiny GPT-2 in each attention layout (the same function)."""
    return convert_attention(models[0], request.param)


@slow
def test_cached_greedy_equals_uncached_up_to_the_context_length(layout_model, prompt):
    new = CONTEXT - prompt.shape[1]  # prompt + new tokens fill the context exactly
    uncached = generate(layout_model, prompt, max_new_tokens=new)
    cached = generate(layout_model, prompt, max_new_tokens=new, use_cache=True)
    assert cached.shape == (2, CONTEXT)
    assert torch.equal(cached, uncached)


@slow
def test_cached_sampling_equals_uncached(layout_model, prompt):
    def sample(use_cache):
        return generate(layout_model, prompt, max_new_tokens=CONTEXT - prompt.shape[1], temperature=1.0,
                        top_k=50, generator=torch.Generator().manual_seed(123), use_cache=use_cache)

    cached = sample(True)
    assert torch.equal(cached, sample(False))
    assert not torch.equal(cached, generate(layout_model, prompt, max_new_tokens=CONTEXT - 7))  # not greedy


@slow
def test_cached_logits_equal_uncached_at_every_step(layout_model, prompt):
    """The prompt in one cached call, then one token per call: each step's logits are the last
    position's logits of the whole sequence run without the cache."""
    model = layout_model
    seq = generate(model, prompt, max_new_tokens=CONTEXT - prompt.shape[1])  # (2, 64)
    T = prompt.shape[1]
    model.reset_kv_cache()
    with torch.no_grad():
        torch.testing.assert_close(model(prompt, use_cache=True), model(prompt), rtol=0, atol=1e-5)
        assert model.current_pos == T
        for t in range(T, CONTEXT):
            cached = model(seq[:, t:t + 1], use_cache=True)  # (2, 1, V)
            torch.testing.assert_close(cached[:, -1], model(seq[:, :t + 1])[:, -1], rtol=0, atol=1e-5)
        assert model.current_pos == CONTEXT
        assert model.trf_blocks[0].att.cache_k.shape == (2, 4, CONTEXT, 8)  # (b, H, P, hd)
        with pytest.raises(ValueError, match="the KV cache holds 64 tokens and 1 more would pass the model's "
                                             "context_length 64; call reset_kv_cache()"):
            model(seq[:, :1], use_cache=True)
    model.reset_kv_cache()
    assert model.current_pos == 0 and all(b.att.cache_k is None for b in model.trf_blocks)


@slow
def test_the_cache_is_emptied_before_and_after_every_call(layout_model, prompt, monkeypatch):
    model = layout_model
    expected = generate(model, prompt, max_new_tokens=NEW)
    with torch.no_grad():
        model(prompt[:, :3], use_cache=True)  # a stale cache, left by hand
    assert torch.equal(generate(model, prompt, max_new_tokens=NEW, use_cache=True), expected)
    assert model.current_pos == 0 and all(b.att.cache_k is None and b.att.cache_v is None for b in model.trf_blocks)
    assert torch.equal(generate(model, prompt, max_new_tokens=NEW, use_cache=True), expected)  # twice: the same

    def fail_at_step_3(logits, *args, _calls=[]):
        _calls.append(1)
        if len(_calls) == 3:
            raise RuntimeError("stopped")
        return logits.argmax(dim=-1, keepdim=True)

    # sys.modules: gpt/__init__.py exports the function generate under the module's name
    monkeypatch.setattr(sys.modules["gpt.generate"], "next_token", fail_at_step_3)
    with pytest.raises(RuntimeError, match="stopped"):
        generate(model, prompt, max_new_tokens=NEW, use_cache=True)
    assert model.current_pos == 0 and model.trf_blocks[0].att.cache_k is None  # emptied after an error too


@slow
def test_cached_generation_refuses_to_pass_the_context_length(models, prompt):
    ours, _ = models
    with pytest.raises(ValueError, match=r"the prompt's 7 tokens plus max_new_tokens=58 make 65, more than the "
                                         r"context length 64; ask for at most 57 new tokens, or use use_cache=False"):
        generate(ours, prompt, max_new_tokens=CONTEXT - 6, use_cache=True)
    with pytest.raises(ValueError, match="context length 16; ask for at most 9 new tokens"):
        generate(ours, prompt, max_new_tokens=10, context_size=16, use_cache=True)
    assert ours.current_pos == 0  # refused before anything ran
    # Without the cache the window slides: 58 new tokens are fine.
    assert generate(ours, prompt, max_new_tokens=CONTEXT - 6).shape == (2, CONTEXT + 1)


@slow
def test_wrapped_attention_is_refused_with_use_cache(models, prompt):
    """An adapter or prefix tuning replaces a block's att by a wrapper that knows no cache."""

    class Wrapper(torch.nn.Module):
        def __init__(self, att):
            super().__init__()
            self.att = att

        def forward(self, x):
            return self.att(x)

    model = convert_attention(models[0], "separate")
    model.trf_blocks[1].att = Wrapper(model.trf_blocks[1].att)
    expected = generate(models[0], prompt, max_new_tokens=3)
    assert torch.equal(generate(model, prompt, max_new_tokens=3), expected)  # uncached: the wrapper is called
    with pytest.raises(ValueError, match="use_cache needs gpt/attention.py's attention modules, but block 1's att "
                                         "is a Wrapper .* generate with use_cache=False"):
        generate(model, prompt, max_new_tokens=3, use_cache=True)
