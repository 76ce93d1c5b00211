"""Bad input, all in one place: every way a user can get the project's inputs wrong.

Each test feeds one distinct bad input and asserts either an exception whose message names
the problem (pytest.raises(..., match=...)) or a stated behaviour (a text longer than the
context is truncated and counted). Where something could be written to disk, the test also
checks that no partial file was left behind.

Grouped by what the user gave: model configs, LoRA settings, checkpoints and adapters, the
vocabulary, data files, labels and lengths, training settings, numbers that blow up, devices.
"""

import math
import os
from pathlib import Path

import pytest
import torch

from gpt.checkpoint import load_model, load_training_state, save_model
from gpt.config import GPTConfig
from gpt.data import TokenWindows
from gpt.device import pick_device
from gpt.distributed import shard
from gpt.generate import generate
from gpt.model import GPTModel
from gpt.tokenizer import VOCAB_FILE, get_tokenizer
from gpt.train import PretrainConfig, pretrain
from conftest import make_tiny_gpt

ROOT = Path(__file__).resolve().parent.parent


def tiny(seed: int = 0, **overrides) -> GPTModel:
    return make_tiny_gpt(seed, **overrides)  # tests/conftest.py


def files_in(folder: Path) -> list[str]:
    """Everything in a folder, hidden temporary files included."""
    return sorted(p.name for p in folder.rglob("*")) if folder.exists() else []


# ----------------------------------------------------------------------------- model configs

def test_unknown_preset():
    with pytest.raises(ValueError, match=r"unknown preset 'gpt2-tiny'; choose one of \[.*'gpt-tiny'"):
        GPTConfig.from_preset("gpt2-tiny")


def test_heads_that_do_not_divide_the_width():
    with pytest.raises(ValueError, match="emb_dim=768 is not divisible by n_heads=10"):
        GPTConfig(n_heads=10)


def test_negative_number_of_layers():
    with pytest.raises(ValueError, match="n_layers must be a positive integer, got -2"):
        GPTConfig(n_layers=-2)


def test_unknown_attention_variant():
    with pytest.raises(ValueError, match=r"attention must be one of \('separate', 'fused'\), got 'flash'"):
        GPTConfig(attention="flash")


def test_model_dropout_of_one():
    with pytest.raises(ValueError, match=r"drop_rate must be in \[0, 1\), got 1.0"):
        GPTConfig(drop_rate=1.0)


def test_unknown_config_field_in_a_saved_config():
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['n_embd'\]"):
        GPTConfig.from_dict({**GPTConfig().to_dict(), "n_embd": 768})


# ----------------------------------------------------------------------------- LoRA settings

def test_lora_rank_zero():
    from lora import LoraConfig

    with pytest.raises(ValueError, match="LoRA rank must be a positive integer, got 0"):
        LoraConfig(rank=0)


def test_lora_rank_larger_than_the_layer():
    from lora import apply_lora

    model = tiny()  # emb_dim 32: W_query is 32 x 32
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"LoRA rank 33 is larger than min\(d_in=32, d_out=32\)"):
        apply_lora(model, rank=33, alpha=16, targets=("query",))
    # Stated behaviour: the model is left as it was (no half-applied LoRA).
    assert model.state_dict().keys() == before.keys()


def test_lora_negative_alpha():
    from lora import LoraConfig

    with pytest.raises(ValueError, match="LoRA alpha must be a finite number >= 0, got -16"):
        LoraConfig(alpha=-16)


def test_lora_dropout_of_one():
    from lora import LoraConfig

    with pytest.raises(ValueError, match=r"LoRA dropout must be in \[0, 1\), got 1.0"):
        LoraConfig(dropout=1.0)


def test_unknown_lora_target():
    from lora import apply_lora

    with pytest.raises(ValueError, match="LoRA target 'W_q'"):
        apply_lora(tiny(), rank=4, alpha=8, targets=("W_q",))


def test_unknown_lora_scaling():
    from lora import LoraConfig

    with pytest.raises(ValueError, match="unknown LoRA scaling 'alpha\\*r'"):
        LoraConfig(scaling="alpha*r")


# ----------------------------------------------------------------------------- checkpoints and adapters

def test_adapter_for_another_base_model(tmp_path):
    from lora import apply_lora, load_adapter, save_adapter

    trained = apply_lora(tiny(0), rank=4, alpha=8, targets=("query", "value"))
    save_adapter(trained, tmp_path / "adapter")
    with pytest.raises(ValueError, match="another base model.*weights fingerprint differs"):
        load_adapter(tiny(1), tmp_path / "adapter")  # same shapes, other weights
    with pytest.raises(ValueError, match=r"another base model: n_layers=2 \(this model: 3\)"):
        load_adapter(tiny(0, n_layers=3), tmp_path / "adapter")  # other architecture


def test_truncated_safetensors_checkpoint(tmp_path):
    path = save_model(tiny(), tmp_path / "model.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # a download or copy cut short
    with pytest.raises(ValueError, match="not a readable safetensors file \\(truncated or corrupt\\?\\)"):
        load_model(path)


def test_corrupt_checkpoint_of_random_bytes(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(os.urandom(4096))
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_model(path)


def test_checkpoint_that_does_not_fit_the_requested_config(tmp_path):
    path = save_model(tiny(), tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match=r"model.safetensors: \S+ has shape \(32,?\), the config expects \(64,?\)"):
        load_model(path, emb_dim=64, n_heads=4)


def test_missing_checkpoint_and_training_state(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_model(tmp_path / "nope.safetensors")
    with pytest.raises(FileNotFoundError, match="training state not found"):
        load_training_state(tmp_path / "nope.pt")


def test_truncated_training_state(tmp_path):
    path = tmp_path / "train_state.pt"
    torch.save({"step": 3, "weights": torch.zeros(1000)}, path)
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(ValueError, match="cannot load training state"):
        load_training_state(path)


# ----------------------------------------------------------------------------- vocabulary

def test_vocabulary_file_with_the_wrong_hash(tmp_path):
    copy = tmp_path / "gpt2.tiktoken"
    data = bytearray(VOCAB_FILE.read_bytes())
    data[-3] = ord("0") if data[-3] != ord("0") else ord("1")  # one rank changed
    copy.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="has sha256 .*, expected .*: the file is corrupt or is not the GPT-2 vocabulary"):
        get_tokenizer(copy)


# ----------------------------------------------------------------------------- data files

def test_empty_data_file(tmp_path):
    from classify.data import SMS_SPAM_LABELS, read_labelled_tsv

    path = tmp_path / "empty.tsv"
    path.write_text("\n\n")
    with pytest.raises(ValueError, match="empty.tsv: no examples in the file"):
        read_labelled_tsv(path, SMS_SPAM_LABELS, label_column=0)


def test_malformed_data_line(tmp_path):
    from classify.data import load_sms_spam

    path = tmp_path / "sms.tsv"
    path.write_text("ham\tsee you at 5\nspam call now for a prize\n")  # line 2: no tab
    with pytest.raises(ValueError, match=r"sms.tsv:2: expected two tab-separated fields, got 1"):
        load_sms_spam(path)


def test_unknown_label_in_a_data_file(tmp_path):
    from classify.data import load_sms_spam

    path = tmp_path / "sms.tsv"
    path.write_text("ham\tsee you at 5\nscam\tcall now\n")
    with pytest.raises(ValueError, match=r"sms.tsv:2: unknown label 'scam'; expected one of \['ham', 'spam'\]"):
        load_sms_spam(path)


def test_missing_data_file(tmp_path):
    from classify.data import load_sms_spam

    with pytest.raises(FileNotFoundError, match="data file not found"):
        load_sms_spam(tmp_path / "SMSSpamCollection")


def test_token_stream_too_short_for_one_window():
    with pytest.raises(ValueError, match="a stream of 10 tokens is too short for one window of 64 \\+ 1 tokens"):
        TokenWindows(list(range(10)), 64)


# ----------------------------------------------------------------------------- labels and lengths

def test_label_out_of_range_for_the_head():
    from classify.model import add_classification_head
    from classify.train import batch_loss

    model = tiny(drop_rate=0.0)
    add_classification_head(model, num_classes=2)
    batch = (torch.tensor([[1, 2, 3], [4, 5, 6]]), torch.tensor([3, 2]), torch.tensor([0, 2]))  # label 2 of 2 classes
    with pytest.raises((ValueError, IndexError), match=r"(?i)(target|label) 2 is out of (bounds|range)"):
        batch_loss(model, batch, torch.device("cpu"))


def test_text_longer_than_the_context_raises_in_the_model():
    model = tiny()  # context_length 64
    with pytest.raises(ValueError, match="input has 65 tokens but the model's context_length is 64"):
        model(torch.zeros(1, 65, dtype=torch.long))


def test_text_longer_than_the_context_is_truncated_and_counted_for_classification():
    """Stated behaviour: a classification text longer than the context keeps its first
    context_length tokens, and the data set counts it as truncated (never silently)."""
    from classify.data import Example
    from classify.dataset import ClassificationDataset, encode_for_classification

    long_text = "win a prize " * 40  # 120 tokens
    data = ClassificationDataset([Example(long_text, 1), Example("hi", 0)], context_length=64)
    assert data.max_length == 64 and data.num_truncated == 1 and data.lengths == [64, 1]
    ids, truncated = encode_for_classification(long_text, 64)
    assert truncated and len(ids) == 64 and ids == get_tokenizer().encode(long_text)[:64]


def test_generation_with_a_negative_temperature():
    with pytest.raises(ValueError, match="temperature must be >= 0, got -1"):
        generate(tiny(), torch.zeros(1, 3, dtype=torch.long), 2, temperature=-1)


# ----------------------------------------------------------------------------- training settings

def test_batch_size_not_divisible_by_grad_accum():
    with pytest.raises(ValueError, match="batch_size=6 is not divisible by grad_accum=4"):
        PretrainConfig(batch_size=6, grad_accum=4)


def test_non_positive_or_infinite_training_settings():
    with pytest.raises(ValueError, match="PretrainConfig.max_steps must be a positive integer, got 0"):
        PretrainConfig(max_steps=0)
    with pytest.raises(ValueError, match="PretrainConfig.lr must be a finite number > 0, got inf"):
        PretrainConfig(lr=math.inf)


def test_micro_batch_that_cannot_be_split_over_the_processes():
    with pytest.raises(ValueError, match="a batch of 3 examples cannot be split evenly over 2 processes"):
        shard([5, 6, 7], rank=0, world_size=2)


def test_fewer_training_windows_than_one_batch(tmp_path):
    windows = TokenWindows(list(range(6 * 8 + 1)), 8)  # 6 windows
    with pytest.raises(ValueError, match="6 training windows are fewer than one batch of 8"):
        pretrain(tiny(), windows, windows, PretrainConfig(batch_size=8), tmp_path / "run")
    assert files_in(tmp_path) == []


def test_script_with_a_bad_preset_writes_nothing(tmp_path):
    from scripts.pretrain import main

    with pytest.raises(ValueError, match="unknown preset 'gpt-huge'"):
        main(["--preset", "gpt-huge", "--out", str(tmp_path / "run")])
    assert files_in(tmp_path) == []


def test_script_with_batch_size_not_divisible_by_grad_accum_writes_nothing(tmp_path):
    from scripts.pretrain import main

    with pytest.raises(ValueError, match="batch_size=6 is not divisible by grad_accum=4"):
        main(["--quick", "--batch-size", "6", "--grad-accum", "4", "--out", str(tmp_path / "run")])
    assert files_in(tmp_path) == []


# ----------------------------------------------------------------------------- NaN / inf in training

def _windows(n: int = 16, length: int = 16) -> TokenWindows:
    g = torch.Generator().manual_seed(0)
    return TokenWindows(torch.randint(0, 50257, (n * length + 1,), generator=g), length)


def test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path):
    model = tiny(drop_rate=0.0, context_length=16)
    calls = []

    def poison(module, inputs, output):  # the 3rd training forward (step index 2) returns NaN
        if module.training:
            calls.append(1)
            if len(calls) == 3:
                return output * float("nan")
        return output

    model.register_forward_hook(poison)
    cfg = PretrainConfig(max_steps=5, batch_size=2, warmup_steps=1, eval_every=1, eval_batches=1, save_every=1)
    with pytest.raises(FloatingPointError, match="training loss became nan at step 2; lower the learning rate"):
        pretrain(model, _windows(), _windows(4), cfg, tmp_path / "run")
    state = load_training_state(tmp_path / "run" / "train_state.pt")
    assert state["step"] == 2 and all(torch.isfinite(v).all() for v in state["model"].values())
    assert files_in(tmp_path / "run") == ["train_state.pt"]  # no final model, no temporary file


def test_infinite_gradient_stops_training_before_the_weights_change(tmp_path):
    model = tiny(drop_rate=0.0, context_length=16)
    model.final_norm.scale.register_hook(lambda g: g * float("inf"))  # finite loss, infinite gradient
    before = model.final_norm.scale.detach().clone()
    cfg = PretrainConfig(max_steps=3, batch_size=2, warmup_steps=1, eval_every=1, save_every=1)
    with pytest.raises(FloatingPointError, match="gradient norm became (inf|nan) at step 0"):
        pretrain(model, _windows(), _windows(4), cfg, tmp_path / "run")
    assert torch.equal(model.final_norm.scale.detach(), before)  # the optimizer never stepped
    assert files_in(tmp_path) == []


def test_nan_loss_in_classifier_training():
    from classify.model import add_classification_head
    from classify.train import train_classifier

    model = tiny(drop_rate=0.0)
    add_classification_head(model)
    with torch.no_grad():
        model.out_head.bias.fill_(float("nan"))
    batch = (torch.tensor([[1, 2, 3], [4, 5, 6]]), torch.tensor([3, 3]), torch.tensor([0, 1]))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    with pytest.raises(FloatingPointError, match="training loss became nan at step 0"):
        train_classifier(model, [batch], [batch], optimizer, epochs=1, device=torch.device("cpu"), log=None,
                         progress=False)


# ----------------------------------------------------------------------------- devices

@pytest.mark.parametrize("name, message", [
    ("banana", "unknown device 'banana'; use auto, cpu, cuda, cuda:N or mps"),
    ("meta", "unsupported device 'meta'"),
    ("cuda:99", "device 'cuda:99' requested but (CUDA is not available|only \\d+ CUDA device)"),
])
def test_device_that_does_not_exist(name, message):
    with pytest.raises(ValueError, match=message):
        pick_device(name)


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="this machine has Apple MPS")
def test_mps_on_a_machine_without_it():
    with pytest.raises(ValueError, match="Apple MPS is not available on this machine"):
        pick_device("mps")


def test_script_with_a_device_that_does_not_exist_writes_nothing(tmp_path):
    from scripts.pretrain import main

    with pytest.raises(ValueError, match="unknown device 'gpu0'"):
        main(["--quick", "--device", "gpu0", "--out", str(tmp_path / "run")])
    assert files_in(tmp_path) == []


# ----------------------------------------------------------------------------- setup.sh without the PyTorch index

def _probe_torch_index(url: str):
    """setup.sh's probe alone (--check-torch-index): the line it prints and what it would install."""
    import subprocess
    import sys

    return subprocess.run(["bash", str(ROOT / "setup.sh"), "--check-torch-index"], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "TORCH_INDEX_URL": url, "PYTHON": sys.executable})


def test_setup_falls_back_to_pypi_in_one_line_when_the_torch_index_is_unreachable():
    import time

    t0 = time.perf_counter()
    done = _probe_torch_index("http://127.0.0.1:9/whl/cpu")  # port 9 (discard) is closed: refused at once
    seconds = time.perf_counter() - t0
    assert done.returncode == 0, done.stderr
    lines = (done.stdout + done.stderr).strip().splitlines()
    assert len(lines) == 1, lines
    assert "http://127.0.0.1:9/whl/cpu" in lines[0] and "torch==2.13.0 from PyPI" in lines[0], lines[0]
    assert seconds < 20  # one 5-second probe at most, not pip's retries


def test_setup_uses_the_torch_index_when_it_answers(tmp_path):
    import http.server
    import threading

    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "index.html").write_text("<html></html>")
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(tmp_path), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        done = _probe_torch_index(f"http://127.0.0.1:{server.server_port}")
    finally:
        server.shutdown()
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"torch==2.13.0 from http://127.0.0.1:{server.server_port}", done.stdout
