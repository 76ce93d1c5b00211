"""Solutions to the exercises of chapter 6 (notebooks/06_lora_layers.ipynb): LoRA layers.

Kept outside the notebooks so that a class can hand the notebooks out without the answers.
Each function returns the numbers its answer rests on (the docstring gives the answer);
tests/test_solutions_ch06.py checks them.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from gpt.config import GPTConfig
from gpt.model import GPTModel
from gpt.params import count_parameters
from lora import (FusedQKVWithLoRA, LinearWithLoRA, LoraConfig, apply_lora, lora_trainable_count, merge_lora,
                  unmerge_lora)


def exercise_6_1(preset: str = "gpt2-medium") -> dict[str, int]:
    """LoRA on GPT-2 medium (24 blocks, d = 1024): {"query_value": r = 8 on query and value,
    "all_linear": r = 16 on every linear layer of the blocks + a new 2-class head trained in full}.

    Answer: r = 8 on query and value: 24 blocks x 2 layers x 8 (1024 + 1024) = 786,432 trainable.
    all-linear at r = 16: per block 4 x 16 (1024 + 1024) for q, k, v, out_proj = 131,072 plus
    16 (1024 + 4096) x 2 for the feed-forward layers = 163,840, so 294,912 per block and 7,077,888 in all;
    the new 2-class head trained in full adds 1024 x 2 + 2 = 2,050: 7,079,938. A model built on the meta
    device (no memory) counts the same as lora_trainable_count, which prices on paper (tests check all three).
    """
    cfg = GPTConfig.from_preset(preset)
    d, ff, n = cfg.emb_dim, 4 * cfg.emb_dim, cfg.n_layers
    return {"query_value": n * 2 * 8 * (d + d),
            "all_linear": n * (4 * 16 * (d + d) + 2 * 16 * (d + ff)) + d * 2 + 2}


def wrong_exercise_6_1(preset: str = "gpt2-medium") -> dict[str, int]:
    """Forgets the new 2-class head, which all-linear does not wrap but modules_to_save trains in full."""
    out = exercise_6_1(preset)
    cfg = GPTConfig.from_preset(preset)
    out["all_linear"] -= cfg.emb_dim * 2 + 2
    return out


def built_counts_6_1(preset: str = "gpt2-medium") -> dict[str, int]:
    """Exercise 6.1's two counts, on paper (lora_trainable_count) and on a model built on the meta device."""
    cfg = GPTConfig.from_preset(preset, qkv_bias=True, tie_weights=True)
    qv = LoraConfig(rank=8, alpha=16, targets=("query", "value"))
    al = LoraConfig(rank=16, alpha=16, targets="all-linear", modules_to_save=("out_head",))
    with torch.device("meta"):
        m_qv = apply_lora(GPTModel(cfg), qv)
        m_al = GPTModel(cfg)
        m_al.out_head = nn.Linear(cfg.emb_dim, 2)
    apply_lora(m_al, al)
    return {"qv_on_paper": lora_trainable_count(cfg, qv), "qv_built": count_parameters(m_qv, trainable_only=True),
            "all_linear_on_paper": lora_trainable_count(cfg, al, head_out_features=2, head_bias=True),
            "all_linear_built": count_parameters(m_al, trainable_only=True)}


def exercise_6_2(d: int = 32, r: int = 4, seed: int = 123) -> dict[str, float | int]:
    """Fused q, k, v at rank r == one rank-3r LoRA on qkv with a block-diagonal B.

    Answer: the fused branch computes codes = x [A_q | A_k | A_v] (width 3r), then adds codes_q B_q,
    codes_k B_k, codes_v B_v into the three output slices. A plain LoRA of rank 3r on the whole qkv
    layer computes x A' B' with A' (d, 3r) and B' (3r, 3d); put A' = [A_q | A_k | A_v] and B' =
    blockdiag(B_q, B_k, B_v) and it is the same function (max difference ~1e-7). The counts differ:
    the fused branch trains 3 r (d + d) = 6 r d numbers, the plain rank-3r LoRA 3r (d + 3d) = 12 r d,
    because its B also has the off-diagonal blocks (how q's code feeds k and v), which the fused
    version fixes at zero. This is also how lora/peft_format.py exports a fused adapter to PEFT.
    """
    g = torch.Generator().manual_seed(seed)
    qkv = nn.Linear(d, 3 * d, bias=False)
    with torch.no_grad():
        qkv.weight.copy_(torch.randn(3 * d, d, generator=g) / math.sqrt(d))
    fused = FusedQKVWithLoRA(qkv, rank=r, alpha=2 * r, enable=(True, True, True))
    branch = fused.lora["default"]
    with torch.no_grad():
        branch.lora_B.copy_(torch.randn(3, r, d, generator=g) * 0.1)
    plain_linear = nn.Linear(d, 3 * d, bias=False)
    plain_linear.load_state_dict(qkv.state_dict())
    plain = LinearWithLoRA(plain_linear, rank=3 * r, alpha=2 * r * 3)  # same scale alpha/r = 2
    with torch.no_grad():
        plain.lora["default"].lora_A.copy_(branch.lora_A)  # (d, 3r)
        plain.lora["default"].lora_B.copy_(torch.block_diag(*branch.lora_B))  # (3r, 3d), block-diagonal
    x = torch.randn(5, 7, d, generator=g)
    return {
        "max_diff": (fused(x) - plain(x)).abs().max().item(),
        "fused_params": sum(p.numel() for p in branch.parameters()),
        "plain_rank_3r_params": sum(p.numel() for p in plain.lora.parameters()),
    }


def wrong_exercise_6_2(d: int = 32, r: int = 4, seed: int = 123) -> dict[str, float | int]:
    """Counts the plain LoRA on the whole qkv layer at rank r instead of 3r."""
    out = exercise_6_2(d, r, seed)
    out["plain_rank_3r_params"] = r * (d + 3 * d)
    return out


def _round_trip_error(dtype: torch.dtype, cycles: int = 1, d: int = 256, r: int = 8, seed: int = 123,
                      unmerge: bool = True) -> float:
    """Largest |W - W_original| after `cycles` merge + unmerge cycles of one LoRA (alpha 16) on a (d, d) base weight
    of size 0.02 (randn x 0.02), A = randn x 0.05 and B = randn x 0.02 (as if trained), all drawn in that order from
    one generator seeded with `seed`."""
    g = torch.Generator().manual_seed(seed)
    linear = nn.Linear(d, d, bias=False)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(d, d, generator=g) * 0.02)
    linear = linear.to(dtype)
    layer = LinearWithLoRA(linear, rank=r, alpha=16)
    with torch.no_grad():  # A and B from the seeded generator too: the answer depends on nothing global
        layer.lora["default"].lora_A.copy_(torch.randn(d, r, generator=g) * 0.05)
        layer.lora["default"].lora_B.copy_(torch.randn(r, d, generator=g) * 0.02)
    before = layer.linear.weight.detach().clone()
    for _ in range(cycles):
        layer.merge("default")
        if unmerge:
            layer.unmerge("default")
    return (layer.linear.weight.float() - before.float()).abs().max().item()


def exercise_6_3(cycles: int = 1, d: int = 256, r: int = 8, seed: int = 123) -> dict[str, float]:
    """The round-trip error of `cycles` merge + unmerge cycles: {"float32": ..., "bfloat16": ...}, the largest
    |W - W_original| of a float32 and of a bf16 base weight.

    Answer: in float32, (W + dW) - dW returns W up to one rounding of W + dW: 7.5e-9 for weights of size
    0.02 (float32 keeps 24 bits). In bf16 the base weight keeps only 8 bits of mantissa, so W + dW is rounded
    to about 3 significant digits and subtracting dW does not give W back: 4.9e-4 here (2.5 % of a typical
    weight), 65,536 times the float32 error. In both dtypes the error does not grow with more switches: it is
    4.9e-4 after 1 cycle and after 100 (7.5e-9 in float32), because after the first round trip the weights sit on
    values that the next round trips reproduce. But the first switch has already changed the base for good. On a
    bf16 model, merge once for inference and keep it merged, or reload the base weights (or keep a float32 copy)
    to switch adapters; keep the adapters themselves in float32, as lora/ does.
    """
    return {"float32": _round_trip_error(torch.float32, cycles, d, r, seed),
            "bfloat16": _round_trip_error(torch.bfloat16, cycles, d, r, seed)}


def wrong_exercise_6_3(cycles: int = 1, d: int = 256, r: int = 8, seed: int = 123) -> dict[str, float]:
    """Forgets to unmerge: measures W + dW against W, the update itself, not the round trip."""
    return {"float32": _round_trip_error(torch.float32, cycles, d, r, seed, unmerge=False),
            "bfloat16": _round_trip_error(torch.bfloat16, cycles, d, r, seed, unmerge=False)}


def exercise_6_4(d_in: int = 768, d_out: int = 768, r: int = 16, seed: int = 123) -> dict[str, float]:
    """The book's init of A vs nn.Linear's, and what it changes at the first step: {"book_bound": the bound of
    kaiming_uniform_(A, a=sqrt(5)) on A (d_in, r), "linear_bound": nn.Linear's 1/sqrt(d_in), "grad_B_ratio":
    |dL/dB| with the book's init over |dL/dB| with nn.Linear's (same uniform draw, same x and dL/dy),
    "grad_A_norm": |dL/dA| at the first step with the book's init}.

    Answer: kaiming_uniform_(A, a=sqrt(5)) reads fan_in from A's SECOND dimension; on A (d_in, r)
    that is r, so the bound is 1/sqrt(r) = 0.25 at r = 16, instead of nn.Linear's 1/sqrt(d_in) =
    0.036 for d_in = 768: sqrt(768 / 16) = 6.9 times wider. What does not change: B = 0, so the initial
    output (exactly the base model's) and the initial gradient of A (proportional to B, so zero) are the
    same. What changes: the first gradient of B is scale * (x A)^T dL/dy, proportional to A, so it is
    6.9 times larger (with plain SGD a 6.9x larger first step; AdamW normalises each entry's step, so
    B moves about as far per step either way), and for the same B the update x A B is 6.9 times
    larger: the book's adapter moves the model faster, like a larger learning rate. Computed with one
    uniform draw scaled to each bound, so the ratio is exact.
    """
    out = init_comparison_6_4(d_in, d_out, r, seed)
    return {"book_bound": out["book_bound"], "linear_bound": out["linear_bound"], "grad_B_ratio": out["grad_B_ratio"],
            "grad_A_norm": out["book_grad_A_norm"]}


def init_comparison_6_4(d_in: int = 768, d_out: int = 768, r: int = 16, seed: int = 123) -> dict[str, float]:
    """Exercise 6.4 in detail: bounds, first-step outputs and gradient norms of both inits."""
    g = torch.Generator().manual_seed(seed)
    U = torch.rand(d_in, r, generator=g) * 2 - 1  # uniform(-1, 1)
    probe = torch.empty(d_in, r)
    nn.init.kaiming_uniform_(probe, a=math.sqrt(5))  # the book's call
    book_bound, linear_bound = 1 / math.sqrt(r), 1 / math.sqrt(d_in)
    x = torch.randn(4, 10, d_in, generator=g)
    grad_out = torch.randn(4, 10, d_out, generator=g)
    out = {}
    for name, bound in (("book", book_bound), ("linear", linear_bound)):
        A = (U * bound).requires_grad_(True)
        B = torch.zeros(r, d_out, requires_grad=True)
        y = (16 / r) * (x @ A @ B)
        y.backward(grad_out)
        out[f"{name}_output_abs_max"] = y.abs().max().item()
        out[f"{name}_grad_A_norm"] = A.grad.norm().item()
        out[f"{name}_grad_B_norm"] = B.grad.norm().item()
    out.update(book_bound=book_bound, linear_bound=linear_bound, probe_abs_max=probe.abs().max().item(),
               grad_B_ratio=out["book_grad_B_norm"] / out["linear_grad_B_norm"])
    return out


def wrong_exercise_6_4(d_in: int = 768, d_out: int = 768, r: int = 16, seed: int = 123) -> dict[str, float]:
    """Assumes kaiming_uniform_ on A (d_in, r) reads d_in as the fan-in, so both inits look the same."""
    return {"book_bound": 1 / math.sqrt(d_in), "linear_bound": 1 / math.sqrt(d_in), "grad_B_ratio": 1.0,
            "grad_A_norm": 0.0}


def exercise_6_5(seed: int = 123) -> dict:
    """LoRA on a tied output head (gpt-tiny: out_head.weight IS tok_emb.weight).

    Answer: LoRA never writes into the frozen weight during training: the update lives in A and B,
    so one AdamW step changes the logits and leaves the shared tensor, hence the token embedding,
    bit-for-bit equal. Merging would add scale * A B into that shared tensor, which would silently
    change the input embedding as well; merge_lora refuses with a ValueError that names the tie. Keep
    such an adapter unmerged (its forward pass is correct), or untie the head explicitly first.
    """
    torch.manual_seed(seed)
    model = GPTModel(GPTConfig.from_preset("gpt-tiny", drop_rate=0.0))
    assert model.out_head.weight is model.tok_emb.weight
    apply_lora(model, LoraConfig(rank=4, alpha=8, targets=("query", "out_head")))
    emb_before = model.tok_emb.weight.detach().clone()
    x = torch.randint(0, model.cfg.vocab_size, (2, 12))
    logits_before = model(x).detach()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    loss = nn.functional.cross_entropy(model(x)[:, :-1].flatten(0, 1), x[:, 1:].flatten())
    loss.backward()
    opt.step()
    try:
        merge_lora(model)
        error = None
        unmerge_lora(model)
    except ValueError as err:
        error = str(err)
    return {
        "embedding_unchanged": torch.equal(model.tok_emb.weight, emb_before),
        "still_tied": model.out_head.linear.weight is model.tok_emb.weight,
        "logits_changed_by": (model(x) - logits_before).abs().max().item(),
        "merge_error": error,
    }


def wrong_exercise_6_5(seed: int = 123) -> dict:
    """Trains the tied head's weight itself (unfreezes it) instead of only the LoRA branch: the embedding moves."""
    torch.manual_seed(seed)
    model = GPTModel(GPTConfig.from_preset("gpt-tiny", drop_rate=0.0))
    apply_lora(model, LoraConfig(rank=4, alpha=8, targets=("query", "out_head")))
    model.out_head.linear.weight.requires_grad_(True)
    emb_before = model.tok_emb.weight.detach().clone()
    x = torch.randint(0, model.cfg.vocab_size, (2, 12))
    logits_before = model(x).detach()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    nn.functional.cross_entropy(model(x)[:, :-1].flatten(0, 1), x[:, 1:].flatten()).backward()
    opt.step()
    return {"embedding_unchanged": torch.equal(model.tok_emb.weight, emb_before),
            "still_tied": model.out_head.linear.weight is model.tok_emb.weight,
            "logits_changed_by": (model(x) - logits_before).abs().max().item(),
            "merge_error": None}


# ---------------------------------------------------------------------------------------------------------------
# What students really write instead (tests/test_exercise_checks.py: each check must reject both).

def typed_in_exercise_6_1(preset: str = "gpt2-medium") -> dict[str, int]:
    """Types in GPT-2 medium's two counts (and GPT-2 small's 294,912, printed by the chapter) instead of computing."""
    if preset == "gpt2-small":
        return {"query_value": 294_912, "all_linear": 2_655_746}
    return {"query_value": 786_432, "all_linear": 7_079_938}


def shortcut_exercise_6_1(preset: str = "gpt2-medium") -> dict[str, int]:
    """Asks lora_trainable_count instead of counting by hand (the statement forbids it: it is what the check uses)."""
    cfg = GPTConfig.from_preset(preset)
    return {"query_value": lora_trainable_count(cfg, LoraConfig(rank=8, targets=("query", "value"))),
            "all_linear": lora_trainable_count(cfg, LoraConfig(rank=16, targets="all-linear",
                                                               modules_to_save=("out_head",)),
                                               head_out_features=2, head_bias=True)}


def typed_in_exercise_6_2(d: int = 32, r: int = 4, seed: int = 123) -> dict[str, float | int]:
    """Types in the statement's setting's answer (d = 32, r = 4: no difference, 768 and 1,536) for every call."""
    return {"max_diff": 0.0, "fused_params": 768, "plain_rank_3r_params": 1_536}


def shortcut_exercise_6_2(d: int = 32, r: int = 4, seed: int = 123) -> dict[str, float | int]:
    """Counts right but never builds and runs the two layers: states max_diff = 0.0 from the algebra."""
    return {"max_diff": 0.0, "fused_params": 3 * r * (d + d), "plain_rank_3r_params": 3 * r * (d + 3 * d)}


def typed_in_exercise_6_3(cycles: int = 1, d: int = 256, r: int = 8, seed: int = 123) -> dict[str, float]:
    """Types in section 6.6's float32 drift (7.45e-09) and one bf16 step (4.9e-4) for every setting."""
    return {"float32": 7.45e-09, "bfloat16": 4.9e-4}


def shortcut_exercise_6_3(cycles: int = 1, d: int = 256, r: int = 8, seed: int = 123) -> dict[str, float]:
    """Runs the round trip in float32 only and casts the weights to bf16 afterwards, instead of a bf16 base layer."""
    g = torch.Generator().manual_seed(seed)
    linear = nn.Linear(d, d, bias=False)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(d, d, generator=g) * 0.02)
    layer = LinearWithLoRA(linear, rank=r, alpha=16)
    with torch.no_grad():
        layer.lora["default"].lora_A.copy_(torch.randn(d, r, generator=g) * 0.05)
        layer.lora["default"].lora_B.copy_(torch.randn(r, d, generator=g) * 0.02)
    before = layer.linear.weight.detach().clone()
    for _ in range(cycles):
        layer.merge("default")
        layer.unmerge("default")
    after = layer.linear.weight.detach()
    return {"float32": (after - before).abs().max().item(),
            "bfloat16": (after.bfloat16().float() - before.bfloat16().float()).abs().max().item()}


def typed_in_exercise_6_4(d_in: int = 768, d_out: int = 768, r: int = 16, seed: int = 123) -> dict[str, float]:
    """Types in the statement's setting's numbers (d_in = 768, r = 16) for every call."""
    return {"book_bound": 0.25, "linear_bound": 1 / math.sqrt(768), "grad_B_ratio": math.sqrt(768 / 16),
            "grad_A_norm": 0.0}


def shortcut_exercise_6_4(d_in: int = 768, d_out: int = 768, r: int = 16, seed: int = 123) -> dict[str, float]:
    """Writes the gradients' ratio and A's zero gradient from the formulas, without running backward()."""
    book, linear = 1 / math.sqrt(r), 1 / math.sqrt(d_in)
    return {"book_bound": book, "linear_bound": linear, "grad_B_ratio": book / linear, "grad_A_norm": 0.0}


def typed_in_exercise_6_5(seed: int = 123) -> dict:
    """Types in the expected verdicts and a refusal message in its own words instead of the one merge_lora raises."""
    return {"embedding_unchanged": True, "still_tied": True, "logits_changed_by": 0.01,
            "merge_error": "merge_lora refuses: out_head is tied to the token embedding"}


def shortcut_exercise_6_5(seed: int = 123) -> dict:
    """No shortcut to forbid; a second plausible mistake: skips the training step (B is still zero), so the logits
    have not changed and the question about the step is not answered."""
    torch.manual_seed(seed)
    model = GPTModel(GPTConfig.from_preset("gpt-tiny", drop_rate=0.0))
    apply_lora(model, LoraConfig(rank=4, alpha=8, targets=("query", "out_head")))
    emb_before = model.tok_emb.weight.detach().clone()
    x = torch.randint(0, model.cfg.vocab_size, (2, 12))
    logits_before = model(x).detach()
    try:
        merge_lora(model)
        error = None
    except ValueError as err:
        error = str(err)
    return {"embedding_unchanged": torch.equal(model.tok_emb.weight, emb_before),
            "still_tied": model.out_head.linear.weight is model.tok_emb.weight,
            "logits_changed_by": (model(x) - logits_before).abs().max().item(), "merge_error": error}
