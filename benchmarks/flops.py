"""Counting a training step's floating-point operations analytically, layer by layer.

A matmul (N x d_in) @ (d_in x d_out) costs 2 * N * d_in * d_out FLOPs (a multiply and an add
per term). For a linear layer applied to N tokens:

    forward                          2 * N * d_in * d_out
    backward, gradient of the input  2 * N * d_in * d_out   (needed to reach anything trainable below)
    backward, gradient of the weight 2 * N * d_in * d_out   (only if the weight is trained)

so a trained weight costs 6 FLOPs per parameter per token (Kaplan et al. 2020, "Scaling laws",
section 2.1; the "6 N D" rule) and a FROZEN one still costs 4: LoRA skips the weight gradients
of the frozen model, not the activation gradients, because the LoRA branches in the lower
layers need the gradient to flow through every layer above them. A LoRA branch (A: d_in x r,
B: r x d_out) is two small trained matmuls: 6 * N * r * (d_in + d_out).

Attention's two batched matmuls (Q K^T and weights @ V) have no weights: 4 * N * T_k * d forward
(T_k keys per query, d = emb_dim) and twice that backward; counted in full although the causal
mask makes half of the scores unused (as PaLM's MFU count does; SDPA kernels may skip the masked
half, which then shows up as a higher utilisation).

Not counted: layer norms, GELU, softmax, dropout, residual adds, the embedding lookup and the
optimizer (all elementwise: a few % of the FLOPs but memory-bound, so they cost more time
than their FLOPs suggest; that gap is part of what model FLOPs utilisation measures).
Approximation: every linear layer is assumed to need its input's gradient, which is slightly
high for the bottom layers of a LoRA model (e.g. block 0's frozen W_key) and exact otherwise.
"""

from __future__ import annotations

import torch
from torch import nn


def _linear_shape(module: nn.Module) -> tuple[int, int] | None:
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if type(module).__name__ == "Conv1D" and getattr(module, "weight", None) is not None:  # transformers' GPT-2
        d_in, d_out = module.weight.shape
        return d_in, d_out
    return None


def _is_lora_branch(module: nn.Module) -> bool:
    return isinstance(getattr(module, "lora_A", None), nn.Parameter) and isinstance(getattr(module, "lora_B", None),
                                                                                   nn.Parameter)


@torch.no_grad()
def training_step_flops(model: nn.Module, input_ids: torch.Tensor, forward=None) -> dict[str, int]:
    """Matmul FLOPs of one forward + backward pass of `model` on `input_ids` (b, T).

    The count follows what actually runs: one forward pass is made with hooks on every linear
    layer, LoRA branch and attention module, which see the number of tokens and keys (prefix
    tuning's extra keys included) and which weights are trained. Layers that exist but do not
    run (the frozen original of a module PEFT-style `modules_to_save` copied) are not counted.
    forward: how to call the model (default `model(input_ids)`).

    Returns {"forward", "backward", "total", "linear_forward", "attention_forward",
    "trained_params", "frozen_params"} (parameters of the linear layers and branches that ran).
    """
    from gpt.attention import _CausalSelfAttention

    counts = dict(forward=0, backward=0, linear_forward=0, attention_forward=0)
    trained, frozen = {}, {}

    def on_linear(module, args, output):
        d_in, d_out = _linear_shape(module)
        n = args[0].numel() // d_in  # tokens
        matmul = 2 * n * d_in * d_out
        weight_trained = module.weight.requires_grad
        counts["forward"] += matmul
        counts["linear_forward"] += matmul
        counts["backward"] += matmul * (2 if weight_trained else 1)
        (trained if weight_trained else frozen)[id(module)] = d_in * d_out

    def on_branch(module, args, output):
        # x @ A (d_in -> n*r), then B ((n,) r -> d): every parameter is used once per token.
        n = args[0].numel() // module.lora_A.shape[0]
        params = module.lora_A.numel() + module.lora_B.numel()
        counts["forward"] += 2 * n * params
        counts["linear_forward"] += 2 * n * params
        counts["backward"] += 4 * n * params
        trained[id(module)] = params

    def on_attention(module, args, kwargs, output):
        x = args[0]  # (b, T, d)
        prefix = kwargs.get("prefix_kv")
        keys = x.shape[1] + (prefix[0].shape[2] if prefix is not None else 0)
        att = 4 * x.shape[0] * x.shape[1] * keys * module.d_out  # Q K^T and weights @ V
        counts["forward"] += att
        counts["attention_forward"] += att
        counts["backward"] += 2 * att

    handles = []
    for module in model.modules():
        if _linear_shape(module) is not None:
            handles.append(module.register_forward_hook(on_linear))
        elif _is_lora_branch(module):
            handles.append(module.register_forward_hook(on_branch))
        elif isinstance(module, _CausalSelfAttention):
            handles.append(module.register_forward_hook(on_attention, with_kwargs=True))
    try:
        (forward or model)(input_ids)
    finally:
        for h in handles:
            h.remove()
    counts["total"] = counts["forward"] + counts["backward"]
    counts["trained_params"] = sum(trained.values())
    counts["frozen_params"] = sum(frozen.values())
    return counts


def forward_flops(model: nn.Module, input_ids: torch.Tensor) -> int:
    """Matmul FLOPs of one forward pass (inference)."""
    return training_step_flops(model, input_ids)["forward"]
