"""LoRA from scratch: low-rank adapters for any nn.Module, with GPTModel's names as defaults.

Read in this order:
    config.py           LoraConfig, the scaling conventions, the target aliases
    layers.py           LoRALayer, LinearWithLoRA, FusedQKVWithLoRA (the math)
    counts.py           how many parameters LoRA trains, on paper
    modules_to_save.py  fully trained modules (a new head), one copy per adapter
    apply.py            apply_lora, replace_linear_with_lora, named adapters, the report
    merge.py            merge_lora / unmerge_lora
    adapters.py         save_adapter / load_adapter (safetensors + JSON, base fingerprint)
    peft_format.py      export_peft_adapter (PEFT's format for transformers' GPT-2)

Other parameter-efficient methods, next to LoRA for the measured comparison (benchmarks/):
    bottleneck_adapter.py  Houlsby-style adapters after attention and feed-forward
    prefix_tuning.py       learned key/value prefixes per layer (Li & Liang 2021)
    dora.py                DoRA: magnitude and direction (Liu et al. 2024)

Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models", arXiv:2106.09685.
"""

from lora.bottleneck_adapter import (BottleneckAdapter, ModuleWithAdapter, apply_bottleneck_adapters,
                                     bottleneck_adapters, bottleneck_parameter_count, remove_bottleneck_adapters)
from lora.dora import LinearWithDoRA, apply_dora, dora_parameter_count, merge_dora
from lora.prefix_tuning import (AttentionWithPrefix, PrefixEncoder, ShiftedPositionEmbedding, apply_prefix_tuning,
                                context_left, init_prefix_from_tokens, prefix_parameter_count, prefix_tuning_kv)
from lora.adapters import base_fingerprint, load_adapter, read_adapter, save_adapter
from lora.apply import (active_adapter, adapter_configs, add_adapter, apply_lora, base_parameters, delete_adapter,
                        disable_adapters, enable_adapters, lora_modules, lora_parameter_report, lora_state_dict,
                        mark_only_active_adapter_trainable, replace_linear_with_lora, resolve_targets,
                        set_active_adapter)
from lora.config import SCALINGS, TARGET_ALIASES, LoraConfig, scaling_factor
from lora.counts import full_parameter_count, lora_parameter_count, lora_trainable_count, reduction
from lora.layers import FusedQKVWithLoRA, LinearWithLoRA, LoRALayer, LoRAWrapper, QKVLoRALayer
from lora.merge import is_merged, merge_lora, unmerge_lora
from lora.modules_to_save import ModulesToSaveWrapper
from lora.peft_format import export_peft_adapter

__all__ = [
    "LoRALayer", "LinearWithLoRA", "FusedQKVWithLoRA", "QKVLoRALayer", "LoRAWrapper", "ModulesToSaveWrapper",
    "LoraConfig", "SCALINGS", "TARGET_ALIASES", "scaling_factor",
    "apply_lora", "add_adapter", "set_active_adapter", "disable_adapters", "enable_adapters", "delete_adapter",
    "active_adapter", "adapter_configs", "replace_linear_with_lora", "resolve_targets", "lora_modules",
    "mark_only_active_adapter_trainable", "lora_state_dict", "base_parameters", "lora_parameter_report",
    "merge_lora", "unmerge_lora", "is_merged",
    "save_adapter", "load_adapter", "read_adapter", "base_fingerprint", "export_peft_adapter",
    "lora_parameter_count", "full_parameter_count", "reduction", "lora_trainable_count",
    "BottleneckAdapter", "ModuleWithAdapter", "apply_bottleneck_adapters", "bottleneck_adapters",
    "bottleneck_parameter_count", "remove_bottleneck_adapters",
    "LinearWithDoRA", "apply_dora", "dora_parameter_count", "merge_dora",
    "AttentionWithPrefix", "PrefixEncoder", "ShiftedPositionEmbedding", "apply_prefix_tuning", "context_left",
    "init_prefix_from_tokens", "prefix_parameter_count", "prefix_tuning_kv",
]
