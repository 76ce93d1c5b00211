"""Where a training step's time goes: torch.profiler, summed by kind of work.

The profiler records every aten operator with its SELF time (children excluded, so nothing is
counted twice). Summing by the operator's name gives a short answer to "what dominates":
the matmuls of the linear layers (the FLOPs), the attention kernel, the elementwise
work (layer norm, GELU, adds, copies), and zero-filling and scattering gradients (the
embedding's dense gradient in full fine-tuning). The optimizer step is left out on purpose:
the benchmarks time it as a phase of its own.

Reference: https://pytorch.org/docs/stable/profiler.html
"""

from __future__ import annotations

import torch
from torch.profiler import ProfilerActivity, profile

MATMUL = "matmul (linear layers, LoRA branches)"
# Kinds of work, by the name of the aten operator that did it.
CATEGORIES = [
    (MATMUL, ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear", "aten::_addmm_activation")),
    ("attention kernel", ("scaled_dot_product", "flash_attention", "efficient_attention", "aten::_softmax",
                          "aten::_softmax_backward_data", "masked_fill")),
    ("zero-filling and scattering gradients (mostly the embedding's)",
     ("embedding_dense_backward", "embedding_backward", "index_add", "aten::zero_", "aten::fill_")),
    ("layer norm", ("layer_norm",)),
    ("GELU", ("gelu",)),
]
OTHER = "other (copies, adds, views, autograd bookkeeping)"


def categorise(op_name: str) -> str:
    for category, patterns in CATEGORIES:
        if any(p in op_name for p in patterns):
            return category
    return OTHER


def profile_step(step, device) -> dict:
    """Profile one forward + backward pass of a benchmarks.setups.TrainStep (after one warm-up
    step). Returns {"by_category_ms": {kind: self time in ms}, "total_ms", "top_ops": a table}."""
    device = torch.device(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    step()  # warm
    step.optimizer.zero_grad(set_to_none=True)
    with profile(activities=activities) as prof:
        step.loss().backward()
    step.optimizer.zero_grad(set_to_none=True)
    events = prof.key_averages()
    use_cuda = device.type == "cuda"
    by_category: dict[str, float] = {}
    for e in events:
        self_us = e.self_device_time_total if use_cuda else e.self_cpu_time_total
        by_category[categorise(e.key)] = by_category.get(categorise(e.key), 0.0) + self_us / 1e3
    sort_key = "self_device_time_total" if use_cuda else "self_cpu_time_total"
    return {"by_category_ms": dict(sorted(by_category.items(), key=lambda kv: -kv[1])),
            "total_ms": sum(by_category.values()),
            "top_ops": events.table(sort_by=sort_key, row_limit=12, max_name_column_width=40)}
