"""The other parameter-efficient fine-tuning methods, measured against LoRA (benchmarks/bench_peft_methods.py).

    bottleneck_adapter.py  Houlsby-style adapters after attention and feed-forward (Houlsby et al. 2019)
    prefix_tuning.py       learned key/value prefixes per layer (Li & Liang 2021)
    dora.py                DoRA: magnitude and direction (Liu et al. 2024), built on lora's LoRALayer; PEFT's
                           use_dora, exported and imported in PEFT's format
    vera.py                VeRA: shared frozen random A and B, two trained vectors per layer (Kopiczko et al. 2024)

Like `lora`, each method is put into a model from the outside, by module names; the numbers
they reach on the spam task are in benchmarks/results/peft_methods.md.
"""

from peft_methods.bottleneck_adapter import (BottleneckAdapter, ModuleWithAdapter, apply_bottleneck_adapters,
                                             bottleneck_adapters, bottleneck_parameter_count,
                                             remove_bottleneck_adapters)
from peft_methods.dora import (LinearWithDoRA, apply_dora, dora_parameter_count, export_peft_dora, import_peft_dora,
                               merge_dora)
from peft_methods.prefix_tuning import (AttentionWithPrefix, PrefixEncoder, ShiftedPositionEmbedding,
                                        apply_prefix_tuning, context_left, init_prefix_from_tokens,
                                        prefix_parameter_count, prefix_tuning_kv)
from peft_methods.vera import LinearWithVeRA, VeraProjections, apply_vera, vera_parameter_count

__all__ = [
    "BottleneckAdapter", "ModuleWithAdapter", "apply_bottleneck_adapters", "bottleneck_adapters",
    "bottleneck_parameter_count", "remove_bottleneck_adapters",
    "LinearWithDoRA", "apply_dora", "dora_parameter_count", "merge_dora", "export_peft_dora", "import_peft_dora",
    "LinearWithVeRA", "VeraProjections", "apply_vera", "vera_parameter_count",
    "AttentionWithPrefix", "PrefixEncoder", "ShiftedPositionEmbedding", "apply_prefix_tuning", "context_left",
    "init_prefix_from_tokens", "prefix_parameter_count", "prefix_tuning_kv",
]
