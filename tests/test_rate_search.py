"""classify/rate_search.py and scripts/tune_family_rates.py: the rate chosen on validation alone, by value; the quick
run's files; and the committed search, whose shared-rate runs reproduce the family comparison's seed-123 runs."""

import json
from pathlib import Path

import pytest
import torch

from classify.rate_search import GRIDS, summarise

ROOT = Path(__file__).resolve().parent.parent


def test_the_rate_is_chosen_on_validation_not_test():
    runs = {"vera": {"0.001": {"val": 0.60, "test": 0.90}, "0.004": {"val": 0.70, "test": 0.50},
                     "0.01": {"val": 0.70, "test": 0.55}}}
    s = summarise(runs)["vera"]
    assert s["best_lr"] == 0.004 and s["test_at_best"] == 0.50  # the best validation, the smaller rate on a tie
    assert s["shared_lr"] == 4e-3 and s["test_at_shared"] == 0.50
    runs["vera"]["0.01"]["val"] = 0.71
    assert summarise(runs)["vera"]["best_lr"] == 0.01


def test_every_grid_holds_the_shared_rate():
    from classify.lora_family import METHODS

    assert all(METHODS[m].lr in grid for m, grid in GRIDS.items())


@pytest.mark.slow
def test_quick_search_writes_its_files(tmp_path):
    from scripts.tune_family_rates import main

    torch.set_num_threads(1)
    report = main(["--quick", "--results", str(tmp_path)], log=lambda *a: None)
    saved = json.loads((tmp_path / "lora_family_rates.json").read_text())
    assert saved["quick"] is True and list(saved["summary"]) == ["lora", "vera"]
    assert [float(lr) for lr in saved["summary"]["vera"]["by_lr"]] == list(GRIDS["vera"])
    assert saved["summary"] == json.loads(json.dumps(report["summary"]))
    assert "(chosen)" in (tmp_path / "lora_family_rates.md").read_text()
    assert (tmp_path / "lora_family_rates.png").read_bytes()[:4] == b"\x89PNG"


def test_the_committed_search_reproduces_the_comparison_at_the_shared_rate():
    """The search's run at each method's shared rate is the family comparison's seed-123 run: the same numbers."""
    record = json.loads((ROOT / "results" / "lora_family_rates.json").read_text())
    family = json.loads((ROOT / "results" / "lora_family.json").read_text())
    assert not record["quick"] and record["seed"] == 123 and set(record["summary"]) == set(GRIDS)
    for method, s in record["summary"].items():
        run = family["runs"][record["task"]][method][str(record["seed"])]
        assert s["test_at_shared"] == run["test"], method
    assert record["summary"] == summarise(record["runs"])
