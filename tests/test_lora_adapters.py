"""Saving and loading adapters: round trips, the saved flags, wrong bases, broken files."""

import json
import os

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from gpt import GPTConfig, GPTModel
from lora import (LinearWithLoRA, LoraConfig, ModulesToSaveWrapper, active_adapter, adapter_configs, apply_lora,
                  base_fingerprint, disable_adapters, load_adapter, merge_lora, replace_linear_with_lora,
                  save_adapter, set_active_adapter)
from lora.adapters import tensors_digest

CFG = GPTConfig.from_preset("gpt-tiny", qkv_bias=True, drop_rate=0.0)


def base(seed=0, cfg=CFG, head=2):
    torch.manual_seed(seed)
    model = GPTModel(cfg).eval()
    if head:
        torch.manual_seed(seed + 1000)
        model.out_head = nn.Linear(cfg.emb_dim, head)
    return model


def trained(model, cfg, seed=1):
    apply_lora(model, cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.2)  # stand-in for training
    return model


def tokens():
    return torch.randint(0, 50257, (2, 10), generator=torch.Generator().manual_seed(0))


LORA = LoraConfig(rank=4, alpha=8, dropout=0.1, targets=("query", "value", "ff"), scaling="alpha/sqrt(r)",
                  modules_to_save=("out_head",))


@pytest.mark.parametrize("as_file", [False, True])
def test_round_trip_gives_identical_logits(tmp_path, as_file):
    model = trained(base(), LORA)
    x = tokens()
    expected = model(x)
    path = tmp_path / ("spam.safetensors" if as_file else "spam")
    weights = save_adapter(model, path)
    assert weights == (path if as_file else path / "adapter.safetensors")

    fresh = base()  # same base weights (same seed); its own head is a different random init
    load_adapter(fresh, path)
    assert torch.equal(fresh(x), expected)
    # The saved flags were re-applied: the caller repeated nothing.
    assert adapter_configs(fresh)["default"] == LORA
    assert isinstance(fresh.out_head, ModulesToSaveWrapper)
    assert not any(p.requires_grad for p in fresh.parameters())  # loaded for inference
    # Only what was trained is in the file.
    saved = load_file(weights)
    assert set(saved) == {*(f"trf_blocks.{i}.{m}.{p}" for i in range(2)
                            for m in ("att.W_query", "att.W_value", "ff.layers.0", "ff.layers.2")
                            for p in ("lora_A", "lora_B")), "out_head.weight", "out_head.bias"}
    assert not list(tmp_path.glob("**/*.tmp"))  # atomic writes leave no temporary files
    umask = os.umask(0)
    os.umask(umask)
    assert weights.stat().st_mode & 0o777 == 0o666 & ~umask  # not the private 0600 of a temp file


def test_interrupted_save_keeps_the_previous_adapter(tmp_path, monkeypatch):
    first = trained(base(), LORA, seed=1)
    save_adapter(first, tmp_path / "a")
    second = trained(base(), LORA, seed=2)

    def crash(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(OSError, match="disk full"):
        save_adapter(second, tmp_path / "a")
    monkeypatch.undo()
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["adapter.safetensors", "adapter_config.json"]
    x = tokens()
    assert torch.equal(load_adapter(base(), tmp_path / "a")(x), first(x))


def test_save_interrupted_between_the_two_files_leaves_a_complete_adapter(tmp_path, monkeypatch):
    import lora.adapters as adapters_module

    first = trained(base(), LORA, seed=1)
    second = trained(base(), LORA.replace(rank=2), seed=2)
    save_adapter(first, tmp_path / "a")
    real_write = adapters_module.atomic_write_bytes

    def killed_before_the_json(path, data):
        if path.name == "adapter_config.json":
            raise KeyboardInterrupt
        real_write(path, data)

    monkeypatch.setattr(adapters_module, "atomic_write_bytes", killed_before_the_json)
    with pytest.raises(KeyboardInterrupt):
        save_adapter(second, tmp_path / "a")
    monkeypatch.undo()
    # New weights, old JSON copy: the weights file's own config wins, with a warning.
    with pytest.warns(UserWarning, match="interrupted"):
        loaded = load_adapter(base(), tmp_path / "a")
    x = tokens()
    assert adapter_configs(loaded)["default"].rank == 2
    assert torch.equal(loaded(x), second(x))


def test_config_json_contents(tmp_path):
    model = trained(base(), LORA)
    save_adapter(model, tmp_path / "a")
    config = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert config["lora"] == {"rank": 4, "alpha": 8.0, "dropout": 0.1, "scaling": "alpha/sqrt(r)",
                              "targets": ["query", "value", "ff"], "modules_to_save": ["out_head"]}
    assert config["base_model"]["gpt_config"] == CFG.to_dict()
    assert config["base_model"]["fingerprint"] == base_fingerprint(base(), exclude=("out_head",))
    assert config["modules_to_save"] == {"out_head": {"weight": [2, 32], "bias": [2]}}
    assert config["tensors_sha256"] == tensors_digest(load_file(tmp_path / "a" / "adapter.safetensors"))
    # The JSON is a readable copy of the config inside the weights file.
    with safe_open(tmp_path / "a" / "adapter.safetensors", "pt") as f:
        assert json.loads(f.metadata()["adapter_config"]) == config


def test_load_trainable_continues_training(tmp_path):
    model = trained(base(), LORA)
    save_adapter(model, tmp_path / "a")
    fresh = load_adapter(base(), tmp_path / "a", trainable=True)
    trainable = {n for n, p in fresh.named_parameters() if p.requires_grad}
    assert trainable == {n for n, p in model.named_parameters() if p.requires_grad}


def test_fused_and_fp_head_shape_restored_on_a_language_model_base(tmp_path):
    # An adapter with a 2-class head loads onto a base that still has its LM head: the head is
    # restored with the saved shape for this adapter; disabling adapters gives the LM back.
    cfg = CFG.replace(attention="fused", tie_weights=False)
    model = trained(base(cfg=cfg), LORA.replace(targets=("query", "value")))
    x = tokens()
    expected = model(x)
    save_adapter(model, tmp_path / "a")
    lm = base(cfg=cfg, head=0)
    lm_logits = lm(x)
    load_adapter(lm, tmp_path / "a")  # the head is the adapter's own: not part of the base's fingerprint
    assert torch.equal(lm(x), expected)
    with disable_adapters(lm):
        assert torch.equal(lm(x), lm_logits)


def test_several_adapters_on_one_base(tmp_path):
    a = trained(base(), LORA, seed=1)
    b = trained(base(), LoraConfig(rank=2, alpha=2, targets="all-linear", modules_to_save=("out_head",)), seed=2)
    x = tokens()
    out_a, out_b = a(x), b(x)
    save_adapter(a, tmp_path / "a")
    save_adapter(b, tmp_path / "b")
    model = base()
    load_adapter(model, tmp_path / "a", adapter_name="spam")
    load_adapter(model, tmp_path / "b", adapter_name="sentiment")
    assert active_adapter(model) == "spam"
    assert torch.equal(model(x), out_a)
    set_active_adapter(model, "sentiment")
    assert torch.equal(model(x), out_b)
    with pytest.raises(ValueError, match="already has an adapter named 'spam'"):
        load_adapter(model, tmp_path / "a", adapter_name="spam")


def test_book_replace_linear_adapter_round_trip(tmp_path):
    model = base()
    for p in model.parameters():
        p.requires_grad = False
    with pytest.warns(UserWarning):
        replace_linear_with_lora(model, rank=4, alpha=4)  # r=4 > 2 outputs of the head, as in the book
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_()
    x = tokens()
    save_adapter(model, tmp_path / "book")
    fresh = load_adapter(base(), tmp_path / "book")
    assert isinstance(fresh.out_head, LinearWithLoRA)
    assert torch.equal(fresh(x), model(x))


def test_adapter_for_another_base_is_refused(tmp_path):
    model = trained(base(), LORA)
    save_adapter(model, tmp_path / "a")
    # Other weights, same config: the fingerprint names the tensors that differ.
    other = base(seed=5)
    with pytest.raises(ValueError, match=r"another base model \(weights fingerprint differs: different values in "
                                         r"\['pos_emb.weight', 'tok_emb.weight', .*\] and 9 more\)"):
        load_adapter(other, tmp_path / "a")
    assert not adapter_configs(other) and type(other.trf_blocks[0].att.W_query) is nn.Linear  # untouched
    # Another architecture: the config says which field.
    wider = base(cfg=CFG.replace(emb_dim=64))
    with pytest.raises(ValueError, match=r"another base model: emb_dim=32 \(this model: 64\)"):
        load_adapter(wider, tmp_path / "a")
    with pytest.raises(ValueError, match=r"attention='separate' \(this model: 'fused'\)"):
        load_adapter(base(cfg=CFG.replace(attention="fused")), tmp_path / "a")
    # Without the config check, the shapes still do not fit: a clear error, model left as it was.
    wider_no_cfg = base(cfg=CFG.replace(emb_dim=64))
    del wider_no_cfg.cfg
    with pytest.raises(ValueError, match=r"shape \(32, 4\) but this model expects \(64, 4\): shape mismatch"):
        load_adapter(wider_no_cfg, tmp_path / "a", check_base=False)
    assert not adapter_configs(wider_no_cfg) and type(wider_no_cfg.trf_blocks[0].att.W_query) is nn.Linear


def _rewrite(weights, change_config=None, change_tensors=None):
    """Rewrite a saved adapter file with its config or tensors changed (a tampered or damaged file)."""
    tensors = load_file(weights)
    with safe_open(weights, "pt") as f:
        metadata = f.metadata()
    config = json.loads(metadata["adapter_config"])
    if change_config:
        change_config(config)
    if change_tensors:
        change_tensors(tensors)
    metadata["adapter_config"] = json.dumps(config)
    save_file(tensors, weights, metadata=metadata)


def test_rank_mismatch_is_named(tmp_path):
    model = trained(base(), LORA)
    weights = save_adapter(model, tmp_path / "a.safetensors")
    _rewrite(weights, change_config=lambda c: c["lora"].update(rank=8))
    with pytest.raises(ValueError, match=r"rank mismatch \(rank dimension 4 in the file, 8 expected from rank=8"):
        load_adapter(base(), weights)


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no LoRA adapter at"):
        load_adapter(base(), tmp_path / "nothing")
    with pytest.raises(FileNotFoundError, match="no LoRA adapter at"):
        load_adapter(base(), tmp_path / "nothing.safetensors")
    model = trained(base(), LORA)
    save_adapter(model, tmp_path / "a")
    weights = tmp_path / "a" / "adapter.safetensors"
    blob = weights.read_bytes()
    weights.write_bytes(blob[: len(blob) // 2])  # truncated
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_adapter(base(), tmp_path / "a")
    weights.write_bytes(blob[:-4] + b"\x00\x00\x80\x7f")  # header intact, last float damaged
    with pytest.raises(ValueError, match="tensor data does not match the sha256 recorded"):
        load_adapter(base(), tmp_path / "a")
    save_file({"x": torch.zeros(2)}, weights)  # a safetensors file, but not an adapter
    with pytest.raises(ValueError, match="is not a lora-from-scratch-adapter"):
        load_adapter(base(), tmp_path / "a")
    # The JSON is only a readable copy: a damaged copy is reported and ignored.
    weights.write_bytes(blob)
    (tmp_path / "a" / "adapter_config.json").write_text("{not json")
    with pytest.warns(UserWarning, match="does not match the config stored in adapter.safetensors"):
        loaded = load_adapter(base(), tmp_path / "a")
    assert torch.equal(loaded(tokens()), model(tokens()))


def test_save_refuses_merged_and_models_without_adapters(tmp_path):
    with pytest.raises(ValueError, match="no LoRA adapter to save"):
        save_adapter(base(), tmp_path / "x")
    model = trained(base(cfg=CFG.replace(tie_weights=False)), LoraConfig(rank=2, targets=("query",)))
    merge_lora(model)
    with pytest.raises(ValueError, match="unmerge_lora"):
        save_adapter(model, tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_fingerprint_sees_through_lora_and_leaves_out_modules_to_save():
    plain = base()
    wrapped = trained(base(), LORA)
    assert "out_head.weight" in base_fingerprint(plain)["tensors"]
    assert base_fingerprint(wrapped) == base_fingerprint(plain, exclude=("out_head",))
    assert "trf_blocks.0.att.W_query.weight" in base_fingerprint(wrapped)["tensors"]
    assert base_fingerprint(base(seed=3)) != base_fingerprint(plain)
    with torch.device("meta"):
        assert base_fingerprint(GPTModel(CFG)) is None
