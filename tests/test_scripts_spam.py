"""End to end, with the tiny model: scripts/finetune_spam.py --quick, scripts/predict.py on what it
saved, and scripts/compare_finetuning.py --quick. Numbers are not a quality claim (a random
2-layer model trained for 6 steps); what is checked is that the pieces fit: exact parameter counts,
files written, and a reloaded classifier reproducing the trained one's test accuracy exactly."""

import hashlib
import io
import json
import re
import sys

import pytest
import torch

from classify.data import spam_splits
from classify.saved import classify_texts, load_classifier
from gpt import GPTConfig, GPTModel
from gpt.checkpoint import save_model
from gpt.pretrained import describe_base

import scripts.compare_finetuning as compare
import scripts.finetune_spam as finetune_spam
import scripts.predict as predict
from classify.comparison import PROBE, ROWS

pytestmark = pytest.mark.slow  # fine-tunes through scripts/ end to end

# gpt-tiny + LoRA r=16 on all linear layers: per block 4 x 16 x (32 + 32) for W_query, W_key, W_value,
# out_proj and 2 x 16 x (32 + 128) for the feed-forward pair = 9,216; two blocks; plus the 2-class head 66.
TINY_LORA_TRAINABLE = 2 * 9_216 + 66  # 18,498
TINY_FULL_TRAINABLE = 1_635_552 + 66  # every weight of gpt-tiny with the new head


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("spam-lora")
    result = finetune_spam.main(["--quick", "--out", str(out), "--no-progress"])
    return out, result


def _test_accuracy_via_predict(out):
    test = spam_splits()["test"]
    model, info = load_classifier(out)
    results = classify_texts(model, info, [ex.text for ex in test])
    labels = [info["labels"].index(r["label"]) for r in results]
    return sum(l == ex.label for l, ex in zip(labels, test)) / len(test), results


def test_quick_lora_run_writes_everything(lora_run):
    out, result = lora_run
    assert sorted(p.name for p in out.iterdir()) == ["adapter.safetensors", "adapter_config.json", "classifier.json",
                                                    "curves.png", "history.json"]
    assert result["trainable_params"] == TINY_LORA_TRAINABLE
    assert result["steps"] == 6 and result["history"]["step"] == [3, 6]
    assert result["max_length"] == 64  # gpt-tiny's context: the 120-token training maximum is cut...
    assert result["truncated"] == {"train": 10, "val": 1, "test": 4}  # ...and every cut is counted
    saved = json.loads((out / "history.json").read_text())
    assert saved["test_accuracy"] == result["test_accuracy"]
    info = json.loads((out / "classifier.json").read_text())
    assert info["base"] == "random:gpt-tiny" and info["method"] == "lora" and info["labels"] == ["ham", "spam"]
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_frozen_head_trains_the_lora_matrices_only(tmp_path):
    """--frozen-head (chapter 9's mistake, FinetuneConfig.train_head=False): the new head stays out of
    modules_to_save, so only the LoRA matrices train (66 fewer: the 2 x 32 + 2 head) and the adapter has no head."""
    from classify.finetune import config_from_args

    result = finetune_spam.main(["--quick", "--frozen-head", "--out", str(tmp_path), "--no-progress"])
    assert result["trainable_params"] == TINY_LORA_TRAINABLE - 66
    assert result["train_head"] is False and result["lora"]["modules_to_save"] == []
    assert not json.loads((tmp_path / "adapter_config.json").read_text())["modules_to_save"]
    from safetensors import safe_open

    with safe_open(str(tmp_path / "adapter.safetensors"), "pt") as f:
        assert not [k for k in f.keys() if "out_head" in k]  # the head is not saved: it was never trained
    with pytest.raises(ValueError, match="--frozen-head is for --method lora"):
        config_from_args(finetune_spam.parse_args(["--quick", "--frozen-head", "--method", "full"]))


def test_quick_run_is_reproducible(lora_run, tmp_path):
    _, first = lora_run
    again = finetune_spam.main(["--quick", "--out", str(tmp_path), "--no-progress"])
    assert again["history"]["train_loss"] == first["history"]["train_loss"]
    assert again["test_accuracy"] == first["test_accuracy"]


def test_quick_run_with_gradient_accumulation_takes_the_same_steps(lora_run, tmp_path):
    """--grad-accum 4 cuts every batch of 8 into 4 micro-batches of 2: the same 6 steps, the same losses up to float
    rounding (LoRA, float32, no dropout), and the setting is recorded."""
    _, first = lora_run
    accum = finetune_spam.main(["--quick", "--grad-accum", "4", "--out", str(tmp_path), "--no-progress"])
    assert accum["grad_accum"] == 4 and first["grad_accum"] == 1
    assert accum["history"]["step"] == first["history"]["step"]
    torch.testing.assert_close(torch.tensor(accum["history"]["train_loss"]), torch.tensor(first["history"]["train_loss"]),
                               rtol=1e-4, atol=1e-5)
    assert accum["val_loss"] == pytest.approx(first["val_loss"], rel=1e-4)


def test_quick_run_without_prefix_loss_records_it_and_trains_on_less(lora_run, tmp_path):
    """The recipe trains on every prefix (--prefix-weight 1); --prefix-weight 0 is the book's loss alone."""
    _, first = lora_run
    whole = finetune_spam.main(["--quick", "--prefix-weight", "0", "--out", str(tmp_path), "--no-progress"])
    assert whole["prefix_weight"] == 0.0 and first["prefix_weight"] == 1.0
    assert whole["history"]["step"] == first["history"]["step"]
    # Both runs log the same two quantities for train and validation: the last-token loss and the prefix term
    # on its own; the prefix term is its own number, and training on it changes where the weights go.
    for run in (first, whole):
        h = run["history"]
        assert len(h["train_prefix_loss"]) == len(h["val_prefix_loss"]) == len(h["step"]) == 2
        assert h["train_prefix_loss"][0] != pytest.approx(h["train_loss"][0], rel=1e-3)
    assert whole["history"]["val_loss"] != first["history"]["val_loss"]


@pytest.mark.parametrize("bad", ["0", "9"])
def test_grad_accum_out_of_range_is_refused(bad):
    from classify.finetune import config_from_args

    with pytest.raises(ValueError, match=r"--grad-accum must be between 1 and --batch-size \(8\)|--grad-accum must be an"):
        config_from_args(finetune_spam.parse_args(["--quick", "--grad-accum", bad]))


def test_classify_reproduces_the_trained_models_test_accuracy(lora_run):
    out, result = lora_run
    accuracy, _ = _test_accuracy_via_predict(out)
    assert accuracy == result["test_accuracy"]


def test_classify_cli_output_truncation_and_stdin(lora_run, capsys, monkeypatch):
    out, _ = lora_run
    long_text = "free " * 200
    results = predict.main(["--adapter", str(out), "You won a free cruise, call now", long_text])
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    assert re.fullmatch(r"(ham|spam) \(p=(0\.[5-9]\d|1\.00)\)\tYou won a free cruise, call now", lines[0])
    assert "[truncated to its first 64 tokens]" in lines[1]  # stated, never silent
    assert results[1]["truncated"] is True and results[1]["tokens"] == 64 and results[0]["truncated"] is False
    monkeypatch.setattr(sys, "stdin", io.StringIO("Ok lar... Joking wif u oni...\n\nWINNER!! call 09061701461\n"))
    from_stdin = predict.main(["--adapter", str(out)])
    assert len(from_stdin) == 2  # the blank line is skipped
    assert len(capsys.readouterr().out.strip().splitlines()) == 2


def test_classify_bad_input(lora_run, tmp_path):
    out, _ = lora_run
    with pytest.raises(ValueError, match="empty"):
        predict.main(["--adapter", str(out), "   "])
    with pytest.raises(FileNotFoundError, match="classifier.json"):
        predict.main(["--adapter", str(tmp_path), "hello"])


def test_classify_refuses_a_base_that_does_not_match(lora_run, tmp_path):
    out, _ = lora_run
    other_shape = tmp_path / "one-layer.safetensors"
    save_model(GPTModel(GPTConfig.from_preset("gpt-tiny", n_layers=1)), other_shape)
    with pytest.raises(ValueError, match="another base model.*n_layers=2"):
        load_classifier(out, base=str(other_shape))
    torch.manual_seed(999)  # same shape, other weights
    other_weights = tmp_path / "other-weights.safetensors"
    save_model(GPTModel(GPTConfig.from_preset("gpt-tiny")), other_weights)
    with pytest.raises(ValueError, match="fingerprint differs"):
        load_classifier(out, base=str(other_weights))


def test_quick_full_finetuning_saves_and_reloads(tmp_path):
    result = finetune_spam.main(["--quick", "--method", "full", "--out", str(tmp_path), "--no-progress"])
    assert result["trainable_params"] == TINY_FULL_TRAINABLE
    assert (tmp_path / "classifier.safetensors").is_file() and not (tmp_path / "adapter.safetensors").exists()
    accuracy, _ = _test_accuracy_via_predict(tmp_path)
    assert accuracy == result["test_accuracy"]


def test_missing_base_model_says_what_to_do():
    with pytest.raises(FileNotFoundError, match="not found"):
        describe_base("data/no-such-model")
    with pytest.raises(ValueError, match="unknown preset"):
        describe_base("random:gpt-huge")


def test_quick_comparison_writes_table_json_curves_and_floor(tmp_path):
    base = tmp_path / "tiny.safetensors"  # a checkpoint base (like data/gpt-mini), so every row runs
    torch.manual_seed(5)
    save_model(GPTModel(GPTConfig.from_preset("gpt-tiny")), base)
    results = tmp_path / "results"
    # Extra flags go to every finetune_spam.py run: with a constant learning rate, lora-whole (the recipe
    # on whole messages only) is the book's recipe, so it has the same settings as the scale-alpha/r row.
    report = compare.main(["--quick", "--model", str(base), "--results", str(results), "--runs", str(tmp_path / "runs"),
                           "--schedule", "constant"])
    assert sorted(p.name for p in results.iterdir()) == ["spam_comparison.json", "spam_comparison.md",
                                                         "spam_curves.png", "spam_floor.json"]
    rows = report["rows"]
    assert list(rows) == list(ROWS)
    trainable = {name: row["trainable_params"] for name, row in rows.items()}
    assert trainable == {"lora-separate": TINY_LORA_TRAINABLE, "lora-fused": TINY_LORA_TRAINABLE,
                         "full": TINY_FULL_TRAINABLE, "last-block": 12_608 + 64 + 66, "head": 66,
                         "lora-random-base": TINY_LORA_TRAINABLE, "scale-alpha/r": TINY_LORA_TRAINABLE,
                         "scale-alpha": TINY_LORA_TRAINABLE, "lora-whole": TINY_LORA_TRAINABLE}
    # Same settings, same numbers: that row reuses the lora-separate runs instead of repeating them.
    assert report["meta"]["same_as"] == {"lora-whole": "scale-alpha/r"}
    runs = report["runs"]
    assert runs["lora-random-base"][0]["base"] == "random:gpt-tiny"  # a random base of the checkpoint's shape
    assert runs["lora-random-base"][0]["test_accuracy"] != runs["lora-separate"][0]["test_accuracy"]
    assert runs["scale-alpha"][0]["lora"]["scaling"] == "alpha" and runs["scale-alpha/r"][0]["lora"]["scaling"] == "alpha/r"
    assert all(r["schedule"] == "constant" for rs in runs.values() for r in rs)
    assert runs["lora-fused"][0]["attention"] == "fused"
    assert runs["lora-whole"][0]["prefix_weight"] == 0.0 and runs["lora-separate"][0]["prefix_weight"] == 1.0
    # every run classified the probes; the table shows the cruise message's mean p(spam) per row
    for name, row in rows.items():
        assert row["probe_p_spam"] == pytest.approx(
            sum(r["probes_p_spam"][PROBE] for r in runs[name]) / len(runs[name]))
    saved = json.loads((results / "spam_comparison.json").read_text())
    assert saved["rows"]["full"]["test_accuracy"] == rows["full"]["test_accuracy"]
    assert set(saved["curves"]) == set(ROWS) - {"lora-whole"}
    table = (results / "spam_comparison.md").read_text()
    assert table.count("\n| ") == 1 + len(ROWS)  # header + one line per row
    assert "| head | head only | 66 |" in table
    assert f'p(spam) "{PROBE}"' in table.splitlines()[4]  # the header row (after the title and command)
    floor = json.loads((results / "spam_floor.json").read_text())
    assert floor["base_sha256"] == hashlib.sha256(base.read_bytes()).hexdigest()
    assert floor["lora_test_accuracy_mean"] == rows["lora-separate"]["test_accuracy"]
    assert floor["meets_floor"] == (rows["lora-separate"]["test_accuracy"] >= 0.94)
    # --render-only rewrites the same table from the saved JSON, running nothing.
    (results / "spam_comparison.md").unlink()
    compare.main(["--render-only", "--results", str(results)])
    assert (results / "spam_comparison.md").read_text() == table
