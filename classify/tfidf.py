"""The classic baseline a practitioner tries first: TF-IDF word and character n-grams, logistic regression.

Stronger than chapter 7's bag of GPT-2 tokens (classify.bag_of_words): words and word pairs, character 2- to
5-grams inside word boundaries (spellings and pieces of words as well as whole words), TF-IDF weights with
sublinear term frequency, and an L2-regularised logistic regression (scikit-learn) whose inverse regularisation
strength C is chosen on the validation split alone; the test split is read once, at the end. No GPT, no
pre-training: what a fine-tuned gpt-mini scores above this row is what the pre-trained model buys on the task.

    baseline = fit_tfidf(splits["train"], splits["val"])
    baseline.C, baseline.val_accuracy                      # the chosen C and its validation accuracy
    baseline.accuracy(splits["test"])                      # fraction correct
    baseline.predict_proba(["You won a free cruise, call now"])   # (1, 2): p(ham), p(spam)
    versus_tfidf(0.9711, baseline.accuracy(splits["test"]))  # "level with TF-IDF (-0.22 points)"
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_union

from classify.data import Example

# The grid of C tried on validation: powers of 10 from strong to weak regularisation.
C_GRID = (0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)


@dataclass
class TfidfBaseline:
    pipeline: Pipeline  # TF-IDF features (word 1-2 grams + char_wb 2-5 grams) -> logistic regression
    C: float  # the inverse regularisation strength chosen on validation
    val_accuracy: float  # at that C (the fraction correct on the validation split)
    val_accuracy_by_C: dict[float, float]  # every C tried -> its validation accuracy

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        """(n, classes) class probabilities."""
        return self.pipeline.predict_proba(list(texts))

    def accuracy(self, examples: list[Example]) -> float:
        predicted = self.pipeline.predict([ex.text for ex in examples])
        return float(np.mean(predicted == np.array([ex.label for ex in examples])))

    def num_features(self) -> int:
        """Columns of the TF-IDF matrix: the vocabulary of word and character n-grams seen in training."""
        return sum(len(v.vocabulary_) for _, v in self.pipeline.named_steps["features"].transformer_list)

    def num_parameters(self) -> int:
        """Weights and biases of the logistic regression (one weight vector for 2 classes, as scikit-learn stores it)."""
        model = self.pipeline.named_steps["classifier"]
        return int(model.coef_.size + model.intercept_.size)


def _pipeline(C: float) -> Pipeline:
    features = make_union(
        TfidfVectorizer(analyzer="word", ngram_range=(1, 2), sublinear_tf=True, min_df=1, lowercase=True),
        TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, min_df=2, lowercase=False),
    )
    # liblinear is deterministic: the same data give the same weights on every machine and run.
    return Pipeline([("features", features), ("classifier", LogisticRegression(C=C, solver="liblinear"))])


def fit_tfidf(train: list[Example], val: list[Example], C_grid: tuple[float, ...] = C_GRID) -> TfidfBaseline:
    """Fit one pipeline per C on `train`, keep the one with the best accuracy on `val` (ties: the smaller C,
    the stronger regularisation). Seconds on a CPU for a few thousand messages."""
    if not train or not val:
        raise ValueError("fit_tfidf needs training and validation examples (got "
                         f"{len(train)} and {len(val)})")
    if len({ex.label for ex in train}) < 2:
        raise ValueError("fit_tfidf needs at least two classes among the training labels")
    if not C_grid or min(C_grid) <= 0:
        raise ValueError(f"every C must be positive (the inverse regularisation strength), got {C_grid}")
    texts, labels = [ex.text for ex in train], [ex.label for ex in train]
    scores, fitted = {}, {}
    for C in sorted(C_grid):
        pipeline = _pipeline(C).fit(texts, labels)
        predicted = pipeline.predict([ex.text for ex in val])
        scores[C] = float(np.mean(predicted == np.array([ex.label for ex in val])))
        fitted[C] = pipeline
    best = max(sorted(scores), key=lambda c: (scores[c], -c))  # best accuracy; ties to the smaller C
    return TfidfBaseline(pipeline=fitted[best], C=best, val_accuracy=scores[best], val_accuracy_by_C=scores)


def versus_tfidf(accuracy: float, tfidf_accuracy: float) -> str:
    """How a model stands against the TF-IDF baseline, in words, from two accuracies (fractions) on the same split.
    Within 0.5 points (one or two messages in a few hundred) counts as level."""
    points = 100 * (accuracy - tfidf_accuracy)
    if abs(points) < 0.5:
        return f"level with TF-IDF ({points:+.2f} points)"
    return f"{'ahead of' if points > 0 else 'behind'} TF-IDF by {abs(points):.2f} points"


__all__ = ["C_GRID", "TfidfBaseline", "fit_tfidf", "versus_tfidf"]
