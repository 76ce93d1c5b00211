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
    assert e.value.code != 0 and "holds a real lora_family record" in capsys.readouterr().err
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
    assert len(rows) == 2 * (2 + len(METHODS))  # the header, the methods and the TF-IDF row, per task
    assert [row for row in rows if row not in page] == []
    # the cost tables (this CPU and the H200, GPT-2 124M shape) and the rsLoRA sweep, row for row
    for path in ("benchmarks/results/lora_family_cost.md", "results/gpu/2026-12-04-lora-family/benchmarks/lora_family_cost.md",
                 "results/rslora_rank_sweep.md", "results/lora_family_rates.md"):
        text_rows = (root / path).read_text().split("## gpt2-small shape")[-1].splitlines()
        quoted = [line for line in text_rows if line.startswith(("| ", "- ") if "cost" not in path else "| ")]
        assert quoted and [line for line in quoted if line not in page] == [], path
    gpu = json.loads((root / "results/gpu/2026-12-04-lora-family/benchmarks/lora_family_cost.json").read_text())
    methods = gpu["results"]["shapes"][0]["methods"]
    from classify.lora_family import memory_beyond_start

    q, lo = methods["qlora"], methods["lora"]
    assert (f"cuts the frozen weights from {lo['frozen_bytes']['float32'] / 2**20:.0f} to "
            f"{q['frozen_bytes']['float32'] / 2**20:.0f} MiB") in " ".join(page.split())
    assert (f"to {memory_beyond_start(q['memory']) / memory_beyond_start(lo['memory']):.2f}x LoRA's on the GPU, at "
            f"{q['step_seconds']['median'] / lo['step_seconds']['median']:.2f}x LoRA's step time") in " ".join(page.split())
    text = " ".join(page.split())
    assert f"`python scripts/compare_lora_family.py --threads 1` ({record['total_seconds'] / 60:.0f} minutes" in text
    tfidf = json.loads((root / "results" / "tfidf_baseline.json").read_text())["tasks"]
    assert (f"TF-IDF n-grams reach {100 * tfidf['spam']['test_accuracy']:.2f} % on spam and "
            f"{100 * tfidf['sentiment']['test_accuracy']:.2f} % on sentiment") in text


def _report_and_cost():
    """A comparison record and a cost record by hand: three methods, two tasks."""
    summary = {task: {m: {"trainable": n, "test_mean": acc[task], "test_std": 0.01}
                      for m, n, acc in (("lora", 1000, {"spam": 0.96, "sentiment": 0.70}),
                                        ("qlora", 1000, {"spam": 0.95, "sentiment": 0.72}),
                                        ("vera", 50, {"spam": 0.94, "sentiment": 0.50}),
                                        ("full", 90000, {"spam": 0.96, "sentiment": 0.78}))}
               for task in ("spam", "sentiment")}
    report = {"methods": {m: m.upper() for m in ("lora", "qlora", "vera", "full")}, "summary": summary}

    def cost_row(peak, start, seconds):
        return {"trainable_params": 0, "frozen_bytes": {"float32": 400, "bfloat16": 200},
                "memory": {"peak_bytes": peak, "rss_start_bytes": start, "kind": "peak_rss"},
                "step_seconds": {"median": seconds}}

    cost = {"methods": {"lora": cost_row(300, 100, 2.0), "qlora": cost_row(250, 100, 3.0),
                        "vera": cost_row(310, 100, 2.2), "full": cost_row(500, 100, 4.0)}}
    return report, cost


def test_side_by_side_joins_accuracy_and_cost_by_value():
    from classify.lora_family import side_by_side

    report, cost = _report_and_cost()
    tfidf = {"tasks": {"spam": {"test_accuracy": 0.97}, "sentiment": {"test_accuracy": 0.84}}}
    rows = {r["method"]: r for r in side_by_side(report, cost, tfidf)}
    assert list(rows) == ["lora", "qlora", "vera", "full", "tfidf"]
    # memory beyond the process's start: (250 - 100) / (300 - 100); the start is not part of the method's cost
    assert rows["qlora"]["peak_memory_x_lora"] == pytest.approx(0.75)
    assert rows["full"]["peak_memory_x_lora"] == pytest.approx(2.0) and rows["full"]["step_time_x_lora"] == 2.0
    assert rows["vera"]["trainable"] == 50 and rows["qlora"]["sentiment_test_mean"] == 0.72
    assert rows["tfidf"]["spam_test_mean"] == 0.97 and rows["tfidf"]["peak_memory_x_lora"] is None


def test_which_method_when_reads_the_measurements():
    from classify.lora_family import side_by_side, which_method_when

    report, cost = _report_and_cost()
    table = {row["situation"].split(":")[0]: row for row in which_method_when(side_by_side(report, cost))}
    assert table["memory-bound"]["method"] == "qlora" and "0.75x LoRA's peak memory" in table["memory-bound"]["why"]
    assert table["few parameters"]["method"] == "vera" and "sentiment -20.0 points" in table["few parameters"]["why"]
    assert table["best accuracy, whatever it costs"]["method"] == "full"
    assert table["best accuracy from an adapter"]["method"] == "qlora"  # (0.95 + 0.72) / 2 > LoRA's (0.96 + 0.70) / 2
    # the measurements decide, not the names: make VeRA the most accurate adapter and it is chosen
    report["summary"]["sentiment"]["vera"]["test_mean"] = 0.99
    table = {row["situation"]: row for row in which_method_when(side_by_side(report, cost))}
    assert table["best accuracy from an adapter"]["method"] == "vera"


def test_readme_quotes_the_family_records():
    """README's LoRA-family sentence is what the committed records give (the same tables chapter 10 reads)."""
    from pathlib import Path

    from scripts.ch10_lora_family import committed_tables

    root = Path(__file__).resolve().parent.parent
    rows = {r["method"]: r for r in committed_tables()["rows"]}
    q, lo, dora, vera = rows["qlora"], rows["lora"], rows["dora"], rows["vera"]
    text = " ".join((root / "README.md").read_text().split())
    assert (f"QLoRA's 4-bit base takes {q['frozen_float32'] / 2**20:.0f} MiB instead of {lo['frozen_float32'] / 2**20:.0f}"
            f" MiB and a training step {q['peak_memory_x_lora']:.2f}x LoRA's peak memory at {q['step_time_x_lora']:.2f}x "
            f"its step time") in text
    assert (f"DoRA gains {100 * (dora['sentiment_test_mean'] - lo['sentiment_test_mean']):.1f} points over LoRA and VeRA "
            f"trains {vera['trainable'] / lo['trainable']:.3f}x LoRA's numbers but loses "
            f"{100 * (lo['sentiment_test_mean'] - vera['sentiment_test_mean']):.1f}") in text


@pytest.mark.slow
def test_chapter_script_trains_every_method(capsys):
    """scripts/ch10_lora_family.py --quick: every method of the family trains a step on spam, counts by value."""
    from scripts.ch10_lora_family import main

    torch.set_num_threads(1)
    out = main(["--quick", "--threads", "1"], log=print)
    assert {m: r["trainable"] for m, r in out.items()} == EXPECTED
    assert all(len(r["train_loss_by_epoch"]) == 1 and 0.0 <= r["val"] <= 1.0 for r in out.values())
    assert "vera           3,714 trained" in capsys.readouterr().out
