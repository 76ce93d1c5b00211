"""Export a LoRA adapter of our GPT in PEFT's format, for transformers' GPT-2.

    export_peft_adapter(model, "out/peft-spam", base_model_name_or_path="gpt2")
    # then, with transformers + peft:
    # PeftModel.from_pretrained(GPT2LMHeadModel.from_pretrained("gpt2"), "out/peft-spam")

PEFT writes two files (peft/utils/save_and_load.py, peft/tuners/lora/config.py):
* adapter_model.safetensors, keys like
  `base_model.model.transformer.h.0.attn.c_attn.lora_A.weight` (r, d_in) and `...lora_B.weight`
  (d_out, r): the weights of two nn.Linear layers, i.e. our A and B transposed.
* adapter_config.json: peft_type "LORA", r, lora_alpha (scale = lora_alpha / r), lora_dropout,
  target_modules (module-name suffixes), fan_in_fan_out=True because GPT-2's layers are
  transformers' Conv1D (weight stored (d_in, d_out)), rank_pattern / alpha_pattern for modules
  whose rank differs from r.

Names are mapped in one place, `GPT2_MODULE_NAMES`: our att.W_query/W_key/W_value or att.qkv
-> attn.c_attn, att.out_proj -> attn.c_proj, ff.layers.0 -> mlp.c_fc, ff.layers.2 -> mlp.c_proj,
out_head -> lm_head.

The fused projection needs one thought. PEFT puts ONE LoRA on c_attn: A (d_in, R), B (R, 3d).
Ours has one (A_j, B_j) pair of rank r per enabled projection. Both are the same function if
PEFT's A is our A blocks side by side (R = n * r) and its B is block-diagonal: B_j in the rows
of its projection's slice, zeros elsewhere (also zeros for a disabled projection). So LoRA at
rank r on q and v exports as a PEFT LoRA of rank 2r on c_attn (set in rank_pattern), with
alpha chosen so that PEFT's lora_alpha / R equals our scale. The same holds for separate
W_query/W_key/W_value layers, which GPT-2's checkpoint stores fused.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch
from safetensors.torch import save
from torch import nn

from lora.adapters import atomic_write_bytes
from lora.apply import _check_adapter, _saved_modules, active_adapter, adapter_configs, lora_modules
from lora.layers import FusedQKVWithLoRA

PEFT_WEIGHTS = "adapter_model.safetensors"
PEFT_CONFIG = "adapter_config.json"

# (pattern for our module name, transformers GPT-2 module name, qkv slot or None)
GPT2_MODULE_NAMES = [
    (r"trf_blocks\.(\d+)\.att\.W_query", "transformer.h.{}.attn.c_attn", 0),
    (r"trf_blocks\.(\d+)\.att\.W_key", "transformer.h.{}.attn.c_attn", 1),
    (r"trf_blocks\.(\d+)\.att\.W_value", "transformer.h.{}.attn.c_attn", 2),
    (r"trf_blocks\.(\d+)\.att\.qkv", "transformer.h.{}.attn.c_attn", None),
    (r"trf_blocks\.(\d+)\.att\.out_proj", "transformer.h.{}.attn.c_proj", None),
    (r"trf_blocks\.(\d+)\.ff\.layers\.0", "transformer.h.{}.mlp.c_fc", None),
    (r"trf_blocks\.(\d+)\.ff\.layers\.2", "transformer.h.{}.mlp.c_proj", None),
    (r"out_head", "lm_head", None),
]


def _hf_name(name: str) -> tuple[str, int | None]:
    for pattern, hf, slot in GPT2_MODULE_NAMES:
        m = re.fullmatch(pattern, name)
        if m:
            return hf.format(*m.groups()), slot
    raise ValueError(f"cannot export LoRA on {name!r} to PEFT's GPT-2 format: only "
                     f"{[p for p, _, _ in GPT2_MODULE_NAMES]} have a GPT-2 name")


def _pieces(model: nn.Module, name: str) -> dict[str, list]:
    """HF module name -> [(slot or None, A (d_in, r), B (r, d_out)), ...] for adapter `name`."""
    out: dict[str, list] = {}
    for mname, m in lora_modules(model):
        if name not in m.lora:
            continue
        hf, slot = _hf_name(mname)
        branch = m.lora[name]
        if isinstance(m, FusedQKVWithLoRA):
            n, r, _ = branch.lora_B.shape
            for j, s in enumerate(branch.enabled_slots):
                out.setdefault(hf, []).append((s, branch.lora_A[:, j * r:(j + 1) * r], branch.lora_B[j]))
        else:
            out.setdefault(hf, []).append((slot, branch.lora_A, branch.lora_B))
    return out


def _combine(pieces: list) -> tuple[torch.Tensor, torch.Tensor]:
    """PEFT's (lora_A.weight (R, d_in), lora_B.weight (d_out, R)) for one module."""
    if len(pieces) == 1 and pieces[0][0] is None:
        _, A, B = pieces[0]
        return A.T.contiguous(), B.T.contiguous()
    if any(slot is None for slot, _, _ in pieces):
        raise ValueError("a c_attn module has both a whole-layer LoRA and per-projection LoRA")
    d = pieces[0][2].shape[1]  # width of one projection
    R = sum(A.shape[1] for _, A, _ in pieces)
    A_peft = torch.cat([A for _, A, _ in pieces], dim=1).T.contiguous()  # (R, d_in)
    B_peft = torch.zeros(3 * d, R, dtype=pieces[0][2].dtype, device=pieces[0][2].device)  # (3d, R)
    col = 0
    for slot, A, B in pieces:  # block-diagonal: projection `slot` reads only its own r columns
        r = A.shape[1]
        B_peft[slot * d:(slot + 1) * d, col:col + r] = B.T
        col += r
    return A_peft, B_peft


def _short_keys(names: list[str], n_blocks: int | None) -> dict[str, list[str]]:
    """Group full HF names by a short target name ("c_attn", "attn.c_proj", ...) when every block
    has it; otherwise keep the full names (PEFT matches target_modules as name suffixes)."""
    groups: dict[str, list[str]] = {}
    for full in names:
        key = "lm_head" if full == "lm_head" else ".".join(full.split(".")[-2:])  # attn.c_attn, mlp.c_fc, ...
        groups.setdefault(key, []).append(full)
    out: dict[str, list[str]] = {}
    for key, fulls in groups.items():
        if key == "lm_head" or (n_blocks is not None and len(fulls) == n_blocks):
            short = key.split(".")[-1] if key in ("attn.c_attn", "mlp.c_fc") else key
            out[short] = fulls
        else:
            for f in fulls:
                out[f] = [f]
    return out


def export_peft_adapter(model: nn.Module, out_dir: str | os.PathLike, base_model_name_or_path: str | None = None,
                        adapter_name: str | None = None) -> Path:
    """Write adapter `adapter_name` (default: the active one) of a GPTModel in PEFT's LoRA format
    for transformers' GPT2LMHeadModel. Returns the folder."""
    name = adapter_name or active_adapter(model)
    if name is None:
        raise ValueError("this model has no LoRA adapter to export; apply_lora first")
    _check_adapter(model, name)
    cfg = adapter_configs(model)[name]
    pieces = _pieces(model, name)
    if not pieces:
        raise ValueError(f"adapter {name!r} has no LoRA layers to export")

    tensors, ranks = {}, {}
    for hf, parts in pieces.items():
        A, B = _combine(parts)
        tensors[f"base_model.model.{hf}.lora_A.weight"] = A.detach().to("cpu", torch.float32)
        tensors[f"base_model.model.{hf}.lora_B.weight"] = B.detach().to("cpu", torch.float32)
        ranks[hf] = A.shape[0]

    to_save = []
    for mname, m in _saved_modules(model):
        if name not in m.modules_to_save:
            continue
        head = m.modules_to_save[name]
        vocab = getattr(getattr(model, "cfg", None), "vocab_size", None)
        if mname != "out_head" or not isinstance(head, nn.Linear) or head.bias is not None or \
                (vocab is not None and head.out_features != vocab):
            raise ValueError(f"cannot export module to save {mname!r} to PEFT's GPT-2 format: only an LM head "
                             f"out_head (emb_dim -> vocab_size, no bias) has a GPT2LMHeadModel counterpart (lm_head); "
                             f"a classification head does not")
        tensors["base_model.model.lm_head.weight"] = head.weight.detach().to("cpu", torch.float32).contiguous()
        to_save.append("lm_head")

    # PEFT computes scale = lora_alpha / r per module; choose lora_alpha so that equals ours.
    scale = cfg.scale
    lora_alpha = cfg.alpha if cfg.scaling == "alpha/r" else scale * cfg.rank
    n_blocks = len(model.trf_blocks) if hasattr(model, "trf_blocks") else None
    targets = _short_keys(sorted(pieces), n_blocks)
    rank_pattern, alpha_pattern = {}, {}
    for key, fulls in targets.items():
        rs = {ranks[f] for f in fulls}
        if len(rs) > 1:
            raise ValueError(f"modules {fulls} have different ranks {sorted(rs)}")
        R = rs.pop()
        if R != cfg.rank:
            rank_pattern[key] = R
            alpha_pattern[key] = scale * R

    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_name_or_path,
        "r": cfg.rank,
        "lora_alpha": lora_alpha,
        "lora_dropout": cfg.dropout,
        "target_modules": sorted(targets),
        "rank_pattern": rank_pattern,
        "alpha_pattern": alpha_pattern,
        "fan_in_fan_out": True,  # GPT-2's Conv1D stores weights (d_in, d_out); PEFT flips it for nn.Linear
        "bias": "none",
        "use_rslora": False,  # our scale is folded into lora_alpha, whatever our scaling convention
        "use_dora": False,
        "init_lora_weights": True,
        "modules_to_save": to_save or None,
        "inference_mode": True,
    }
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"{out_dir} is a file; give a folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out_dir / PEFT_WEIGHTS, save(tensors, metadata={"format": "pt"}))
    atomic_write_bytes(out_dir / PEFT_CONFIG, (json.dumps(config, indent=2) + "\n").encode())
    return out_dir
