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
from lora import (LoraConfig, active_adapter, adapter_configs, apply_lora, load_adapter, read_adapter,
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
    """What the adapter file holds, at several ranks: exercise_8_3 on each file, with the tensor bytes predicted
    from the shapes beside them.

    Answer: the tensors are r (d_in + d_out) numbers per wrapped layer, plus the head's emb_dim * 2 + 2.
    all-linear wraps q, k, v, out_proj (d -> d) and the two feed-forward layers (d -> 4d, 4d -> d):
    18 r d numbers per block. gpt-tiny (d = 32, 2 blocks): 4,608 r + 264 bytes in float32; gpt-mini at r = 8:
    886,792 bytes. The rest of the file is the safetensors header: each tensor's name, dtype, shape and
    offsets, plus our configuration in its metadata, whose largest part is the per-tensor fingerprint of the
    base. It is a few KB and nearly the same at every rank, so small adapters are mostly header.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = GPTConfig.from_preset(preset)
    out = {}
    for r in ranks:
        path = save_adapter(_spam_model(preset, rank=r), folder / f"spam-r{r}.safetensors", name="spam")
        numbers = cfg.n_layers * 18 * r * cfg.emb_dim + cfg.emb_dim * 2 + 2
        out[r] = {**exercise_8_3(path), "file_bytes": path.stat().st_size, "predicted_bytes": 4 * numbers}
    return out


def details_8_4(preset: str = "gpt-tiny") -> dict:
    """Every adapter asked about one batch: a model with a "spam" and a "sentiment" adapter (random, as if
    trained), the sentiment one active.

    Answer: exercise_8_4 gives each adapter's predictions and leaves "sentiment" active; the two adapters
    disagree on some texts (they are different classifiers), and asking costs one forward pass per adapter.
    """
    from lora import add_adapter, set_active_adapter

    model = _spam_model(preset)
    add_adapter(model, "sentiment", LoraConfig(rank=8, alpha=16, targets="all-linear", modules_to_save=("out_head",)))
    set_active_adapter(model, "sentiment")
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(std=0.5)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, model.cfg.vocab_size, (32, 12), generator=g)
    lengths = torch.randint(2, 13, (32,), generator=g)
    predictions = exercise_8_4(model, x, lengths)
    return {"adapters": sorted(predictions), "active_after": active_adapter(model),
            "shapes": {k: tuple(v.shape) for k, v in predictions.items()},
            "agree": int((predictions["spam"] == predictions["sentiment"]).sum())}


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


def typed_in_exercise_8_1(model, path) -> dict:
    """Types in the configuration section 8.6 prints (rank 8, alpha 16, all-linear, out_head) without saving a file."""
    return {"lora": {"alpha": 16.0, "dropout": 0.0, "modules_to_save": ["out_head"], "rank": 8,
                     "scaling": "alpha/r", "targets": ["all-linear"]}}


def shortcut_exercise_8_1(model, path) -> dict:
    """Saves the file but returns the configuration the model holds in memory instead of reading the file back."""
    import dataclasses

    name = active_adapter(model)
    save_adapter(model, path, name=name)
    return dataclasses.asdict(adapter_configs(model)[name])


def exercise_8_2(make_base, adapter, weight: str = "trf_blocks.0.ff.layers.0.weight", nudge: float = 1e-3) -> dict:
    """Add `nudge` to ONE number of the tensor `weight` of a fresh base (make_base()), try to load `adapter` onto it,
    then load it onto that base with check_base=False: {"error": the refusal's message (str),
    "loaded_with_check_base_false": bool}. The answer: details_8_2."""
    base = make_base()
    with torch.no_grad():
        base.get_parameter(weight).view(-1)[0] += nudge
    try:
        load_adapter(base, adapter)
        error = None
    except ValueError as err:
        error = str(err)
    load_adapter(base, adapter, check_base=False)
    return {"error": error, "loaded_with_check_base_false": bool(adapter_configs(base))}


def wrong_exercise_8_2(make_base, adapter, weight: str = "trf_blocks.0.ff.layers.0.weight", nudge: float = 1e-3) -> dict:
    """Nudges a clone of the weight instead of the weight itself: the base is unchanged, nothing is refused."""
    base = make_base()
    with torch.no_grad():
        w = base.get_parameter(weight).clone()
        w.view(-1)[0] += nudge
    try:
        load_adapter(base, adapter)
        error = None
    except ValueError as err:
        error = str(err)
    return {"error": error, "loaded_with_check_base_false": bool(adapter_configs(base))}


def typed_in_exercise_8_2(make_base, adapter, weight: str = "trf_blocks.0.ff.layers.0.weight",
                          nudge: float = 1e-3) -> dict:
    """Types in the refusal section 8.9 prints (another base altogether) and True, without nudging or loading."""
    return {"error": "this adapter was made for another base model (weights fingerprint differs: different values in "
                     "['final_norm.scale', 'final_norm.shift', 'pos_emb.weight', 'tok_emb.weight', "
                     "'trf_blocks.0.att.W_key.weight'] and 77 more); pass check_base=False to load it anyway",
            "loaded_with_check_base_false": True}


def shortcut_exercise_8_2(make_base, adapter, weight: str = "trf_blocks.0.ff.layers.0.weight",
                          nudge: float = 1e-3) -> dict:
    """Gets the refusal right but reports True for the second part without ever loading with check_base=False."""
    base = make_base()
    with torch.no_grad():
        base.get_parameter(weight).view(-1)[0] += nudge
    try:
        load_adapter(base, adapter)
        error = None
    except ValueError as err:
        error = str(err)
    return {"error": error, "loaded_with_check_base_false": True}


def _tensor_bytes(path) -> tuple[int, int]:
    _, tensors = read_adapter(path)
    return len(tensors), sum(t.numel() * t.element_size() for t in tensors.values())


def exercise_8_3(path) -> dict[str, int]:
    """What the adapter file at `path` holds: {"tensors": how many tensors, "tensor_bytes": their bytes,
    "header_bytes": the rest of the file (the safetensors header: names, shapes, offsets and the configuration in
    its metadata), "fingerprinted_base_tensors": how many base tensors the saved fingerprint hashes}. The answer:
    details_8_3."""
    config, _ = read_adapter(path)
    count, tensor_bytes = _tensor_bytes(path)
    return {"tensors": count, "tensor_bytes": tensor_bytes, "header_bytes": Path(path).stat().st_size - tensor_bytes,
            "fingerprinted_base_tensors": len(config["base_model"]["fingerprint"]["tensors"])}


def wrong_exercise_8_3(path) -> dict[str, int]:
    """Counts the fingerprint's tensors of the adapter (the tensors_sha256 list) instead of the base's."""
    out = exercise_8_3(path)
    config, _ = read_adapter(path)
    out["fingerprinted_base_tensors"] = len(config["tensors_sha256"])
    return out


def typed_in_exercise_8_3(path) -> dict[str, int]:
    """Types in the chapter's spam adapter (gpt-mini, r = 8: 74 tensors, 886,792 bytes, 900.4 KB on disk, 79 base
    tensors) whatever file it is given."""
    return {"tensors": 74, "tensor_bytes": 886_792, "header_bytes": 900_400 - 886_792, "fingerprinted_base_tensors": 79}


def shortcut_exercise_8_3(path) -> dict[str, int]:
    """Predicts the tensor bytes from the configuration (r (d_in + d_out) float32 numbers per layer of all-linear,
    plus a 2-class head) instead of reading the tensors the file holds."""
    config, _ = read_adapter(path)
    gpt = config["base_model"]["gpt_config"]
    r, d, n = config["lora"]["rank"], gpt["emb_dim"], gpt["n_layers"]
    predicted = 4 * (n * 18 * r * d + 2 * d + 2)
    return {"tensors": n * 12 + 2, "tensor_bytes": predicted, "header_bytes": Path(path).stat().st_size - predicted,
            "fingerprinted_base_tensors": len(config["base_model"]["fingerprint"]["tensors"])}


def exercise_8_4(model, x, lengths) -> dict:
    """{adapter name: predicted class ids (batch,)} for every adapter on `model`, asked about the batch `x` (token ids,
    (batch, T)) with `lengths` real tokens each; the adapter active before the call is active again after it."""
    from classify.model import class_logits
    from lora import set_active_adapter

    before = active_adapter(model)
    predictions = {}
    try:
        with torch.no_grad():
            for name in adapter_configs(model):
                set_active_adapter(model, name)
                predictions[name] = class_logits(model, x, lengths).argmax(dim=-1)
    finally:
        set_active_adapter(model, before)
    return predictions


def wrong_exercise_8_4(model, x, lengths) -> dict:
    """Leaves the last adapter it asked active, instead of the one that was active before."""
    from classify.model import class_logits
    from lora import set_active_adapter

    predictions = {}
    with torch.no_grad():
        for name in adapter_configs(model):
            set_active_adapter(model, name)
            predictions[name] = class_logits(model, x, lengths).argmax(dim=-1)
    return predictions


def typed_in_exercise_8_4(model, x, lengths) -> dict:
    """Types in the labels section 8.8 prints for its four example texts (spam, ham, spam, ham; positive, negative,
    positive, negative) whatever batch it is given."""
    return {"spam": torch.tensor([1, 0, 1, 0]), "sentiment": torch.tensor([1, 0, 0, 1])}


def shortcut_exercise_8_4(model, x, lengths) -> dict:
    """Never switches: files the active adapter's predictions under every adapter's name."""
    from classify.model import class_logits

    with torch.no_grad():
        predicted = class_logits(model, x, lengths).argmax(dim=-1)
    return {name: predicted for name in adapter_configs(model)}


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


def typed_in_exercise_8_6(model, adapter: str, texts: list[str]) -> dict:
    """Types in the statement's 50,257 rows (every token id) for the rows that moved."""
    out = exercise_8_6(model, adapter, texts)
    out["rows_nonzero"] = 50_257
    return out


def shortcut_exercise_8_6(model, adapter: str, texts: list[str]) -> dict:
    """Counts the texts' distinct tokens for both numbers instead of reading the adapter's A."""
    out = exercise_8_6(model, adapter, texts)
    out["rows_nonzero"] = out["token_ids_in_texts"]
    return out
