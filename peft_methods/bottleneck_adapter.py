"""Bottleneck adapters (Houlsby et al. 2019): a small trained MLP after each sub-layer.

    h -> h + up(GELU(down(h)))        down: d -> m, up: m -> d, m << d (the bottleneck)

Houlsby et al., "Parameter-Efficient Transfer Learning for NLP", ICML 2019 (arXiv:1902.00751),
put one adapter after each transformer block's attention and one after its feed-forward
network: on the sub-layer's output, after its output projection and BEFORE the residual
connection adds it to the stream. Only the adapters (and a new task head) are trained. The
up-projection starts at zero, so a fresh adapter is the identity and training starts from the
pre-trained model exactly, as LoRA's B = 0 does.

The price, and the reason LoRA exists (Hu et al. 2021, section 3 and Table 1): an adapter is
extra layers IN SERIES with the model. Nothing can be merged away after training, so every
forward pass runs 2 * n_layers more small matmuls, one after the other, which adds latency at
inference time (most visibly at batch size 1 on a GPU). A LoRA update is PARALLEL to a frozen
weight and can be added into it.

Like LoRA in this package, adapters are put in from the outside, by module name: each target
module (`att`, `ff` of every TransformerBlock by default) is replaced by
`ModuleWithAdapter(module, adapter)`; `gpt/` knows nothing about it. Houlsby et al. also train
the layer norms; this minimal version does not (pass their names in `modules_to_save` to do so).

Reference implementations: https://github.com/google-research/adapter-bert (modeling.py,
`feedforward_adapter`); the `adapters` library (https://github.com/adapter-hub/adapters).
"""

from __future__ import annotations

from torch import nn

from lora.targets import matches_target, set_submodule

DEFAULT_TARGETS = ("att", "ff")  # TransformerBlock's attention and feed-forward sub-layers


class BottleneckAdapter(nn.Module):
    """h (..., d) -> h + up(GELU(down(h))) (..., d). `up` starts at zero: identity at first.

    Parameters: d * m + m (down) + m * d + d (up) = 2 * d * m + m + d.
    """

    def __init__(self, dim: int, bottleneck: int):
        super().__init__()
        if not isinstance(bottleneck, int) or isinstance(bottleneck, bool) or bottleneck <= 0:
            raise ValueError(f"bottleneck must be a positive integer, got {bottleneck!r}")
        if bottleneck > dim:
            raise ValueError(f"bottleneck {bottleneck} is wider than the layer it adapts ({dim}); "
                             f"an adapter is meant to be narrow (m << d)")
        self.down = nn.Linear(dim, bottleneck)  # default nn.Linear init
        self.act = nn.GELU()
        self.up = nn.Linear(bottleneck, dim)
        nn.init.zeros_(self.up.weight)  # a fresh adapter adds exactly nothing
        nn.init.zeros_(self.up.bias)

    def forward(self, h):
        return h + self.up(self.act(self.down(h)))  # (..., d) -> (..., m) -> (..., d), plus the skip

    def extra_repr(self) -> str:
        return f"dim={self.down.in_features}, bottleneck={self.down.out_features}"


class ModuleWithAdapter(nn.Module):
    """Runs the wrapped sub-layer, then the adapter on its output (Houlsby's placement).
    Keyword arguments (e.g. attention's `prefix_kv`) pass through to the sub-layer."""

    def __init__(self, module: nn.Module, adapter: BottleneckAdapter):
        super().__init__()
        if isinstance(module, ModuleWithAdapter):
            raise ValueError("this module already has a bottleneck adapter")
        self.module = module
        self.adapter = adapter

    def forward(self, x, *args, **kwargs):
        return self.adapter(self.module(x, *args, **kwargs))


def _output_width(module: nn.Module) -> int:
    """The width of a sub-layer's output: `d_out` of an attention module, else its last Linear's."""
    width = getattr(module, "d_out", None)
    if isinstance(width, int):
        return width
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise TypeError(f"cannot tell the output width of {type(module).__name__}: no d_out and no nn.Linear")
    return linears[-1].out_features


def apply_bottleneck_adapters(model: nn.Module, bottleneck: int = 64, targets=DEFAULT_TARGETS,
                              modules_to_save=("out_head",)) -> nn.Module:
    """Put a BottleneckAdapter after every module whose name ends with one of `targets`, in place.

    Freezes every parameter, then makes the adapters and `modules_to_save` (e.g. a new
    classification head) trainable. Returns the model.

    >>> apply_bottleneck_adapters(model, bottleneck=64)  # doctest: +SKIP
    GPT-2 124M: 24 adapters of 2 * 768 * 64 + 64 + 768 = 99,136 parameters = 2,379,264 in all.
    """
    targets = (targets,) if isinstance(targets, str) else tuple(targets)
    modules_to_save = (modules_to_save,) if isinstance(modules_to_save, str) else tuple(modules_to_save or ())
    if not targets:
        raise ValueError("targets is empty; name the sub-layers to adapt, e.g. ('att', 'ff')")
    names = [n for n, m in model.named_modules() if n and any(matches_target(n, t) for t in targets)]
    names = [n for n in names if not any(n.startswith(o + ".") for o in names)]  # outermost matches only
    if not names:
        raise ValueError(f"no module name ends with any of {targets}; modules here are named like "
                         f"{[n for n, _ in model.named_modules() if n][:6]}")
    if any(isinstance(model.get_submodule(n), ModuleWithAdapter) for n in names):
        raise ValueError("this model already has bottleneck adapters on these modules")
    saved = [n for n, _ in model.named_modules() if n and any(matches_target(n, s) for s in modules_to_save)]
    missing = [s for s in modules_to_save if not any(matches_target(n, s) for n in saved)]
    if missing:
        raise ValueError(f"modules_to_save {missing} match no module in {type(model).__name__}")
    widths = {n: _output_width(model.get_submodule(n)) for n in names}  # check every target before changing any
    for n, width in widths.items():
        if bottleneck > width:
            raise ValueError(f"bottleneck {bottleneck} is wider than {n}'s output ({width})")

    for p in model.parameters():
        p.requires_grad_(False)
    for n in names:
        module = model.get_submodule(n)
        weight = next(module.parameters())
        adapter = BottleneckAdapter(widths[n], bottleneck).to(device=weight.device, dtype=weight.dtype)
        set_submodule(model, n, ModuleWithAdapter(module, adapter))
    for n in saved:
        model.get_submodule(n).requires_grad_(True)
    return model


def bottleneck_adapters(model: nn.Module) -> list[tuple[str, BottleneckAdapter]]:
    """(name, adapter) for every adapter in the model."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, BottleneckAdapter)]


def remove_bottleneck_adapters(model: nn.Module) -> nn.Module:
    """Put the original sub-layers back (the adapters are dropped), in place."""
    for name, module in [(n, m) for n, m in model.named_modules() if isinstance(m, ModuleWithAdapter)]:
        set_submodule(model, name, module.module)
    return model


def bottleneck_parameter_count(dim: int, bottleneck: int, n_adapters: int) -> int:
    """Trainable numbers of `n_adapters` adapters of width `dim`: n * (2 * d * m + m + d)."""
    return n_adapters * (2 * dim * bottleneck + bottleneck + dim)


__all__ = ["BottleneckAdapter", "ModuleWithAdapter", "apply_bottleneck_adapters", "bottleneck_adapters",
           "remove_bottleneck_adapters", "bottleneck_parameter_count"]
