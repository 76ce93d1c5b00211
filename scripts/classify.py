"""Classify new text with a fine-tuned spam classifier (written by scripts/finetune_spam.py).

    python scripts/classify.py --adapter runs/spam-lora "Congratulations! You have won a free cruise. Call now to claim your prize"
    spam (p=1.00)	Congratulations! You have won a free cruise. Call now to claim your prize
    cat messages.txt | python scripts/classify.py --adapter runs/spam-lora     # one text per line

The folder holds classifier.json (which base model, attention layout, labels, padding length)
and the trained weights: a LoRA adapter (adapter.safetensors + adapter_config.json, re-applied
to the base with its saved settings, the base checked against the adapter's fingerprint) or,
for full / last-block / head fine-tuning, classifier.safetensors.

Each text gets one line: the predicted label, its probability, the text. A text longer than the
longest training message (the padding length) is cut to that many tokens, keeping its start, as
in training, and the line says so.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from classify.base import load_base  # noqa: E402
from classify.model import add_classification_head, predict_texts  # noqa: E402
from gpt.device import add_device_argument, pick_device  # noqa: E402

CLASSIFIER_FILE = "classifier.json"
FORMAT = "lora-from-scratch/spam-classifier"


def load_classifier(folder: str | Path, base: str | None = None, device="cpu"):
    """(model in eval mode, classifier.json dict) from a folder written by finetune_spam.py.
    base: use this base model instead of the one recorded (it must be the same model)."""
    folder = Path(folder)
    info_path = folder / CLASSIFIER_FILE
    if not info_path.is_file():
        raise FileNotFoundError(f"{info_path} not found: is {folder} a folder written by scripts/finetune_spam.py?")
    try:
        info = json.loads(info_path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{info_path} is not valid JSON: {err}") from None
    if info.get("format") != FORMAT:
        raise ValueError(f"{info_path} is not a {FORMAT} file (format {info.get('format')!r})")
    model = load_base(base or info["base"], attention=info["attention"], drop_rate=0.0, seed=info["base_seed"])
    if info["method"] == "lora":
        from lora import load_adapter

        # Re-applies LoRA with the saved settings, restores the 2-class head, and raises ValueError
        # when this base is not the one the adapter was trained on (config or weights fingerprint).
        load_adapter(model, folder)
    else:
        from safetensors.torch import load_file

        add_classification_head(model, num_classes=len(info["labels"]))
        tensors = load_file(str(folder / info["weights"]))
        expected = dict(model.named_parameters())
        unknown = sorted(set(tensors) - set(expected))
        if unknown:
            raise ValueError(f"{folder / info['weights']} does not fit the base {info['base']}: unknown tensors {unknown[:5]}")
        for name, t in tensors.items():
            if t.shape != expected[name].shape:
                raise ValueError(f"{folder / info['weights']}: {name} has shape {tuple(t.shape)}, the base "
                                 f"{info['base']} expects {tuple(expected[name].shape)}")
        model.load_state_dict(tensors, strict=False)
    return model.to(device).eval(), info


def classify_texts(model, info: dict, texts: list[str]) -> list[dict]:
    """[{label, p, truncated, tokens}] for each text: softmax over the classes at the last token,
    computed on the model's device."""
    limit = min(int(info["max_length"]), model.cfg.context_length)
    results = []
    for probs, truncated, n_tokens in predict_texts(model, texts, limit):
        k = int(probs.argmax())
        results.append({"label": info["labels"][k], "p": float(probs[k]), "truncated": truncated, "tokens": n_tokens})
    return results


def format_result(r: dict, text: str) -> str:
    cut = f"  [truncated to its first {r['tokens']} tokens]" if r["truncated"] else ""
    shown = text if len(text) <= 80 else text[:77] + "..."
    return f"{r['label']} (p={r['p']:.2f}){cut}\t{shown}"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("texts", nargs="*", help="texts to classify; none (or -): read one text per line from stdin")
    p.add_argument("--adapter", default=str(ROOT / "runs" / "spam-lora"),
                   help="folder written by scripts/finetune_spam.py (LoRA adapter or trained weights + classifier.json)")
    p.add_argument("--base", default=None, help="base model to use instead of the one in classifier.json")
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
    main()
