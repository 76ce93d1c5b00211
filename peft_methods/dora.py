"""DoRA (Liu et al. 2024): LoRA split into a trained magnitude and a low-rank direction.

    W' = m * (W + s * (A B)^T) / ||W + s * (A B)^T||        row-wise norm, m: (d_out,)

Liu et al., "DoRA: Weight-Decomposed Low-Rank Adaptation", ICML 2024 (arXiv:2402.09353).
Every weight matrix is a magnitude times a direction. DoRA trains the magnitude `m` (one number
per output feature) directly, and the direction with LoRA: W + s * (A B)^T, normalised to unit
length per output feature. `m` starts at the norm of W's rows and B at zero, so a fresh DoRA
layer computes exactly the base layer.

nn.Linear stores W as (d_out, d_in); the paper's "column-wise norm" of its (d_in x d_out) W
is the norm of each of our rows: one norm per output feature, over the d_in inputs (PEFT:
`weight.norm(p=2, dim=1)`).

Forward without building W' (as PEFT does):
    y = (m / ||W + s (A B)^T||) * (x W^T + s * dropout(x) A B) + bias
The norm is DETACHED (treated as a constant in the backward pass), the paper's section 4.3:
gradients still reach m, A and B through everything else, and the backward pass does not keep a
(d_out, d_in) graph per layer; the paper reports no loss of accuracy.

Costs against plain LoRA: d_out more trained numbers per layer, and every forward pass builds
the (d_out, d_in) matrix W + s (A B)^T to take its norm (weight-sized work, independent of
the batch). Merged for inference, a DoRA layer is a plain nn.Linear like merged LoRA.

Reference implementation: https://github.com/huggingface/peft (tuners/lora/dora.py,
`DoraLinearLayer`); https://github.com/NVlabs/DoRA.
"""

from __future__ import annotations

import torch
from torch import nn

from lora.apply import as_config
from lora.config import LoraConfig, validate_rank
from lora.layers import LoRALayer
from lora.modules_to_save import ModulesToSaveWrapper
from lora.targets import resolve_targets, set_submodule


class LinearWithDoRA(nn.Module):
    """A frozen nn.Linear with a DoRA update: trained `magnitude` (d_out,), `lora.lora_A`
    (d_in, r) and `lora.lora_B` (r, d_out). Parameters: r * (d_in + d_out) + d_out."""

    def __init__(self, linear: nn.Linear, rank: int, alpha: float, dropout: float = 0.0, scaling: str = "alpha/r"):
        super().__init__()
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"DoRA wraps nn.Linear layers, got {type(linear).__name__}")
        self.linear = linear
        for p in linear.parameters():
            p.requires_grad_(False)
        weight = linear.weight
        dtype = torch.promote_types(weight.dtype, torch.float32)  # adapters in at least fp32, as in lora/layers.py
        self.lora = LoRALayer(linear.in_features, linear.out_features, rank, alpha, dropout, scaling,
                              device=weight.device, dtype=dtype)
        # m = ||W|| per output feature: with B = 0 the layer starts as exactly the base layer.
        self.magnitude = nn.Parameter(weight.detach().to(dtype).norm(p=2, dim=1))  # (d_out,)

    def adapted_weight(self) -> torch.Tensor:
        """W + s * (A B)^T, (d_out, d_in): the direction before normalising."""
        return self.linear.weight.to(self.magnitude.dtype) + self.lora.delta_weight().T

    def weight_norm(self) -> torch.Tensor:
        """||W + s (A B)^T|| per output feature, (d_out,), detached (DoRA section 4.3)."""
        return self.adapted_weight().norm(p=2, dim=1).detach()

    def forward(self, x):
        base = self.linear(x)  # (..., d_out): x W^T + bias
        bias = self.linear.bias
        if bias is not None:
            base = base - bias  # the magnitude scales x W^T only (PEFT does the same)
        update = self.lora(x).to(base.dtype)  # s * dropout(x) A B, (..., d_out)
        scale = (self.magnitude / self.weight_norm()).to(base.dtype)  # (d_out,)
        y = scale * (base + update)
        return y if bias is None else y + bias

    @torch.no_grad()
    def merged_linear(self) -> nn.Linear:
        """A plain nn.Linear computing the same function (for inference): W' = m * V / ||V||."""
        V = self.adapted_weight()
        merged = nn.Linear(self.linear.in_features, self.linear.out_features, bias=self.linear.bias is not None,
                           device=V.device, dtype=self.linear.weight.dtype)
        merged.weight.copy_((self.magnitude / V.norm(p=2, dim=1)).unsqueeze(1) * V)
        if self.linear.bias is not None:
            merged.bias.copy_(self.linear.bias)
        return merged

    def extra_repr(self) -> str:
        return f"d_in={self.linear.in_features}, d_out={self.linear.out_features}"


def apply_dora(model: nn.Module, cfg: LoraConfig | None = None, **kwargs) -> nn.Module:
    """Replace the layers `cfg.targets` selects (same rules as apply_lora) with LinearWithDoRA, in place.

    Everything else is frozen; `cfg.modules_to_save` (a new head) is trained in full, as a
    ModulesToSaveWrapper copy like LoRA's. A fused qkv projection takes DoRA only as a whole
    (target "qkv"), not per query/key/value slice. Returns the model.
    """
    cfg = as_config(cfg, kwargs)
    if any(isinstance(m, LinearWithDoRA) for m in model.modules()):
        raise ValueError("this model already has DoRA layers")
    plan, to_save = resolve_targets(model, cfg)
    for name, (kind, _) in plan.items():
        if kind != "linear":
            raise ValueError(f"DoRA on the query/key/value slices of the fused {name} is not supported; use the "
                             f"separate attention layout, or target the whole projection ('qkv')")
        module = model.get_submodule(name)
        if not isinstance(module, nn.Linear):
            raise TypeError(f"DoRA wraps nn.Linear layers; {name} is a {type(module).__name__}")
        validate_rank(cfg.rank, module.in_features, module.out_features, name)
    for p in model.parameters():
        p.requires_grad_(False)
    for name in plan:
        set_submodule(model, name, LinearWithDoRA(model.get_submodule(name), cfg.rank, cfg.alpha, cfg.dropout,
                                                   cfg.scaling))
    for name in to_save:
        wrapper = ModulesToSaveWrapper(model.get_submodule(name))
        wrapper.add_adapter("default")
        set_submodule(model, name, wrapper)
    return model


def merge_dora(model: nn.Module) -> nn.Module:
    """Replace every LinearWithDoRA by the plain nn.Linear it computes (for inference), in place."""
    for name, module in [(n, m) for n, m in model.named_modules() if isinstance(m, LinearWithDoRA)]:
        set_submodule(model, name, module.merged_linear())
    return model


def dora_parameter_count(d_in: int, d_out: int, rank: int) -> int:
    """Trained numbers of one DoRA layer: A, B and the magnitude."""
    return rank * (d_in + d_out) + d_out


__all__ = ["LinearWithDoRA", "apply_dora", "merge_dora", "dora_parameter_count"]
