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

Equal to PEFT's DoRA (peft.LoraConfig(use_dora=True), tuners/lora/dora.py `DoraLinearLayer`): the
magnitude is called `lora_magnitude_vector` as there, the norm is detached the same way, and the
scale is the LoRA scale of the config (alpha / r, or alpha / sqrt(r) for rsLoRA).
`export_peft_dora` / `import_peft_dora` write and read PEFT's files (its LoRA keys plus
`<module>.lora_magnitude_vector` (d_out,), use_dora=true in adapter_config.json), for either attention
layout; logits equal PEFT's both ways within 1e-5 on transformers' GPT-2 (tests/test_dora_peft.py).

Reference implementation: https://github.com/huggingface/peft (tuners/lora/dora.py,
`DoraLinearLayer`); https://github.com/NVlabs/DoRA.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save
from torch import nn

from common.files import atomic_write_bytes
from lora.apply import as_config
from lora.config import LoraConfig, validate_rank
from lora.layers import LoRALayer
from lora.modules_to_save import ModulesToSaveWrapper
from lora.peft_format import PEFT_CONFIG, PEFT_PREFIX, PEFT_WEIGHTS, _ours_to_theirs, _pattern_value
from lora.targets import resolve_targets, set_submodule


class LinearWithDoRA(nn.Module):
    """A frozen nn.Linear with a DoRA update: trained `lora_magnitude_vector` (d_out,) (PEFT's name;
    `magnitude` is the same parameter), `lora.lora_A` (d_in, r) and `lora.lora_B` (r, d_out).
    Parameters: r * (d_in + d_out) + d_out."""

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
        self.lora_magnitude_vector = nn.Parameter(weight.detach().to(dtype).norm(p=2, dim=1))  # (d_out,)

    @property
    def magnitude(self) -> nn.Parameter:
        """m, (d_out,): the paper's name for lora_magnitude_vector."""
        return self.lora_magnitude_vector

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
        validate_rank(cfg.rank_for(name), module.in_features, module.out_features, name)
    for p in model.parameters():
        p.requires_grad_(False)
    for name in plan:
        set_submodule(model, name, LinearWithDoRA(model.get_submodule(name), cfg.rank_for(name), cfg.alpha_for(name),
                                                   cfg.dropout, cfg.scaling))
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


def dora_layers(model: nn.Module) -> list[tuple[str, LinearWithDoRA]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LinearWithDoRA)]


def _export_pieces(model: nn.Module, module_names: dict) -> dict[str, tuple]:
    """their module -> (A (R, d_in), B (d_out, R), magnitude (d_out,), scale) in PEFT's layout.

    A fused projection kept as three layers here (GPT-2's c_attn as W_query, W_key, W_value) becomes one
    DoRA of rank R = the sum of the thirds' ranks: A the thirds' A side by side, B block-diagonal, the
    magnitudes one after the other. A third without DoRA gets B = 0 and m = the norms of its base rows, which
    computes its base layer exactly (m / ||W|| = 1). DoRA's norms are per output row, so this is exact.
    """
    theirs = _ours_to_theirs(module_names)
    groups: dict[str, dict] = {}
    for name, layer in dora_layers(model):
        if name not in theirs:
            raise ValueError(f"cannot export DoRA on {name!r} to PEFT's format: module_names gives it no "
                             f"counterpart")
        hf, slot = theirs[name]
        groups.setdefault(hf, {})[slot] = layer
    out = {}
    for hf, by_slot in groups.items():
        scales = {layer.lora.scale for layer in by_slot.values()}
        if len(scales) != 1:
            raise ValueError(f"DoRA layers of {hf} have different scales {sorted(scales)}")
        scale = scales.pop()
        if None in by_slot:
            layer = by_slot[None]
            out[hf] = (layer.lora.lora_A.T, layer.lora.lora_B.T, layer.lora_magnitude_vector, scale)
            continue
        ours = module_names[hf]
        A_parts, B_blocks, m_parts = [], [], []
        for slot, name in enumerate(ours):
            layer = by_slot.get(slot)
            if layer is None:
                weight = model.get_submodule(name).weight.detach()
                m_parts.append(weight.float().norm(p=2, dim=1))
                B_blocks.append((weight.shape[0], None))
            else:
                A_parts.append(layer.lora.lora_A.T)  # (r, d_in)
                B_blocks.append((layer.lora.lora_B.shape[1], layer.lora.lora_B.T))  # (d, r)
                m_parts.append(layer.lora_magnitude_vector)
        A = torch.cat(A_parts, dim=0)  # (R, d_in)
        B = torch.zeros(sum(d for d, _ in B_blocks), A.shape[0], dtype=A.dtype, device=A.device)
        row = col = 0
        for d, block in B_blocks:
            if block is not None:
                B[row:row + d, col:col + block.shape[1]] = block
                col += block.shape[1]
            row += d
        out[hf] = (A, B, torch.cat(m_parts), scale)
    return out


def export_peft_dora(model: nn.Module, out_dir: str | os.PathLike, module_names: dict,
                     base_model_name_or_path: str | None = None) -> Path:
    """Write the model's DoRA layers in PEFT's format (a LoRA adapter with use_dora=true).

    module_names: {their module name: our module name, or (q, k, v) names} (gpt.weights.gpt2_module_names(cfg)
    for transformers' GPT-2, either attention layout). Keys per module: lora_A.weight (R, d_in),
    lora_B.weight (d_out, R), lora_magnitude_vector (d_out,); a module whose rank or scale differs from the
    first layer's is named in rank_pattern / alpha_pattern.
    """
    layers = dora_layers(model)
    if not layers:
        raise ValueError("this model has no DoRA layers to export; apply_dora first")
    pieces = _export_pieces(model, module_names)
    r, scale = layers[0][1].lora.rank, layers[0][1].lora.scale
    lora_alpha = scale * r  # PEFT's scale is lora_alpha / r: ours folded in, whatever our scaling
    tensors, rank_pattern, alpha_pattern = {}, {}, {}
    for hf, (A, B, m, s) in sorted(pieces.items()):
        key = PEFT_PREFIX + hf
        tensors[f"{key}.lora_A.weight"] = A.detach().contiguous().cpu().float()
        tensors[f"{key}.lora_B.weight"] = B.detach().contiguous().cpu().float()
        tensors[f"{key}.lora_magnitude_vector"] = m.detach().contiguous().cpu().float()
        R = A.shape[0]
        if R != r:
            rank_pattern[hf] = R
        if not math.isclose(s * R, lora_alpha, rel_tol=1e-12):
            alpha_pattern[hf] = s * R
    dropout = layers[0][1].lora.dropout
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model_name_or_path,
        "r": r, "lora_alpha": lora_alpha, "lora_dropout": dropout.p if isinstance(dropout, nn.Dropout) else 0.0,
        "target_modules": sorted(pieces), "rank_pattern": rank_pattern, "alpha_pattern": alpha_pattern,
        "fan_in_fan_out": True, "bias": "none", "use_rslora": False, "use_dora": True,
        "init_lora_weights": True, "modules_to_save": None, "inference_mode": True,
    }
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"{out_dir} is a file; give a folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out_dir / PEFT_WEIGHTS, save(tensors, metadata={"format": "pt"}))
    atomic_write_bytes(out_dir / PEFT_CONFIG, (json.dumps(config, indent=2) + "\n").encode())
    return out_dir


def import_peft_dora(model: nn.Module, path: str | os.PathLike, module_names: dict) -> nn.Module:
    """Load a PEFT DoRA adapter (LoRA with use_dora=true, the folder save_pretrained wrote) as DoRA layers
    (apply_dora, then PEFT's factors and magnitudes copied in), either attention layout: GPT-2's c_attn onto
    our fused qkv, or its three thirds onto W_query, W_key, W_value (each with all of A, its rows of B and of
    the magnitude; exact, since DoRA's norms are per output row). Every parameter ends up frozen."""
    folder = Path(path)
    try:
        config = json.loads((folder / PEFT_CONFIG).read_text())
        tensors = load((folder / PEFT_WEIGHTS).read_bytes())
    except FileNotFoundError as e:
        raise FileNotFoundError(f"no PEFT adapter at {folder}: {PEFT_CONFIG} and {PEFT_WEIGHTS} are needed "
                                f"({e.filename} is missing)") from None
    except (json.JSONDecodeError, UnicodeDecodeError, SafetensorError) as e:
        raise ValueError(f"{folder}: unreadable PEFT adapter ({e})") from None
    if not isinstance(config, dict) or config.get("peft_type") != "LORA" or not config.get("use_dora"):
        raise ValueError(f"{folder / PEFT_CONFIG}: not a DoRA adapter (peft_type LORA with use_dora=true); "
                         f"plain LoRA adapters load with lora.import_peft_adapter")
    for key in ("modules_to_save", "layer_replication"):
        if config.get(key):
            raise ValueError(f"{folder / PEFT_CONFIG}: {key}={config[key]!r} is not supported by this DoRA import")
    if config.get("bias", "none") != "none":
        raise ValueError(f"{folder / PEFT_CONFIG}: bias={config['bias']!r} is not supported (only 'none')")
    r, lora_alpha = config.get("r", 8), config.get("lora_alpha", 8)
    found: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        k = key[len(PEFT_PREFIX):] if key.startswith(PEFT_PREFIX) else key
        for suffix, slot in ((".lora_A.weight", "A"), (".lora_B.weight", "B"), (".lora_magnitude_vector", "m")):
            if k.endswith(suffix):
                found.setdefault(k[: -len(suffix)], {})[slot] = t
                break
        else:
            raise ValueError(f"{folder}: tensor {key!r} is not a DoRA factor (lora_A, lora_B, lora_magnitude_vector)")
    plan = {}  # our module -> (A (R, d_in), B (d_out, R), m (d_out,), scale)
    for hf, parts in sorted(found.items()):
        if hf not in module_names:
            raise ValueError(f"{folder}: PEFT module {hf!r} has no counterpart in module_names")
        if set(parts) != {"A", "B", "m"}:
            raise ValueError(f"{folder}: {hf} lacks {sorted({'A', 'B', 'm'} - set(parts))}")
        A, B, m = parts["A"], parts["B"], parts["m"]
        R = A.shape[0]
        alpha = _pattern_value(config.get("alpha_pattern") or {}, hf, lora_alpha)
        scale = alpha / math.sqrt(R) if config.get("use_rslora") else alpha / R
        if R != _pattern_value(config.get("rank_pattern") or {}, hf, r) or B.shape != (m.shape[0], R):
            raise ValueError(f"{folder}: {hf} has lora_A {tuple(A.shape)}, lora_B {tuple(B.shape)} and a magnitude "
                             f"of {m.shape[0]}: not a rank-{R} DoRA")
        ours = module_names[hf]
        if isinstance(ours, str):
            plan[ours] = (A, B, m, scale)
            continue
        d = B.shape[0] // 3
        for slot, name in enumerate(ours):
            B_s, m_s = B[slot * d:(slot + 1) * d], m[slot * d:(slot + 1) * d]
            keep = B_s.abs().sum(0) != 0  # columns of A that reach this third
            if keep.any():
                plan[name] = (A[keep], B_s[:, keep], m_s, scale)
            elif not torch.allclose(m_s, model.get_submodule(name).weight.detach().float().norm(p=2, dim=1)):
                raise ValueError(f"{folder}: {hf}'s third for {name} has no LoRA but a trained magnitude; "
                                 f"load it with attention='fused'")
    ranks = {name: p[0].shape[0] for name, p in plan.items()}
    alphas = {name: p[3] * ranks[name] for name, p in plan.items()}  # for our "alpha/r"
    cfg = LoraConfig(rank=r, alpha=alphas[next(iter(plan))] * r / ranks[next(iter(plan))],
                     dropout=float(config.get("lora_dropout") or 0.0), targets=tuple(sorted(plan)),
                     rank_pattern={re.escape(n): R for n, R in ranks.items() if R != r},
                     alpha_pattern={re.escape(n): a for n, a in alphas.items()})
    apply_dora(model, cfg)
    with torch.no_grad():
        for name, (A, B, m, _) in plan.items():
            layer = model.get_submodule(name)
            layer.lora.lora_A.copy_(A.T)  # (R, d_in) -> (d_in, R)
            layer.lora.lora_B.copy_(B.T)
            layer.lora_magnitude_vector.copy_(m)
    model.requires_grad_(False)
    return model


__all__ = ["LinearWithDoRA", "apply_dora", "merge_dora", "dora_parameter_count", "dora_layers",
           "export_peft_dora", "import_peft_dora"]
