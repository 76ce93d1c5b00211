"""The student release (scripts/make_student_release.py) has no solutions, leaks no answer, and its tests pass.

One release is built in a temporary folder (about 30 s) and then:
* solutions/, the tests of the solutions and the release tooling are absent; every chapter and check is there;
* no reference answer appears in any text file of the release: the needles are taken from what the solution
  functions of the checked exercises return (long strings, integers of 4+ digits, BPE splits), leaving out
  the ones that are public anyway (chapter text, statements, README: chapter 1 prints the ids of "Akwirw ier"
  while teaching BPE); the data files are not searched (the SMS data set holds every message). No line of
  solutions/*.py that appears nowhere else in the project may appear in the release either;
* the release's own tests pass in the release (a fast selection: the exercise checks in their student
  form, where every untouched stub fails with "not answered yet" and the reference tests skip saying why,
  the committed-notebook checks, the tokenizer), importing the release's packages, not this checkout's;
* the teacher's autograder (OUT-autograder/ch01-autograder.zip, outside the student folder) grades a
  submission with `otter run`: the reference answers score, a wrong one does not.
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import nbformat
import pytest

from scripts import make_student_release

pytestmark = pytest.mark.slow  # builds the student release and runs its tests

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "make_student_release.py"
CHECKS = sorted((ROOT / "notebooks" / "checks").glob("ch[0-9][0-9]/ex*.py"))
TEXT_SUFFIXES = {".py", ".ipynb", ".md", ".txt", ".json", ".toml", ".cfg", ".sh", ".yml", ".yaml", ".csv", ""}


def release_env(release: Path) -> dict:
    # PYTHONPATH first: the release's gpt/, lora/, ... win over this checkout's editable install, also in kernels.
    return dict(os.environ, PYTHONPATH=str(release), OMP_NUM_THREADS="1", LORA_DEVICE="cpu", MPLBACKEND="Agg")


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    out = tmp_path_factory.mktemp("classroom") / "release"
    done = subprocess.run([sys.executable, str(SCRIPT), str(out)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert f"student release: {out}" in done.stdout
    return out


def searched_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES
            and "data" not in p.relative_to(folder).parts[:1]]


def atoms(value) -> set[str]:
    """The distinctive pieces of an answer, as they would be printed."""
    if isinstance(value, str):
        return {value} if len(value) >= 12 else set()
    if isinstance(value, bool) or value is None:
        return set()
    if isinstance(value, int):
        return {str(value), f"{value:,}"} if abs(value) >= 1000 else set()
    if isinstance(value, list) and len(value) >= 2 and all(isinstance(v, bytes) for v in value):
        return {repr(value)}
    if isinstance(value, dict):
        return set().union(*(atoms(v) for v in value.values())) if value else set()
    if isinstance(value, (list, tuple)):
        return set().union(*(atoms(v) for v in value)) if value else set()
    return set()


def public_text() -> str:
    """Everything a student may see anyway: the release's text files, except the checks and the
    exercise sections' code cells and outputs (the statements stay: a number a statement gives is not an answer)."""
    parts = []
    for path in searched_files(ROOT):
        rel = path.relative_to(ROOT).parts
        if rel[0] in (".venv", "runs") or rel[:2] == ("notebooks", "checks") \
                or make_student_release.left_out(path.relative_to(ROOT), ROOT):  # solutions/, their tests
            continue
        if path.suffix != ".ipynb":
            parts.append(path.read_text(encoding="utf-8", errors="replace"))
            continue
        cells = nbformat.read(path, as_version=4).cells
        headings = [i for i, c in enumerate(cells) if c.cell_type == "markdown" and c.source.startswith("## Exercises")]
        end = headings[-1] if headings else len(cells)
        parts += [c.source + "".join(str(o) for o in c.get("outputs", [])) for i, c in enumerate(cells)
                  if i < end or c.cell_type == "markdown"]
    return "\n".join(parts)


def answer_needles() -> dict[str, set[str]]:
    """{exercise: needles} for every checked exercise whose solution answers the statement when called without
    arguments (those that take a model or data from the notebook give none): what the solution returns, less
    what is public anyway (chapter 1 prints the ids of "Akwirw ier" while it teaches BPE)."""
    needles, public = {}, public_text()
    for check in CHECKS:
        chapter, name = check.parent.name[2:], "exercise_" + check.stem[2:]
        solution = getattr(importlib.import_module(f"solutions.ch{chapter}"), name)
        if any(p.default is inspect.Parameter.empty for p in inspect.signature(solution).parameters.values()):
            continue
        needles[name] = {a for a in atoms(solution()) if a not in public}
    return needles


def find_leaks(folder: Path, needles: dict[str, set[str]]) -> list[str]:
    leaks = []
    for path in searched_files(folder):
        text = path.read_text(encoding="utf-8", errors="replace")
        leaks += [f"{path.relative_to(folder)}: {name} -> {n!r}" for name, ns in needles.items() for n in ns if n in text]
    return leaks


def unique_solution_lines() -> set[str]:
    """Lines of solutions/*.py (30+ characters) that occur nowhere else in the project."""
    elsewhere = "\n".join(p.read_text(encoding="utf-8", errors="replace") for p in searched_files(ROOT)
                          if ".venv" not in p.parts and "solutions" not in p.parts and "runs" not in p.parts[:1])
    lines = {line.strip() for p in (ROOT / "solutions").glob("*") if p.suffix in (".py", ".md")
             for line in p.read_text(encoding="utf-8").splitlines()}
    return {line for line in lines if len(line) >= 30 and line not in elsewhere}


def test_release_has_the_chapters_and_no_solutions(release):
    assert not (release / "solutions").exists()
    assert not list((release / "tests").glob("test_solutions_*.py"))
    assert not (release / "scripts" / "make_student_release.py").exists()
    assert not (release / "tests" / "test_student_release.py").exists()
    chapters = sorted(p.name for p in (release / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    assert chapters == sorted(p.name for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")) and len(chapters) >= 8
    assert sorted(p.name for p in (release / "notebooks" / "checks" / "ch01").glob("*.py")) == [c.name for c in CHECKS
                                                                                              if c.parent.name == "ch01"]
    assert (release / "README.md").read_text(encoding="utf-8").startswith("> **Student release.**")
    assert not (release / "TEACHING.md").exists() and not (release / "tests" / "test_teaching.py").exists()
    with zipfile.ZipFile(release.with_name("release-autograder") / "ch01-autograder.zip") as z:
        names = set(z.namelist())
    assert {"tests/ex1_1.py", "tests/ex1_4.py", "files/checks/_guard.py"} <= names
    assert not any(n.startswith("tests/_") for n in names)


def test_release_leaks_no_answer_and_no_solution_text(release):
    needles = answer_needles()
    assert sum(len(needles[f"exercise_1_{i}"]) for i in range(1, 5)) >= 6, needles  # not vacuous: chapter 1 gives 6+
    assert find_leaks(release, needles) == []
    lines = unique_solution_lines()
    assert len(lines) >= 50
    found = [(p.relative_to(release), line) for p in searched_files(release)
             for line in lines if line in p.read_text(encoding="utf-8", errors="replace")]
    assert found == []


def test_release_chapters_show_no_committed_check_verdict_and_no_solutions_folder(release):
    """A student opens a chapter and sees no red "not answered yet" from the committed run, and no pointer to
    solutions/, which their copy does not have."""
    checks_seen = 0
    for path in sorted((release / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        cells = nbformat.read(path, as_version=4).cells
        checks = [c for c in cells if c.cell_type == "code" and "grader.check(" in c.source]
        checks_seen += len(checks)
        assert all(not c.outputs for c in checks), f"{path.name}: a check cell ships with its committed output"
        assert not [c for c in cells if c.cell_type == "markdown" and "solutions/" in c.source], path.name
    assert checks_seen == len(CHECKS)
    committed = nbformat.read(ROOT / "notebooks" / "01_text_to_tokens.ipynb", as_version=4).cells
    assert any(c.outputs for c in committed if c.cell_type == "code" and "grader.check(" in c.source)  # not vacuous


def test_release_refuses_a_chapter_that_points_to_solutions(tmp_path):
    """Negative control: the same copy with one chapter saying where the solutions are is refused, nothing written."""
    root = tmp_path / "course"
    (root / "notebooks").mkdir(parents=True)
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("## Exercises\n\nSolutions are in `solutions/ch01.py`.")]
    nbformat.write(nb, root / "notebooks" / "01_text_to_tokens.ipynb")
    with pytest.raises(SystemExit, match=r"01_text_to_tokens.ipynb \(markdown cells \[0\]\)"):
        make_student_release.make_release(tmp_path / "out", root=root)
    assert not (tmp_path / "out").exists()


def test_leak_search_finds_a_planted_answer(tmp_path):
    """Negative control: the same search on a folder where an answer was pasted into a notebook finds it."""
    needles = answer_needles()
    (tmp_path / "notebooks").mkdir()
    planted = next(iter(needles["exercise_1_4"]))
    (tmp_path / "notebooks" / "01.ipynb").write_text(f'{{"text": "{planted}"}}', encoding="utf-8")
    assert find_leaks(tmp_path, needles) == [f"notebooks/01.ipynb: exercise_1_4 -> {planted!r}"]


def test_release_own_tests_pass_in_the_release(release):
    imported = subprocess.run([sys.executable, "-c", "import gpt, checks._guard; print(gpt.__file__)"],
                              cwd=release / "notebooks", env=release_env(release), capture_output=True, text=True)
    assert imported.stdout.strip() == str(release / "gpt" / "__init__.py"), imported.stderr
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rfEs", "-p", "no:cacheprovider", "tests/test_exercise_checks.py",
         "tests/test_notebooks.py", "tests/test_tokenizer.py", "-k", "not quick_mode and not unknown_device"],
        cwd=release, env=release_env(release), capture_output=True, text=True, timeout=600)
    failed = [line for line in done.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))]
    assert done.returncode == 0, "\n".join(failed) + "\n" + done.stdout[-1500:] + done.stderr[-1500:]
    assert re.search(r"\d+ passed", done.stdout)
    assert "solutions/ is not in this copy (a student release)" in done.stdout  # the reference tests skip, saying why
    assert "failed" not in done.stdout.splitlines()[-1]


def test_autograder_grades_a_submission(release, tmp_path):
    notebook = nbformat.read(release / "notebooks" / "01_text_to_tokens.ipynb", as_version=4)
    for cell in notebook.cells:
        match = re.match(r"def (exercise_1_\d)\(", cell.source)
        if match and match.group(1) == "exercise_1_3":
            cell.source = "def exercise_1_3(vocab_size=50257, emb_dim=16, seed=123):\n    return 1.0  # wrong"
        elif match:  # the reference answer, from this checkout's solutions package (on the grader's PYTHONPATH below)
            cell.source = f"from solutions.ch01 import {match.group(1)}"
    # The release first (its gpt/, lora/, ... win), then this checkout, whose solutions package the release lacks.
    grader_env = {**release_env(release), "PYTHONPATH": os.pathsep.join([str(release), str(ROOT)])}
    (tmp_path / "submission").mkdir()
    nbformat.write(notebook, tmp_path / "submission" / "01_text_to_tokens.ipynb")
    done = subprocess.run([sys.executable, "-m", "otter", "run", "--no-logo", "-a",
                           str(release.with_name("release-autograder") / "ch01-autograder.zip"), "-o", str(tmp_path),
                           "01_text_to_tokens.ipynb"], cwd=tmp_path / "submission", env=grader_env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    scores = {line.split()[1]: line.split()[2] for line in done.stdout.splitlines() if re.match(r"\d+\s+ex1_\d", line)}
    assert scores == {"ex1_1": "1.0", "ex1_2": "1.0", "ex1_3": "0.0", "ex1_4": "1.0"}, done.stdout[-2000:]


def test_release_refuses_a_filled_in_notebook_and_an_existing_folder(tmp_path):
    source = tmp_path / "course"
    (source / "notebooks").mkdir(parents=True)
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        'def exercise_1_3(vocab_size=50257, emb_dim=16, seed=123):\n    """The difference."""\n    return 0.0')])
    nbformat.write(nb, source / "notebooks" / "01_x.ipynb")
    with pytest.raises(SystemExit, match=r"01_x.ipynb: exercise_1_3\. Put the stubs back"):
        make_student_release.make_release(tmp_path / "out", root=source)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out-autograder").exists()

    (tmp_path / "taken").mkdir()
    done = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "taken")], capture_output=True, text=True)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "already exists; choose a new folder (nothing was written)" in done.stderr
