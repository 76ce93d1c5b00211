"""Run chapter notebooks in full mode, in place, and record how long each takes and which cells are slow.

    python -m benchmarks.notebook_times                      # every chapter, 2 torch threads
    python -m benchmarks.notebook_times notebooks/02_attention.ipynb --threads 1

This is how the committed notebooks are re-run: each notebook executes top to bottom in a fresh kernel
(nbclient, the same executor the tests use) with LORA_DEVICE=cpu and LORA_QUICK unset (a full run),
in its own folder, so figures and files land where the committed copy expects them. torch's thread
count is set right after the first code cell (which sets the chapters' default of 2), so `--threads`
is what the run really used. A notebook is written back only when every cell ran, and atomically (a
temporary file, then a rename): an interrupted or failed run leaves the committed copy as it was.

results/notebook_times.json gets, per notebook: wall seconds, the slowest cells (index among code
cells, seconds, first line), and the machine (CPU, cores, torch threads, load average before and after).
Entries of notebooks not run this time are kept, so one notebook can be re-timed alone. `--teaching` then
writes TEACHING.md's table of run times from this file (tests/test_teaching.py checks that they agree).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from benchmarks.common import machine_info
from common.files import atomic_write_text

ROOT = Path(__file__).resolve().parent.parent

RESULTS = ROOT / "results" / "notebook_times.json"
TEACHING = ROOT / "TEACHING.md"
START, END = "<!-- notebook-times: start", "<!-- notebook-times: end -->"
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
CLASS_LIMIT_S = 600  # a chapter must run within 10 minutes on 2 cores in class


class TimedClient(NotebookClient):
    """NotebookClient that times every code cell and sets torch's threads after the first code cell (in the kernel,
    silently: no cell is added to the notebook and execution counts stay 1, 2, 3, ...)."""

    def __init__(self, nb, threads: int, **kwargs):
        super().__init__(nb, **kwargs)
        self.threads, self.cell_seconds, self._threads_set = threads, [], False

    async def async_execute_cell(self, cell, cell_index, execution_count=None, store_history=True):
        started = time.perf_counter()
        result = await super().async_execute_cell(cell, cell_index, execution_count, store_history)
        if cell.cell_type != "code" or not store_history:
            return result
        self.cell_seconds.append((cell_index, time.perf_counter() - started))
        if not self._threads_set:  # the first code cell has just set the chapter's default; override it, silently
            self._threads_set = True
            msg_id = self.kc.execute(f"import torch as _torch; _torch.set_num_threads({self.threads}); del _torch",
                                     silent=True, store_history=False)
            reply = await self.async_wait_for_reply(msg_id)
            if reply is None or reply["content"]["status"] != "ok":
                raise RuntimeError(f"could not set torch's threads in the kernel: {reply}")
        return result


def first_line(source: str) -> str:
    return next((line for line in source.splitlines() if line.strip()), "")[:80]


def run_notebook(path: Path, threads: int, timeout: int, slowest: int) -> dict:
    """Execute `path` in full mode in place; returns its timing record. Raises CellExecutionError on a failing cell
    (the notebook on disk is then left untouched)."""
    nb = nbformat.read(path, as_version=4)
    env_before = {k: os.environ.get(k) for k in ("LORA_QUICK", "LORA_DEVICE", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    os.environ.pop("LORA_QUICK", None)
    os.environ.update(LORA_DEVICE="cpu", OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    try:
        client = TimedClient(nb, threads, timeout=timeout, kernel_name="python3",
                             resources={"metadata": {"path": str(path.parent)}})
        load_before = os.getloadavg()[0]
        started = time.perf_counter()
        client.execute()
        wall = time.perf_counter() - started
        load_after = os.getloadavg()[0]
    finally:
        for key, value in env_before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    atomic_write_text(path, nbformat.writes(nb) + "\n")
    code_index = {cell_index: i for i, cell_index in enumerate(c for c, _ in client.cell_seconds)}
    ranked = sorted(client.cell_seconds, key=lambda item: -item[1])[:slowest]
    return {
        "wall_s": round(wall, 1),
        "code_cells": len(client.cell_seconds),
        "slowest_cells": [{"code_cell": code_index[i], "seconds": round(s, 1), "first_line": first_line(nb.cells[i].source)}
                          for i, s in ranked],
        "torch_threads": threads,
        "load_average_before": round(load_before, 2),
        "load_average_after": round(load_after, 2),
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def teaching_table(results: dict) -> str:
    """The run-time table of TEACHING.md, from results/notebook_times.json's contents."""
    rows = ["| notebook | full run | torch threads | slowest cells (code cell: seconds) |", "|---|---|---|---|"]
    for name, r in sorted(results["notebooks"].items()):
        minutes, seconds = divmod(round(r["wall_s"]), 60)
        slow = ", ".join(f"{c['code_cell']}: {c['seconds']:g} s" for c in r["slowest_cells"])
        over = " (over 10 min)" if r["wall_s"] > CLASS_LIMIT_S else ""
        rows.append(f"| {name} | {minutes} min {seconds:02d} s{over} | {r['torch_threads']} | {slow} |")
    m = results["machine"]
    rows.append("")
    rows.append(f"Machine: {m['cpu']}, {m['logical_cores']} logical cores, torch {m['torch']}, Python {m['python']}; "
                f"load average before/after each run in results/notebook_times.json.")
    return "\n".join(rows)


def write_teaching(results: dict, path: Path = TEACHING) -> None:
    """Replace the block between TEACHING.md's notebook-times markers with teaching_table(results), atomically."""
    text = path.read_text(encoding="utf-8")
    if START not in text or END not in text:
        raise SystemExit(f"error: {path} has no notebook-times markers ({START} ... {END}); nothing was written")
    head, rest = text.split(START, 1)
    marker_line, _, _ = rest.partition("\n")
    _, tail = rest.split(END, 1)
    atomic_write_text(path, head + START + marker_line + "\n" + teaching_table(results) + "\n" + END + tail)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("notebooks", nargs="*", type=Path, help="notebooks to run (default: every chapter)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (and OMP/MKL threads) in the kernel")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds one cell may take before the run fails")
    parser.add_argument("--slowest", type=int, default=3, help="how many of the slowest cells to record")
    parser.add_argument("--results", type=Path, default=RESULTS, help="the JSON file to update")
    parser.add_argument("--teaching", action="store_true",
                        help="then write the run-time table of TEACHING.md from the JSON file")
    args = parser.parse_args(argv)
    paths = [p.resolve() for p in args.notebooks] or NOTEBOOKS
    missing = [str(p) for p in paths if not p.is_file() or p.suffix != ".ipynb"]
    if missing or args.threads < 1:
        print(f"error: {'not a notebook: ' + ', '.join(missing) if missing else '--threads must be at least 1'}",
              file=sys.stderr)
        return 2
    results = json.loads(args.results.read_text(encoding="utf-8")) if args.results.exists() else {}
    results["machine"] = {k: v for k, v in machine_info("cpu").items() if k != "torch_threads"}
    results.setdefault("notebooks", {})
    for path in paths:
        print(f"running {path.name} ({args.threads} torch threads) ...", flush=True)
        try:
            record = run_notebook(path, args.threads, args.timeout, args.slowest)
        except CellExecutionError as err:
            print(f"error: {path.name} failed; the committed copy is unchanged:\n{str(err)[-2000:]}", file=sys.stderr)
            return 1
        results["notebooks"][path.name] = record
        atomic_write_text(args.results, json.dumps(results, indent=2, sort_keys=True) + "\n")  # after each notebook
        over = " (over the 10-minute class limit)" if record["wall_s"] > CLASS_LIMIT_S else ""
        slow = "; ".join(f"cell {c['code_cell']}: {c['seconds']} s" for c in record["slowest_cells"])
        print(f"{path.name}: {record['wall_s']} s{over}; slowest {slow}; load {record['load_average_before']} -> "
              f"{record['load_average_after']}")
    if args.teaching:
        write_teaching(results)
        print(f"wrote the run-time table of {TEACHING.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
