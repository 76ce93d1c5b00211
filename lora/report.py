"""How many parameters a LoRA model trains, in total, per adapter and per module, for any nn.Module.

    report = lora_parameter_report(model)
    print(report["table"])

`model.parameters()` yields a shared (tied) tensor once, so a tied weight is counted once,
under the first module that owns it. lora/counts.py prices the same numbers on paper, without a model.
"""

from __future__ import annotations

from torch import nn

from lora.registry import registry_of
from lora.state_dict import lora_state_dict
from lora.targets import lora_modules, saved_modules


def per_module_counts(model: nn.Module, depth: int = 1) -> dict[str, dict[str, int]]:
    """{module name cut to `depth` levels: {"total", "trainable", "frozen"}}, in registration order."""
    rows: dict[str, dict[str, int]] = {}
    for name, p in model.named_parameters():  # duplicates (tied weights) removed
        row = rows.setdefault(".".join(name.split(".")[:depth]), {"total": 0, "trainable": 0, "frozen": 0})
        row["total"] += p.numel()
        row["trainable" if p.requires_grad else "frozen"] += p.numel()
    return rows


def format_counts(rows: dict[str, dict[str, int]]) -> str:
    """per_module_counts as a printable table: parameters, trainable, frozen and share per row, then the total."""
    total = {k: sum(r[k] for r in rows.values()) for k in ("total", "trainable", "frozen")}
    width = max([len(k) for k in rows] + [len("module")])
    lines = [f"{'module':<{width}}  {'parameters':>13}  {'trainable':>13}  {'frozen':>13}  {'share':>6}"]
    rule = "-" * len(lines[0])
    lines.append(rule)
    for key, r in rows.items():
        lines.append(f"{key:<{width}}  {r['total']:>13,}  {r['trainable']:>13,}  {r['frozen']:>13,}  "
                     f"{100 * r['total'] / (total['total'] or 1):>5.1f}%")
    lines += [rule, f"{'total':<{width}}  {total['total']:>13,}  {total['trainable']:>13,}  {total['frozen']:>13,}  "
                    f"100.0%"]
    return "\n".join(lines)


def lora_parameter_report(model: nn.Module, depth: int = 1) -> dict:
    """Total, trainable and frozen parameters, overall and per module.

    Returns a dict: total, trainable, frozen; lora (all LoRA weights, every adapter);
    modules_to_save (their trainable copies); per_adapter {name: tensors of that adapter};
    per_module {name: {total, trainable, frozen}} at `depth` levels of names; and table
    (per_module, printable).
    """
    rows = per_module_counts(model, depth)
    report = {k: sum(r[k] for r in rows.values()) for k in ("total", "trainable", "frozen")}
    report["lora"] = sum(p.numel() for _, m in lora_modules(model) for p in m.lora.parameters())
    report["modules_to_save"] = sum(p.numel() for _, m in saved_modules(model) for p in m.modules_to_save.parameters())
    report["per_adapter"] = {name: sum(t.numel() for t in lora_state_dict(model, name).values())
                             for name in registry_of(model)}
    report["per_module"] = rows
    report["table"] = format_counts(rows)
    return report
