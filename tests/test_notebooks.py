"""Every chapter notebook runs top to bottom, and the committed copies are clean.

Why nbclient and not nbmake or nbval: nbval compares outputs cell by cell, which breaks on
timings and memory figures that differ per machine; nbmake runs notebooks as pytest items but
gives less control over the kernel's environment. With nbclient we execute each notebook in
quick mode (LORA_QUICK=1: fewer steps, smaller models), with figures and files redirected to a
temporary folder so the committed figures are never overwritten, and we check the committed
files separately: executed, no error cells, from a full run, small.

Devices: every notebook's first code cell picks DEVICE with gpt.device.pick_device from
the environment variable LORA_DEVICE ("auto": CUDA, then Apple MPS, then CPU). The quick-mode runs
here set LORA_DEVICE=cpu, so CI says which device it tests instead of inheriting whatever the
machine has.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
import pytest

pytestmark = pytest.mark.slow  # runs the chapter notebooks top to bottom (minutes)

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
MAX_NOTEBOOK_BYTES = 500_000
RELEASE = not (ROOT / "solutions").is_dir()  # the student release ships without solutions/
# The lines of the first code cell that pick the device (see the module docstring).
PICK_DEVICE = re.compile(r'^from gpt\.device import pick_device\n'
                         r'DEVICE = pick_device\(os\.environ\.get\("LORA_DEVICE", "auto"\)\)', re.MULTILINE)
# A device written into a compute call (`evaluate(model, loader, "cpu")`, `torch.device("cpu")`) ignores DEVICE.
HARD_CODED_CPU = re.compile(r'torch\.device\(\s*"cpu"\s*\)|[(,]\s*(device\s*=\s*)?"cpu"\s*[,)]')


def test_chapters_are_numbered_in_order():
    numbers = [int(p.name[:2]) for p in NOTEBOOKS]
    assert numbers == list(range(1, len(numbers) + 1)), f"chapters must be numbered 01, 02, ...: {[p.name for p in NOTEBOOKS]}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_notebook_is_clean(path):
    assert path.stat().st_size < MAX_NOTEBOOK_BYTES, f"{path.name} is {path.stat().st_size:,} bytes; keep outputs light"
    nb = nbformat.read(path, as_version=4)
    code_cells = [c for c in nb.cells if c.cell_type == "code" and c.source.strip()]
    assert code_cells, f"{path.name} has no code"
    for i, cell in enumerate(code_cells):
        # The student release clears its check cells (a verdict appears when the student runs one).
        cleared_check = RELEASE and "grader.check(" in cell.source and not cell.outputs
        assert cell.execution_count is not None or cleared_check, f"{path.name}: code cell {i} was never executed"
        for out in cell.outputs:
            assert out.output_type != "error", f"{path.name}: code cell {i} has an error output: {out.get('ename')}"
    first_output = "".join(o.get("text", "") for o in code_cells[0].outputs)
    assert "full run" in first_output, f"{path.name}: committed outputs must come from a full run (not LORA_QUICK=1)"
    assert any(line.startswith("device: ") for line in first_output.splitlines()), \
        f"{path.name}: the committed first cell must print the device it ran on"
    first_source = code_cells[0].source
    assert PICK_DEVICE.search(first_source), \
        f"{path.name}: the first code cell must set DEVICE = pick_device(os.environ.get(\"LORA_DEVICE\", \"auto\"))"
    assert first_source.index("DEVICE = pick_device") < first_source.index("%matplotlib"), \
        f"{path.name}: pick DEVICE in the setup lines at the top of the first cell"
    for i, cell in enumerate(code_cells):
        hard = HARD_CODED_CPU.search(cell.source)
        assert hard is None, f"{path.name}: code cell {i} hard-codes the CPU ({hard.group(0)!r}); use DEVICE"
    assert nb.cells[-1].cell_type == "markdown" or any("## Exercises" in c.source for c in nb.cells), \
        f"{path.name}: every chapter ends with exercises"
    assert any(c.cell_type == "markdown" and "Exercises" in c.source for c in nb.cells), f"{path.name}: no Exercises section"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_in_quick_mode(path, tmp_path, monkeypatch):
    from nbclient import NotebookClient

    monkeypatch.setenv("LORA_QUICK", "1")
    monkeypatch.setenv("LORA_FIGURES_DIR", str(tmp_path / "figures"))
    monkeypatch.setenv("LORA_OUT_DIR", str(tmp_path / "out"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("LORA_DEVICE", "cpu")  # explicit: CI runs on the CPU, whatever the machine has
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}})
    client.execute()  # raises CellExecutionError, with the failing cell and traceback, on any error
    first_output = "".join(o.get("text", "") for o in nb.cells[[c.cell_type for c in nb.cells].index("code")].outputs)
    assert "quick mode" in first_output
    assert "device: cpu" in first_output.splitlines(), first_output


def test_unknown_device_stops_the_first_cell(tmp_path, monkeypatch):
    """LORA_DEVICE=nonsense fails at once, in the setup cell, with pick_device's message (not later, deep
    inside a training loop). Only the first cell runs; every notebook has the same lines (checked above)."""
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    monkeypatch.setenv("LORA_QUICK", "1")
    monkeypatch.setenv("LORA_FIGURES_DIR", str(tmp_path / "figures"))
    monkeypatch.setenv("LORA_OUT_DIR", str(tmp_path / "out"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("LORA_DEVICE", "nonsense")
    path = NOTEBOOKS[1]  # any chapter; chapter 2's first cell imports the least
    nb = nbformat.read(path, as_version=4)
    nb.cells = [next(c for c in nb.cells if c.cell_type == "code")]
    client = NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}})
    with pytest.raises(CellExecutionError) as failure:
        client.execute()
    assert failure.value.ename == "ValueError"
    assert "unknown device 'nonsense'; use auto, cpu, cuda, cuda:N or mps" in failure.value.evalue
    printed = "".join(o.get("text", "") for o in nb.cells[0].outputs if o.output_type == "stream")
    assert "quick mode" in printed and "device:" not in printed  # it stopped at pick_device


def test_no_notebook_is_missing():
    """Every chapter exists (guards against a glob that silently matches nothing)."""
    assert len(NOTEBOOKS) == 10, [p.name for p in NOTEBOOKS]
