"""common/cli.py: a user's mistake ends a script with one line and exit code 2; a bug keeps its traceback."""

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from common.cli import ArgumentParser, parse_with_quick

ROOT = Path(__file__).resolve().parent.parent

_SCRIPT = r"""
import sys
from common.cli import UserError, run_main

def main(argv):
    what = argv[0]
    if what == "user":
        raise UserError("--max-steps must be at least 1, got 0; give a positive number")
    if what == "missing":
        open("/no/such/file.txt")
    if what == "value":
        raise ValueError("checkpoint.safetensors has no model config\nwas it written by save_model?")
    if what == "unicode":
        b"\xff\xfe".decode("utf-8")
    if what == "locked":
        from common.files import FolderLocked
        raise FolderLocked("runs/x", 4242, "runs/.x.lock")
    if what == "ctrl-c":
        raise KeyboardInterrupt
    if what == "bug":
        return {}["oops"]
    print("ok", argv)

run_main(main)
"""


def run(*args, env=None):
    return subprocess.run([sys.executable, "-c", _SCRIPT, *args], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "LORA_DEBUG": "", **(env or {})})


@pytest.mark.parametrize("what, message", [
    ("user", "error: --max-steps must be at least 1, got 0; give a positive number"),
    ("missing", "error: No such file or directory: /no/such/file.txt"),
    ("value", "error: checkpoint.safetensors has no model config was it written by save_model?"),
    ("locked", "error: runs/x is being written by another process (pid 4242)"),
    ("unicode", "error: a file is not UTF-8 text ("),
])
def test_user_errors_end_in_one_line_and_exit_code_2(what, message):
    done = run(what)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith(message) and done.stderr.count("\n") == 1


def test_ctrl_c_exits_130_without_traceback():
    done = run("ctrl-c")
    assert done.returncode == 130 and "Traceback" not in done.stderr
    assert done.stderr.startswith("error: interrupted")


def test_a_bug_keeps_its_traceback():
    done = run("bug")
    assert done.returncode == 1 and "Traceback" in done.stderr and "KeyError: 'oops'" in done.stderr


@pytest.mark.parametrize("how", ["flag", "env"])
def test_debug_shows_the_traceback_of_a_refusal(how):
    done = run("user", "--debug") if how == "flag" else run("user", env={"LORA_DEBUG": "1"})
    assert done.returncode == 1 and "Traceback" in done.stderr and "UserError: --max-steps" in done.stderr


def test_debug_flag_is_not_passed_on_to_main():
    done = run("fine", "--debug", "x")
    assert done.returncode == 0 and done.stdout.strip() == "ok ['fine', 'x']"


def test_quick_sets_defaults_and_explicit_flags_still_win():
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--preset", default="gpt-mini")
    p.add_argument("--quick", action="store_true")
    quick = {"steps": 20, "preset": "gpt-tiny"}
    assert vars(parse_with_quick(p, quick, [])) == {"steps": 1000, "preset": "gpt-mini", "quick": False}
    assert vars(parse_with_quick(p, quick, ["--quick", "--steps", "5"])) == {"steps": 5, "preset": "gpt-tiny",
                                                                           "quick": True}


def test_a_bad_flag_value_is_one_line_and_exit_code_2(capsys):
    p = ArgumentParser(prog="train.py")
    p.add_argument("--rank", type=int, default=8)
    for argv, message in ((["--rank", "abc"], "argument --rank: invalid int value: 'abc'"),
                          (["--rnak", "4"], "unrecognized arguments: --rnak 4"),
                          (["--rank"], "argument --rank: expected one argument")):
        with pytest.raises(SystemExit) as stop:
            p.parse_args(argv)
        err = capsys.readouterr().err
        assert stop.value.code == 2 and "usage" not in err
        assert err == f"error: {message} (see train.py --help)\n"
    assert p.parse_args(["--rank", "3"]).rank == 3
