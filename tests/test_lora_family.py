"""classify/lora_family.py and scripts/compare_lora_family.py, in quick mode only (a random gpt-tiny, 2 steps,
into a tmp folder): every method builds, trains what it should (counts by value), and the script writes its
three files."""

import json

import pytest
import torch

from classify.lora_family import METHODS, build_classifier_with, make_optimizer, trainable_count
from lora import Linear4bit
from scripts.compare_lora_family import main

# gpt-tiny: 2 blocks, width 32 (ff 128), a new 2-class head (32 * 2 + 2 = 66) trained by every method.
LORA_16 = 2 * (4 * 16 * (32 + 32) + 2 * 16 * (32 + 128)) + 66  # q, k, v, out_proj; ff in and out
EXPECTED = {
    "lora": LORA_16, "qlora": LORA_16, "pissa": LORA_16, "loraplus": LORA_16, "rslora": LORA_16,
    "dora": LORA_16 + 2 * (4 * 32 + 128 + 32),  # + a magnitude per output feature
    "vera": 2 * (4 * (256 + 32) + (256 + 128) + (256 + 32)) + 66,  # r + d_out per layer
    "full": 1_635_618,  # every weight of gpt-tiny with the new head (the embedding table is 50,257 x 32)
}


@pytest.mark.parametrize("method", list(METHODS))
def test_each_method_trains_what_it_should(method):
    model = build_classifier_with(method, "random:gpt-tiny", seed=123)
    assert trainable_count(model) == EXPECTED[method]
    assert (sum(isinstance(m, Linear4bit) for m in model.modules()) == 12) == (method == "qlora")
    opt = make_optimizer(method, model, lr=1e-3)
    lrs = sorted({g["lr"] for g in opt.param_groups if g["params"]})
    assert lrs == ([1e-3, 16e-3] if method == "loraplus" else [1e-3])


def test_unknown_method_is_refused():
    with pytest.raises(ValueError, match="unknown method 'lorax'"):
        build_classifier_with("lorax", "random:gpt-tiny")


def test_quick_run_writes_json_md_png(tmp_path):
    torch.set_num_threads(1)
    report = main(["--quick", "--tasks", "spam", "--methods", "lora", "qlora", "vera", "--results", str(tmp_path)],
                  log=lambda *a: None)
    saved = json.loads((tmp_path / "lora_family.json").read_text())
    assert saved["quick"] is True and saved["seeds"] == [123] and list(saved["summary"]) == ["spam"]
    rows = saved["summary"]["spam"]
    assert list(rows) == ["lora", "qlora", "vera"]
    assert [rows[m]["trainable"] for m in rows] == [EXPECTED["lora"], EXPECTED["qlora"], EXPECTED["vera"]]
    assert rows["qlora"]["frozen_bytes"] < rows["lora"]["frozen_bytes"]  # the 4-bit base is smaller
    assert all(0.0 <= rows[m]["test_mean"] <= 1.0 for m in rows)
    assert "| VeRA r=256 | 3,714 |" in (tmp_path / "lora_family.md").read_text()
    assert (tmp_path / "lora_family.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report["summary"] == saved["summary"]


def test_quick_run_never_replaces_a_real_comparison(tmp_path, capsys):
    real = tmp_path / "lora_family.json"
    real.write_text(json.dumps({"quick": False}))
    with pytest.raises(SystemExit) as e:
        from common.cli import run_main

        run_main(main, ["--quick", "--results", str(tmp_path)])
    assert e.value.code != 0 and "holds a real comparison" in capsys.readouterr().err
    assert json.loads(real.read_text()) == {"quick": False}


def test_the_page_quotes_the_committed_comparison():
    """docs/lora_family.md shows results/lora_family.md's tables row for row, the run time the record holds, and the
    TF-IDF numbers as results/tfidf_baseline.json has them; the record covers every method, both tasks, three seeds."""
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    record = json.loads((root / "results" / "lora_family.json").read_text())
    assert not record["quick"] and record["seeds"] == [123, 124, 125] and set(record["methods"]) == set(METHODS)
    assert {task: set(rows) for task, rows in record["summary"].items()} == {t: set(METHODS) for t in ("spam", "sentiment")}
    page = (root / "docs" / "lora_family.md").read_text()
    rows = [line for line in (root / "results" / "lora_family.md").read_text().splitlines() if line.startswith("| ")]
    assert len(rows) == 2 * (1 + len(METHODS))
    assert [row for row in rows if row not in page] == []
    text = " ".join(page.split())
    assert f"`python scripts/compare_lora_family.py --threads 1` ({record['total_seconds'] / 60:.0f} minutes" in text
    tfidf = json.loads((root / "results" / "tfidf_baseline.json").read_text())["tasks"]
    assert (f"TF-IDF n-grams reach {100 * tfidf['spam']['test_accuracy']:.2f} % on spam and "
            f"{100 * tfidf['sentiment']['test_accuracy']:.2f} % on sentiment") in text
