"""The pre-training corpus of chapter 4: public-domain novels (and SMS messages the caller gives), split into
training and validation text.

    from classify.data import unlabelled_sms_for_pretraining
    from gpt.corpus import build_corpus
    train, val, described = build_corpus("novels+sms", sms_repeat=4, seed=123, sms=unlabelled_sms_for_pretraining())

The novels are the nine Project Gutenberg books and "The Verdict" in data/pretrain/; the last 10 % of each
(in characters) is held out for the validation loss. The SMS messages are the caller's (scripts/pretrain.py
passes those of data/sms_spam/ that are NOT in the spam classifier's validation or test split): gpt/ knows
nothing of the classification task, it only shuffles them with `seed` and holds out 10 %.
"""

from __future__ import annotations

import random
from pathlib import Path

PRETRAIN_DIR = Path(__file__).resolve().parent.parent / "data" / "pretrain"
CORPORA = ("novels+sms", "novels", "sms", "verdict")  # scripts/pretrain.py --corpus
TRAIN_FRACTION = 0.9  # of every novel (in characters) and of the SMS messages; the rest is validation text


def build_corpus(corpus: str, sms_repeat: int, seed: int, sms: list[str] | None = None):
    """Return (train_texts, val_texts, described): lists of strings, and what went in (file names and a line
    about the SMS messages). corpus: one of CORPORA; "novels+sms" and "sms" need `sms`, whose training part
    is repeated sms_repeat times."""
    if corpus not in CORPORA:
        raise ValueError(f"unknown corpus {corpus!r}; choose one of {CORPORA}")
    novels = sorted(PRETRAIN_DIR.glob("pg*.txt")) + [PRETRAIN_DIR / "the-verdict.txt"]
    if corpus == "verdict":
        novels = [PRETRAIN_DIR / "the-verdict.txt"]
    if corpus == "sms":
        novels = []
    train, val = [], []
    for path in novels:
        text = path.read_text(encoding="utf-8").replace("\r\n", "\n")
        cut = int(TRAIN_FRACTION * len(text))
        train.append(text[:cut])
        val.append(text[cut:])
    described = [p.name for p in novels]
    if corpus in ("novels+sms", "sms"):
        if sms is None:
            raise ValueError(f"corpus {corpus!r} needs the SMS messages: pass sms= (scripts/pretrain.py passes "
                             f"classify.data.unlabelled_sms_for_pretraining())")
        sms = list(sms)
        random.Random(seed).shuffle(sms)
        cut = int(TRAIN_FRACTION * len(sms))
        train += sms[:cut] * sms_repeat
        val += sms[cut:]
        described.append(f"{len(sms)} SMS messages not in the spam val/test split ({cut} train x{sms_repeat}, "
                         f"{len(sms) - cut} val)")
    return train, val, described
