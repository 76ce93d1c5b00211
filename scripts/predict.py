"""Classify new text with a fine-tuned spam classifier (written by scripts/finetune_spam.py).

    python scripts/predict.py --adapter runs/spam-lora "Congratulations! You have won a free cruise. Call now to claim your prize"
    spam (p=1.00)	Congratulations! You have won a free cruise. Call now to claim your prize
    cat messages.txt | python scripts/predict.py --adapter runs/spam-lora     # one text per line

The folder holds classifier.json (which base model, attention layout, labels, padding length, a
fingerprint of the base weights) and the trained weights: a LoRA adapter (adapter.safetensors +
adapter_config.json, re-applied to the base with its saved settings) or, for full / last-block / head
fine-tuning, classifier.safetensors. classify/saved.py reads it and checks the base against the
fingerprint, whatever the method.

Each text gets one line: the predicted label, its probability, the text. A text longer than the
longest training message (the padding length) is cut to that many tokens, keeping its start, as
in training, and the line says so. A missing or damaged folder is refused in one line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from classify.saved import classify_texts, format_result, load_classifier
from common.cli import ArgumentParser, run_main
from gpt.device import add_device_argument, pick_device

ROOT = Path(__file__).resolve().parent.parent


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("texts", nargs="*", help="texts to classify; none (or -): read one text per line from stdin")
    p.add_argument("--adapter", default=str(ROOT / "runs" / "spam-lora"),
                   help="folder written by scripts/finetune_spam.py (LoRA adapter or trained weights + classifier.json)")
    p.add_argument("--base", default=None,
                   help="base model to use instead of the one in classifier.json (it must be the same: fingerprint checked)")
    add_device_argument(p)
    return p


def main(argv=None) -> list[dict]:
    args = build_parser().parse_args(argv)
    device = pick_device(args.device)  # a device that does not exist: an error before reading stdin
    texts = args.texts
    if not texts or texts == ["-"]:
        texts = [line.rstrip("\r\n") for line in sys.stdin]
        texts = [t for t in texts if t.strip()]  # blank lines are not texts
        if not texts:
            raise ValueError("no texts given: pass them as arguments or one per line on stdin")
    for i, t in enumerate(texts):
        if not t.strip():
            raise ValueError(f"text {i + 1} is empty: there is nothing to classify")
    model, info = load_classifier(args.adapter, args.base, device)
    results = classify_texts(model, info, texts)
    for r, t in zip(results, texts):
        print(format_result(r, t))
    return results


if __name__ == "__main__":
    run_main(main)
