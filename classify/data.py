"""Labelled text data sets: the SMS Spam Collection and the sentiment sentences.

Files are read strictly: every line must be `label<TAB>text` (spam) or `text<TAB>label`
(sentiment); a broken line, an unknown label or an empty text is an error that names the
file and line, never a silently dropped example.

The spam split follows the book (chapter 6): undersample "ham" to the number of "spam"
messages (747) with seed 123, shuffle with seed 123, split 70 % / 10 % / 20 %. The random
draws are numpy RandomState(seed) choices, which is what pandas' `DataFrame.sample(...,
random_state=123)` uses, so the procedure is the book's on the same file.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
SMS_SPAM_FILE = DATA_DIR / "sms_spam" / "SMSSpamCollection"
SMS_SPAM_SHA256 = "7d039a24a6083ed9ef0f806ebad56bbb976e3aeb8de05669173bfdc4996c239d"
SMS_SPAM_LABELS = {"ham": 0, "spam": 1}
SENTIMENT_DIR = DATA_DIR / "sentiment"
SENTIMENT_FILES = ("amazon_cells_labelled.txt", "imdb_labelled.txt", "yelp_labelled.txt")
SENTIMENT_LABELS = {"0": 0, "1": 1}  # negative, positive


@dataclass(frozen=True)
class Example:
    text: str
    label: int  # class index


def read_labelled_tsv(path: str | Path, labels: dict[str, int], label_column: int) -> list[Example]:
    """Read `label<TAB>text` (label_column=0) or `text<TAB>label` (label_column=1) lines."""
    path = Path(path)
    layout = "label<TAB>text" if label_column == 0 else "text<TAB>label"
    if path.is_dir():
        raise IsADirectoryError(f"data file {path} is a folder: give the file itself, one {layout} line per "
                                f"example, UTF-8" + (" (e.g. data/sms_spam/SMSSpamCollection)" if label_column == 0 else ""))
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    examples = []
    with open(path, "rb") as f:
        for line_number, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as err:
                raise ValueError(f"{path}:{line_number}: not UTF-8 text (byte 0x{raw[err.start]:02x} at column "
                                 f"{err.start + 1}); save the file as UTF-8") from None
            if not line.strip():
                continue  # blank lines (e.g. a trailing newline) carry no example
            parts = line.split("\t")
            if len(parts) != 2:
                raise ValueError(f"{path}:{line_number}: expected two tab-separated fields, got {len(parts)}: {line[:80]!r}")
            label, text = parts[label_column].strip(), parts[1 - label_column].strip()
            if label == "":
                raise ValueError(f"{path}:{line_number}: missing label")
            if label not in labels:
                raise ValueError(f"{path}:{line_number}: unknown label {label!r}; expected one of {sorted(labels)}")
            if text == "":
                raise ValueError(f"{path}:{line_number}: empty text")
            examples.append(Example(text, labels[label]))
    if not examples:
        raise ValueError(f"{path}: no examples in the file")
    found = sorted({ex.label for ex in examples})
    if len(found) < 2:
        names = [name for name, index in labels.items() if index in found]
        raise ValueError(f"{path}: every example has the label {names[0]!r} (only one class); a classifier needs "
                         f"examples of each of {sorted(labels)}")
    return examples


def load_sms_spam(path: str | Path = SMS_SPAM_FILE) -> list[Example]:
    """All 5,574 messages of the SMS Spam Collection v.1 (label 1 = spam), in file order."""
    return read_labelled_tsv(path, SMS_SPAM_LABELS, label_column=0)


def load_sentiment(directory: str | Path = SENTIMENT_DIR) -> list[Example]:
    """The 3,000 Amazon/IMDb/Yelp sentences (label 1 = positive), in file order."""
    examples = []
    for name in SENTIMENT_FILES:
        examples += read_labelled_tsv(Path(directory) / name, SENTIMENT_LABELS, label_column=1)
    return examples


def balance_by_undersampling(examples: list[Example], seed: int = 123) -> list[Example]:
    """Keep every example of the rarest class and the same number, drawn at random, of each other
    class. Order: the drawn examples of each larger class first, then the rarest class (the book's
    `pd.concat([ham_subset, spam])`)."""
    by_label: dict[int, list[Example]] = {}
    for ex in examples:
        by_label.setdefault(ex.label, []).append(ex)
    n_min = min(len(v) for v in by_label.values())
    rarest = min(by_label, key=lambda k: len(by_label[k]))
    out = []
    for label in sorted(by_label):
        if label == rarest:
            continue
        rows = np.random.RandomState(seed).choice(len(by_label[label]), size=n_min, replace=False)
        out += [by_label[label][i] for i in rows]
    return out + by_label[rarest]


def random_split(examples: list, train_frac: float = 0.7, val_frac: float = 0.1, seed: int = 123):
    """Shuffle with `seed`, then cut into train / validation / test (the rest)."""
    if not (0 < train_frac < 1 and 0 <= val_frac < 1 and train_frac + val_frac <= 1):
        raise ValueError(f"bad split fractions train={train_frac}, val={val_frac}")
    order = np.random.RandomState(seed).choice(len(examples), size=len(examples), replace=False)
    shuffled = [examples[i] for i in order]
    train_end = int(len(shuffled) * train_frac)
    val_end = train_end + int(len(shuffled) * val_frac)
    return shuffled[:train_end], shuffled[train_end:val_end], shuffled[val_end:]


def spam_splits(path: str | Path = SMS_SPAM_FILE, seed: int = 123) -> dict[str, list[Example]]:
    """The book's balanced spam data set: {"train": 1045, "val": 149, "test": 300} examples."""
    train, val, test = random_split(balance_by_undersampling(load_sms_spam(path), seed), 0.7, 0.1, seed)
    return {"train": train, "val": val, "test": test}


def unlabelled_sms_for_pretraining(path: str | Path = SMS_SPAM_FILE, seed: int = 123) -> list[str]:
    """SMS texts that may be used for domain-adaptive pre-training without leaking evaluation data:
    every message of the collection (labels dropped) whose text is not in the validation or test
    split (exact duplicates of evaluation messages are removed too)."""
    splits = spam_splits(path, seed)
    held_out = {ex.text for ex in splits["val"] + splits["test"]}
    return [ex.text for ex in load_sms_spam(path) if ex.text not in held_out]


def sha256_of(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ----------------------------------------------------------------------------- download (only when asked)

SMS_SPAM_URL = "https://archive.ics.uci.edu/static/public/228/sms+spam+collection.zip"
SMS_SPAM_MEMBER = "SMSSpamCollection"  # the data file inside the archive (beside a `readme`)


def download_sms_spam(dest_dir: str | Path = SMS_SPAM_FILE.parent, url: str = SMS_SPAM_URL,
                      expected_sha256: str = SMS_SPAM_SHA256, progress: bool = True) -> Path:
    """Fetch the official UCI archive, extract `SMSSpamCollection` into `dest_dir`, check its sha256.

    The project ships the file in data/sms_spam/, so this is never called by the chapters or the
    tests; it is here so that anyone can check where the file came from. Steps:
      1. stream the zip into a temporary file in `dest_dir` (gpt.download.download_file: tqdm bar,
         atomic rename, RuntimeError naming the URL when there is no network),
      2. read the `SMSSpamCollection` member and check its sha256 against SMS_SPAM_SHA256,
      3. write it atomically (common.files: a temporary file in `dest_dir`, then os.replace),
    so `dest_dir/SMSSpamCollection` only ever exists complete and verified. Returns its path.
    """
    import zipfile

    from common.files import atomic_write_bytes, temp_name
    from gpt.download import download_file

    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    zip_tmp = dest_dir / temp_name("sms-spam-collection.zip")  # scratch; an orphan is cleaned like any temp file
    try:
        # download_file raises gpt.download.OfflineError (a RuntimeError) when offline.
        download_file(url, zip_tmp, progress=progress)
        try:
            with zipfile.ZipFile(zip_tmp) as archive:
                names = archive.namelist()
                if SMS_SPAM_MEMBER not in names:
                    raise ValueError(f"{url}: the archive has no {SMS_SPAM_MEMBER!r} (it holds {names})")
                data = archive.read(SMS_SPAM_MEMBER)
        except zipfile.BadZipFile as err:
            raise ValueError(f"{url} did not return a zip archive: {err}") from err
    finally:
        Path(zip_tmp).unlink(missing_ok=True)
    actual = hashlib.sha256(data).hexdigest()
    if expected_sha256 is not None and actual != expected_sha256:
        raise ValueError(f"{url}: {SMS_SPAM_MEMBER} has sha256 {actual}, expected {expected_sha256}; "
                         f"the download is corrupt or the file changed upstream; nothing was written")
    return atomic_write_bytes(dest_dir / SMS_SPAM_MEMBER, data)
