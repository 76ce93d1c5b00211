"""Loading GPT-2 checkpoints (gpt/weights.py) and downloading them (gpt/download.py), offline.

No real GPT-2 weights can be fetched here, so the tests write their own checkpoints in the
same formats: transformers' GPT2LMHeadModel(...).save_pretrained() (keys with the
`transformer.` prefix), GPT2Model.save_pretrained() (without it), and a hand-made file in the
layout of openai-community/gpt2's model.safetensors (no prefix, causal-mask buffers, lm_head).
The reference for every logit is transformers' own GPT-2.
"""

import hashlib
import io
import json
import os
import shutil
import urllib.error
import urllib.request

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # belt and braces: everything below is local

import pytest
import torch
from safetensors.torch import save_file
from transformers import GPT2Config, GPT2LMHeadModel

import gpt.download as download
from gpt import count_parameters
from gpt.config import GPTConfig
from gpt.weights import gpt2_config_from_hf, hf_to_gpt_state_dict, load_gpt2, load_gpt2_state_dict

TINY = dict(n_embd=32, n_layer=2, n_head=4, n_positions=64, vocab_size=50257)
TINY_PARAMS = 1_635_744  # wte 1,608,224 + wpe 2,048 + 2 blocks x 12,704 + ln_f 64 (lm_head tied)
ATOL = 1e-5  # fp32, same math, different kernels and summation order


def make_hf_gpt2(seed: int = 0) -> GPT2LMHeadModel:
    """A random tiny GPT-2. transformers initialises biases to 0 and LayerNorm weights to 1;
    perturb every tensor so that a bias or scale mapped to the wrong place cannot go unnoticed."""
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(**TINY))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-gpt2")
    make_hf_gpt2().save_pretrained(path)  # model.safetensors + config.json
    return path


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(0, TINY["vocab_size"], (2, 40), generator=torch.Generator().manual_seed(1))


def hf_logits(path, tokens, attn_implementation="eager"):
    hf = GPT2LMHeadModel.from_pretrained(path, attn_implementation=attn_implementation).eval()
    with torch.no_grad():
        return hf(tokens).logits


def our_logits(model, tokens):
    with torch.no_grad():
        return model(tokens)


# ----------------------------------------------------------------------------- logits vs transformers

@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
@pytest.mark.parametrize("attention", ["separate", "fused"])
def test_logits_match_transformers(hf_dir, tokens, attention, attn_implementation):
    model = load_gpt2(hf_dir, attention=attention)
    assert not model.training
    assert model.cfg == GPTConfig(vocab_size=50257, context_length=64, emb_dim=32, n_heads=4, n_layers=2,
                                  drop_rate=0.0, qkv_bias=True, tie_weights=True, attention=attention)
    ref = hf_logits(hf_dir, tokens, attn_implementation)
    torch.testing.assert_close(our_logits(model, tokens), ref, rtol=0, atol=ATOL)


def test_parameters_counted_and_tied_like_transformers(hf_dir):
    model = load_gpt2(hf_dir)
    hf = GPT2LMHeadModel.from_pretrained(hf_dir)
    assert count_parameters(model) == TINY_PARAMS == sum(p.numel() for p in hf.parameters())
    assert model.out_head.weight is model.tok_emb.weight
    assert model.out_head.weight.data_ptr() == model.tok_emb.weight.data_ptr()


def test_conv1d_weights_are_transposed_and_c_attn_split(hf_dir):
    hf_sd = load_gpt2_state_dict(hf_dir)
    assert "h.0.attn.c_attn.weight" in hf_sd  # prefix stripped
    d = TINY["n_embd"]
    c_attn = hf_sd["h.1.attn.c_attn.weight"]  # Conv1D: (in, out) = (d, 3d), columns [q | k | v]
    assert c_attn.shape == (d, 3 * d)
    sep = hf_to_gpt_state_dict(hf_sd, load_gpt2(hf_dir).cfg)
    assert torch.equal(sep["trf_blocks.1.att.W_query.weight"], c_attn[:, :d].T)
    assert torch.equal(sep["trf_blocks.1.att.W_key.weight"], c_attn[:, d:2 * d].T)
    assert torch.equal(sep["trf_blocks.1.att.W_value.weight"], c_attn[:, 2 * d:].T)
    assert torch.equal(sep["trf_blocks.1.att.W_value.bias"], hf_sd["h.1.attn.c_attn.bias"][2 * d:])
    assert torch.equal(sep["trf_blocks.1.ff.layers.0.weight"], hf_sd["h.1.mlp.c_fc.weight"].T)
    fused = hf_to_gpt_state_dict(hf_sd, load_gpt2(hf_dir, attention="fused").cfg)
    assert torch.equal(fused["trf_blocks.1.att.qkv.weight"], c_attn.T)
    assert not any("W_query" in k for k in fused)


def test_checkpoint_without_transformer_prefix(tmp_path, tokens):
    hf = make_hf_gpt2()
    hf.transformer.save_pretrained(tmp_path)  # a GPT2Model: keys without "transformer."
    with open(tmp_path / "model.safetensors", "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    assert "wte.weight" in header and not any(k.startswith("transformer.") for k in header)
    with torch.no_grad():
        ref = hf(tokens).logits
    for attention in ("separate", "fused"):
        torch.testing.assert_close(our_logits(load_gpt2(tmp_path, attention=attention), tokens), ref,
                                   rtol=0, atol=ATOL)


def test_openai_layout_with_mask_buffers_and_stored_lm_head(tmp_path, tokens):
    """openai-community/gpt2's own file: no prefix, h.{i}.attn.bias / masked_bias buffers, and
    (in some conversions) lm_head.weight equal to wte.weight."""
    hf = make_hf_gpt2()
    sd = {k: v.clone().contiguous() for k, v in hf.transformer.state_dict().items()}
    T = TINY["n_positions"]
    for i in range(TINY["n_layer"]):
        sd[f"h.{i}.attn.bias"] = torch.tril(torch.ones(T, T)).view(1, 1, T, T)
        sd[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    sd["lm_head.weight"] = sd["wte.weight"].clone()
    save_file(sd, tmp_path / "model.safetensors")
    hf.config.to_json_file(tmp_path / "config.json")
    with torch.no_grad():
        ref = hf(tokens).logits
    torch.testing.assert_close(our_logits(load_gpt2(tmp_path), tokens), ref, rtol=0, atol=ATOL)

    # A stored lm_head that is not the embedding cannot be loaded into a tied model.
    sd["lm_head.weight"] = sd["lm_head.weight"] + 1.0
    save_file(sd, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="lm_head.weight differs from wte.weight"):
        load_gpt2(tmp_path)


def test_untied_checkpoint_loads_its_own_head(tmp_path, tokens):
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(**TINY, tie_word_embeddings=False)).eval()
    with torch.no_grad():
        hf.lm_head.weight.normal_()  # a head that is not the embedding
    hf.save_pretrained(tmp_path)
    model = load_gpt2(tmp_path)
    assert not model.cfg.tie_weights
    assert count_parameters(model) == TINY_PARAMS + 50257 * 32 == sum(p.numel() for p in hf.parameters())
    with torch.no_grad():
        ref = hf(tokens).logits
    torch.testing.assert_close(our_logits(model, tokens), ref, rtol=0, atol=ATOL)


def test_file_without_config_json(hf_dir, tmp_path, tokens):
    shutil.copy(hf_dir / "model.safetensors", tmp_path / "weights.safetensors")
    # 32 is none of GPT-2's widths: the number of heads cannot be read off the shapes.
    with pytest.raises(ValueError, match="n_heads"):
        load_gpt2(tmp_path / "weights.safetensors")
    model = load_gpt2(tmp_path / "weights.safetensors", n_heads=4)
    torch.testing.assert_close(our_logits(model, tokens), hf_logits(hf_dir, tokens), rtol=0, atol=ATOL)


# ----------------------------------------------------------------------------- bad checkpoints

def copy_with_config(hf_dir, dest, **changes):
    shutil.copy(hf_dir / "model.safetensors", dest / "model.safetensors")
    config = json.loads((hf_dir / "config.json").read_text())
    config.update(changes)
    (dest / "config.json").write_text(json.dumps(config))
    return dest


def test_wrong_width_names_key_and_shapes(hf_dir, tmp_path):
    copy_with_config(hf_dir, tmp_path, n_embd=64)
    with pytest.raises(ValueError) as err:
        load_gpt2(tmp_path)
    message = str(err.value)
    assert "wte.weight: expected shape (50257, 64), checkpoint has (50257, 32)" in message
    assert "h.0.attn.c_attn.weight: expected shape (64, 192), checkpoint has (32, 96)" in message


def test_wrong_depth_lists_missing_keys(hf_dir, tmp_path):
    copy_with_config(hf_dir, tmp_path, n_layer=3)
    with pytest.raises(ValueError, match=r"missing keys: \[h\.2\.attn\.c_attn\.bias"):
        load_gpt2(tmp_path)
    with pytest.raises(ValueError, match=r"unexpected keys: \[h\.1\.attn\.c_attn\.bias"):
        load_gpt2(hf_dir, n_layers=1)


def test_qkv_bias_mismatch_is_explained(hf_dir):
    with pytest.raises(ValueError, match="qkv_bias=True"):
        load_gpt2(hf_dir, qkv_bias=False)


def test_unsupported_config_values():
    base = dict(TINY)
    with pytest.raises(ValueError, match="missing"):
        gpt2_config_from_hf({"n_embd": 32})
    with pytest.raises(ValueError, match="activation_function='relu'"):
        gpt2_config_from_hf({**base, "activation_function": "relu"})
    with pytest.raises(ValueError, match="layer_norm_epsilon"):
        gpt2_config_from_hf({**base, "layer_norm_epsilon": 1e-6})
    with pytest.raises(ValueError, match="model_type='llama'"):
        gpt2_config_from_hf({**base, "model_type": "llama"})
    cfg = gpt2_config_from_hf(base)
    assert (cfg.emb_dim, cfg.n_layers, cfg.n_heads, cfg.context_length, cfg.vocab_size) == (32, 2, 4, 64, 50257)
    assert cfg.qkv_bias and cfg.tie_weights and cfg.drop_rate == 0.0


@pytest.mark.parametrize("keep", [0, 8, 100, 0.5])
def test_truncated_file_names_the_file(hf_dir, tmp_path, keep):
    data = (hf_dir / "model.safetensors").read_bytes()
    n = int(len(data) * keep) if isinstance(keep, float) else keep
    copy_with_config(hf_dir, tmp_path)
    (tmp_path / "model.safetensors").write_bytes(data[:n])
    with pytest.raises(ValueError, match=r"model\.safetensors is not a readable safetensors file"):
        load_gpt2(tmp_path)


def test_missing_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        load_gpt2(tmp_path)
    with pytest.raises(FileNotFoundError, match="gpt2-small"):
        load_gpt2(tmp_path / "nowhere")


# ----------------------------------------------------------------------------- download, offline

class FakeResponse(io.BytesIO):
    """What urlopen returns: a readable context manager with headers."""

    def __init__(self, data: bytes, content_length: int | None = None, fail_after: int | None = None):
        super().__init__(data)
        self.headers = {} if content_length is None else {"Content-Length": str(content_length)}
        self.fail_after = fail_after

    def read(self, size=-1):
        if self.fail_after is not None and self.tell() >= self.fail_after:
            raise ConnectionResetError("connection reset by peer")
        return super().read(size)


def serve(monkeypatch, files: dict[str, bytes], **response_kwargs):
    """Patch urllib.request.urlopen to answer from memory; returns the list of requested URLs."""
    requested = []

    def fake_urlopen(url, timeout=None):
        requested.append(url)
        name = url.rsplit("/", 1)[-1]
        return FakeResponse(files[name], **{"content_length": len(files[name]), **response_kwargs})

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    return requested


class RecordingBar:
    """Stands in for tqdm to record what the progress bar was told."""
    instances = []

    def __init__(self, total=None, **kwargs):
        self.total, self.updates = total, []
        RecordingBar.instances.append(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, n):
        self.updates.append(n)


def test_download_file_progress_checksum_atomic(monkeypatch, tmp_path):
    data = bytes(range(256)) * 40  # 10,240 bytes
    serve(monkeypatch, {"blob.bin": data})
    monkeypatch.setattr(download, "tqdm", RecordingBar)
    RecordingBar.instances.clear()
    dest = tmp_path / "sub" / "blob.bin"
    digest = download.download_file("https://example.org/blob.bin", dest, chunk_size=3000)
    assert digest == hashlib.sha256(data).hexdigest()
    assert dest.read_bytes() == data
    assert os.listdir(dest.parent) == ["blob.bin"]  # no temporary file left behind
    (bar,) = RecordingBar.instances
    assert bar.total == 10_240 and bar.updates == [3000, 3000, 3000, 1240]

    # The right expected hash passes, a wrong one raises and leaves the old file untouched.
    download.download_file("https://example.org/blob.bin", dest, expected_sha256=digest)
    dest.write_bytes(b"old")
    with pytest.raises(ValueError, match="sha256 mismatch"):
        download.download_file("https://example.org/blob.bin", dest, expected_sha256="0" * 64)
    assert dest.read_bytes() == b"old" and os.listdir(dest.parent) == ["blob.bin"]


def test_download_interrupted_or_short_leaves_nothing(monkeypatch, tmp_path):
    data = b"x" * 5000
    dest = tmp_path / "blob.bin"
    serve(monkeypatch, {"blob.bin": data}, fail_after=2000)
    with pytest.raises(RuntimeError, match="no network"):
        download.download_file("https://example.org/blob.bin", dest, chunk_size=1000, progress=False)
    assert os.listdir(tmp_path) == []
    serve(monkeypatch, {"blob.bin": data}, content_length=6000)
    with pytest.raises(ValueError, match="got 5,000 of 6,000 bytes"):
        download.download_file("https://example.org/blob.bin", dest, progress=False)
    assert os.listdir(tmp_path) == []


def test_download_gpt2_then_load_and_checksum_on_load(monkeypatch, tmp_path, hf_dir, tokens):
    monkeypatch.setenv("LORA_FROM_SCRATCH_CACHE", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="python -m gpt.download gpt2-small"):
        load_gpt2("gpt2-small")  # not cached, download not asked for: nothing is fetched

    files = {name: (hf_dir / name).read_bytes() for name in ("model.safetensors", "config.json")}
    requested = serve(monkeypatch, files)
    model = load_gpt2("gpt2-small", download=True)
    assert sorted(requested) == [
        "https://huggingface.co/openai-community/gpt2/resolve/main/config.json",
        "https://huggingface.co/openai-community/gpt2/resolve/main/model.safetensors",
    ]
    folder = tmp_path / "gpt2-small"
    assert sorted(os.listdir(folder)) == ["config.json", "model.safetensors", "model.safetensors.sha256"]
    digest = hashlib.sha256(files["model.safetensors"]).hexdigest()
    assert (folder / "model.safetensors.sha256").read_text() == f"{digest}  model.safetensors\n"
    torch.testing.assert_close(our_logits(model, tokens), hf_logits(hf_dir, tokens), rtol=0, atol=ATOL)

    # Cached now: a second load fetches nothing.
    requested.clear()
    load_gpt2("gpt2-small", download=True)
    assert requested == []

    # One flipped byte in the middle of the weights (the file still parses): caught by the checksum.
    corrupt = bytearray(files["model.safetensors"])
    corrupt[len(corrupt) // 2] ^= 0xFF
    (folder / "model.safetensors").write_bytes(bytes(corrupt))
    with pytest.raises(ValueError, match=f"has sha256 {hashlib.sha256(corrupt).hexdigest()}"):
        load_gpt2("gpt2-small")


def test_offline_message_says_what_to_do(monkeypatch, tmp_path):
    def no_network(url, timeout=None):
        raise urllib.error.URLError(OSError(-3, "Temporary failure in name resolution"))

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    monkeypatch.setenv("LORA_FROM_SCRATCH_CACHE", str(tmp_path))
    with pytest.raises(RuntimeError) as err:
        load_gpt2("gpt2-medium", download=True)
    message = str(err.value)
    assert message.startswith("no network")
    assert "https://huggingface.co/openai-community/gpt2-medium/resolve/main/model.safetensors" in message
    assert "https://huggingface.co/openai-community/gpt2-medium/resolve/main/config.json" in message
    assert str(tmp_path / "gpt2-medium") in message
    assert not (tmp_path / "gpt2-medium" / "config.json").exists()


def test_download_cli(monkeypatch, tmp_path, hf_dir):
    files = {name: (hf_dir / name).read_bytes() for name in ("model.safetensors", "config.json")}
    requested = serve(monkeypatch, files)
    folder = download.main(["gpt2-xl", "--cache-dir", str(tmp_path)])
    assert folder == tmp_path / "gpt2-xl"
    assert all(url.startswith("https://huggingface.co/openai-community/gpt2-xl/") for url in requested)
    assert download.verify_checksum(folder / "model.safetensors") is True
    with pytest.raises(SystemExit):
        download.main(["gpt2-huge"])
    with pytest.raises(ValueError, match="unknown GPT-2 checkpoint 'gpt2-huge'"):
        download.file_urls("gpt2-huge")
