"""The headline: LoRA on the shipped gpt-mini reaches >= 94 % test accuracy (mean of three seeds) and
stays within one point of full fine-tuning on the same base. The 94 % is this project's target for
the main job (the book's LoRA on the real GPT-2 124M reports 96.67 %; gpt-mini is 7x smaller).

The three-seed comparison with full fine-tuning is a benchmark (`python scripts/compare_finetuning.py
--seeds 123 124 125`, about 18 minutes), which writes results/spam_floor.json; the first test checks
that record against the checkpoint that is shipped (a re-trained base invalidates it). The second
re-measures the main job itself on seed 123 in every test run (about two minutes on one thread), so
the headline cannot silently drift from what the code now does.
"""

import json
from pathlib import Path

import pytest

from classify.data import sha256_of

pytestmark = pytest.mark.slow  # fine-tunes gpt-mini to its accuracy floor (minutes)

ROOT = Path(__file__).resolve().parent.parent
BASE = ROOT / "data" / "gpt-mini" / "model.safetensors"
RECORD = ROOT / "results" / "spam_floor.json"
needs_base = pytest.mark.skipif(not BASE.is_file(), reason="data/gpt-mini/model.safetensors is not there yet")


@needs_base
def test_floor_record_is_for_the_shipped_base_and_meets_the_floor():
    assert RECORD.is_file(), f"{RECORD} missing: run python scripts/compare_finetuning.py --seeds 123 124 125"
    record = json.loads(RECORD.read_text())
    assert record["base_sha256"] == sha256_of(BASE), "the record was made on another gpt-mini: measure again"
    assert len(record["seeds"]) >= 3
    accs = list(record["lora_test_accuracy"].values())
    assert record["lora_test_accuracy_mean"] == pytest.approx(sum(accs) / len(accs))
    assert record["lora_test_accuracy_mean"] >= 0.94
    assert record["full_test_accuracy_mean"] - record["lora_test_accuracy_mean"] <= 0.01


@needs_base
def test_main_job_beats_the_floor_on_seed_123(tmp_path):
    """The main job with its defaults (scripts/finetune_spam.py), seed 123, trained here and now."""
    from classify.finetune import FinetuneConfig, finetune

    result = finetune(FinetuneConfig(seed=123, progress=False), out=tmp_path / "spam-lora", log=lambda line: None)
    assert result["test_accuracy"] >= 0.94, result["test_accuracy"]
    assert result["val_accuracy"] >= 0.94, result["val_accuracy"]
