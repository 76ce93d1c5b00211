"""Counting parameters: totals, trainable vs frozen, and a per-module table.

`model.parameters()` yields a shared (tied) tensor once, so tied weights are counted once;
`tied_parameters` says which names share storage (checked with data_ptr(), not assumed).
"""

from __future__ import annotations

from torch import nn


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def tied_parameters(model: nn.Module) -> list[list[str]]:
    """Groups of parameter names that share one storage, e.g. [['tok_emb.weight', 'out_head.weight']]."""
    by_ptr: dict[object, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        # Meta tensors (shapes only) have no storage: data_ptr() is 0 for all of them.
        key = id(p) if p.is_meta else (p.device, p.data_ptr())
        by_ptr.setdefault(key, []).append(name)
    return [names for names in by_ptr.values() if len(names) > 1]


def parameter_summary(model: nn.Module) -> dict[str, int]:
    total = count_parameters(model)
    trainable = count_parameters(model, trainable_only=True)
    return {"total": total, "trainable": trainable, "frozen": total - trainable}


def parameter_table(model: nn.Module, depth: int = 1) -> str:
    """A readable table of parameters per module, `depth` levels of names deep.

    Each parameter is attributed to the first module (in registration order) that owns it,
    so a tied weight appears once. Columns: total, trainable, frozen, share of the total.
    """
    rows: dict[str, list[int]] = {}
    for name, p in model.named_parameters():  # duplicates (tied weights) removed
        key = ".".join(name.split(".")[:depth]) if "." in name else name
        row = rows.setdefault(key, [0, 0])
        row[0] += p.numel()
        row[1] += p.numel() if p.requires_grad else 0
    total = sum(r[0] for r in rows.values()) or 1
    width = max([len(k) for k in rows] + [len("module")])
    lines = [f"{'module':<{width}}  {'parameters':>13}  {'trainable':>13}  {'frozen':>13}  {'share':>6}"]
    lines.append("-" * len(lines[0]))
    for key, (n, t) in rows.items():
        lines.append(f"{key:<{width}}  {n:>13,}  {t:>13,}  {n - t:>13,}  {100 * n / total:>5.1f}%")
    lines.append("-" * len(lines[0]))
    s = parameter_summary(model)
    lines.append(f"{'total':<{width}}  {s['total']:>13,}  {s['trainable']:>13,}  {s['frozen']:>13,}  100.0%")
    for group in tied_parameters(model):
        lines.append(f"(tied: {' = '.join(group)}, counted once)")
    return "\n".join(lines)
