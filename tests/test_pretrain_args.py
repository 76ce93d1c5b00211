"""scripts/pretrain.py checks every argument before it loads any data or builds a model, and refuses a
bad one in one line (exit code 2, no traceback)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from importlib import import_module

from common.cli import UserError

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("flags, message", [
    (["--max-steps", "0"], r"--max-steps must be at least 1, got 0"),  # 0 once meant "one full pass"
    (["--max-steps", "-3"], r"--max-steps must be at least 1, got -3"),
    (["--batch-size", "0"], r"--batch-size must be at least 1, got 0"),
    (["--grad-accum", "-1"], r"--grad-accum must be at least 1, got -1"),
    (["--eval-every", "0"], r"--eval-every must be at least 1, got 0"),
    (["--save-every", "0"], r"--save-every must be at least 1, got 0"),
    (["--sms-repeat", "0"], r"--sms-repeat must be at least 1, got 0"),
    (["--threads", "0"], r"--threads must be at least 1, got 0"),
    (["--warmup-steps", "-1"], r"--warmup-steps must be 0 or more, got -1"),
    (["--lr", "0"], r"--lr must be a number > 0, got 0.0"),
    (["--lr", "nan"], r"--lr must be a number > 0, got nan"),
    (["--min-lr=-1e-4"], r"--min-lr must be a number >= 0, got -0.0001"),
    (["--drop-rate", "1"], r"--drop-rate must be in \[0, 1\), got 1.0"),
])
def test_pretrain_refuses_bad_arguments_before_loading_any_data(tmp_path, monkeypatch, flags, message):
    pretrain = import_module("scripts.pretrain")
    monkeypatch.setattr(pretrain, "build_corpus", lambda *a, **k: pytest.fail("data loaded before the arguments were checked"))
    with pytest.raises(UserError, match=message):
        pretrain.main(["--quick", *flags, "--out", str(tmp_path / "run")])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_pretrain_max_steps_zero_is_one_line_and_exit_code_2(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "pretrain.py"), "--quick", "--max-steps", "0",
                           "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "LORA_DEBUG": ""})
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("error: --max-steps must be at least 1, got 0") and done.stderr.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- what --out already holds

def _refused_in_one_line(capsys, argv) -> str:
    from common.cli import run_main

    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        run_main(import_module("scripts.pretrain").main, [str(a) for a in argv])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_resume_from_another_model_size_is_one_line_naming_both_sizes(tmp_path, capsys):
    from gpt import GPTConfig, GPTModel
    from gpt.checkpoint import save_training_state

    state = tmp_path / "run" / "train_state.pt"  # left by a 1-layer run; --quick builds gpt-tiny's 2 layers
    other = GPTModel(GPTConfig.from_preset("gpt-tiny", n_layers=1, emb_dim=64))
    save_training_state(state, model=other.state_dict(), optimizer={}, step=3, history={}, config={})
    before = state.read_bytes()
    line = _refused_in_one_line(capsys, ["--quick", "--max-steps", "2", "--out", tmp_path / "run"])
    for needle in (str(state), "emb_dim=64, n_layers=1", "emb_dim=32, n_layers=2", "--no-resume"):
        assert needle in line, (needle, line)
    assert "size mismatch" not in line
    assert state.read_bytes() == before and sorted(p.name for p in state.parent.iterdir()) == ["train_state.pt"]


def test_corrupt_training_state_says_what_to_do(tmp_path, capsys):
    state = tmp_path / "run" / "train_state.pt"
    state.parent.mkdir()
    state.write_bytes(b"PK\x03\x04 not a torch file")
    line = _refused_in_one_line(capsys, ["--quick", "--max-steps", "2", "--out", tmp_path / "run"])
    for needle in (str(state), "--no-resume", "delete"):
        assert needle in line, (needle, line)
    assert state.read_bytes() == b"PK\x03\x04 not a torch file"
