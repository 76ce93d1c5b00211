"""benchmarks/gpu_run.py, the one command for a CUDA machine: without CUDA it refuses in one line and
writes nothing; its steps parse (every command line accepts its arguments) and fit in 9 minutes."""

from __future__ import annotations

import argparse
import importlib
import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import gpu_run

ROOT = Path(__file__).resolve().parent.parent
NO_GPU = not torch.cuda.is_available()


def test_steps_fit_in_nine_minutes():
    plan = gpu_run.steps(Path("out"), Path("scratch"))
    assert [s.name for s in plan] == ["tests", "bf16_steps", "main_job", "lora_vs_full", "lora_family", "attention",
                                      "generate"]
    assert sum(s.limit_s for s in plan) <= gpu_run.BUDGET_S < 9 * 60
    for s in plan:
        if s.name != "tests":
            assert s.argv[s.argv.index("--device") + 1] == "cuda"
        assert any(str(a).startswith(("out", "scratch")) for a in s.argv)  # writes only into the run's folders


class _Parsed(Exception):
    pass


def _parse_script(name: str, argv: list[str], monkeypatch) -> argparse.Namespace:
    """What scripts/<name>.py's main() parses from argv (stopped right after parsing)."""
    seen = {}
    parse_args = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        seen["args"] = parse_args(self, args, namespace)
        raise _Parsed

    with monkeypatch.context() as m:
        m.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
        with pytest.raises(_Parsed):
            importlib.import_module(f"scripts.{name}").main(argv)
    return seen["args"]


def test_dry_run_prints_steps_that_parse(capsys, monkeypatch, tmp_path):
    assert gpu_run.main(["--dry-run", "--out-dir", str(tmp_path / "out"), "--scratch", str(tmp_path / "s")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in lines] == [s.name for s in gpu_run.steps(tmp_path, tmp_path)]
    assert not (tmp_path / "out").exists()  # a dry run writes nothing
    for line in lines:
        name, limit, command = line.split("\t")
        assert int(limit) > 0
        argv = shlex.split(command)
        assert argv[0] == "python"
        if argv[1:3] == ["-m", "pytest"]:
            assert all((ROOT / a).is_file() for a in argv if a.startswith("tests/"))
        elif argv[1] == "-m":  # a benchmark: its own parser must accept every argument
            module = importlib.import_module(argv[2])
            args = module.build_parser().parse_args(argv[3:])
            assert args.device == "cuda" and str(args.out_dir) == str(tmp_path / "out" / "benchmarks")
        else:  # a script
            args = _parse_script(Path(argv[1]).stem, argv[2:], monkeypatch)
            assert args.device == "cuda" and args.out.startswith(str(tmp_path / "s"))
    bf16 = next(shlex.split(line.split("\t")[2]) for line in lines if line.startswith("bf16_steps"))
    assert "--bf16" in bf16 and "--max-steps" in bf16


def test_only_picks_steps_and_names_unknown_ones(capsys):
    assert gpu_run.main(["--dry-run", "--only", "tests", "generate"]) == 0
    assert [line.split("\t")[0] for line in capsys.readouterr().out.splitlines()] == ["tests", "generate"]
    assert gpu_run.main(["--dry-run", "--only", "mfu"]) == 2
    assert "unknown step(s) ['mfu']" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(not NO_GPU, reason="needs a machine without CUDA")
def test_refuses_without_cuda_in_one_line(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu_run", "--out-dir", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == gpu_run.REFUSAL  # one line, no traceback
    assert "torch.cuda.is_available() is False" in proc.stderr and proc.stdout == ""
    assert not out.exists()


@pytest.mark.slow
def test_runner_records_exit_codes_time_limits_and_skips(tmp_path, monkeypatch):
    """The runner itself, with CUDA simulated and four tiny steps: one passes, one runs past its limit and
    is stopped, one fails, one is skipped because the budget is spent."""
    plan = [gpu_run.Step("ok", "passes", ["-c", "print('hello')"], 30),
            gpu_run.Step("slow", "runs past its limit", ["-c", "import time; time.sleep(60)"], 4),
            gpu_run.Step("fails", "exits with 3", ["-c", "import time; time.sleep(5); raise SystemExit(3)"], 30),
            gpu_run.Step("late", "starts too late", ["-c", "pass"], 30)]
    monkeypatch.setattr(gpu_run, "steps", lambda out, scratch: plan)
    monkeypatch.setattr(gpu_run, "BUDGET_S", 18)  # after 'fails' (about 9 s in) fewer than 10 s are left: skip 'late'
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    machine = {**gpu_run.machine_info("cpu"), "gpu": "simulated GPU", "cuda": "0.0"}
    monkeypatch.setattr(gpu_run, "machine_info", lambda device: dict(machine))
    out = tmp_path / "gpu"
    assert gpu_run.main(["--out-dir", str(out), "--scratch", str(tmp_path / "s")]) == 1  # not all passed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["finished"] and summary["gpu"] == "simulated GPU" and summary["torch"] == torch.__version__
    steps = {s["name"]: s for s in summary["steps"]}
    assert (steps["ok"]["exit_code"], steps["ok"]["timed_out"]) == (0, False)
    assert steps["slow"]["timed_out"] and 4 <= steps["slow"]["wall_s"] < 30
    assert (steps["fails"]["exit_code"], steps["fails"]["timed_out"]) == (3, False)
    assert steps["late"]["skipped"] and "budget" in steps["late"]["reason"]
    assert "hello" in (out / steps["ok"]["log"]).read_text()
    md = (out / "summary.md").read_text()
    assert "simulated GPU" in md and "| slow | runs past its limit | timed out |" in md


def test_the_devices_page_quotes_the_h200_run():
    """docs/devices.md's account of the GPU run is what results/gpu/2026-12-04 holds, number for number."""
    import re

    run = ROOT / "results" / "gpu" / "2026-12-04"
    page = " ".join((ROOT / "docs" / "devices.md").read_text().split())
    summary = json.loads((run / "summary.json").read_text())
    assert summary["gpu"] == "NVIDIA H200" and summary["torch"].startswith("2.11") and summary["cuda"] == "13.0"
    suite = re.search(r"<testsuite [^>]*>", (run / "tests.xml").read_text()).group(0)
    n, skipped, failures = (int(re.search(rf'\b{k}="(\d+)"', suite).group(1)) for k in ("tests", "skipped", "failures"))
    assert failures == 0 and f"{n - skipped} passed and {skipped} skipped" in page
    loss = json.loads((run / "bf16_steps.json").read_text())["history"]["train_loss"]
    assert f"from {loss[0]:.3f} to {loss[-1]:.3f}" in page
    main_job = json.loads((run / "finetune_spam.json").read_text())
    assert f"trained in {main_job['train_seconds']} s and reached {100 * main_job['test_accuracy']:.2f} %" in page
    variants = json.loads((run / "benchmarks" / "lora_vs_full.json").read_text())["results"]["shapes"][0]["variants"]
    full, lora = variants["full fine-tuning"], variants["LoRA r=16 (all linear)"]
    assert (f"took {lora['step_seconds']['median'] / full['step_seconds']['median']:.2f}x full fine-tuning's time at "
            f"{lora['memory']['peak_bytes'] / full['memory']['peak_bytes']:.2f}x its memory") in page
    attention = (run / "benchmarks" / "attention.md").read_text()
    whole = re.search(r"\| whole GPT \| ([\d.]+) \|", attention).group(1)
    assert f"fused QKV {whole}x separate QKV's time" in page
    speedup = json.loads((run / "benchmarks" / "generate.json").read_text())["results"]["speedup"]
    assert f"generation {speedup:.1f}x faster" in page
