"""Exercise 7.4: confusion matrix, precision and recall at several thresholds, on made-up probabilities."""

from otter.test_files import test_case

from checks._guard import answer, close, keys, require

OK_FORMAT = False
name = "ex7_4"
points = 1

# Made-up probabilities with values exactly at the thresholds: ">= threshold" means spam.
P = [0.99, 0.95, 0.6, 0.4, 0.995, 0.2, 0.92, 0.05, 0.5, 0.9, 0.5, 0.999]
Y = [1, 1, 1, 1, 0, 0, 0, 0, 1, 0, 0, 1]


@test_case(points=1)
def ex7_4(env):
    for thresholds in ((0.3, 0.95), (0.5, 0.92, 0.99)):
        result = answer(env, "exercise_7_4", list(P), list(Y), thresholds, returns=dict,
                        expects="a dict {threshold: {'tp', 'fp', 'fn', 'tn', 'precision', 'recall', 'accuracy'}}")
        call = f"exercise_7_4(p_spam, labels, {thresholds})"
        keys(result, set(thresholds), call, " (one entry per threshold)")
        for t in thresholds:
            got = result[t]
            require(isinstance(got, dict), f"{call}[{t}] should be a dict, not {type(got).__name__}.")
            keys(got, {"tp", "fp", "fn", "tn", "precision", "recall", "accuracy"}, f"{call}[{t}]")
            flagged = [p >= t for p in P]
            counts = {"tp": sum(f and y for f, y in zip(flagged, Y)), "fp": sum(f and not y for f, y in zip(flagged, Y)),
                      "fn": sum(y and not f for f, y in zip(flagged, Y)),
                      "tn": sum(not f and not y for f, y in zip(flagged, Y))}
            for k, v in counts.items():
                require(got[k] == v, f"{call}[{t}]['{k}'] = {got[k]!r} is not right; hint: count the messages "
                                     f"flagged at THIS threshold (the statement says when a message is flagged), "
                                     f"and read the probabilities you were given.")
            tp, fp, fn, tn = (counts[k] for k in ("tp", "fp", "fn", "tn"))
            require(close(got["precision"], tp / (tp + fp)) and close(got["recall"], tp / (tp + fn))
                    and close(got["accuracy"], (tp + tn) / len(P)),
                    f"{call}[{t}]: precision {got['precision']!r}, recall {got['recall']!r} or accuracy "
                    f"{got['accuracy']!r} is not right; hint: precision asks about the flagged messages, recall "
                    f"about the spam ones, accuracy about all of them; each is a fraction, not a percentage.")
