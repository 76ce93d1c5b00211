"""Every check this project has for a CUDA GPU, in one command that finishes within 9 minutes.

    bash setup.sh                                  # keeps the torch the GPU machine already has
    .venv/bin/python -m benchmarks.gpu_run         # writes results/gpu/<date>/
    .venv/bin/python -m benchmarks.gpu_run --dry-run   # prints the steps, runs nothing (any machine)

The steps, most important first, each in its own process and stopped at its time limit (the
limits add up to 9 min; a step that would start after the overall budget is skipped):

1. tests: tests/test_devices.py (its real-CUDA tests run on a GPU) and tests/test_generate.py;
2. bf16: 40 steps of the main fine-tune under bf16 autocast, the loss recorded;
3. the main job, scripts/finetune_spam.py --device cuda (bf16 is its default on a GPU that has it),
   with its adapter written to a scratch folder;
4. LoRA r=16 vs full fine-tuning at the GPT-2 124M shape (step time and peak memory);
5. the LoRA family (QLoRA, DoRA, PiSSA, LoRA+, rsLoRA, VeRA, LoRA, full) at the GPT-2 124M shape;
6. fused vs separate QKV at the GPT-2 124M shape;
7. generation with and without the KV cache at the GPT-2 124M shape.

Everything goes into one folder: summary.json and summary.md (the GPU from
torch.cuda.get_device_name, torch and CUDA versions, each step's command, exit code, wall time
and limit), each step's log, and the files the steps write. summary.json is rewritten after every
step, so a run cut short still says how far it got. On a machine without CUDA the script refuses
in one line and writes nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmarks.common import ROOT, machine_info, machine_line, markdown_table
from common.cli import run_main
from common.files import atomic_write_text

BUDGET_S = 530  # all steps together; 9 minutes 10 s minus the time to start and to write the summary
REFUSAL = ("gpu_run: refused: no CUDA GPU on this machine (torch.cuda.is_available() is False); "
           "run it on a machine with an NVIDIA GPU, or pass --dry-run to print the steps")


@dataclass
class Step:
    name: str
    what: str
    argv: list[str]  # after `python`: ["-m", "pytest", ...] or ["scripts/x.py", ...]
    limit_s: int


def steps(out: Path, scratch: Path) -> list[Step]:
    """The steps, with their results under `out` and throw-away outputs (adapters) under `scratch`."""
    bench = ["--device", "cuda", "--out-dir", str(out / "benchmarks")]
    return [
        Step("tests", "device and generation tests, real-CUDA tests included",
             ["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_devices.py", "tests/test_generate.py",
              "--junitxml", str(out / "tests.xml")], 90),
        Step("bf16_steps", "40 steps of the main fine-tune under bf16 autocast, loss recorded",
             ["scripts/finetune_spam.py", "--device", "cuda", "--bf16", "--max-steps", "40", "--eval-every", "20",
              "--no-progress", "--out", str(scratch / "bf16-steps"), "--result-json", str(out / "bf16_steps.json")],
             50),
        Step("main_job", "the main job: LoRA r=16 spam classifier on gpt-mini, 3 epochs",
             ["scripts/finetune_spam.py", "--device", "cuda", "--no-progress", "--out", str(scratch / "spam-lora"),
              "--result-json", str(out / "finetune_spam.json")], 80),
        Step("lora_vs_full", "LoRA r=16 vs full fine-tuning, GPT-2 124M shape",
             ["-m", "benchmarks.bench_lora_vs_full", *bench, "--shapes", "gpt2-small", "--variants", "full",
              "lora:16", "--repeats", "5", "--warmup", "2", "--no-profile"], 70),
        Step("lora_family", "the LoRA family's training step: peak memory and step time, GPT-2 124M shape",
             ["-m", "benchmarks.bench_lora_family", *bench, "--shapes", "gpt2-small", "--repeats", "5",
              "--warmup", "2"], 150),
        Step("attention", "fused vs separate QKV, GPT-2 124M shape",
             ["-m", "benchmarks.bench_attention", *bench, "--shape", "gpt2-small", "--repeats", "5",
              "--warmup", "2"], 50),
        Step("generate", "generation with and without the KV cache, GPT-2 124M shape",
             ["-m", "benchmarks.bench_generate", *bench, "--repeats", "3"], 40),
    ]


def run_step(step: Step, limit_s: float, log_path: Path) -> dict:
    """Run one step in its own process group; stop the whole group at `limit_s` seconds."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    cmd = [sys.executable, *step.argv]
    start = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as log:
        log.write(f"$ {shlex.join(cmd)}\n")
        log.flush()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)  # its own group: a timeout stops its workers too
        try:
            exit_code, timed_out = proc.wait(timeout=limit_s), False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            exit_code, timed_out = proc.returncode, True
    return {"exit_code": exit_code, "timed_out": timed_out, "wall_s": round(time.perf_counter() - start, 1),
            "limit_s": round(limit_s, 1)}


def _headlines(out: Path) -> list[str]:
    """A few numbers from the steps' own result files, where they were written."""
    lines = []

    def load(path):
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None

    for name, label in (("bf16_steps.json", "bf16 steps"), ("finetune_spam.json", "main job")):
        r = load(out / name)
        if r:
            loss = r.get("history", {}).get("train_loss") or [float("nan")]
            lines.append(f"- {label}: {r['steps']} steps on {r['device']}, train loss {loss[0]:.3f} -> {loss[-1]:.3f}, "
                         f"test accuracy {100 * r['test_accuracy']:.2f} %, training {r['train_seconds']} s")
    for name in ("lora_vs_full", "lora_family_cost", "attention", "generate"):
        if (out / "benchmarks" / f"{name}.md").is_file():
            lines.append(f"- {name}: [benchmarks/{name}.md](benchmarks/{name}.md)")
    return lines


def write_summary(out: Path, machine: dict, records: list[dict], finished: bool) -> None:
    summary = {"finished": finished, "machine": machine, "gpu": machine.get("gpu"), "torch": torch.__version__,
               "cuda": torch.version.cuda, "budget_s": BUDGET_S, "steps": records}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    rows = [[r["name"], r["what"], "skipped" if r.get("skipped") else
             ("timed out" if r["timed_out"] else r["exit_code"]), r.get("wall_s", "-"), r["limit_s"],
             f"[log]({r['log']})" if r.get("log") else "-"] for r in records]
    text = [f"# GPU run, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", "",
            f"Machine: {machine_line(machine)}", "",
            "Command: `python -m benchmarks.gpu_run`" + ("" if finished else " (still running or cut short)"), "",
            markdown_table(["step", "what", "exit code", "wall s", "limit s", "log"], rows), ""]
    text += _headlines(out)
    atomic_write_text(out / "summary.md", "\n".join(text).rstrip() + "\n")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="print each step's command and limit; run nothing")
    parser.add_argument("--out-dir", type=Path, default=None, help="default results/gpu/<date>")
    parser.add_argument("--scratch", type=Path, default=None,
                        help="where the fine-tunes put their adapters; default runs/gpu-<date>")
    parser.add_argument("--only", nargs="+", default=None, help="run only these steps (by name)")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    stamp = time.strftime("%Y-%m-%d_%H%M%S", time.gmtime())
    out = args.out_dir or ROOT / "results" / "gpu" / stamp
    scratch = args.scratch or ROOT / "runs" / f"gpu-{stamp}"
    plan = steps(out, scratch)
    known = [s.name for s in plan]
    if args.only:
        unknown = sorted(set(args.only) - set(known))
        if unknown:
            print(f"gpu_run: unknown step(s) {unknown}; the steps are {known}", file=sys.stderr)
            return 2
        plan = [s for s in plan if s.name in args.only]
    if args.dry_run:
        for s in plan:
            print(f"{s.name}\t{s.limit_s}\t{shlex.join(['python', *s.argv])}")
        return 0
    if not torch.cuda.is_available():
        print(REFUSAL, file=sys.stderr)
        return 2

    out.mkdir(parents=True, exist_ok=True)
    (out / "logs").mkdir(exist_ok=True)
    machine = machine_info(torch.device("cuda"))
    machine["hostname"] = os.uname().nodename if hasattr(os, "uname") else None
    print(f"gpu_run: {machine['gpu']}, torch {torch.__version__}, CUDA {torch.version.cuda}; results in {out}",
          file=sys.stderr)
    deadline = time.perf_counter() + BUDGET_S
    records: list[dict] = []
    for s in plan:
        record = {"name": s.name, "what": s.what, "command": shlex.join(["python", *s.argv])}
        left = deadline - time.perf_counter()
        if left < 10:
            record.update(skipped=True, limit_s=s.limit_s, reason=f"only {left:.0f} s of the {BUDGET_S} s budget left")
        else:
            log = out / "logs" / f"{s.name}.log"
            print(f"gpu_run: {s.name} (at most {min(s.limit_s, left):.0f} s): {s.what}", file=sys.stderr)
            record.update(run_step(s, min(s.limit_s, left), log), log=str(log.relative_to(out)))
            print(f"gpu_run: {s.name}: exit code {record['exit_code']}"
                  f"{' (timed out)' if record['timed_out'] else ''}, {record['wall_s']} s", file=sys.stderr)
        records.append(record)
        write_summary(out, machine, records, finished=False)
    write_summary(out, machine, records, finished=True)
    print(f"gpu_run: wrote {out / 'summary.md'}", file=sys.stderr)
    return 0 if all(r.get("exit_code") == 0 and not r.get("timed_out") for r in records) else 1


if __name__ == "__main__":
    sys.exit(run_main(main))
