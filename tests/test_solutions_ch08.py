"""The code solutions of chapter 8's exercises (solutions/ch08.py), and the chapter script
(scripts/ch08_adapters.py) in quick mode."""

import json
from importlib import import_module
from pathlib import Path

import pytest

from solutions import ch08

ROOT = Path(__file__).resolve().parent.parent



def test_exercise_8_1_one_file_is_the_whole_adapter(tmp_path):
    out = ch08.details_8_1(tmp_path)
    assert out["files"] == ["spam.safetensors"]  # no adapter_config.json: the config is in the file's metadata
    assert out["config_keys"] == ["adapter_name", "base_model", "format", "format_version", "lora", "lora_modules",
                                  "modules_to_save", "tensors_sha256"]
    assert out["lora"] == {"alpha": 16.0, "dropout": 0.0, "modules_to_save": ["out_head"], "rank": 8,
                           "scaling": "alpha/r", "targets": ["all-linear"]}
    assert out["gpt_config"]["emb_dim"] == 32 and out["gpt_config"]["n_layers"] == 2
    # gpt-tiny: tok_emb, pos_emb, final_norm (2) + per block 2 norms x 2, W_q/k/v, out_proj (2), ff (4) = 13
    assert out["n_fingerprinted_tensors"] == 3 + 1 + 2 * 13
    # 2 blocks x 6 wrapped layers x (lora_A, lora_B) + the head's weight and bias
    assert len(out["tensor_names"]) == 2 * 6 * 2 + 2
    assert "trf_blocks.0.att.W_query.lora_A" in out["tensor_names"] and "out_head.bias" in out["tensor_names"]
    assert out["fresh_vs_trained_max_diff"] < 1e-6


def test_exercise_8_2_one_changed_number_is_named(tmp_path):
    out = ch08.details_8_2(tmp_path)
    assert out["error"] is not None
    assert "another base model" in out["error"] and out["changed_tensor"] in out["error"]
    assert "check_base=False" in out["error"]
    assert out["loaded_with_check_base_false"] is True
    assert 0 < out["logit_diff_on_perturbed_base"] < 1e-2  # a 1e-3 change moves the logits a little


def test_exercise_8_3_what_the_file_holds(tmp_path):
    out = ch08.details_8_3(tmp_path)
    assert sorted(out) == [1, 2, 4, 8, 16]
    for r, row in out.items():
        assert row["tensor_bytes"] == row["predicted_bytes"] == 4 * (1_152 * r + 66)
        assert row["tensors"] == 2 * 6 * 2 + 2 and row["fingerprinted_base_tensors"] == 3 + 1 + 2 * 13
        assert row["header_bytes"] == row["file_bytes"] - row["tensor_bytes"]
        assert 2_000 < row["header_bytes"] < 20_000
    headers = [row["header_bytes"] for row in out.values()]
    assert max(headers) - min(headers) < 200  # nearly the same header at every rank


def test_exercise_8_4_every_adapter_asked_and_the_active_one_put_back():
    out = ch08.details_8_4()
    assert out["adapters"] == ["sentiment", "spam"] and out["active_after"] == "sentiment"
    assert out["shapes"] == {"sentiment": (32,), "spam": (32,)}
    assert out["agree"] < 32  # two different classifiers: they disagree somewhere


@pytest.mark.slow
def test_script_quick_run_end_to_end(tmp_path):
    script = import_module("scripts.ch08_adapters")
    results = script.main(["--quick", "--out", str(tmp_path), "--threads", "1", "--no-progress"], log=lambda s: None)
    for name in ("08_file_sizes.png", "08_training_curves.png", "08_latency.png", "results.json"):
        assert (tmp_path / name).stat().st_size > 1_000, name
    lora = json.loads((tmp_path / "results.json").read_text())["lora"]
    assert lora["spam"]["rank"] == lora["sentiment"]["rank"] == 8
    assert lora["spam"]["targets"] == ["all-linear"] and lora["sentiment"]["targets"] == ["all-linear", "tok_emb"]
    for task in ("spam", "sentiment"):
        assert sorted(p.name for p in (tmp_path / "adapters" / task).iterdir()) == ["adapter.safetensors",
                                                                                     "adapter_config.json"]
    # gpt-tiny, r=8 on all-linear: 2 blocks x 576 x 8 = 9,216 LoRA numbers + the head's 66; the sentiment
    # adapter also on the token embedding: 8 x (50,257 + 32) = 402,312 more.
    assert results["trainable_per_adapter"] == {"spam": 9_282, "sentiment": 9_282 + 402_312}
    assert max(results["fresh_vs_trained_max_logit_diff"].values()) < 1e-5
    assert results["merged_vs_unmerged_max_logit_diff"] < 1e-5
    errors = results["different_base_errors"]
    assert "weights fingerprint differs" in errors["same architecture, other weights"]
    assert "emb_dim=32 (this model: 256)" in errors["another architecture (gpt-mini)"]
    assert set(results["latency_ms"]) == {"1", "8"}
    assert set(results["latency_ms"]["1"]) == {"base", "LoRA unmerged", "LoRA merged"}
    for adapter in ("spam", "sentiment"):
        assert set(results["test_accuracy"][adapter]) == {"spam", "sentiment"}
        assert all(0.0 <= a <= 1.0 for a in results["test_accuracy"][adapter].values())
    assert results["histories"]["spam"]["step"][-1] == 4  # --quick: max_steps=4
    for task in ("spam", "sentiment"):  # the bag of words beside each adapter, on the same splits
        assert set(results["bag_of_words_accuracy"][task]) == {"val", "test"}
    assert results["bag_of_words_accuracy"]["sentiment"]["test"] == pytest.approx(0.7667, abs=1e-4)
    # ... and TF-IDF n-grams, as results/tfidf_baseline.json has them (no GPT: the same in quick mode)
    committed = json.loads((ROOT / "results" / "tfidf_baseline.json").read_text())["tasks"]
    for task in ("spam", "sentiment"):
        assert results["tfidf_accuracy"][task] == {"val": committed[task]["val_accuracy"],
                                                   "test": committed[task]["test_accuracy"], "C": committed[task]["C"]}


def test_script_rejects_a_missing_base(tmp_path):
    script = import_module("scripts.ch08_adapters")
    with pytest.raises(FileNotFoundError, match="not found"):
        script.main(["--model", str(tmp_path / "nothing-here"), "--out", str(tmp_path)], log=lambda s: None)


def test_exercise_8_6_rows_of_the_embedding_that_moved():
    """A real training step on a tiny model: exactly the rows of the batch's tokens move."""
    import torch

    from classify.data import Example
    from classify.dataset import ClassificationDataset, encode_text, make_loader
    from classify.model import add_classification_head
    from classify.train import train_classifier
    from lora import LoraConfig, apply_lora

    texts = ["Great phone, the battery lasts.", "Cold food and rude staff.", "Not worth it.", "A wonderful film!"]
    model = ch08._base()
    add_classification_head(model, num_classes=2)
    apply_lora(model, LoraConfig(rank=4, alpha=8, targets=("tok_emb",), modules_to_save=("out_head",)),
               adapter_name="sentiment")
    data = ClassificationDataset([Example(t, i % 2) for i, t in enumerate(texts)], context_length=64)
    loader = make_loader(data, batch_size=4, shuffle=True, drop_last=True, seed=0)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.1)
    train_classifier(model, loader, loader, optimizer, 2, "cpu", eval_every=0, progress=False, log=None)
    out = ch08.exercise_8_6(model, "sentiment", texts)
    distinct = len({i for t in texts for i in encode_text(t)})
    assert out == {"rows_nonzero": distinct, "token_ids_in_texts": distinct}
    assert ch08.wrong_exercise_8_6(model, "sentiment", texts)["rows_nonzero"] == 4 * distinct
