"""Write the student release of the course into OUT, and the teacher's autograders into OUT-autograder/.

    python scripts/make_student_release.py OUT

OUT gets the project's files (git's view: tracked and not ignored, or the folder's files without git)
except the solutions and the teacher's notes: no solutions/, no tests of the solutions (every tests/*.py that
imports the `solutions` package), no TEACHING.md, no release tooling (this script and its test). The notebooks go
as they are committed (outputs of a full run, exercise stubs not filled in), except that the check cells'
outputs are cleared: a student sees a check's verdict when they run it, not a red "not answered yet" from the
committed run. The script refuses a chapter that points to solutions/ (the students' copy has none).
The script refuses a notebook whose answer cell is not the stub as handed out (docstring and `...`), so
a teacher's filled-in copy never reaches a class. The release's own `pytest` passes: the exercise-check
tests whose reference is in solutions/ skip, saying why.

OUT-autograder/ (outside the student folder) gets one otter-grader autograder per chapter with checks,
chNN-autograder.zip (`otter generate`: that chapter's checks and the guard they import), for grading
submissions offline with `otter run` (TEACHING.md).

Nothing is overwritten: OUT and OUT-autograder must not exist yet.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
SKIP_DIRS = {".git", ".venv", "runs", "__pycache__", ".ipynb_checkpoints", ".pytest_cache"}
RELEASE_TOOLING = {"scripts/make_student_release.py", "tests/test_student_release.py"}
TEACHER_ONLY = {"TEACHING.md", "tests/test_teaching.py"}  # the course plan, grading and autograders, and its test
IMPORTS_SOLUTIONS = re.compile(r"^\s*(from solutions\b|import solutions\b)", re.MULTILINE)
STUB_NAME = re.compile(r"^(?:def (exercise_\d+_\d+)\(|(exercise_\d+_\d+)\s*=)", re.MULTILINE)
NOTE = ("> **Student release.** Made by `scripts/make_student_release.py`: the exercise solutions (`solutions/`) and\n"
        "> the tests of them are left out. Check your answers in the notebooks with `grader.check(...)`.\n\n")


def project_files(root: Path) -> list[Path]:
    """The files of the project, relative to root: git's tracked and untracked-but-not-ignored files, or a walk."""
    try:
        listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=root,
                                capture_output=True, check=True).stdout.decode().split("\0")
        files = [Path(f) for f in listed if f and (root / f).is_file()]
    except (OSError, subprocess.CalledProcessError):  # not a git checkout
        files = [p.relative_to(root) for p in root.rglob("*") if p.is_file()]
    return sorted(f for f in files if not (set(f.parts) & SKIP_DIRS) and not f.name.endswith((".pyc", ".egg-info"))
                  and ".egg-info" not in str(f) and f.name != ".OTTER_LOG")


def left_out(path: Path, root: Path) -> str | None:
    """Why `path` stays out of the student release, or None."""
    if path.parts[0] == "solutions":
        return "solutions"
    if path.as_posix() in RELEASE_TOOLING:
        return "release tooling"
    if path.as_posix() in TEACHER_ONLY:
        return "for the teacher"
    if path.parts[0] == "tests" and path.suffix == ".py" and IMPORTS_SOLUTIONS.search((root / path).read_text("utf-8")):
        return "tests the solutions"
    return None


def _is_constant(stmt: ast.stmt, kind) -> bool:
    return isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and (
        stmt.value.value is Ellipsis if kind is Ellipsis else isinstance(stmt.value.value, kind))


def is_untouched_stub(source: str) -> bool:
    """Whether a cell's exercise answers are the stubs as handed out: `def exercise_N_M(...):` with a docstring
    and `...` only, or `exercise_N_M = ...`."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return False
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name.startswith("exercise_"):
            body = node.body[1:] if node.body and _is_constant(node.body[0], str) else node.body
            if not (len(body) == 1 and _is_constant(body[0], Ellipsis)):
                return False
        elif isinstance(node, ast.Assign) and any(getattr(t, "id", "").startswith("exercise_") for t in node.targets):
            if not (isinstance(node.value, ast.Constant) and node.value.value is Ellipsis):
                return False
    return True


def filled_in_answers(notebook: Path) -> list[str]:
    """The exercise functions of a notebook whose cell is not the untouched stub."""
    cells = nbformat.read(notebook, as_version=4).cells
    return [a or b for c in cells if c.cell_type == "code" for a, b in STUB_NAME.findall(c.source)
            if not is_untouched_stub(c.source)]


def points_to_solutions(notebook: Path) -> list[int]:
    """Markdown cells of a chapter that send the reader to solutions/, which the release does not have."""
    cells = nbformat.read(notebook, as_version=4).cells
    return [i for i, c in enumerate(cells) if c.cell_type == "markdown" and "solutions/" in c.source]


def clear_check_outputs(notebook: Path) -> int:
    """Clear the outputs of the `grader.check(...)` cells of a released chapter; returns how many were cleared."""
    nb = nbformat.read(notebook, as_version=4)
    checks = [c for c in nb.cells if c.cell_type == "code" and "grader.check(" in c.source and c.outputs]
    for cell in checks:
        cell.outputs, cell.execution_count = [], None
    if checks:
        nbformat.write(nb, notebook)
    return len(checks)


@contextlib.contextmanager
def working_directory(path: Path):
    """contextlib.chdir of Python 3.11, for 3.10: otter generate takes support files relative to the cwd."""
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def write_autograders(release: Path, out: Path) -> list[Path]:
    """One otter autograder zip per chapter with checks (otter generate, run in the release's notebooks/)."""
    from otter.generate import main as otter_generate

    out.mkdir(parents=True)
    zips = []
    for chapter in sorted((release / "notebooks" / "checks").glob("ch[0-9][0-9]")):
        if not any(chapter.glob("ex*.py")):
            continue
        target = out / f"{chapter.name}-autograder.zip"
        with tempfile.TemporaryDirectory() as tmp, working_directory(release / "notebooks"):
            tests = Path(tmp) / "tests"  # otter takes every *.py of the tests folder as a test: only exN_M.py
            tests.mkdir()
            for check in chapter.glob("ex*.py"):
                shutil.copy(check, tests)
            otter_generate(tests_dir=str(tests), output_path=str(target), no_requirements=True, no_environment=True,
                           no_config=True, files=["checks/__init__.py", "checks/_guard.py"])
        zips.append(target)
    return zips


def make_release(out: Path, root: Path = ROOT) -> tuple[list[Path], list[Path]]:
    """Write the release into `out` and the autograders into `out`-autograder; returns (copied files, zips)."""
    autograder_dir = out.with_name(out.name + "-autograder")
    for path in (out, autograder_dir):
        if path.exists():
            raise SystemExit(f"error: {path} already exists; choose a new folder (nothing was written)")
    files = project_files(root)
    filled = {nb.name: names for nb in (root / "notebooks").glob("[0-9][0-9]_*.ipynb")
              if (names := filled_in_answers(nb))}
    if filled:
        raise SystemExit("error: these notebooks have answers filled in, not the stubs as handed out: "
                         + "; ".join(f"{nb}: {', '.join(names)}" for nb, names in sorted(filled.items()))
                         + ". Put the stubs back (docstring and `...`) and run again (nothing was written).")
    pointing = {nb.name: cells for nb in (root / "notebooks").glob("[0-9][0-9]_*.ipynb")
                if (cells := points_to_solutions(nb))}
    if pointing:
        raise SystemExit("error: these chapters send students to solutions/, which the release leaves out: "
                         + "; ".join(f"{nb} (markdown cells {cells})" for nb, cells in sorted(pointing.items()))
                         + ". Reword them (nothing was written).")
    kept = [f for f in files if left_out(f, root) is None]
    staging = out.with_name(out.name + ".partial")
    if staging.exists():
        shutil.rmtree(staging)
    try:
        for rel in kept:
            (staging / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / rel, staging / rel)
        for notebook in (staging / "notebooks").glob("[0-9][0-9]_*.ipynb"):
            clear_check_outputs(notebook)
        readme = staging / "README.md"
        if readme.exists():
            readme.write_text(NOTE + readme.read_text(encoding="utf-8"), encoding="utf-8")
        staging.rename(out)  # all or nothing: a half-written release never has the final name
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    zips = write_autograders(out, autograder_dir)
    return kept, zips


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("out", type=Path, help="the folder to write the student release to (must not exist)")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    kept, zips = make_release(out)
    print(f"student release: {out} ({len(kept)} files, no solutions)")
    for z in zips:
        print(f"autograder for the teacher: {z}")
    print(f"students: cd {out} && bash setup.sh && .venv/bin/jupyter lab notebooks/")


if __name__ == "__main__":
    main()
