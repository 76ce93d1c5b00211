"""Nothing lost: atomic saves, no pickled code on load, and LoRA merges that do not drift.

* A save that fails midway (the writer raises, or the process is killed with SIGKILL while
  writing) leaves the previous file loadable and no temporary file behind.
* A training-state file that carries a pickled payload (an object whose __reduce__ calls
  os.system) is refused with a ValueError, and the payload never runs.
* 1,000 LoRA merge/unmerge cycles change the frozen base weights by at most 1e-5 (fp32).
"""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import gpt.checkpoint as checkpoint
from common.files import atomic_write, remove_orphaned_temp_files
from gpt.checkpoint import load_model, load_training_state, save_model, save_training_state
from gpt.model import GPTModel
from conftest import make_tiny_gpt

ROOT = Path(__file__).resolve().parent.parent


def tiny(seed: int = 0) -> GPTModel:
    return make_tiny_gpt(seed)  # tests/conftest.py


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def temp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# ----------------------------------------------------------------------------- atomic saves

@pytest.mark.parametrize("error", [OSError("No space left on device"), KeyboardInterrupt()])
def test_failed_model_save_keeps_the_previous_file(tmp_path, monkeypatch, error):
    path = tmp_path / "model.safetensors"
    old = tiny(0)
    save_model(old, path)
    before = path.read_bytes()

    def half_then_fail(tensors, filename, metadata=None):
        save_file(tensors, filename, metadata=metadata)
        with open(filename, "r+b") as f:  # a half-written file, as a full disk or Ctrl-C would leave
            f.truncate(os.path.getsize(filename) // 2)
        raise error

    monkeypatch.setattr(checkpoint, "save_file", half_then_fail)
    with pytest.raises(type(error)):
        save_model(tiny(1), path)
    assert path.read_bytes() == before
    assert same_weights(load_model(path), old)
    assert os.listdir(tmp_path) == ["model.safetensors"]  # the half-written temporary file is gone


def test_failed_training_state_save_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "train_state.pt"
    save_training_state(path, step=4, weights=torch.arange(10.0))
    real_save = torch.save

    def fail_midway(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        with open(f, "r+b") as fh:
            fh.truncate(100)
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", fail_midway)
    with pytest.raises(OSError, match="disk full"):
        save_training_state(path, step=6, weights=torch.zeros(10))
    monkeypatch.undo()
    state = load_training_state(path)
    assert state["step"] == 4 and torch.equal(state["weights"], torch.arange(10.0))
    assert os.listdir(tmp_path) == ["train_state.pt"]


def test_saved_files_get_normal_permissions(tmp_path):
    # mkstemp creates 0600 files; a checkpoint should be readable like any file the user writes.
    path = save_model(tiny(), tmp_path / "m.safetensors")
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


_WRITER = r"""
import sys, torch
from gpt.checkpoint import save_training_state
path = sys.argv[1]
i = 0
while True:
    # 16 MB per save: long enough that a kill often lands in the middle of a write
    save_training_state(path, step=i, big=torch.full((4_000_000,), float(i)))
    print(i, flush=True)
    i += 1
"""


@pytest.mark.slow
@pytest.mark.skipif(os.name != "posix", reason="SIGKILL and the orphan clean-up are POSIX")
def test_sigkill_during_save_keeps_the_previous_file(tmp_path):
    path = tmp_path / "train_state.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    writer = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE, env=env, cwd=ROOT)
    try:
        assert writer.stdout.readline().strip() == b"0"  # one complete save exists
        # Kill it while a temporary file is being written (its size is between 0 and the full size).
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            partial = [p for p in tmp_path.glob(".train_state.pt.*.tmp") if 0 < p.stat().st_size < 16_000_000]
            if partial:
                break
        assert partial, "the writer never had a partly written temporary file to kill"
        os.kill(writer.pid, signal.SIGKILL)
    finally:
        writer.kill()
        writer.wait()
    assert writer.returncode == -signal.SIGKILL

    state = load_training_state(path)  # the last complete save: loads, and is not torn
    big = state["big"]
    assert big.shape == (4_000_000,) and torch.equal(big, torch.full_like(big, float(state["step"])))
    # A killed process cannot clean up after itself; the next save to the same path does
    # (only temporary files whose writer process is gone).
    save_training_state(path, step=-1)
    assert temp_files(tmp_path) == []
    assert load_training_state(path)["step"] == -1


@pytest.mark.skipif(os.name != "posix", reason="orphan clean-up is POSIX only")
def test_orphaned_temp_files_removed_only_when_their_writer_is_gone(tmp_path):
    target = tmp_path / "model.safetensors"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)  # that process has exited
    orphan = tmp_path / f".model.safetensors.{dead_pid}.abcd1234.tmp"
    live = tmp_path / f".model.safetensors.{os.getppid()}.efgh5678.tmp"  # a writer that still runs
    other = tmp_path / f".model.safetensors.json.{dead_pid}.ijkl9012.tmp"  # another target's file
    for p in (orphan, live, other):
        p.write_bytes(b"partial")
    assert remove_orphaned_temp_files(tmp_path, target.name) == [orphan]
    assert not orphan.exists() and live.exists() and other.exists()


def test_atomic_write_leaves_nothing_on_error_and_replaces_on_success(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_write(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["notes.txt"]
    with atomic_write(path) as tmp:
        assert tmp.parent == path.parent and tmp.name.startswith(f".notes.txt.{os.getpid()}.")
        tmp.write_text("new")
    assert path.read_text() == "new" and os.listdir(tmp_path) == ["notes.txt"]


def _adapter_model(seed: int):
    import lora
    model = lora.apply_lora(tiny(0), rank=4, alpha=8, targets=("query", "value"))
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_()  # a "trained" adapter, different per seed
    return model


def _loads_as(path, model) -> bool:
    import lora

    loaded = lora.load_adapter(tiny(0), path)
    return all(torch.equal(a, b) for a, b in zip(lora.lora_state_dict(loaded).values(),
                                                 lora.lora_state_dict(model).values()))


def test_interrupted_single_file_adapter_save_keeps_the_previous_adapter(tmp_path, monkeypatch):
    import lora

    path = tmp_path / "spam.safetensors"
    old = _adapter_model(1)
    lora.save_adapter(old, path)

    def crash(*args):
        raise KeyboardInterrupt("killed just before the rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        lora.save_adapter(_adapter_model(2), path)
    monkeypatch.undo()
    assert _loads_as(path, old)
    assert os.listdir(tmp_path) == ["spam.safetensors"]


def test_interrupted_folder_adapter_save_leaves_a_loadable_adapter(tmp_path, monkeypatch):
    import lora

    folder = tmp_path / "spam"
    old, new = _adapter_model(1), _adapter_model(2)
    lora.save_adapter(old, folder)
    adapters_module = sys.modules["lora.adapters"]  # (`lora.adapters` is also a function's name)
    real_write, calls = adapters_module.atomic_write_bytes, []

    def killed_after_first_file(path, data):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed between the weights and the config")
        real_write(path, data)

    monkeypatch.setattr(adapters_module, "atomic_write_bytes", killed_after_first_file)
    with pytest.raises(KeyboardInterrupt):
        lora.save_adapter(new, folder)
    monkeypatch.undo()
    # Either the old or the new adapter, complete, is acceptable; an unloadable folder is not. Here the new weights
    # (with their config inside the safetensors file) landed and the old adapter_config.json did not: the loader
    # says so and trusts the weights' own copy.
    with pytest.warns(UserWarning, match="does not match the config stored in adapter.safetensors"):
        assert _loads_as(folder, new)


# ----------------------------------------------------------------------------- no pickled code

class _Payload:
    """Unpickling this calls os.system(...), which creates the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def test_malicious_pickle_in_training_state_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "train_state.pt"
    torch.save({"step": 1, "model": _Payload(marker)}, path)  # what an attacker would ship
    with pytest.raises(ValueError, match="cannot load training state"):
        load_training_state(path)
    assert not marker.exists()
    # The control: loading the same file the unsafe way runs the payload. So the refusal above
    # is what kept the marker from being written.
    if os.name == "posix":
        torch.load(path, weights_only=False)
        assert marker.exists()


def test_pickle_disguised_as_a_checkpoint_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "model.safetensors"
    torch.save({"tok_emb.weight": _Payload(marker)}, path)
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_model(path)
    assert not marker.exists()


def test_no_unsafe_loading_in_the_project():
    """Every torch.load in the project's code and notebooks passes weights_only=True; nothing
    unpickles (pickle, dill, cloudpickle)."""
    offenders = []
    sources = [p for folder in ("common", "gpt", "lora", "classify", "plots", "scripts", "benchmarks", "notebooks",
                                                  "solutions")
               for pattern in ("*.py", "*.ipynb") for p in (ROOT / folder).rglob(pattern)]
    assert any(p.name == "checkpoint.py" for p in sources)
    for path in sources:
        text = path.read_text(encoding="utf-8")
        for match in re.finditer(r"torch\.load\(([^()]|\([^()]*\))*\)", text):
            if "weights_only=True" not in match.group(0):
                offenders.append(f"{path.relative_to(ROOT)}: {match.group(0)[:80]}")
        if re.search(r"\b(import|from) (c?pickle|dill|cloudpickle)\b|pickle\.loads?\(", text):
            offenders.append(f"{path.relative_to(ROOT)}: uses pickle")
    assert offenders == []


# ----------------------------------------------------------------------------- merge drift

@pytest.mark.slow
def test_1000_merge_unmerge_cycles_drift_at_most_1e5():
    import lora
    model = tiny(0)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    lora.apply_lora(model, rank=8, alpha=16, targets=("query", "value", "out_proj", "ff"))
    # B starts at zero (an untrained adapter changes nothing); give it trained-looking values so
    # that every merge really adds an update.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.05)

    def base_weights():
        out = {}
        for n, m in model.named_modules():
            if hasattr(m, "linear") and isinstance(getattr(m, "linear"), torch.nn.Linear):
                out[n + ".weight"] = m.linear.weight.detach().clone()
        return out

    lora.merge_lora(model)
    merged_change = max((w - base[n]).abs().max().item() for n, w in base_weights().items())
    assert merged_change > 1e-2  # merging really changes the weights
    lora.unmerge_lora(model)
    for _ in range(999):
        lora.merge_lora(model)
        lora.unmerge_lora(model)
    after = base_weights()
    assert len(after) == 2 * 5  # query, value, out_proj, ff.layers.0, ff.layers.2 per block
    drift = max((w - base[n]).abs().max().item() for n, w in after.items())
    assert drift <= 1e-5, f"1,000 merge/unmerge cycles moved a base weight by {drift:.2e}"
    assert not lora.is_merged(model)
