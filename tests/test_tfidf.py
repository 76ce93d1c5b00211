"""The TF-IDF baseline (classify.tfidf, scripts/tfidf_baseline.py): C is chosen on validation alone, the committed
results are what the code computes, and the pages that quote them quote the file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from classify.data import Example
from classify.tfidf import fit_tfidf, versus_tfidf
from scripts import tfidf_baseline

ROOT = Path(__file__).resolve().parent.parent
RECORD = ROOT / "results" / "tfidf_baseline.json"

# A toy task a word feature separates: "prize"/"win" -> 1, everything else -> 0.
TRAIN = [Example(t, y) for t, y in [("win a prize now", 1), ("claim your prize", 1), ("you win cash", 1),
                                    ("prize draw win", 1), ("see you at lunch", 0), ("call me later", 0),
                                    ("lunch at noon", 0), ("running late sorry", 0)]]
VAL = [Example("a prize to win", 1), Example("late for lunch", 0)]


def test_c_is_chosen_on_validation_and_never_on_test():
    """Flipping the labels of a held-out set the fit never sees changes nothing; flipping validation's does."""
    baseline = fit_tfidf(TRAIN, VAL, C_grid=(100.0, 1.0, 0.01))
    assert baseline.val_accuracy_by_C == {0.01: 1.0, 1.0: 1.0, 100.0: 1.0}
    assert baseline.C == 0.01 and baseline.val_accuracy == 1.0  # a tie goes to the smallest C: the strongest prior
    assert baseline.accuracy(VAL) == 1.0
    assert baseline.accuracy([Example(ex.text, 1 - ex.label) for ex in VAL]) == 0.0
    flipped = fit_tfidf(TRAIN, [Example(ex.text, 1 - ex.label) for ex in VAL], C_grid=(0.01, 1.0, 100.0))
    assert flipped.val_accuracy_by_C == {0.01: 0.0, 1.0: 0.0, 100.0: 0.0}


def test_probabilities_and_sizes():
    baseline = fit_tfidf(TRAIN, VAL, C_grid=(1.0,))
    p = baseline.predict_proba(["win a prize", "lunch later"])
    assert p.shape == (2, 2) and p.sum(axis=1) == pytest.approx([1.0, 1.0])
    assert p[0, 1] > 0.5 > p[1, 1]
    assert baseline.num_parameters() == baseline.num_features() + 1  # one weight per n-gram, one bias


@pytest.mark.parametrize("train, val, grid, message", [
    (TRAIN, [], (1.0,), "needs training and validation examples"),
    ([ex for ex in TRAIN if ex.label == 1], VAL, (1.0,), "at least two classes"),
    (TRAIN, VAL, (0.0, 1.0), "every C must be positive"),
])
def test_refusals(train, val, grid, message):
    with pytest.raises(ValueError, match=message):
        fit_tfidf(train, val, C_grid=grid)


@pytest.mark.parametrize("gpt_mini, tfidf, said", [
    (0.9711111, 0.9733333, "level with TF-IDF (-0.22 points)"),
    (0.7844444, 0.84, "behind TF-IDF by 5.56 points"),
    (0.90, 0.85, "ahead of TF-IDF by 5.00 points"),
])
def test_verdict_in_words(gpt_mini, tfidf, said):
    assert versus_tfidf(gpt_mini, tfidf) == said


@pytest.mark.slow
def test_committed_results_are_what_the_code_computes(tmp_path):
    """Re-run the script on copies of the gpt-mini results: every number of results/tfidf_baseline.json comes back
    (liblinear is deterministic), and the spam split's 300 test messages give 292 right."""
    for name in ("spam_floor.json", "sentiment_comparison.json"):
        (tmp_path / name).write_bytes((ROOT / "results" / name).read_bytes())
    report = tfidf_baseline.main(["--results", str(tmp_path)], log=lambda *a: None)
    committed = json.loads(RECORD.read_text())
    for task, row in committed["tasks"].items():
        assert row["val_accuracy"] == max(row["val_accuracy_by_C"].values()), task  # the best C on validation
        fresh = report["tasks"][task]
        assert fresh == row, task
    assert round(300 * committed["tasks"]["spam"]["test_accuracy"]) == 292


def test_script_refuses_a_results_folder_without_the_gpt_mini_rows(tmp_path, capsys):
    from common.cli import UserError

    with pytest.raises(UserError, match="has no spam_floor.json, sentiment_comparison.json"):
        tfidf_baseline.main(["--results", str(tmp_path)], log=lambda *a: None)
    assert not (tmp_path / "tfidf_baseline.json").exists()


def test_the_pages_quote_the_results_file():
    """docs/spam_classifier.md and docs/sentiment.md show the TF-IDF table's row of their task, as the file has it."""
    rows = {line.split(" | ")[0].lstrip("| "): line for line in (ROOT / "results" / "tfidf_baseline.md").read_text()
            .splitlines() if line.startswith("| spam") or line.startswith("| sentiment")}
    for task, page in (("spam", "spam_classifier.md"), ("sentiment", "sentiment.md")):
        assert rows[task] in (ROOT / "docs" / page).read_text(), f"docs/{page} does not quote: {rows[task]}"


def test_readme_quotes_the_results_file():
    """README's line on the baseline: the test accuracies and the words for them come from results/tfidf_baseline.json."""
    tasks = json.loads(RECORD.read_text())["tasks"]
    spam, sentiment = tasks["spam"], tasks["sentiment"]
    assert spam["verdict"].startswith("level with") and sentiment["verdict"].startswith("behind")
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert (f"level with it on spam ({100 * spam['test_accuracy']:.2f} % test) and ahead on sentiment "
            f"({100 * sentiment['test_accuracy']:.2f} % against {100 * sentiment['gpt_mini_test_accuracy']:.2f} %)") in readme
