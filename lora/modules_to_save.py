"""Modules trained in full next to a LoRA adapter (PEFT's `modules_to_save`), one copy per adapter.

A classifier built on a pre-trained GPT needs a new output head (emb_dim -> 2 classes). The
head is new, so it is trained in full and saved with the adapter; otherwise the adapter is
useless after reloading (a pitfall reported to PEFT).

`ModulesToSaveWrapper` keeps the base model's module untouched (`original_module`, frozen)
and gives each adapter its own trainable copy (`modules_to_save[adapter_name]`), so that two
adapters on one base (spam and sentiment, say) each keep their own head, and disabling the
adapters gives back the base model exactly. This mirrors PEFT's `ModulesToSaveWrapper`.

A copy of a head whose weight is tied to the token embedding is a new tensor: training it
leaves the embedding alone.
"""

from __future__ import annotations

import copy

from torch import nn

from lora.registry import LoraAdapters


class ModulesToSaveWrapper(nn.Module):
    def __init__(self, module: nn.Module, registry: LoraAdapters | None = None):
        super().__init__()
        if isinstance(module, ModulesToSaveWrapper):
            raise ValueError("this module is already wrapped as a module to save")
        self.original_module = module
        self.modules_to_save = nn.ModuleDict()
        self.registry = LoraAdapters() if registry is None else registry  # the model's (lora/registry.py)
        self.train(module.training)
        for p in module.parameters():
            p.requires_grad_(False)

    def add_adapter(self, name: str, module: nn.Module | None = None) -> nn.Module:
        """A trainable copy of the original module for adapter `name` (or `module` if given,
        e.g. a head of another shape restored from a saved adapter)."""
        if name in self.modules_to_save:
            raise ValueError(f"adapter {name!r} already has its own copy of this module")
        new = copy.deepcopy(self.original_module) if module is None else module
        for p in new.parameters():
            p.requires_grad_(True)
        self.modules_to_save[name] = new
        if self.registry.active is None:
            self.registry.active = name
        return new

    @property
    def active_adapter(self) -> str | None:
        return self.registry.active

    @property
    def disabled(self) -> bool:
        return self.registry.disabled

    @property
    def active_module(self) -> nn.Module:
        """The module forward runs: the active adapter's copy, or the original."""
        name = self.active_adapter
        if self.disabled or name is None or name not in self.modules_to_save:
            return self.original_module
        return self.modules_to_save[name]

    def forward(self, *args, **kwargs):
        return self.active_module(*args, **kwargs)

    def __getattr__(self, name):
        # model.out_head.weight / .out_features still work: they read the module forward runs.
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name.startswith("_") or name in ("original_module", "modules_to_save", "registry", "active_adapter",
                                                "disabled", "active_module"):
                raise  # not set up yet (during __init__ or unpickling): no forwarding, no recursion
            return getattr(self.active_module, name)

    def extra_repr(self) -> str:
        return f"active_adapter={self.active_adapter!r}, disabled={self.disabled}"
