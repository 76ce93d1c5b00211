"""TEACHING.md agrees with what it quotes, and benchmarks.notebook_times measures and writes safely.

* The run-time table of TEACHING.md is exactly benchmarks.notebook_times's rendering of
  results/notebook_times.json (skipped, saying so, only while that file does not exist yet).
* The exercise table's difficulty and minutes are the ones the notebooks' statements give.
* notebook_times.py on a two-cell notebook: the torch threads asked for are the ones the notebook ran with
  (after its first cell set 2), the slow cell is found, the notebook is written back executed; a failing
  notebook is left byte for byte as it was and nothing is recorded.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
import pytest

from benchmarks import notebook_times

ROOT = Path(__file__).resolve().parent.parent

TEACHING = ROOT / "TEACHING.md"
RESULTS = ROOT / "results" / "notebook_times.json"
STATEMENT = re.compile(r"\*\*Exercise (\d+\.\d+)\*\* (★+) · (\d+) min")


def times_block(text: str) -> str:
    _, rest = text.split(notebook_times.START, 1)
    return rest.split("\n", 1)[1].split(notebook_times.END, 1)[0].rstrip("\n")


@pytest.mark.skipif(not RESULTS.exists(), reason="results/notebook_times.json does not exist yet: "
                                                 "run python -m benchmarks.notebook_times --teaching")
def test_teaching_run_times_equal_the_results_file():
    results = json.loads(RESULTS.read_text(encoding="utf-8"))
    assert times_block(TEACHING.read_text(encoding="utf-8")) == notebook_times.teaching_table(results)
    assert set(results["notebooks"]) == {p.name for p in notebook_times.NOTEBOOKS}, "time every chapter"


def test_teaching_exercise_table_equals_the_statements():
    stated = {}
    for path in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        for cell in nbformat.read(path, as_version=4).cells:
            if cell.cell_type == "markdown":
                stated.update({m[0]: (m[1], m[2]) for m in STATEMENT.findall(cell.source)})
    rows = re.findall(r"^\| (\d+\.\d+) \| (★+) \| (\d+)", TEACHING.read_text(encoding="utf-8"), re.MULTILINE)
    quoted = {number: (stars, minutes) for number, stars, minutes in rows}
    assert len(quoted) == len(rows) >= 40
    assert quoted == stated


CLASS_MINUTES_FOR_EXERCISES = 50  # of a 90-minute class; about 40 go to reading and running the chapter
PLAN_ROW = re.compile(r"^\| (\d+) \| \[(\d+) [^]]+\]\(notebooks/(\d\d)_[^)]+\) \| [^|]+ \| ([\d., ]+) \| (\d+) \| ([\d., ]*) \|$",
                      re.MULTILINE)


def course_plan(text: str) -> list[dict]:
    return [{"class": int(m[0]), "chapter": int(m[1]), "notebook": int(m[2]),
             "in_class": [x.strip() for x in m[3].split(",")], "minutes": int(m[4]),
             "homework": [x.strip() for x in m[5].split(",") if x.strip()]} for m in PLAN_ROW.findall(text)]


def plan_problems(text: str) -> list[str]:
    """What is wrong with a course plan: a class over its minutes, a stated total that is not the sum, an exercise
    planned twice or not at all, a chapter without a class."""
    minutes = {n: int(m) for n, _, m in re.findall(r"^\| (\d+\.\d+) \| (★+) \| (\d+)", text, re.MULTILINE)}
    problems, planned = [], []
    plan = course_plan(text)
    for row in plan:
        total = sum(minutes.get(x, 0) for x in row["in_class"])
        if total != row["minutes"]:
            problems.append(f"class {row['class']}: its in-class exercises take {total} minutes, the plan says "
                            f"{row['minutes']}")
        if total > CLASS_MINUTES_FOR_EXERCISES:
            problems.append(f"class {row['class']}: {total} minutes of exercises in class (at most "
                            f"{CLASS_MINUTES_FOR_EXERCISES}): move one to homework")
        planned += row["in_class"] + row["homework"]
        if row["chapter"] != row["notebook"]:
            problems.append(f"class {row['class']}: chapter {row['chapter']} links notebook {row['notebook']}")
    if sorted(planned) != sorted(minutes) or len(planned) != len(set(planned)):
        problems.append(f"planned {sorted(planned)}, want every exercise once: {sorted(minutes)}")
    chapters = sorted(int(p.name[:2]) for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    if [row["chapter"] for row in plan] != chapters:
        problems.append(f"classes cover chapters {[row['chapter'] for row in plan]}, the course has {chapters}")
    return problems


def test_course_plan_fits_its_classes():
    text = TEACHING.read_text(encoding="utf-8")
    assert len(course_plan(text)) >= 9
    assert plan_problems(text) == []


def test_course_plan_check_catches_a_crowded_class():
    """Negative control: the plan with one homework exercise moved into its class is refused."""
    text = TEACHING.read_text(encoding="utf-8")
    minutes = {n: int(m) for n, _, m in re.findall(r"^\| (\d+\.\d+) \| (★+) \| (\d+)", text, re.MULTILINE)}
    row = max((r for r in course_plan(text) if r["homework"]), key=lambda r: minutes[r["homework"][0]])
    line = next(line for line in text.splitlines() if line.startswith(f"| {row['class']} |"))
    in_class = row["in_class"] + row["homework"][:1]
    head = line.split(" | ")[:3]
    crowded_line = " | ".join([*head, ", ".join(in_class), str(sum(minutes[x] for x in in_class)),
                               ", ".join(row["homework"][1:])]) + " |"
    crowded = text.replace(line, crowded_line)
    assert len(course_plan(crowded)) == len(course_plan(text))  # the edited row still reads as a plan row
    assert any("minutes" in p for p in plan_problems(crowded))


def test_teaching_table_renders_and_is_written_between_the_markers(tmp_path):
    results = {"machine": {"cpu": "AMD EPYC", "logical_cores": 2, "torch": "2.13.0+cpu", "python": "3.11.7"},
               "notebooks": {"02_attention.ipynb": {"wall_s": 22.1, "torch_threads": 2, "slowest_cells": [
                   {"code_cell": 10, "seconds": 8.7, "first_line": "x"}, {"code_cell": 0, "seconds": 2.0, "first_line": "y"}]},
                             "07_spam_lora.ipynb": {"wall_s": 612.4, "torch_threads": 2, "slowest_cells": []}}}
    table = notebook_times.teaching_table(results)
    assert table.splitlines()[2] == "| 02_attention.ipynb | 0 min 22 s | 2 | 10: 8.7 s, 0: 2 s |"
    assert table.splitlines()[3] == "| 07_spam_lora.ipynb | 10 min 12 s (over 10 min) | 2 |  |"
    copy = tmp_path / "TEACHING.md"
    copy.write_text(TEACHING.read_text(encoding="utf-8"), encoding="utf-8")
    notebook_times.write_teaching(results, copy)
    text = copy.read_text(encoding="utf-8")
    assert times_block(text) == table and "Placeholder" not in text
    assert text.split(notebook_times.START)[0] == TEACHING.read_text(encoding="utf-8").split(notebook_times.START)[0]


def small_notebook(path: Path, second_cell: str) -> Path:
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("import torch\ntorch.set_num_threads(2)  # what every chapter's first cell does"),
        nbformat.v4.new_code_cell(second_cell)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


@pytest.mark.slow
def test_notebook_times_runs_in_place_with_the_threads_asked_for(tmp_path, monkeypatch):
    monkeypatch.setenv("LORA_QUICK", "1")  # the script must unset it: a full run
    path = small_notebook(tmp_path / "01_small.ipynb", "import os, time, torch\ntime.sleep(0.5)\n"
                                                       "print(torch.get_num_threads(), os.environ.get('LORA_QUICK'))")
    results = tmp_path / "times.json"
    assert notebook_times.main([str(path), "--threads", "1", "--results", str(results)]) == 0
    record = json.loads(results.read_text())["notebooks"]["01_small.ipynb"]
    assert record["torch_threads"] == 1 and record["code_cells"] == 2 and record["wall_s"] >= 0.5
    seconds = [c["seconds"] for c in record["slowest_cells"]]
    assert seconds == sorted(seconds, reverse=True)  # slowest first (cell 0 imports torch: it may be the slower)
    assert {c["code_cell"]: c["seconds"] for c in record["slowest_cells"]}[1] >= 0.5
    cells = nbformat.read(path, as_version=4).cells
    assert [c.execution_count for c in cells] == [1, 2]
    assert cells[1].outputs[0]["text"] == "1 None\n"  # 1 thread, LORA_QUICK unset


@pytest.mark.slow
def test_a_failing_notebook_is_left_as_it_was(tmp_path, capsys):
    path = small_notebook(tmp_path / "01_broken.ipynb", "raise ValueError('planted')")
    before = path.read_bytes()
    results = tmp_path / "times.json"
    assert notebook_times.main([str(path), "--results", str(results)]) == 1
    assert path.read_bytes() == before and not results.exists()
    assert "01_broken.ipynb failed; the committed copy is unchanged" in capsys.readouterr().err
    assert notebook_times.main([str(tmp_path / "missing.ipynb"), "--results", str(results)]) == 2
