"""LoRA from scratch: low-rank adapters for any nn.Module, with GPTModel's names as defaults.

lora/ imports nothing of gpt/: it wraps layers by module name and type, and GPT's names are
only the string defaults behind the target aliases. Read in this order:
    config.py           LoraConfig, the scaling conventions, the target aliases, the one rank check
    layers.py           LoRALayer, LinearWithLoRA, EmbeddingWithLoRA, FusedQKVWithLoRA (the math)
    counts.py           how many parameters LoRA trains, on paper
    registry.py         which adapters a model has and which is active: one object per model
    modules_to_save.py  fully trained modules (a new head), one copy per adapter
    targets.py          which modules a config selects (PEFT's target_modules rule, the aliases)
    apply.py            apply_lora, named adapters: add, switch, disable, delete
    book.py             the book's replace_linear_with_lora
    state_dict.py       lora_state_dict, base_parameters
    report.py           lora_parameter_report
    merge.py            merge_lora / unmerge_lora
    adapters.py         save_adapter / load_adapter (safetensors + JSON, base fingerprint)
    peft_format.py      export_peft_adapter / import_peft_adapter (PEFT's format, e.g. transformers' GPT-2)
The LoRA variants, each equal to PEFT's option (tests/test_qlora.py, test_pissa.py, test_loraplus.py):
    nf4.py, qlora.py    QLoRA: the base frozen in NF4 with double quantization (quantize_base), LoRA on top
    pissa.py            PiSSA: A and B from W's top-r singular vectors (apply_pissa; PEFT init_lora_weights="pissa")
    loraplus.py         LoRA+: B's learning rate a ratio times A's (create_loraplus_optimizer)
    rsLoRA is a scaling option: LoraConfig(scaling="alpha/sqrt(r)") (PEFT use_rslora=True).

The other parameter-efficient methods (bottleneck adapters, prefix tuning, DoRA, VeRA) live beside
this package, in peft_methods/.

Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models", arXiv:2106.09685.
"""

from lora.adapters import base_fingerprint, load_adapter, read_adapter, save_adapter
from lora.apply import (active_adapter, adapter_configs, add_adapter, apply_lora, delete_adapter, disable_adapters,
                        enable_adapters, mark_only_active_adapter_trainable, set_active_adapter)
from lora.book import replace_linear_with_lora
from lora.config import SCALINGS, TARGET_ALIASES, LoraConfig, scaling_factor, validate_rank
from lora.counts import full_parameter_count, lora_parameter_count, lora_trainable_count, reduction
from lora.layers import EmbeddingWithLoRA, FusedQKVWithLoRA, LinearWithLoRA, LoRALayer, LoRAWrapper, QKVLoRALayer
from lora.loraplus import create_loraplus_optimizer, loraplus_parameter_groups
from lora.merge import is_merged, merge_lora, unmerge_lora
from lora.modules_to_save import ModulesToSaveWrapper
from lora.peft_format import export_peft_adapter, import_peft_adapter, read_peft_adapter
from lora.pissa import apply_pissa, pissa_init
from lora.qlora import Linear4bit, base_nbytes, dequantize_base, quantize_base
from lora.registry import LoraAdapters, registry_of
from lora.report import lora_parameter_report
from lora.state_dict import base_parameters, lora_state_dict
from lora.targets import lora_modules, resolve_targets

__all__ = [
    "LoRALayer", "LinearWithLoRA", "EmbeddingWithLoRA", "FusedQKVWithLoRA", "QKVLoRALayer", "LoRAWrapper", "ModulesToSaveWrapper",
    "LoraConfig", "SCALINGS", "TARGET_ALIASES", "scaling_factor", "validate_rank", "LoraAdapters", "registry_of",
    "apply_lora", "add_adapter", "set_active_adapter", "disable_adapters", "enable_adapters", "delete_adapter",
    "active_adapter", "adapter_configs", "replace_linear_with_lora", "resolve_targets", "lora_modules",
    "mark_only_active_adapter_trainable", "lora_state_dict", "base_parameters", "lora_parameter_report",
    "merge_lora", "unmerge_lora", "is_merged",
    "save_adapter", "load_adapter", "read_adapter", "base_fingerprint",
    "export_peft_adapter", "import_peft_adapter", "read_peft_adapter",
    "lora_parameter_count", "full_parameter_count", "reduction", "lora_trainable_count",
    "Linear4bit", "quantize_base", "dequantize_base", "base_nbytes", "apply_pissa", "pissa_init",
    "create_loraplus_optimizer", "loraplus_parameter_groups",
]
