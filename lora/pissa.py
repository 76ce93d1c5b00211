"""PiSSA: LoRA initialised from the principal singular values and vectors of the frozen weight.

Meng et al. 2024, "PiSSA: Principal Singular Values and Singular Vectors Adaptation of Large Language
Models", arXiv:2404.02948. PEFT: LoraConfig(init_lora_weights="pissa").

The one idea: instead of B = 0 and a random A, start the adapter as the rank-r part of W that matters
most, and freeze the rest. With W = U S V^T (W in nn.Linear's layout (d_out, d_in)):

    A = sqrt(S_r / s) V_r^T      PEFT's lora_A.weight, (r, d_in);   ours lora_A = its transpose, (d_in, r)
    B = U_r sqrt(S_r / s)        PEFT's lora_B.weight, (d_out, r);  ours lora_B = its transpose, (r, d_out)
    W_res = W - s * B A          left in the frozen layer (s: the LoRA scale, alpha / r)

so W_res + s * B A = W: the model computes exactly what it did before, but training now moves the
principal directions of W (which converges faster than LoRA in the paper), and the frozen part holds
only the small singular values. The base weights change: save the model with the adapter (the residual
is part of it), or export the adapter as PEFT does for PiSSA (converted to plain LoRA against W).

The singular vectors' signs are arbitrary (u, v and -u, -v give the same W): B A and W_res are not.
"""

from __future__ import annotations

import torch
from torch import nn

from lora.apply import DEFAULT_ADAPTER, apply_lora, as_config
from lora.config import LoraConfig
from lora.layers import LinearWithLoRA
from lora.targets import lora_modules, resolve_targets


@torch.no_grad()
def pissa_init(layer: LinearWithLoRA, adapter_name: str = DEFAULT_ADAPTER) -> None:
    """Set branch `adapter_name`'s A and B from the top-r SVD of the layer's weight and leave the
    residual in the weight (in place). The layer's output is unchanged (up to float rounding)."""
    if type(layer) is not LinearWithLoRA:
        raise TypeError(f"PiSSA initialises a whole linear layer's LoRA (LinearWithLoRA), got {type(layer).__name__}"
                        f" (a fused qkv slice or an embedding has no weight of its own to decompose)")
    if getattr(layer.linear, "quantized", False):
        raise ValueError("PiSSA needs a float base weight to keep the residual in; it cannot start from a 4-bit base")
    if layer.merged_adapters:
        raise ValueError(f"adapters {layer.merged_adapters} are merged into this layer; unmerge them first")
    branch = layer.lora[adapter_name]
    weight = layer.linear.weight
    W = weight.to(torch.float32)
    if layer.fan_in_fan_out:  # transformers' Conv1D stores (d_in, d_out)
        W = W.T
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)  # W (d_out, d_in) = U diag(S) Vh
    r = branch.rank
    root = (S[:r] / branch.scale).sqrt()  # split sqrt(S_r / s) over both factors
    A = root.unsqueeze(1) * Vh[:r]  # (r, d_in)
    B = U[:, :r] * root.unsqueeze(0)  # (d_out, r)
    residual = W - branch.scale * (B @ A)
    branch.lora_A.copy_(A.T)  # ours: (d_in, r)
    branch.lora_B.copy_(B.T)  # ours: (r, d_out)
    weight.copy_((residual.T if layer.fan_in_fan_out else residual).to(weight.dtype))


def apply_pissa(model: nn.Module, cfg: LoraConfig | None = None, *, adapter_name: str = DEFAULT_ADAPTER,
                **kwargs) -> nn.Module:
    """apply_lora, then PiSSA's initialisation on every layer the adapter wraps (whole linear layers only:
    use attention="separate" or target "qkv" as a whole). Returns the model, in place."""
    cfg = as_config(cfg, kwargs)
    plan, _ = resolve_targets(model, cfg)
    bad = [(n, kind) for n, (kind, _) in plan.items() if kind != "linear"]
    if bad:  # refused before the model is changed
        raise ValueError(f"PiSSA needs whole linear layers; {bad[0][0]} would get a {bad[0][1]} LoRA "
                         f"(target W_query/W_value in the separate layout, or 'qkv' whole)")
    apply_lora(model, cfg, adapter_name=adapter_name)
    for _, m in [(n, m) for n, m in lora_modules(model) if adapter_name in m.lora]:
        pissa_init(m, adapter_name)
    return model


__all__ = ["pissa_init", "apply_pissa"]
