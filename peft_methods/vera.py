"""VeRA: one pair of frozen random matrices shared by all layers, and two trained vectors per layer.

Kopiczko, Blankevoort and Asano 2024, "VeRA: Vector-based Random Matrix Adaptation", ICLR 2024
(arXiv:2310.11454). PEFT: peft.VeraConfig.

The one idea: LoRA's A and B need not be trained at all. Draw them once at random and freeze them,
share them across every adapted layer, and train only two scaling vectors per layer:

    y = x W^T + b  +  lambda_b * ((lambda_d * (dropout(x) @ A^T)) @ B^T)

    vera_A  (r, d_in_max)   frozen, shared; a layer uses its first d_in columns   A = vera_A[:, :d_in]
    vera_B  (d_out_max, r)  frozen, shared; a layer uses its first d_out rows     B = vera_B[:d_out]
    vera_lambda_d (r,)      trained, per layer, starts at d_initial (0.1)
    vera_lambda_b (d_out,)  trained, per layer, starts at 0, so a fresh adapter changes nothing

Trained numbers per layer: r + d_out, independent of d_in, far fewer than LoRA's r (d_in + d_out);
r is therefore usually much larger (PEFT's default 256). The shared matrices are drawn like PEFT's
(Kaiming-uniform, torch.Generator seeded with `projection_prng_key`, vera_A first), so with the same
key and shapes they are PEFT's exactly; they are buffers, saved with the model but never trained.
Not a LoRA adapter of lora/ (no A and B per layer to train, merge or export): it lives here.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lora.config import LoraConfig
from lora.layers import linear_dims
from lora.modules_to_save import ModulesToSaveWrapper
from lora.targets import resolve_targets, set_submodule

VERA_PROJECTIONS = "vera_projections"  # the attribute apply_vera gives the model for the shared matrices


def _kaiming_uniform(shape: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """PEFT's _kaiming_init: uniform(-b, b), b = sqrt(3) * sqrt(2) / sqrt(fan_in), fan_in = shape[1]."""
    bound = math.sqrt(3.0) * math.sqrt(2) / math.sqrt(shape[1])
    return torch.empty(shape).uniform_(-bound, bound, generator=generator)


class VeraProjections(nn.Module):
    """The shared frozen pair: vera_A (r, d_in_max), vera_B (d_out_max, r), buffers."""

    def __init__(self, rank: int, d_in_max: int, d_out_max: int, projection_prng_key: int = 0):
        super().__init__()
        generator = torch.Generator(device="cpu").manual_seed(projection_prng_key)
        self.register_buffer("vera_A", _kaiming_uniform((rank, d_in_max), generator))
        self.register_buffer("vera_B", _kaiming_uniform((d_out_max, rank), generator))


class LinearWithVeRA(nn.Module):
    """A frozen linear layer (nn.Linear or transformers' Conv1D) plus VeRA's two trained vectors.

    forward: (..., d_in) -> (..., d_out). The shared projections are referenced, not owned (they are
    registered once, on the model), so they appear once in the model's state_dict.
    """

    def __init__(self, linear: nn.Module, projections: VeraProjections, d_initial: float = 0.1,
                 dropout: float = 0.0):
        super().__init__()
        self.d_in, self.d_out, _ = linear_dims(linear)
        rank, d_in_max = projections.vera_A.shape
        if self.d_in > d_in_max or self.d_out > projections.vera_B.shape[0]:
            raise ValueError(f"VeRA: a {self.d_in} -> {self.d_out} layer does not fit the shared matrices "
                             f"({d_in_max} -> {projections.vera_B.shape[0]})")
        self.linear = linear.requires_grad_(False)
        self._projections = (projections,)  # a tuple: not a submodule of this layer
        dtype = torch.promote_types(linear.weight.dtype, torch.float32)
        device = linear.weight.device
        self.vera_lambda_d = nn.Parameter(torch.full((rank,), float(d_initial), device=device, dtype=dtype))  # (r,)
        self.vera_lambda_b = nn.Parameter(torch.zeros(self.d_out, device=device, dtype=dtype))  # (d_out,)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    @property
    def projections(self) -> VeraProjections:
        return self._projections[0]

    def forward(self, x):
        y = self.linear(x)
        A = self.projections.vera_A[:, : self.d_in].to(self.vera_lambda_d)  # (r, d_in)
        B = self.projections.vera_B[: self.d_out].to(self.vera_lambda_d)  # (d_out, r)
        h = self.dropout(x.to(A.dtype)) @ A.T * self.vera_lambda_d  # (..., r)
        return y + ((h @ B.T) * self.vera_lambda_b).to(y.dtype)  # (..., d_out)

    def delta_weight(self) -> torch.Tensor:
        """The update in nn.Linear's layout, (d_out, d_in): (lambda_b B) (lambda_d A)."""
        A = self.projections.vera_A[:, : self.d_in]
        B = self.projections.vera_B[: self.d_out]
        return (self.vera_lambda_b.unsqueeze(1) * B) @ (self.vera_lambda_d.unsqueeze(1) * A)

    def extra_repr(self) -> str:
        return f"d_in={self.d_in}, d_out={self.d_out}, rank={self.vera_lambda_d.numel()}"


def apply_vera(model: nn.Module, rank: int = 256, targets=("query", "value"), d_initial: float = 0.1,
               dropout: float = 0.0, projection_prng_key: int = 0, modules_to_save=()) -> nn.Module:
    """Put VeRA on the linear layers `targets` selects (LoRA's target rules), in place; everything else
    is frozen except `modules_to_save` (trained in full, e.g. a new head). The shared matrices are
    sized for the largest selected layer and stored as `model.vera_projections`. Returns the model."""
    if hasattr(model, VERA_PROJECTIONS):
        raise ValueError("this model already has VeRA")
    if isinstance(rank, bool) or not isinstance(rank, int) or rank <= 0:
        raise ValueError(f"VeRA rank must be a positive integer, got {rank!r}")
    plan, to_save = resolve_targets(model, LoraConfig(rank=1, targets=targets, modules_to_save=modules_to_save))
    dims = {}
    for name, (kind, _) in plan.items():
        if kind != "linear":
            raise ValueError(f"VeRA wraps whole linear layers; {name} would be a {kind} adapter (use the separate "
                             f"attention layout, or target 'qkv' whole)")
        dims[name] = linear_dims(model.get_submodule(name))[:2]
    d_in_max, d_out_max = max(d for d, _ in dims.values()), max(d for _, d in dims.values())
    model.requires_grad_(False)
    projections = VeraProjections(rank, d_in_max, d_out_max, projection_prng_key)
    first = model.get_submodule(next(iter(plan))).weight
    projections.to(device=first.device, dtype=torch.promote_types(first.dtype, torch.float32))
    setattr(model, VERA_PROJECTIONS, projections)
    for name in plan:
        set_submodule(model, name, LinearWithVeRA(model.get_submodule(name), projections, d_initial, dropout))
    for name in to_save:
        wrapper = ModulesToSaveWrapper(model.get_submodule(name))
        wrapper.add_adapter("default")
        set_submodule(model, name, wrapper)
    return model


def vera_parameter_count(layer_dims, rank: int) -> int:
    """Trained numbers of VeRA on layers with the given (d_in, d_out): r + d_out each."""
    return sum(rank + d_out for _, d_out in layer_dims)


__all__ = ["VeraProjections", "LinearWithVeRA", "apply_vera", "vera_parameter_count"]
