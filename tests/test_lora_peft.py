"""PEFT's LoRA format, both ways, with the same logits as peft + transformers' GPT-2 (within 1e-5).

A tiny random GPT-2 is written locally with transformers and loaded into our GPTModel (gpt.weights).
Out: our LoRA with random non-zero B, exported, loaded with peft.PeftModel.from_pretrained (offline).
In: a PEFT LoRA with random non-zero B, saved with save_pretrained, imported with import_peft_adapter.
"""

import json

import pytest
import torch

from gpt.weights import gpt2_module_names, load_gpt2
from lora import (EmbeddingWithLoRA, LoraConfig, apply_lora, export_peft_adapter, import_peft_adapter, load_adapter,
                  save_adapter)

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=64))
    path = tmp_path_factory.mktemp("tiny-gpt2")
    hf.save_pretrained(path)
    return path


@pytest.mark.parametrize("attention,targets,scaling,expected_targets,expected_ranks", [
    # PEFT's c_attn LoRA covers q, k and v: our fused LoRA with all three enabled, rank 3r on c_attn.
    ("fused", ("query", "key", "value"), "alpha/r", ["c_attn"], {"c_attn": 12}),
    # q and v only: the key rows of PEFT's B are zero; rank 2r.
    ("fused", ("query", "value"), "alpha/sqrt(r)", ["c_attn"], {"c_attn": 8}),
    # Separate W_query/W_value (and more layers) map onto the same fused c_attn.
    ("separate", ("query", "value", "out_proj", "ff"), "alpha", ["attn.c_proj", "c_attn", "c_fc", "mlp.c_proj"],
     {"c_attn": 8}),
    # A whole-layer LoRA on qkv is exactly PEFT's c_attn LoRA at the same rank.
    ("fused", ("qkv", "ff_in"), "alpha/r", ["c_attn", "c_fc"], {}),
])
def test_peft_loads_our_adapter_with_equal_logits(tmp_path, monkeypatch, gpt2_dir, attention, targets, scaling,
                                                  expected_targets, expected_ranks):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ours = load_gpt2(gpt2_dir, attention=attention)
    x = torch.randint(0, 50257, (2, 12), generator=torch.Generator().manual_seed(0))
    hf = transformers.GPT2LMHeadModel.from_pretrained(gpt2_dir).eval()
    torch.testing.assert_close(ours(x), hf(x).logits, rtol=0, atol=1e-5)  # same base to start with

    apply_lora(ours, LoraConfig(rank=4, alpha=8, targets=targets, scaling=scaling))
    with torch.no_grad():
        for name, p in ours.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5)
    expected = ours(x)
    assert (expected - hf(x).logits).abs().max() > 1e-2  # the adapter does something

    export_peft_adapter(ours, tmp_path / "peft", gpt2_module_names(ours.cfg), base_model_name_or_path=str(gpt2_dir))
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4 and config["fan_in_fan_out"] is True
    assert config["target_modules"] == expected_targets
    assert config["rank_pattern"] == expected_ranks

    peft_model = peft.PeftModel.from_pretrained(hf, tmp_path / "peft").eval()
    torch.testing.assert_close(peft_model(x).logits, expected, rtol=0, atol=1e-5)


def test_export_key_names_and_shapes(tmp_path, gpt2_dir):
    from safetensors.torch import load_file

    ours = load_gpt2(gpt2_dir, attention="fused")
    apply_lora(ours, LoraConfig(rank=4, alpha=8, targets=("query", "key", "value")))
    export_peft_adapter(ours, tmp_path / "peft", gpt2_module_names(ours.cfg))
    tensors = load_file(tmp_path / "peft" / "adapter_model.safetensors")
    assert {k: tuple(v.shape) for k, v in tensors.items()} == {
        f"base_model.model.transformer.h.{i}.attn.c_attn.lora_{ab}.weight": shape
        for i in range(2) for ab, shape in (("A", (12, 32)), ("B", (96, 12)))}


def test_export_refuses_a_classification_head(tmp_path, gpt2_dir):
    ours = load_gpt2(gpt2_dir)
    ours.out_head = torch.nn.Linear(32, 2)
    apply_lora(ours, LoraConfig(rank=2, targets=("query",), modules_to_save=("out_head",)))
    with pytest.raises(ValueError, match="a classification head does not"):
        export_peft_adapter(ours, tmp_path / "peft", gpt2_module_names(ours.cfg))


# ----------------------------------------------------------------------------- PEFT adapters in

def _peft_adapter(gpt2_dir, out, seed=1, **lora_kwargs):
    """A PEFT LoRA on transformers' GPT-2, with random non-zero B (and a changed lm_head copy when it is
    in modules_to_save), saved with save_pretrained. Returns (its logits for x, x)."""
    hf = transformers.GPT2LMHeadModel.from_pretrained(gpt2_dir).eval()
    cfg = peft.LoraConfig(fan_in_fan_out=True, **lora_kwargs)
    model = peft.get_peft_model(hf, cfg).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
            elif "modules_to_save" in name:
                p.add_(torch.randn(p.shape, generator=g) * 0.1)
    model.save_pretrained(out)
    x = torch.randint(0, 50257, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return model(x).logits, x


@pytest.mark.filterwarnings("ignore:Model has `tie_word_embeddings=True`")  # PEFT, about lm_head in modules_to_save
@pytest.mark.parametrize("attention", ["separate", "fused"])
@pytest.mark.parametrize("patterns", [
    dict(r=4, lora_alpha=8, target_modules=["c_attn", "c_proj", "c_fc"]),
    # per-module ranks and alphas, rsLoRA's alpha / sqrt(r), and a fully trained lm_head
    dict(r=4, lora_alpha=8, target_modules=["c_attn", "c_proj", "c_fc"], use_rslora=True,
         rank_pattern={"h.1.attn.c_attn": 2, "mlp.c_proj": 6}, alpha_pattern={"c_fc": 3.0},
         modules_to_save=["lm_head"]),
], ids=["plain", "rank_pattern"])
def test_peft_adapter_imports_with_equal_logits(tmp_path, monkeypatch, gpt2_dir, attention, patterns):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    expected, x = _peft_adapter(gpt2_dir, tmp_path / "peft", **patterns)
    ours = load_gpt2(gpt2_dir, attention=attention)
    with torch.no_grad():
        assert (expected - ours(x)).abs().max() > 1e-2  # the adapter does something
    import_peft_adapter(ours, tmp_path / "peft", gpt2_module_names(ours.cfg))
    with torch.no_grad():
        torch.testing.assert_close(ours(x), expected, rtol=0, atol=1e-5)
    # PEFT's c_attn LoRA: the whole fused projection, or every third of it on W_query / W_key / W_value
    layer = ours.trf_blocks[1].att
    if attention == "fused":
        assert layer.qkv.lora["default"].lora_A.shape == (32, 2 if "rank_pattern" in patterns else 4)
    else:
        ranks = [getattr(layer, n).lora["default"].rank for n in ("W_query", "W_key", "W_value")]
        assert ranks == ([2, 2, 2] if "rank_pattern" in patterns else [4, 4, 4])
    assert all(not p.requires_grad for p in ours.parameters())
    # and it is an adapter like any other: saved, reloaded, same logits
    save_adapter(ours, tmp_path / "ours")
    again = load_adapter(load_gpt2(gpt2_dir, attention=attention), tmp_path / "ours")
    with torch.no_grad():
        torch.testing.assert_close(again(x), expected, rtol=0, atol=1e-5)


def test_our_export_comes_back_at_its_own_ranks(tmp_path, gpt2_dir):
    ours = load_gpt2(gpt2_dir, attention="separate")
    apply_lora(ours, LoraConfig(rank=4, alpha=8, targets=("query", "value", "ff")))
    with torch.no_grad():
        for name, p in ours.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5)
    x = torch.randint(0, 50257, (2, 12), generator=torch.Generator().manual_seed(0))
    expected = ours(x)
    export_peft_adapter(ours, tmp_path / "peft", gpt2_module_names(ours.cfg))
    back = import_peft_adapter(load_gpt2(gpt2_dir, attention="separate"), tmp_path / "peft",
                               gpt2_module_names(ours.cfg))
    torch.testing.assert_close(back(x), expected, rtol=0, atol=1e-5)
    att = back.trf_blocks[0].att
    assert isinstance(att.W_key, torch.nn.Linear)  # the zero key third of c_attn's B gets no LoRA
    assert att.W_query.lora["default"].rank == att.W_value.lora["default"].rank == 4


def test_load_adapter_on_a_peft_folder_names_peft_and_the_importer(tmp_path, gpt2_dir):
    _peft_adapter(gpt2_dir, tmp_path / "peft", r=2, lora_alpha=4, target_modules=["c_attn"])
    with pytest.raises(ValueError, match=r"PEFT adapter .* import it with lora.import_peft_adapter"):
        load_adapter(load_gpt2(gpt2_dir), tmp_path / "peft")


def test_import_refuses_what_it_cannot_reproduce(tmp_path, gpt2_dir):
    _peft_adapter(gpt2_dir, tmp_path / "peft", r=2, lora_alpha=4, target_modules=["c_attn"])
    config_path = tmp_path / "peft" / "adapter_config.json"
    config = json.loads(config_path.read_text())
    ours = load_gpt2(gpt2_dir)
    names = gpt2_module_names(ours.cfg)
    config_path.write_text(json.dumps(config | {"use_dora": True}))
    with pytest.raises(ValueError, match="use_dora=True is not supported"):
        import_peft_adapter(ours, tmp_path / "peft", names)
    config_path.write_text(json.dumps(config | {"rank_pattern": {"c_attn": 3}}))
    with pytest.raises(ValueError, match="do not make a rank-3 LoRA"):
        import_peft_adapter(ours, tmp_path / "peft", names)
    config_path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="have no counterpart in module_names"):
        import_peft_adapter(ours, tmp_path / "peft", {"lm_head": "out_head"})
    assert not any("lora" in n for n, _ in ours.named_parameters())  # refused before anything changed


# --- LoRA on the token embedding (lora.EmbeddingWithLoRA): PEFT's lora_embedding_A / lora_embedding_B ----------

@pytest.mark.parametrize("attention", ["separate", "fused"])
def test_peft_loads_our_embedding_adapter_with_equal_logits(tmp_path, monkeypatch, gpt2_dir, attention):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ours = load_gpt2(gpt2_dir, attention=attention)
    x = torch.randint(0, 50257, (2, 12), generator=torch.Generator().manual_seed(0))
    apply_lora(ours, LoraConfig(rank=4, alpha=8, targets=("query", "value", "tok_emb")))
    with torch.no_grad():
        for name, p in ours.named_parameters():
            if "lora_" in name:
                p.normal_(std=0.5)
    expected = ours(x)
    export_peft_adapter(ours, tmp_path / "peft", gpt2_module_names(ours.cfg), base_model_name_or_path=str(gpt2_dir))
    from safetensors.torch import load_file

    shapes = {k: tuple(v.shape) for k, v in load_file(tmp_path / "peft" / "adapter_model.safetensors").items()}
    assert shapes["base_model.model.transformer.wte.lora_embedding_A"] == (4, 50257)  # PEFT's (r, V)
    assert shapes["base_model.model.transformer.wte.lora_embedding_B"] == (32, 4)  # and (d, r)
    assert "wte" in json.loads((tmp_path / "peft" / "adapter_config.json").read_text())["target_modules"]
    hf = transformers.GPT2LMHeadModel.from_pretrained(gpt2_dir).eval()
    assert (expected - hf(x).logits).abs().max() > 1e-2  # the adapter does something
    peft_model = peft.PeftModel.from_pretrained(hf, tmp_path / "peft").eval()
    torch.testing.assert_close(peft_model(x).logits, expected, rtol=0, atol=1e-5)


def test_a_peft_embedding_adapter_imports_with_equal_logits(tmp_path, monkeypatch, gpt2_dir):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hf = transformers.GPT2LMHeadModel.from_pretrained(gpt2_dir)
    peft_model = peft.get_peft_model(hf, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["wte", "c_attn"],
                                                         fan_in_fan_out=True))
    torch.manual_seed(3)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.normal_(std=0.5)
    peft_model.save_pretrained(tmp_path / "peft")
    x = torch.randint(0, 50257, (2, 12), generator=torch.Generator().manual_seed(0))
    expected = peft_model.eval()(x).logits
    ours = load_gpt2(gpt2_dir).eval()
    import_peft_adapter(ours, tmp_path / "peft", gpt2_module_names(ours.cfg))
    assert isinstance(ours.tok_emb, EmbeddingWithLoRA)
    torch.testing.assert_close(ours(x), expected, rtol=0, atol=1e-5)
