"""Load OpenAI's GPT-2 checkpoints (Hugging Face safetensors layout) into our GPTModel.

OpenAI released GPT-2 in four sizes; the Hugging Face Hub hosts them as `model.safetensors`
plus `config.json` (see gpt/download.py). Their parameter names are OpenAI's: `wte`, `wpe`,
`h.{i}.ln_1`, `attn.c_attn`, `attn.c_proj`, `mlp.c_fc`, `mlp.c_proj`, `ln_f`. This module maps
them onto the book's names in one place, `hf_to_gpt_state_dict`:

    wte                  -> tok_emb              wpe                -> pos_emb
    h.{i}.ln_1           -> trf_blocks.{i}.norm1 (weight, bias -> scale, shift)
    h.{i}.attn.c_attn    -> trf_blocks.{i}.att.qkv, or split into W_query, W_key, W_value
    h.{i}.attn.c_proj    -> trf_blocks.{i}.att.out_proj
    h.{i}.ln_2           -> trf_blocks.{i}.norm2
    h.{i}.mlp.c_fc       -> trf_blocks.{i}.ff.layers.0   (d -> 4d)
    h.{i}.mlp.c_proj     -> trf_blocks.{i}.ff.layers.2   (4d -> d)
    ln_f                 -> final_norm
    (lm_head = wte)      -> out_head, tied to tok_emb

Three details that trip people up:
* OpenAI's `Conv1D` stores its weight as (in, out), the transpose of nn.Linear's (out, in);
  every c_attn / c_proj / c_fc weight is transposed on the way in.
* c_attn is one (d, 3d) projection whose output columns are [queries | keys | values]; the
  fused attention keeps it whole, the separate one splits it in three (gpt.model.convert_state_dict).
* Files saved from `GPT2LMHeadModel` prefix every key with `transformer.`, files saved from
  `GPT2Model` (like openai-community/gpt2's own model.safetensors) do not; both are accepted.
  The older files also carry `h.{i}.attn.bias` / `attn.masked_bias`, the causal mask stored as a
  buffer, not a parameter: dropped (our attention builds the mask itself).

Reference implementations of the same mapping: the book's `load_weights_into_gpt`
(github.com/rasbt/LLMs-from-scratch, ch05) and nanoGPT's `GPT.from_pretrained`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from gpt.config import GPT2_CHECKPOINT_SETTINGS, GPTConfig
from gpt.download import HF_REPOS, WEIGHTS_FILE, download_gpt2, manual_download_instructions, model_dir, verify_checksum
from gpt.model import GPTModel, convert_state_dict

CONFIG_FILE = "config.json"
PREFIX = "transformer."
# The causal-mask buffers of older transformers versions: not weights, never loaded.
_MASK_BUFFER = re.compile(r"^h\.\d+\.attn\.(bias|masked_bias)$")
# GPT-2's four widths and their head counts, for checkpoints that come without config.json.
_GPT2_HEADS = {768: 12, 1024: 16, 1280: 20, 1600: 25}


# ----------------------------------------------------------------------------- reading files

def _checkpoint_files(path: str | Path) -> tuple[Path, Path | None]:
    """A .safetensors file, or a folder holding model.safetensors -> (weights file, config.json or None)."""
    path = Path(path).expanduser()
    if path.is_dir():
        weights = path / WEIGHTS_FILE
        if not weights.is_file():
            present = sorted(p.name for p in path.iterdir())
            raise FileNotFoundError(
                f"no {WEIGHTS_FILE} in {path} (it holds {present}); only the safetensors format is "
                f"read (pytorch_model.bin is a pickle, which this project never loads)"
            )
    elif path.is_file():
        weights = path
    else:
        raise FileNotFoundError(f"GPT-2 checkpoint not found: {path}")
    config = weights.parent / CONFIG_FILE
    return weights, (config if config.is_file() else None)


def _normalize_keys(hf_sd: dict) -> dict:
    """Strip the `transformer.` prefix and drop the attention-mask buffers."""
    out = {}
    for key, value in hf_sd.items():
        name = key[len(PREFIX):] if key.startswith(PREFIX) else key
        if _MASK_BUFFER.match(name):
            continue
        if name in out:
            raise ValueError(f"checkpoint has {name!r} both with and without the {PREFIX!r} prefix")
        out[name] = value
    return out


def load_gpt2_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a GPT-2 checkpoint's tensors, OpenAI's names, without the `transformer.` prefix.

    path: a `.safetensors` file or a folder containing `model.safetensors`. When a
    `model.safetensors.sha256` was recorded at download time, the file is checked against it
    first. Raises FileNotFoundError when there is no such file and ValueError (naming the file)
    when it is truncated, corrupt or fails its checksum.
    """
    weights, _ = _checkpoint_files(path)
    verify_checksum(weights)
    try:
        hf_sd = load_file(weights)
    except SafetensorError as err:
        raise ValueError(
            f"{weights} is not a readable safetensors file ({err}); it is probably truncated or "
            f"corrupt: delete it and download it again"
        ) from err
    return _normalize_keys(hf_sd)


# ----------------------------------------------------------------------------- configuration

def gpt2_config_from_hf(config: dict) -> GPTConfig:
    """A Hugging Face GPT-2 `config.json` (as a dict) -> GPTConfig with the checkpoint settings.

    Only what our model can represent is accepted: GPT-2's tanh-GELU, LayerNorm eps 1e-5, a 4x
    feed-forward and the plain 1/sqrt(head_dim) attention scaling; anything else is a ValueError
    rather than a model that silently computes something else.
    """
    missing = [k for k in ("n_embd", "n_layer", "n_head", "n_positions", "vocab_size") if k not in config]
    if missing:
        raise ValueError(f"GPT-2 config is missing {missing}")
    if config.get("model_type", "gpt2") != "gpt2":
        raise ValueError(f"not a GPT-2 config: model_type={config['model_type']!r}")
    checks = [
        ("activation_function", config.get("activation_function", "gelu_new") in ("gelu_new", "gelu_pytorch_tanh"),
         "GELU with the tanh approximation ('gelu_new')"),
        ("layer_norm_epsilon", abs(config.get("layer_norm_epsilon", 1e-5) - 1e-5) < 1e-12, "1e-5"),
        ("n_inner", config.get("n_inner") in (None, 4 * config["n_embd"]), "4 * n_embd (or null)"),
        ("scale_attn_weights", config.get("scale_attn_weights", True) is True, "true"),
        ("scale_attn_by_inverse_layer_idx", config.get("scale_attn_by_inverse_layer_idx", False) is False, "false"),
    ]
    for key, ok, supported in checks:
        if not ok:
            raise ValueError(f"GPT-2 config has {key}={config[key]!r}; this model supports only {supported}")
    settings = dict(GPT2_CHECKPOINT_SETTINGS)
    settings["tie_weights"] = bool(config.get("tie_word_embeddings", True))
    return GPTConfig(
        vocab_size=config["vocab_size"], context_length=config["n_positions"], emb_dim=config["n_embd"],
        n_heads=config["n_head"], n_layers=config["n_layer"], **settings,
    )


def _config_from_shapes(hf_sd: dict, weights: Path, n_heads: int | None = None) -> GPTConfig:
    """For a checkpoint without config.json: sizes from the tensors' shapes; the number of heads
    (which no shape shows) given, or looked up among GPT-2's four widths."""
    if "wte.weight" not in hf_sd or "wpe.weight" not in hf_sd:
        raise ValueError(f"{weights} has no wte.weight / wpe.weight: not a GPT-2 checkpoint")
    vocab_size, emb_dim = hf_sd["wte.weight"].shape
    context_length = hf_sd["wpe.weight"].shape[0]
    n_layers = len({int(k.split(".")[1]) for k in hf_sd if k.startswith("h.")})
    if n_heads is None and emb_dim not in _GPT2_HEADS:
        raise ValueError(
            f"no {CONFIG_FILE} next to {weights} and emb_dim={emb_dim} is none of GPT-2's widths "
            f"{sorted(_GPT2_HEADS)}: the number of heads cannot be read off the shapes; put the "
            f"checkpoint's {CONFIG_FILE} next to it or pass n_heads=..."
        )
    settings = dict(GPT2_CHECKPOINT_SETTINGS)
    settings["tie_weights"] = "lm_head.weight" not in hf_sd
    return GPTConfig(vocab_size=vocab_size, context_length=context_length, emb_dim=emb_dim,
                     n_heads=n_heads or _GPT2_HEADS[emb_dim], n_layers=n_layers, **settings)


# ----------------------------------------------------------------------------- the name mapping

# transformers' GPT-2 module names -> ours: the one map, used for checkpoints here and for adapters
# (lora.peft_format, given gpt2_module_names) and by benchmarks/bench_peers.py.
GPT2_TOP_MODULES = {"wte": "tok_emb", "wpe": "pos_emb", "ln_f": "final_norm"}
GPT2_BLOCK_MODULES = {  # inside block i: h.{i}.<key> -> trf_blocks.{i}.<value> (fused layout)
    "ln_1": "norm1", "attn.c_attn": "att.qkv", "attn.c_proj": "att.out_proj",
    "ln_2": "norm2", "mlp.c_fc": "ff.layers.0", "mlp.c_proj": "ff.layers.2",
}
GPT2_SEPARATE_QKV = ("att.W_query", "att.W_key", "att.W_value")  # c_attn's column blocks [q | k | v], separate layout


def gpt2_module_names(cfg: GPTConfig) -> dict[str, str | tuple[str, str, str]]:
    """Module names of transformers' GPT2LMHeadModel -> ours in GPTModel(cfg).

    {"transformer.h.0.attn.c_attn": "trf_blocks.0.att.qkv", ..., "lm_head": "out_head"}; in the
    separate layout c_attn maps to the three names ("trf_blocks.0.att.W_query", "...W_key",
    "...W_value") of its output's three equal column blocks.
    """
    names: dict[str, str | tuple[str, str, str]] = {PREFIX + hf: ours for hf, ours in GPT2_TOP_MODULES.items()}
    for i in range(cfg.n_layers):
        for hf, ours in GPT2_BLOCK_MODULES.items():
            if hf == "attn.c_attn" and cfg.attention == "separate":
                names[f"{PREFIX}h.{i}.{hf}"] = tuple(f"trf_blocks.{i}.{q}" for q in GPT2_SEPARATE_QKV)
            else:
                names[f"{PREFIX}h.{i}.{hf}"] = f"trf_blocks.{i}.{ours}"
    names["lm_head"] = "out_head"
    return names


def _name_map(cfg: GPTConfig) -> list[tuple[str, str, bool]]:
    """(OpenAI name, our name in the *fused* layout, is it a Conv1D weight to transpose)."""
    names = [(f"{hf}.weight", f"{GPT2_TOP_MODULES[hf]}.weight", False) for hf in ("wte", "wpe")]
    for i in range(cfg.n_layers):
        for hf, ours in GPT2_BLOCK_MODULES.items():
            hf, ours = f"h.{i}.{hf}", f"trf_blocks.{i}.{ours}"
            if hf.endswith(("ln_1", "ln_2")):  # LayerNorm: weight, bias -> scale, shift
                names += [(hf + ".weight", ours + ".scale", False), (hf + ".bias", ours + ".shift", False)]
                continue
            names.append((hf + ".weight", ours + ".weight", True))
            if cfg.qkv_bias or not hf.endswith("attn.c_attn"):
                names.append((hf + ".bias", ours + ".bias", False))
    names += [("ln_f.weight", "final_norm.scale", False), ("ln_f.bias", "final_norm.shift", False)]
    if not cfg.tie_weights:
        names.append(("lm_head.weight", "out_head.weight", False))
    return names


def _listing(keys, limit: int = 8) -> str:
    keys = sorted(keys)
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def hf_to_gpt_state_dict(hf_sd: dict, cfg: GPTConfig, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """OpenAI's GPT-2 tensors -> a state dict for `GPTModel(cfg)` (cfg.attention decides the layout).

    Checks before converting anything: every tensor the model needs is there, nothing is left
    over, and every shape fits `cfg`; otherwise a ValueError names the keys (and the expected
    and actual shapes). Tensors are cast to `dtype`.
    """
    hf_sd = _normalize_keys(hf_sd)  # a new dict: popping lm_head below leaves the caller's alone
    if cfg.tie_weights and "lm_head.weight" in hf_sd:
        # A tied checkpoint may still store the head; it must then be the embedding itself.
        lm_head = hf_sd.pop("lm_head.weight")
        if "wte.weight" in hf_sd and not torch.equal(lm_head, hf_sd["wte.weight"]):
            raise ValueError("lm_head.weight differs from wte.weight, but the config ties them "
                             "(tie_weights=True); load it with tie_weights=False")

    names = _name_map(cfg)
    expected_keys = {hf for hf, _, _ in names}
    missing, unexpected = expected_keys - set(hf_sd), set(hf_sd) - expected_keys
    if missing or unexpected:
        hint = ""
        if any(k.endswith("c_attn.bias") for k in unexpected):
            hint = " (the checkpoint has qkv biases: use qkv_bias=True)"
        elif any(k.endswith("c_attn.bias") for k in missing):
            hint = " (the checkpoint has no qkv biases: use qkv_bias=False)"
        raise ValueError(
            f"checkpoint does not fit GPTConfig(emb_dim={cfg.emb_dim}, n_layers={cfg.n_layers}, "
            f"qkv_bias={cfg.qkv_bias}, tie_weights={cfg.tie_weights}){hint}:\n"
            f"  missing keys: [{_listing(missing)}]\n  unexpected keys: [{_listing(unexpected)}]"
        )

    # Expected shapes come from the model itself, built on the meta device (no memory, no init).
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in GPTModel(cfg.replace(attention="fused")).state_dict().items()}
    wrong = []
    for hf, ours, conv1d in names:
        expected = shapes[ours][::-1] if conv1d else shapes[ours]  # Conv1D is stored (in, out)
        if tuple(hf_sd[hf].shape) != expected:
            wrong.append(f"{hf}: expected shape {expected}, checkpoint has {tuple(hf_sd[hf].shape)}")
    if wrong:
        more = f"\n  ... and {len(wrong) - 8} more" if len(wrong) > 8 else ""
        raise ValueError(
            f"checkpoint shapes do not fit GPTConfig(vocab_size={cfg.vocab_size}, context_length="
            f"{cfg.context_length}, emb_dim={cfg.emb_dim}, n_heads={cfg.n_heads}):\n  "
            + "\n  ".join(wrong[:8]) + more
        )

    sd = {}
    for hf, ours, conv1d in names:
        tensor = hf_sd[hf].to(dtype)
        sd[ours] = tensor.t().contiguous() if conv1d else tensor  # Conv1D (in, out) -> Linear (out, in)
    if cfg.tie_weights:
        sd["out_head.weight"] = sd["tok_emb.weight"]
    if cfg.attention == "separate":
        sd = convert_state_dict(sd, to="separate")  # qkv rows [q | k | v] -> W_query, W_key, W_value
    return sd


# ----------------------------------------------------------------------------- the model

def resolve_checkpoint(source: str | Path, download: bool = False) -> Path:
    """A path (file or folder) as is; a preset name ("gpt2-small" ... "gpt2-xl") -> its cache folder.

    A preset that is not in the cache is downloaded only when download=True; otherwise
    FileNotFoundError says how to get it.
    """
    path = Path(source).expanduser()
    if path.exists():
        return path
    name = str(source)
    if name not in HF_REPOS:
        raise FileNotFoundError(
            f"{name!r} is neither an existing file or folder nor a GPT-2 checkpoint name {sorted(HF_REPOS)}"
        )
    folder = model_dir(name)
    if (folder / WEIGHTS_FILE).is_file() and (folder / CONFIG_FILE).is_file():
        return folder
    if download:
        return download_gpt2(name)
    raise FileNotFoundError(
        f"GPT-2 {name!r} is not in the cache ({folder}). Run `python -m gpt.download {name}` or "
        f"pass download=True (both need the internet).\n" + manual_download_instructions(name)
    )


def load_gpt2(source: str | Path, attention: str = "separate", device: str | torch.device = "cpu",
              download: bool = False, **config_overrides) -> GPTModel:
    """A GPTModel holding OpenAI's GPT-2 weights, in eval mode.

    source: a preset name ("gpt2-small", "gpt2-medium", "gpt2-large", "gpt2-xl"), looked up in
        the cache (gpt/download.py) and downloaded there only when download=True; or a local
        `.safetensors` file or folder with `model.safetensors` (and usually `config.json`).
    attention: "separate" (W_query, W_key, W_value) or "fused" (qkv); same logits either way.
    config_overrides: GPTConfig fields to change, e.g. drop_rate=0.1 before fine-tuning, or
        n_heads=... for a checkpoint without config.json.

    >>> model = load_gpt2("gpt2-small")  # doctest: +SKIP
    """
    weights, config_file = _checkpoint_files(resolve_checkpoint(source, download))
    hf_sd = load_gpt2_state_dict(weights)
    if config_file is not None:
        cfg = gpt2_config_from_hf(json.loads(config_file.read_text()))
    else:
        cfg = _config_from_shapes(hf_sd, weights, n_heads=config_overrides.get("n_heads"))
    cfg = cfg.replace(attention=attention, **config_overrides)
    state = hf_to_gpt_state_dict(hf_sd, cfg)
    del hf_sd  # the transposed copies replace the originals: free them before building the model

    # Build the model on the meta device and adopt the loaded tensors (assign=True): no time
    # spent on a random initialisation that would be overwritten, no second copy in memory.
    with torch.device("meta"):
        model = GPTModel(cfg)
    model.load_state_dict(state, strict=True, assign=True)
    if cfg.tie_weights:
        # assign=True gives each module its own Parameter object; share one again.
        model.out_head.weight = model.tok_emb.weight
    leftovers = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if leftovers:
        raise RuntimeError(f"load_gpt2: no checkpoint values for {leftovers}")
    return model.to(device).eval()


__all__ = ["load_gpt2", "load_gpt2_state_dict", "gpt2_config_from_hf", "hf_to_gpt_state_dict", "resolve_checkpoint",
           "gpt2_module_names", "GPT2_TOP_MODULES", "GPT2_BLOCK_MODULES", "GPT2_SEPARATE_QKV"]
