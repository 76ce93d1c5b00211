"""classify/rank_sweep.py and scripts/rslora_rank_sweep.py: the two scales by value, the verdicts read off the losses,
the quick run's files, and the committed sweep quoted as its record says."""

import json
import math
from pathlib import Path

import pytest
import torch

from classify.rank_sweep import SCALINGS, summarise, sweep_alpha, sweep_config, verdicts

ROOT = Path(__file__).resolve().parent.parent


def test_both_scales_equal_the_familys_lora_at_r16_and_part_from_there():
    assert sweep_alpha("alpha/r") == 16 and sweep_alpha("alpha/sqrt(r)") == 4
    assert [sweep_config("alpha/r", r).scale for r in (4, 16, 64, 256)] == [4.0, 1.0, 0.25, 0.0625]
    assert [sweep_config("alpha/sqrt(r)", r).scale for r in (4, 16, 64, 256)] == [2.0, 1.0, 0.5, 0.25]
    cfg = sweep_config("alpha/sqrt(r)", 64)
    assert (cfg.rank, cfg.targets, cfg.modules_to_save) == (64, ("all-linear",), ("out_head",))
    with pytest.raises(ValueError, match="unknown scaling"):
        sweep_alpha("alpha")


def _run(loss, val=0.7, test=0.7):
    return {"train_loss_by_epoch": [loss + 0.2, loss], "val": val, "test": test}


def test_verdicts_read_the_last_epochs_loss():
    runs = {"alpha/r": {"4": {"1": _run(0.60), "2": _run(0.62)}, "64": {"1": _run(0.61), "2": _run(0.61)}},
            "alpha/sqrt(r)": {"4": {"1": _run(0.60)}, "16": {"1": _run(0.55)}, "64": {"1": _run(0.50)}}}
    summary = summarise(runs)
    assert summary["alpha/r"]["4"]["train_loss_mean"] == pytest.approx(0.61)
    assert summary["alpha/r"]["4"]["train_loss_std"] == pytest.approx(math.sqrt(2) * 0.01)
    assert summary["alpha/sqrt(r)"]["64"]["scale"] == 0.5
    v = verdicts(summary)
    assert v["alpha/r"]["change"] == pytest.approx(0.0) and v["alpha/r"]["monotone"] is False
    assert v["alpha/sqrt(r)"]["change"] == pytest.approx(-0.10) and v["alpha/sqrt(r)"]["monotone"] is True
    # one step up that does not lower the loss breaks "falls at every step up in rank"
    runs["alpha/sqrt(r)"]["16"]["1"] = _run(0.65)
    assert verdicts(summarise(runs))["alpha/sqrt(r)"]["monotone"] is False


@pytest.mark.slow
def test_quick_sweep_writes_its_files(tmp_path):
    from scripts.rslora_rank_sweep import main

    torch.set_num_threads(1)
    report = main(["--quick", "--results", str(tmp_path)], log=lambda *a: None)
    saved = json.loads((tmp_path / "rslora_rank_sweep.json").read_text())
    assert saved["quick"] is True and saved["ranks"] == [4, 16] and set(saved["summary"]) == set(SCALINGS)
    assert saved["summary"] == report["summary"]
    assert "| rsLoRA, alpha/sqrt(r) | 4 | 2 |" in (tmp_path / "rslora_rank_sweep.md").read_text()
    assert (tmp_path / "rslora_rank_sweep.png").read_bytes()[:4] == b"\x89PNG"


def test_bad_ranks_are_refused(tmp_path, capsys):
    from common.cli import run_main
    from scripts.rslora_rank_sweep import main

    with pytest.raises(SystemExit) as e:
        run_main(main, ["--quick", "--ranks", "4", "--results", str(tmp_path)])
    assert e.value.code != 0 and "--ranks must be at least two different integers" in capsys.readouterr().err
    assert not (tmp_path / "rslora_rank_sweep.json").exists()


def test_the_committed_sweep_is_the_full_one():
    record = json.loads((ROOT / "results" / "rslora_rank_sweep.json").read_text())
    assert not record["quick"] and record["ranks"] == [4, 16, 64, 256] and record["seeds"] == [123, 124]
    assert record["task"] == "sentiment" and record["verdicts"] == verdicts(record["summary"])
    md = (ROOT / "results" / "rslora_rank_sweep.md").read_text()
    for scaling, v in record["verdicts"].items():
        assert f"training loss {v['loss_at_smallest']:.3f} at r={v['smallest_rank']}" in md
