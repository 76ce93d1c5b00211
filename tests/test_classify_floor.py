"""The issue's floor: LoRA on the shipped gpt-mini reaches >= 94 % test accuracy (mean of three seeds) and
stays within one point of full fine-tuning.

One LoRA run on gpt-mini takes minutes on a 2-core CPU, too long for the test suite, so the
measurement is a benchmark: `python scripts/compare_finetuning.py --seeds 123 124 125` writes
results/spam_floor.json. These tests check that record against the checkpoint that is shipped
(a re-trained base invalidates it) and, when LFS_SLOW=1 is set, re-run the main job on one seed.
"""

import json
import os
from pathlib import Path

import pytest

from classify.data import sha256_of

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
@pytest.mark.skipif(os.environ.get("LFS_SLOW") != "1", reason="minutes on a CPU; set LFS_SLOW=1 to run")
def test_main_job_beats_the_floor_on_seed_123(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("finetune_spam", ROOT / "scripts" / "finetune_spam.py")
    finetune_spam = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(finetune_spam)
    result = finetune_spam.main(["--out", str(tmp_path), "--seed", "123", "--no-progress"])
    assert result["test_accuracy"] >= 0.94
