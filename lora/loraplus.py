"""LoRA+: a larger learning rate for B than for A.

Hayou, Ghosh and Yu 2024, "LoRA+: Efficient Low Rank Adaptation of Large Models", arXiv:2402.12354.
PEFT: peft.optimizers.create_loraplus_optimizer.

The one idea: in LoRA's x A B, A reads the d_in-wide input and B writes the d_out-wide output; for
wide layers the two need learning rates of different sizes to learn efficiently, eta_B = lambda * eta_A
with lambda = loraplus_lr_ratio >> 1 (the paper suggests 2^4). One line of optimizer set-up.

The parameter groups are PEFT's, in PEFT's order, given the trainable parameters:
    A        lora_A and every other matrix (a module to save's weight)  lr,                  weight_decay
    embedding  both factors of a token embedding's LoRA                 loraplus_lr_embedding, weight_decay
    B        lora_B, and 1-d parameters (biases, norms) that decay      lr * ratio,          weight_decay
    B_no_decay  1-d parameters named "bias" or inside a LayerNorm       lr * ratio,          0.0
(weight_decay is `loraplus_weight_decay`, default 0; PEFT decides "no decay" with transformers'
get_parameter_names(model, [nn.LayerNorm]): here a module whose class name ends in "LayerNorm" counts,
so GPTModel's own LayerNorm does too.)
"""

from __future__ import annotations

import torch
from torch import nn

from lora.layers import EmbeddingWithLoRA
from lora.targets import lora_modules

GROUPS = ("A", "embedding", "B", "B_no_decay")  # PEFT's groupA, embedding, groupB, groupB_no_decay


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, nn.LayerNorm) or type(module).__name__.endswith("LayerNorm")


def loraplus_parameter_groups(model: nn.Module, lr: float, loraplus_lr_ratio: float,
                              loraplus_lr_embedding: float = 1e-6, loraplus_weight_decay: float = 0.0) -> list[dict]:
    """PEFT's four parameter groups: [{"name", "params", "param_names", "lr", "weight_decay"}, ...]."""
    for what, value in (("lr", lr), ("loraplus_lr_ratio", loraplus_lr_ratio),
                        ("loraplus_lr_embedding", loraplus_lr_embedding)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"LoRA+: {what} must be a positive number, got {value!r}")
    embedding_params = {id(p) for _, m in lora_modules(model) if isinstance(m, EmbeddingWithLoRA)
                        for p in m.lora.parameters()}
    no_decay = {id(p) for m in model.modules() if _is_norm(m) for p in m.parameters(recurse=False)}
    groups = {g: [] for g in GROUPS}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if id(p) in embedding_params:
            groups["embedding"].append((name, p))
        elif "lora_B" in name or p.ndim == 1:
            decays = id(p) not in no_decay and "bias" not in name
            groups["B" if decays else "B_no_decay"].append((name, p))
        else:
            groups["A"].append((name, p))
    if not any(groups.values()):
        raise ValueError("LoRA+: the model has no trainable parameters (apply_lora first)")
    settings = {"A": (lr, loraplus_weight_decay), "embedding": (loraplus_lr_embedding, loraplus_weight_decay),
                "B": (lr * loraplus_lr_ratio, loraplus_weight_decay), "B_no_decay": (lr * loraplus_lr_ratio, 0.0)}
    return [{"name": g, "params": [p for _, p in groups[g]], "param_names": [n for n, _ in groups[g]],
             "lr": settings[g][0], "weight_decay": settings[g][1]} for g in GROUPS]


def create_loraplus_optimizer(model: nn.Module, optimizer_cls: type[torch.optim.Optimizer], *, lr: float,
                              loraplus_lr_ratio: float, **kwargs) -> torch.optim.Optimizer:
    """optimizer_cls over PEFT's LoRA+ groups; kwargs as PEFT's (loraplus_lr_embedding, loraplus_weight_decay,
    then anything the optimizer takes, e.g. betas)."""
    groups = loraplus_parameter_groups(model, lr, loraplus_lr_ratio, kwargs.pop("loraplus_lr_embedding", 1e-6),
                                       kwargs.pop("loraplus_weight_decay", 0.0))
    return optimizer_cls([{k: g[k] for k in ("params", "lr", "weight_decay")} for g in groups], lr=lr, **kwargs)


__all__ = ["create_loraplus_optimizer", "loraplus_parameter_groups"]
