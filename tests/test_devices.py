"""Every script and benchmark picks CUDA / Apple MPS / CPU by itself and can be told which.

- every command line in scripts/ and benchmarks/ takes --device, defaulting to "auto" (benchmarks: "cpu",
  the device their committed results were measured on; run_all: each benchmark's own default);
- gpt.device.pick_device("auto") prefers CUDA, then MPS, then the CPU; use_bf16 (what autocast decides)
  turns bf16 on for CUDA by default and never for MPS;
- a device that does not exist is a ValueError naming it, before any file is written;
- --device cpu gives the numbers the default gives (on a machine without a GPU, where auto is the CPU).

Parsers are checked by parsing, not by running: the whole module takes a few seconds.

Without a GPU, CUDA is simulated (torch.cuda.is_available and friends monkeypatched). On a machine
with CUDA the tests marked `real_cuda` run on the GPU itself: device choice, bf16 autocast, the model's
logits and cached generation against the CPU's, a fine-tuning step under bf16 (`python -m
benchmarks.gpu_run` runs them there).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from pathlib import Path

import pytest
import torch

from gpt.device import DEVICE_HELP, autocast, pick_device, synchronize, use_bf16

ROOT = Path(__file__).resolve().parent.parent

NO_GPU = not torch.cuda.is_available()


def _command_lines() -> list[tuple[str, str]]:
    """("scripts", name) for every script, ("benchmarks", name) for every benchmark module with a command line."""
    found = [("scripts", p.stem) for p in sorted((ROOT / "scripts").glob("*.py"))
             if p.stem not in ("make_student_release", "__init__",  # copies files: no model, no device
                               "tfidf_baseline")]  # scikit-learn on a CPU: no model, no device
    found += [("benchmarks", p.stem) for p in sorted((ROOT / "benchmarks").glob("*.py"))
              if "ArgumentParser(" in p.read_text(encoding="utf-8")  # builds a parser: a command line
              and p.stem not in ("gpu_run",  # CUDA only, no --device to choose (tests/test_gpu_run.py)
                                 "notebook_times")]  # the notebooks' own LORA_DEVICE picks (tests/test_notebooks.py)
    return found


def _load(folder: str, name: str):
    return importlib.import_module(f"scripts.{name}") if folder == "scripts" else importlib.import_module(f"benchmarks.{name}")


def _expected_default(folder: str, name: str) -> str | None:
    if folder == "scripts":
        return "auto"
    return None if name == "run_all" else "cpu"  # run_all passes --device on only when given


def test_every_command_line_is_found():
    """The list below is what the parametrised test covers: a new script shows up here (and must pass it)."""
    names = {f"{folder}/{name}" for folder, name in _command_lines()}
    assert names >= {"scripts/ch01_tokens", "scripts/ch02_attention", "scripts/ch03_gpt_model", "scripts/ch05_low_rank",
                     "scripts/ch06_lora_layers", "scripts/ch08_adapters", "scripts/predict",
                     "scripts/compare_finetuning", "scripts/finetune_spam", "scripts/pretrain",
                     "benchmarks/bench_attention", "benchmarks/bench_inference", "benchmarks/bench_lora_vs_full",
                     "benchmarks/bench_mfu", "benchmarks/bench_peers", "benchmarks/bench_peft_methods",
                     "benchmarks/run_all"}
    assert "benchmarks/common" not in names and "benchmarks/setups" not in names  # helpers, no command line


class _Parsed(Exception):
    """Raised by the patched parse_args: main() stops right after parsing its arguments."""


def _parse(module, argv: list[str], monkeypatch) -> tuple[argparse.Namespace, argparse.ArgumentParser]:
    """(arguments, parser) as the module's command line parses `argv`: with its build_parser() where it has
    one, otherwise by calling main(argv) with ArgumentParser.parse_args stopping it after the parse."""
    if hasattr(module, "build_parser"):
        parser = module.build_parser()
        return parser.parse_known_args(argv)[0], parser
    seen = {}
    parse_args = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        seen["args"], seen["parser"] = parse_args(self, args, namespace), self
        raise _Parsed

    with monkeypatch.context() as m:
        m.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
        with pytest.raises(_Parsed):
            module.main(argv)
    return seen["args"], seen["parser"]


@pytest.mark.parametrize("folder,name", _command_lines(), ids=lambda v: v)
def test_command_line_takes_device(folder, name, monkeypatch):
    module = _load(folder, name)
    default, parser = _parse(module, [], monkeypatch)
    given, _ = _parse(module, ["--device", "cpu"], monkeypatch)
    assert default.device == _expected_default(folder, name)
    assert given.device == "cpu"
    action = next(a for a in parser._actions if a.dest == "device")
    if _expected_default(folder, name) is not None:  # gpt.device.add_device_argument's help text
        assert action.help.startswith(DEVICE_HELP)
    if folder == "benchmarks" and name != "run_all":  # the help says why the default is not auto
        assert "committed results were measured on a CPU" in action.help


# ----------------------------------------------------------------------------- gpt/device.py

def test_auto_prefers_cuda_then_mps_then_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert pick_device("auto") == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device("auto") == torch.device("mps")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert pick_device("auto") == torch.device("cpu")
    assert pick_device() == torch.device("cpu")  # "auto" is the default


def test_named_devices_are_checked(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert pick_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ValueError, match=r"device 'cuda:2' requested but only 2 CUDA device\(s\) exist"):
        pick_device("cuda:2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="device 'cuda' requested but CUDA is not available"):
        pick_device("cuda")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ValueError, match="Apple MPS is not available"):
        pick_device("mps")


def test_bf16_decision(monkeypatch):
    """What autocast(device, bf16) decides, without entering a CUDA autocast on a CPU machine."""
    cuda, cpu, mps = torch.device("cuda"), torch.device("cpu"), torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert use_bf16(cuda) is True and use_bf16("cuda:0") is True  # default on a GPU that has bf16
    assert use_bf16(cpu) is False and use_bf16(mps) is False  # default elsewhere: float32
    assert use_bf16(cuda, False) is False  # asked not to
    assert use_bf16(cpu, True) is True  # asked to, on a CPU
    assert use_bf16(mps, True) is False  # never on MPS
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert use_bf16(cuda) is False  # a GPU without bf16 (before Ampere): float32


def test_autocast_on_the_cpu():
    off = autocast(torch.device("cpu"))
    assert not isinstance(off, torch.autocast)  # a no-op context
    with off:
        assert not torch.is_autocast_enabled("cpu")
    on = autocast(torch.device("cpu"), True)
    assert isinstance(on, torch.autocast) and on.fast_dtype == torch.bfloat16
    with on:
        y = torch.nn.functional.linear(torch.ones(2, 3), torch.ones(4, 3))
    assert y.dtype == torch.bfloat16 and float(y[0, 0]) == 3.0


def test_synchronize_is_one_function():
    from benchmarks import common

    assert common.synchronize is synchronize  # benchmarks import it from gpt/, not a copy
    synchronize("cpu")  # nothing to wait for on a CPU: returns at once
    synchronize(torch.device("cpu"))


_PEAK = r"""
import json, torch
from gpt.device import peak_memory_bytes, peak_memory_mib, peak_rss_bytes
before = peak_rss_bytes()
x = torch.ones(64 * 2**20)  # 256 MiB of float32, every page touched
after = peak_memory_mib("cpu")
print(json.dumps({"before": before, "after": after, "bytes": peak_memory_bytes("cpu")}))
"""


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="reads VmHWM from /proc")
def test_peak_memory_sees_a_256_mib_tensor():
    """gpt.device.peak_memory_mib, measured in a fresh process: a 256 MiB tensor raises the peak RSS by
    256 MiB (within 16 MiB of allocator slack); the keys are those a fine-tuning run records."""
    import subprocess

    done = subprocess.run([sys.executable, "-c", _PEAK], capture_output=True, text=True, check=True, cwd=ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    seen = json.loads(done.stdout)
    assert set(seen["after"]) == {"peak_rss_mib"}  # no CUDA entry for a CPU
    grown = seen["after"]["peak_rss_mib"] - seen["before"] / 2**20
    assert 256 - 16 <= grown <= 256 + 16, grown
    assert seen["bytes"] >= seen["after"]["peak_rss_mib"] * 2**20 - 2**20


# ----------------------------------------------------------------------------- a device that does not exist

WRONG_DEVICE = [  # (script, extra arguments): each must refuse --device cuda before writing anything
    ("ch01_tokens", ["--no-plot"]),
    ("ch02_attention", ["--quick"]),
    ("ch03_gpt_model", ["--quick"]),
    ("ch05_low_rank", ["--quick"]),
    ("ch06_lora_layers", ["--quick"]),
    ("ch08_adapters", ["--quick"]),
]


@pytest.mark.skipif(not NO_GPU, reason="needs a machine without CUDA")
@pytest.mark.parametrize("name,extra", WRONG_DEVICE, ids=[n for n, _ in WRONG_DEVICE])
def test_chapter_script_refuses_a_missing_gpu(name, extra, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="device 'cuda' requested but CUDA is not available on this machine"):
        importlib.import_module(f"scripts.{name}").main([*extra, "--device", "cuda", "--out", str(out)])
    assert not out.exists()  # refused before any file was written


@pytest.mark.skipif(not NO_GPU, reason="needs a machine without CUDA")
def test_other_command_lines_refuse_a_missing_gpu(tmp_path):
    from benchmarks import bench_mfu, run_all

    with pytest.raises(ValueError, match="CUDA is not available"):
        importlib.import_module("scripts.predict").main(["--device", "cuda", "--adapter", str(tmp_path / "none"), "hello"])
    with pytest.raises(ValueError, match="CUDA is not available"):
        importlib.import_module("scripts.compare_finetuning").main(["--quick", "--device", "cuda", "--results", str(tmp_path / "r"),
                                            "--runs", str(tmp_path / "runs")])
    with pytest.raises(ValueError, match="CUDA is not available"):
        bench_mfu.main(["--quick", "--device", "cuda", "--out-dir", str(tmp_path / "b")])
    with pytest.raises(ValueError, match="CUDA is not available"):
        run_all.main(["--quick", "--device", "cuda", "--out-dir", str(tmp_path / "all")])
    assert list(tmp_path.iterdir()) == []  # nothing written by any of them


# ----------------------------------------------------------------------------- --device cpu = the default

@pytest.mark.slow
def test_device_cpu_writes_the_numbers_the_default_writes(tmp_path):
    """ch02 --quick: attention weights, token ids and the fused-vs-separate difference. Where auto is
    the CPU they must be identical; on a GPU machine the default runs on the GPU: equal to float32 rounding."""
    ch02 = importlib.import_module("scripts.ch02_attention")
    runs = {}
    for name, flags in (("default", []), ("cpu", ["--device", "cpu"])):
        ch02.main(["--quick", "--repeats", "1", *flags, "--out", str(tmp_path / name)])
        runs[name] = json.loads((tmp_path / name / "results.json").read_text())
    auto, cpu = runs["default"], runs["cpu"]
    assert cpu["device"] == "cpu" and auto["device"] == str(pick_device("auto"))
    assert (auto["ids"], auto["tokens"]) == (cpu["ids"], cpu["tokens"])
    assert cpu["ids"][:5] == [6109, 3626, 6100, 345, 2651]  # "Every effort moves you forward", GPT-2's ids
    assert len(cpu["weights"]) == len(cpu["ids"]) == 13 and cpu["weights"][0][0] == 1.0  # token 0 sees only itself
    if auto["device"] == "cpu":
        assert auto["weights"] == cpu["weights"]
        assert auto["fused_max_abs_diff"] == cpu["fused_max_abs_diff"]
    else:
        torch.testing.assert_close(torch.tensor(auto["weights"]), torch.tensor(cpu["weights"]), rtol=0, atol=1e-4)


# ----------------------------------------------------------------------------- a real GPU (skipped without one)

def real_cuda(test):
    """Marked `gpu` (pytest -m gpu runs these alone) and skipped without CUDA."""
    return pytest.mark.gpu(pytest.mark.skipif(NO_GPU, reason="needs a CUDA GPU (these run for real on one)")(test))


@real_cuda
def test_real_cuda_device_choice():
    assert pick_device("auto") == torch.device("cuda")
    assert pick_device("cuda:0") == torch.device("cuda", 0)
    n = torch.cuda.device_count()
    with pytest.raises(ValueError, match=rf"device 'cuda:{n}' requested but only {n} CUDA device\(s\) exist"):
        pick_device(f"cuda:{n}")
    assert use_bf16("cuda") is torch.cuda.is_bf16_supported()
    synchronize("cuda")


@real_cuda
def test_real_cuda_bf16_autocast():
    x, w = torch.ones(2, 3, device="cuda"), torch.ones(4, 3, device="cuda")
    with autocast(torch.device("cuda"), False):
        assert torch.nn.functional.linear(x, w).dtype == torch.float32
    if torch.cuda.is_bf16_supported():
        with autocast(torch.device("cuda")):  # the default on a GPU with bf16
            y = torch.nn.functional.linear(x, w)
        assert y.dtype == torch.bfloat16 and float(y[0, 0]) == 3.0


@real_cuda
def test_real_cuda_logits_and_cached_generation_equal_the_cpus():
    from gpt import GPTConfig, GPTModel, generate

    torch.manual_seed(0)
    cpu_model = GPTModel(GPTConfig.from_preset("gpt-tiny", drop_rate=0.0, qkv_bias=True)).eval()
    with torch.no_grad():  # spread the logits: greedy choices far from ties
        for p in cpu_model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    gpu_model = GPTModel(cpu_model.cfg).to("cuda").eval()
    gpu_model.load_state_dict(cpu_model.state_dict())
    ids = torch.randint(0, 50257, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(gpu_model(ids.cuda()).cpu(), cpu_model(ids), rtol=0, atol=1e-4)
    prompt = ids[:, :8]
    on_cpu = generate(cpu_model, prompt, max_new_tokens=20)
    assert torch.equal(generate(gpu_model, prompt.cuda(), max_new_tokens=20, use_cache=True).cpu(), on_cpu)
    assert torch.equal(generate(gpu_model, prompt.cuda(), max_new_tokens=20).cpu(), on_cpu)
    with pytest.raises(ValueError, match="token id 50257 is outside the vocabulary"):  # not a device-side assert
        gpu_model(torch.tensor([[1, 50257]], device="cuda"))


@real_cuda
def test_real_cuda_finetune_steps_under_bf16(tmp_path):
    """scripts/finetune_spam.py --quick on the GPU: bf16 autocast by default there, a finite loss."""
    result_json = tmp_path / "result.json"
    importlib.import_module("scripts.finetune_spam").main(["--quick", "--device", "cuda", "--no-progress", "--out", str(tmp_path / "run"),
                                       "--result-json", str(result_json)])
    result = json.loads(result_json.read_text())
    assert result["device"].startswith("cuda")
    losses = result["history"]["train_loss"]
    assert losses and all(loss == loss and 0 < loss < 20 for loss in losses)  # finite, not NaN
