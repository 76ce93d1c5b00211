"""Nothing a user made is overwritten or half-written, nothing trains silently wrong, and every
refusal is one clear line: the classification scripts (finetune_spam.py, compare_finetuning.py,
predict.py, ch08_adapters.py) under the user's mistakes.

Each test runs a script's `main` through common.cli.run_main (what `python scripts/x.py` does) and
asserts the exit code, one line on stderr naming the problem, no traceback, and (sha256 of every
file) that what the user had before is still there byte for byte. A "real" run below is a non-quick
run on the random gpt-tiny for 2 steps: seconds, but saved as the main job saves.
"""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from importlib import import_module

from common.cli import run_main
from common.files import folder_lock
from gpt import GPTConfig, GPTModel
from gpt.checkpoint import save_model

ROOT = Path(__file__).resolve().parent.parent
# A real (not --quick) run, seconds long: the random gpt-tiny, 2 optimizer steps, no probes.
TINY = ["--model", "random:gpt-tiny", "--epochs", "1", "--max-steps", "2", "--eval-every", "0", "--probe",
        "--no-progress", "--threads", "1"]


@pytest.fixture(scope="module")
def finetune_spam():
    return import_module("scripts.finetune_spam")


@pytest.fixture(scope="module")
def predict():
    return import_module("scripts.predict")


@pytest.fixture(scope="module")
def compare():
    return import_module("scripts.compare_finetuning")


@pytest.fixture(scope="module")
def ch08():
    return import_module("scripts.ch08_adapters")


def snapshot(*roots: Path) -> dict[str, str]:
    """sha256 of every file under the given folders (or of the given files)."""
    out = {}
    for root in roots:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for f in files:
            out[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def refused(capsys, main, argv, *needles, code=2) -> str:
    """Run main(argv) as the command line does; assert it stops with `code`, one `error:` line on
    stderr holding every needle, and no traceback. Returns the line."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        run_main(main, [str(a) for a in argv])
    err = capsys.readouterr().err
    assert stop.value.code == code, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    """A run saved as the main job saves it (not --quick): the user's work the tests must not harm."""
    out = tmp_path_factory.mktemp("real") / "spam-lora"
    run_main(import_module("scripts.finetune_spam").main, [*TINY, "--out", str(out)])
    return out


@pytest.fixture
def user_run(real_run, tmp_path):
    """A fresh copy of the real run, with its sha256s."""
    out = tmp_path / "spam-lora"
    shutil.copytree(real_run, out)
    return out, snapshot(out)


def leftovers(folder: Path) -> list[str]:
    """Temporary files or folders a writer left beside or inside `folder`."""
    return sorted(p.name for p in folder.parent.iterdir() if p.name.startswith("."))


# ----------------------------------------------------------------------------- smoke runs stay out of real work

def test_quick_runs_default_to_their_own_folder(finetune_spam, compare, ch08):
    assert Path(finetune_spam.parse_args([]).out) == ROOT / "runs" / "spam-lora"
    assert Path(finetune_spam.parse_args(["--quick"]).out) == ROOT / "runs" / "quick" / "spam-lora"
    assert Path(finetune_spam.parse_args(["--quick", "--method", "full"]).out) == ROOT / "runs" / "quick" / "spam-full"
    args = compare.parse_args(["--quick"])
    assert Path(args.results) == ROOT / "runs" / "quick" / "compare" / "results"
    assert Path(args.runs) == ROOT / "runs" / "quick" / "compare" / "runs"
    assert Path(compare.parse_args([]).results) == ROOT / "results"
    assert Path(ch08.parse_args(["--quick"]).out) == ROOT / "runs" / "quick" / "ch08_adapters"
    assert Path(ch08.parse_args([]).out) == ROOT / "runs" / "ch08_adapters"


def test_quick_run_refuses_to_replace_a_real_run(finetune_spam, user_run, capsys):
    out, before = user_run
    refused(capsys, finetune_spam.main, ["--quick", "--no-progress", "--out", out], str(out), "--quick", "real run")
    assert snapshot(out) == before and leftovers(out) == []


@pytest.mark.slow
def test_quick_run_may_replace_an_earlier_quick_run(finetune_spam, tmp_path):
    out = tmp_path / "q"
    first = run_main(finetune_spam.main, ["--quick", "--no-progress", "--probe", "--out", str(out)])
    second = run_main(finetune_spam.main, ["--quick", "--no-progress", "--probe", "--out", str(out)])
    assert first["test_accuracy"] == second["test_accuracy"]
    assert json.loads((out / "classifier.json").read_text())["quick"] is True


def test_quick_comparison_refuses_the_committed_results(compare, tmp_path, capsys):
    results = tmp_path / "results"
    results.mkdir()
    for name in ("spam_comparison.json", "spam_comparison.md", "spam_curves.png", "spam_floor.json"):
        shutil.copy(ROOT / "results" / name, results / name)
    before = snapshot(results)
    refused(capsys, compare.main, ["--quick", "--results", results, "--runs", tmp_path / "runs"],
            str(results), "--quick")
    assert snapshot(results) == before and not (tmp_path / "runs").exists()


# ----------------------------------------------------------------------------- --out checked before any work

def test_out_that_is_a_file_is_refused_before_the_data_is_read(finetune_spam, tmp_path, capsys):
    out = tmp_path / "notes.txt"
    out.write_text("my notes\n")
    before = snapshot(out)
    # The data file does not exist either: the --out refusal must come first (nothing was loaded).
    refused(capsys, finetune_spam.main, [*TINY, "--data", tmp_path / "missing.tsv", "--out", out], str(out), "a file")
    assert snapshot(out) == before


def test_out_that_is_another_models_folder_is_refused(finetune_spam, tmp_path, capsys):
    model_dir = tmp_path / "my-model"
    torch.manual_seed(0)
    save_model(GPTModel(GPTConfig.from_preset("gpt-tiny")), model_dir / "model.safetensors")
    (model_dir / "manifest.json").write_text("{}\n")
    before = snapshot(model_dir)
    refused(capsys, finetune_spam.main, [*TINY, "--out", model_dir], str(model_dir), "not a classifier run",
            "model.safetensors")
    assert snapshot(model_dir) == before


def _unwritable(tmp_path: Path) -> Path:
    if os.geteuid() == 0:  # root writes through any mode bits; the kernel's /sys refuses even root
        return Path("/sys/lora-from-scratch-test/spam-lora")
    locked = tmp_path / "read-only"
    locked.mkdir(mode=0o555)
    return locked / "spam-lora"


def test_read_only_out_is_refused_before_the_data_is_read(finetune_spam, tmp_path, capsys):
    out = _unwritable(tmp_path)
    refused(capsys, finetune_spam.main, [*TINY, "--data", tmp_path / "missing.tsv", "--out", out], str(out.parent))


def test_full_disk_is_refused_before_the_data_is_read(finetune_spam, tmp_path, capsys, monkeypatch):
    import classify.saved

    monkeypatch.setattr(classify.saved, "free_bytes", lambda path: 1024)
    refused(capsys, finetune_spam.main, [*TINY, "--data", tmp_path / "missing.tsv", "--out", tmp_path / "run"],
            "free", "MB")
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- a saved run is one unit

def test_interrupted_save_leaves_the_previous_run_whole(finetune_spam, user_run, capsys, monkeypatch):
    """Ctrl-C after the adapter is written and before classifier.json: the previous run stays, whole."""
    import classify.saved

    out, before = user_run
    real_dump = classify.saved.json.dumps

    def interrupted(obj, *a, **k):
        if isinstance(obj, dict) and obj.get("format") == classify.saved.FORMAT:
            raise KeyboardInterrupt
        return real_dump(obj, *a, **k)

    monkeypatch.setattr(classify.saved.json, "dumps", interrupted)
    refused(capsys, finetune_spam.main, [*TINY, "--out", out], "interrupted", code=130)
    assert snapshot(out) == before and leftovers(out) == []


def test_second_writer_is_refused(finetune_spam, user_run, capsys):
    out, before = user_run
    with folder_lock(out):  # another run is writing this folder
        refused(capsys, finetune_spam.main, [*TINY, "--out", out], str(out), "another process")
    assert snapshot(out) == before


@pytest.mark.slow
def test_ctrl_c_while_training_leaves_the_previous_run_whole(user_run):
    out, before = user_run
    cmd = [sys.executable, str(ROOT / "scripts" / "finetune_spam.py"), "--model", "random:gpt-tiny", "--epochs", "1",
           "--eval-every", "0", "--probe", "--threads", "1", "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    for line in proc.stdout:  # the model is built and training starts after this line
        if line.startswith("base random:gpt-tiny"):
            break
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("error: interrupted")
    assert snapshot(out) == before and leftovers(out) == []


# ----------------------------------------------------------------------------- runs that would train nothing

@pytest.mark.parametrize("flags,needle", [
    (["--batch-size", "2000"], "1,045 training messages"),
    (["--max-steps", "0"], "--max-steps"),
    (["--grad-clip", "0"], "--grad-clip"),
    (["--grad-clip", "-1"], "--grad-clip"),
    (["--epochs", "0"], "--epochs"),
    (["--lr", "0"], "--lr"),
    (["--lr", "nan"], "--lr"),
    (["--rank", "0"], "--rank"),
    (["--alpha", "0"], "--alpha 0 makes the LoRA update"),  # scale alpha/r = 0: B A would change nothing
    (["--alpha", "-1"], "--alpha"),
    (["--warmup-steps", "-1"], "--warmup-steps"),
    (["--prefix-weight", "-1"], "--prefix-weight"),
    (["--eval-every", "-5"], "--eval-every"),
    (["--threads", "0"], "--threads"),
], ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_run_that_would_train_nothing_or_backwards_is_refused(finetune_spam, tmp_path, capsys, flags, needle):
    out = tmp_path / "run"
    refused(capsys, finetune_spam.main, [*TINY, *flags, "--out", out], needle)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_finetune_config_checks_the_lora_settings_before_any_data(monkeypatch):
    """Through the API too (not only the command line's choices): a bad scaling or alpha 0 is a ValueError
    when the FinetuneConfig is made, before spam_splits reads a byte."""
    import classify.finetune as job

    monkeypatch.setattr(job, "spam_splits", lambda *a, **k: pytest.fail("data read before the settings were checked"))
    for bad, needle in ((dict(scaling="alpha/2"), "--scaling must be one of"), (dict(alpha=0), "--alpha 0"),
                        (dict(alpha=-1.0), "--alpha must be"), (dict(train_head="no"), "train_head")):
        with pytest.raises(ValueError, match=needle):
            job.FinetuneConfig.quick_run(**bad)


def test_train_classifier_refuses_no_clipping_and_an_empty_loader():
    from classify.train import train_classifier

    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for clip in (0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="grad_clip must be a positive number"):
            train_classifier(model, [[1]], [[1]], opt, 1, "cpu", grad_clip=clip, progress=False, log=None)
    with pytest.raises(ValueError, match="the training loader yields no batches"):
        train_classifier(model, [], [[1]], opt, 1, "cpu", progress=False, log=None)


# ----------------------------------------------------------------------------- data files

def test_data_file_with_one_class_is_refused(finetune_spam, tmp_path, capsys):
    data = tmp_path / "only-ham.tsv"
    data.write_text("".join(f"ham\tmessage number {i}\n" for i in range(40)))
    refused(capsys, finetune_spam.main, [*TINY, "--data", data, "--out", tmp_path / "run"], str(data), "ham",
            "only one class")
    assert not (tmp_path / "run").exists()


def test_data_file_that_is_not_utf8_names_the_file_and_line(finetune_spam, tmp_path, capsys):
    data = tmp_path / "latin1.tsv"
    data.write_bytes(b"ham\tfine\nspam\tWIN \xa3100 now\n")
    refused(capsys, finetune_spam.main, [*TINY, "--data", data, "--out", tmp_path / "run"], f"{data}:2", "UTF-8")


# ----------------------------------------------------------------------------- saved classifiers, checked on load

@pytest.fixture(scope="module")
def head_run(tmp_path_factory):
    """Head-only fine-tuning on a checkpoint base (no LoRA fingerprint to fall back on)."""
    folder = tmp_path_factory.mktemp("head")
    torch.manual_seed(1)
    save_model(GPTModel(GPTConfig.from_preset("gpt-tiny")), folder / "base.safetensors")
    torch.manual_seed(2)
    save_model(GPTModel(GPTConfig.from_preset("gpt-tiny")), folder / "other.safetensors")
    run_main(import_module("scripts.finetune_spam").main,
             [*TINY, "--method", "head", "--model", str(folder / "base.safetensors"), "--out", str(folder / "run")])
    return folder


def test_head_only_classifier_refuses_another_base(predict, head_run, capsys):
    run_main(predict.main, ["--adapter", str(head_run / "run"), "hello"])  # its own base: fine
    refused(capsys, predict.main, ["--adapter", head_run / "run", "--base", head_run / "other.safetensors", "hello"],
            "another base", "fingerprint")


def _broken_copy(head_run, tmp_path, edit) -> Path:
    folder = tmp_path / "run"
    shutil.copytree(head_run / "run", folder)
    edit(folder)
    return folder


def test_classifier_json_that_is_not_json(predict, head_run, tmp_path, capsys):
    folder = _broken_copy(head_run, tmp_path, lambda f: (f / "classifier.json").write_text("{not json"))
    refused(capsys, predict.main, ["--adapter", folder, "hello"], "classifier.json", "not valid JSON")


def test_classifier_json_missing_a_key(predict, head_run, tmp_path, capsys):
    def drop(f):
        info = json.loads((f / "classifier.json").read_text())
        del info["attention"]
        (f / "classifier.json").write_text(json.dumps(info))

    folder = _broken_copy(head_run, tmp_path, drop)
    refused(capsys, predict.main, ["--adapter", folder, "hello"], "classifier.json", "'attention'")


def test_truncated_classifier_weights(predict, head_run, tmp_path, capsys):
    def cut(f):
        blob = (f / "classifier.safetensors").read_bytes()
        (f / "classifier.safetensors").write_bytes(blob[: len(blob) // 2])

    folder = _broken_copy(head_run, tmp_path, cut)
    refused(capsys, predict.main, ["--adapter", folder, "hello"], "classifier.safetensors", "re-run")


def test_predict_on_a_model_folder_says_what_it_needs(predict, head_run, capsys):
    refused(capsys, predict.main, ["--adapter", head_run, "hello"], "classifier.json", "finetune_spam.py")


# ----------------------------------------------------------------------------- flags and devices

@pytest.mark.parametrize("name,argv", [
    ("finetune_spam", [*TINY, "--device", "cuda:7"]),
    ("predict", ["--device", "cuda:7", "hello"]),
    ("compare_finetuning", ["--quick", "--device", "cuda:7"]),
    ("ch08_adapters", ["--quick", "--device", "cuda:7"]),
])
def test_device_that_does_not_exist(name, argv, tmp_path, capsys):
    out_flag = {"finetune_spam": ["--out", tmp_path / "o"], "ch08_adapters": ["--out", tmp_path / "o"],
                "compare_finetuning": ["--results", tmp_path / "r", "--runs", tmp_path / "o"],
                "predict": ["--adapter", tmp_path / "o"]}[name]
    refused(capsys, import_module(f"scripts.{name}").main, [*argv, *out_flag], "cuda")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name,argv,needle", [
    ("finetune_spam", ["--rank", "abc"], "--rank"),
    ("finetune_spam", ["--method", "lorax"], "--method"),
    ("compare_finetuning", ["--seeds", "x"], "--seeds"),
    ("compare_finetuning", ["--jobs", "0"], "--jobs"),
    ("ch08_adapters", ["--rank", "0"], "--rank"),
    ("ch08_adapters", ["--repeats", "0"], "--repeats"),
])
def test_bad_flag_value_is_one_line(name, argv, needle, tmp_path, capsys):
    refused(capsys, import_module(f"scripts.{name}").main, [*argv, "--out" if name != "compare_finetuning" else "--runs",
                                             tmp_path / "o"], needle)
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- the last rough edges

def test_classifier_json_with_a_malformed_field_names_the_file_and_the_field(predict, head_run, tmp_path, capsys):
    def spoil(f):
        info = json.loads((f / "classifier.json").read_text())
        info["max_length"] = "lots"
        (f / "classifier.json").write_text(json.dumps(info))

    folder = _broken_copy(head_run, tmp_path, spoil)
    line = refused(capsys, predict.main, ["--adapter", folder, "hello"], "classifier.json", "max_length", "'lots'")
    assert "invalid literal" not in line


def test_data_that_is_a_folder_says_so_and_names_the_file_expected(finetune_spam, tmp_path, capsys):
    folder = tmp_path / "sms_spam"
    folder.mkdir()
    line = refused(capsys, finetune_spam.main, [*TINY, "--data", folder, "--out", tmp_path / "run"],
                   str(folder), "is a folder", "label<TAB>text")
    assert "not found" not in line
    assert not (tmp_path / "run").exists()


def test_read_only_disk_is_called_read_only_not_full(finetune_spam, tmp_path, capsys, monkeypatch):
    import classify.saved

    monkeypatch.setattr(classify.saved, "free_bytes", lambda path: 0)  # what a read-only file system reports
    out = _unwritable(tmp_path)
    line = refused(capsys, finetune_spam.main, [*TINY, "--data", tmp_path / "missing.tsv", "--out", out],
                   str(out), "not writable")
    assert "free" not in line
