"""Solutions to the exercises of chapter 8 (notebooks/08_adapters_in_practice.ipynb): adapters in practice.

Kept outside the notebooks so that a class can hand the notebooks out without the answers.
Each function returns the numbers its answer rests on; tests/test_solutions_ch08.py checks them.
The discussion (and Exercise 8.5, which is prose only) is in solutions/ch08.md.

The code runs on a random gpt-tiny so that the tests take seconds; pass preset="gpt-mini" to get
the chapter's sizes (the answers in the docstrings give both).
"""

from __future__ import annotations

from pathlib import Path

import torch

from classify.model import add_classification_head
from gpt.config import GPTConfig
from gpt.model import GPTModel
from lora import (LoraConfig, active_adapter, adapter_configs, apply_lora, load_adapter, lora_trainable_count, read_adapter,
                  save_adapter)


def _base(preset: str = "gpt-tiny", seed: int = 123) -> GPTModel:
    """The frozen base: a random model of `preset`, the same for the same seed."""
    torch.manual_seed(seed)
    return GPTModel(GPTConfig.from_preset(preset, drop_rate=0.0)).eval()


def _spam_model(preset: str = "gpt-tiny", rank: int = 8, seed: int = 123) -> GPTModel:
    """The chapter's setup on a base of `preset`: a new 2-class head and a "spam" adapter (LoRA on
    every linear layer of the blocks + its own copy of the head), with non-zero B as if trained."""
    model = _base(preset, seed)
    add_classification_head(model, num_classes=2)
    apply_lora(model, LoraConfig(rank=rank, alpha=16, targets="all-linear", modules_to_save=("out_head",)),
               adapter_name="spam")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.02)
    return model.eval()


def details_8_1(folder: str | Path, preset: str = "gpt-tiny") -> dict:
    """One self-contained file: save_adapter to a path ending in .safetensors, read the config back.

    Answer: the file's metadata holds the whole config: format and format_version, adapter_name,
    lora (rank, alpha, dropout, scaling, targets, modules_to_save), lora_modules (which layers carry
    LoRA), modules_to_save (the head's tensor shapes), base_model (class, the GPTConfig and the
    fingerprint of the base weights) and tensors_sha256 (damage detection). The tensors are the
    lora_A / lora_B of every wrapped layer and the head's weight and bias. One file is enough because
    loading needs exactly those: the config says how to re-apply LoRA, the fingerprint which base it
    needs, the tensors what to copy in. A fresh base with the file loaded gives the same logits.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = _spam_model(preset)
    path = save_adapter(model, folder / "spam.safetensors", name="spam")
    config, tensors = read_adapter(path)
    fresh = load_adapter(_base(preset), path)
    x = torch.randint(0, model.cfg.vocab_size, (2, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = (fresh(x) - model(x)).abs().max().item()
    return {"files": sorted(p.name for p in folder.iterdir()), "config_keys": sorted(config),
            "lora": config["lora"], "gpt_config": config["base_model"]["gpt_config"],
            "n_fingerprinted_tensors": len(config["base_model"]["fingerprint"]["tensors"]),
            "tensor_names": sorted(tensors), "fresh_vs_trained_max_diff": diff}


def details_8_2(folder: str | Path, preset: str = "gpt-tiny") -> dict:
    """A base that differs in ONE number.

    Answer: load_adapter refuses with "this adapter was made for another base model (weights
    fingerprint differs: different values in ['trf_blocks.1.ff.layers.0.weight'])...; pass
    check_base=False to load it anyway": the per-tensor hashes name the tensor that differs.
    check_base=False skips the check (the architecture must still fit, the shapes are always
    checked). That is reasonable when you know the base is the same model in another form whose
    small differences you accept, e.g. the base re-saved in another precision or quantised
    (QLoRA trains adapters on a 4-bit base and applies them to it); then measure the outputs
    (here the logits move by about the size of the change). It is never reasonable for another model:
    an adapter is a difference to one set of weights.
    """
    folder = Path(folder)
    model = _spam_model(preset)
    save_adapter(model, folder / "spam", name="spam")
    other = _base(preset)
    with torch.no_grad():
        other.trf_blocks[-1].ff.layers[0].weight[0, 0] += 1e-3
    try:
        load_adapter(other, folder / "spam")
        error = None
    except ValueError as err:
        error = str(err)
    load_adapter(other, folder / "spam", check_base=False)  # a fresh attempt: the failed one changed nothing
    x = torch.randint(0, model.cfg.vocab_size, (2, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = (other(x) - model(x)).abs().max().item()
    return {"error": error, "changed_tensor": f"trf_blocks.{len(other.trf_blocks) - 1}.ff.layers.0.weight",
            "loaded_with_check_base_false": "spam" in getattr(other, "lora_adapters", {}),
            "logit_diff_on_perturbed_base": diff}


def details_8_3(folder: str | Path, preset: str = "gpt-tiny", ranks=(1, 2, 4, 8, 16)) -> dict[int, dict[str, int]]:
    """File size against rank, predicted from the shapes.

    Answer: the file holds r (d_in + d_out) float32 numbers per wrapped layer, plus the head's
    emb_dim * 2 + 2. all-linear wraps q, k, v, out_proj (d -> d) and the two feed-forward layers
    (d -> 4d, 4d -> d): 4 r 2d + 2 r 5d = 18 r d numbers per block. gpt-tiny (d = 32, 2 blocks):
    1,152 r + 66 numbers, 4,608 r + 264 bytes. gpt-mini (d = 256, 6 blocks): 27,648 r + 514 numbers,
    at r = 8 221,698 numbers = 886,792 bytes. The rest of the file is the safetensors header: a JSON
    with each tensor's name, dtype, shape and offsets, plus our config in its metadata, whose largest part
    is the per-tensor fingerprint of the base. It is a few KB and nearly the same at every rank (only
    the offsets' digits change), so small adapters are mostly header.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = GPTConfig.from_preset(preset)
    out = {}
    for r in ranks:
        path = save_adapter(_spam_model(preset, rank=r), folder / f"spam-r{r}.safetensors", name="spam")
        _, tensors = read_adapter(path)
        tensor_bytes = sum(t.numel() * t.element_size() for t in tensors.values())
        numbers = cfg.n_layers * 18 * r * cfg.emb_dim + cfg.emb_dim * 2 + 2
        out[r] = {"file_bytes": path.stat().st_size, "tensor_bytes": tensor_bytes, "predicted_bytes": 4 * numbers,
                  "header_bytes": path.stat().st_size - tensor_bytes}
    return out


def details_8_4() -> dict[str, dict[str, float]]:
    """Extra multiply-adds per token of an unmerged adapter, relative to the frozen linear layers.

    Answer: a LoRA branch on a d_in -> d_out layer costs d_in r + r d_out multiply-adds per token
    (x A, then B): exactly its parameter count. The frozen linear layers of one block cost
    4 d^2 (q, k, v, out_proj) + 8 d^2 (the feed-forward pair) = 12 d^2. gpt-mini, r = 8, all-linear:
    221,184 extra against 6 x 12 x 256^2 = 4,718,592, 4.7 %. GPT-2 124M, r = 8, query and value:
    294,912 against 12 x 12 x 768^2 = 84,934,656, 0.35 %. (Attention scores and the output head add
    work that LoRA does not touch, so the share of the whole forward pass is smaller still.)
    The measured slowdown at batch 1 is larger because a branch is two extra, very thin matmuls per
    layer (x A has only r = 8 columns) plus an addition: each call has a fixed cost (operator
    dispatch, Python, on a GPU a kernel launch) that does not shrink with the arithmetic, and thin
    matmuls run far below the machine's peak rate. At batch 1 the whole forward pass is small, so
    those fixed costs are a large share; at larger batches the big matmuls dominate again. Merging
    removes both.
    """
    out = {}
    setups = {"gpt-mini, r=8, all-linear": (GPTConfig.from_preset("gpt-mini"), LoraConfig(rank=8, targets="all-linear")),
              "gpt2-small, r=8, query+value": (GPTConfig.from_preset("gpt2-small"),
                                               LoraConfig(rank=8, targets=("query", "value")))}
    for name, (cfg, lcfg) in setups.items():
        extra = lora_trainable_count(cfg, lcfg)  # multiply-adds per token = LoRA parameters
        base = cfg.n_layers * 12 * cfg.emb_dim ** 2
        out[name] = {"extra_macs_per_token": extra, "base_linear_macs_per_token": base, "ratio": extra / base}
    return out


# ----------------------------------------------------------------------------- the notebook's answer functions

def exercise_8_1(model, path) -> dict:
    """Save `model`'s active adapter (the chapter's: "spam") as ONE file at `path` (ending in .safetensors) and
    return the configuration read back from that file's metadata (lora.read_adapter). The answer: details_8_1."""
    path = save_adapter(model, path, name=active_adapter(model))
    config, _ = read_adapter(path)
    return config


def wrong_exercise_8_1(model, path) -> dict:
    """Saves a folder (adapter.safetensors + adapter_config.json) at `path` instead of one file."""
    folder = save_adapter(model, Path(str(path) + "_folder"), name=active_adapter(model))
    config, _ = read_adapter(folder)
    return config


def exercise_8_2(make_base, adapter, nudge: float = 1e-3) -> dict:
    """Add `nudge` to ONE weight of a fresh base (make_base()), try to load `adapter` onto it, then load it with
    check_base=False: {"error": the refusal's message (str), "loaded_with_check_base_false": bool}. The answer:
    details_8_2."""
    base = make_base()
    with torch.no_grad():
        base.trf_blocks[-1].ff.layers[0].weight[0, 0] += nudge
    try:
        load_adapter(base, adapter)
        error = None
    except ValueError as err:
        error = str(err)
    load_adapter(base, adapter, check_base=False)
    return {"error": error, "loaded_with_check_base_false": bool(adapter_configs(base))}


def wrong_exercise_8_2(make_base, adapter, nudge: float = 1e-3) -> dict:
    """Nudges a clone of the weight instead of the weight itself: the base is unchanged, nothing is refused."""
    base = make_base()
    with torch.no_grad():
        w = base.trf_blocks[-1].ff.layers[0].weight.clone()
        w[0, 0] += nudge
    try:
        load_adapter(base, adapter)
        error = None
    except ValueError as err:
        error = str(err)
    return {"error": error, "loaded_with_check_base_false": bool(adapter_configs(base))}


def exercise_8_3(preset: str = "gpt-mini", ranks=(1, 2, 4, 8, 16)) -> dict[int, int]:
    """{rank: bytes of tensor data in the spam adapter's file}, predicted from the shapes: LoRA on every linear layer
    of the blocks at that rank plus the 2-class head's weight and bias, float32. The answer: details_8_3."""
    cfg = GPTConfig.from_preset(preset)
    d, n = cfg.emb_dim, cfg.n_layers
    return {r: 4 * (n * (4 * r * (d + d) + 2 * r * (d + 4 * d)) + d * 2 + 2) for r in ranks}


def wrong_exercise_8_3(preset: str = "gpt-mini", ranks=(1, 2, 4, 8, 16)) -> dict[int, int]:
    """Forgets the head's copy, which the adapter saves with its LoRA matrices."""
    cfg = GPTConfig.from_preset(preset)
    return {r: b - 4 * (cfg.emb_dim * 2 + 2) for r, b in exercise_8_3(preset, ranks).items()}


def exercise_8_4(preset: str = "gpt-mini", rank: int = 8, targets=("all-linear",)) -> dict:
    """Extra multiply-adds per token of an unmerged adapter against those of the blocks' frozen linear layers:
    {"extra_macs_per_token": int, "base_linear_macs_per_token": int, "ratio": float}. The answer: details_8_4."""
    cfg = GPTConfig.from_preset(preset)
    extra = lora_trainable_count(cfg, LoraConfig(rank=rank, targets=tuple(targets)))
    base = cfg.n_layers * 12 * cfg.emb_dim ** 2
    return {"extra_macs_per_token": extra, "base_linear_macs_per_token": base, "ratio": extra / base}


def wrong_exercise_8_4(preset: str = "gpt-mini", rank: int = 8, targets=("all-linear",)) -> dict:
    """Divides by every parameter of the model (the token embedding included), not the blocks' linear layers."""
    out = exercise_8_4(preset, rank, targets)
    with torch.device("meta"):
        total = sum(p.numel() for p in GPTModel(GPTConfig.from_preset(preset)).parameters())
    out["base_linear_macs_per_token"] = total
    out["ratio"] = out["extra_macs_per_token"] / total
    return out


def exercise_8_6(model, adapter: str, texts: list[str]) -> dict:
    """{"rows_nonzero": rows of adapter `adapter`'s lora_A on the token embedding that are not all zero,
    "token_ids_in_texts": distinct token ids in `texts`}. A starts at zero and a row receives a gradient only when
    its token occurs at a real position of a training batch, so the moved rows are those of the training
    sentences' tokens (minus any that occur only in the incomplete batches drop_last skips): every other
    token keeps the base's embedding, which is all a word seen only at test time gets."""
    from classify.dataset import encode_text

    lora_A = model.tok_emb.lora[adapter].lora_A  # (V, r)
    rows = int((lora_A != 0).any(dim=1).sum())
    return {"rows_nonzero": rows, "token_ids_in_texts": len({i for text in texts for i in encode_text(text)})}


def wrong_exercise_8_6(model, adapter: str, texts: list[str]) -> dict:
    """Counts the non-zero entries of A, not its rows (r per moved token)."""
    out = exercise_8_6(model, adapter, texts)
    out["rows_nonzero"] = int((model.tok_emb.lora[adapter].lora_A != 0).sum())
    return out
