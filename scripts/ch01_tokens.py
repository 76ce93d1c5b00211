"""Chapter 1 script: text to tokens (notebooks/01_text_to_tokens.ipynb) from the command line.

    python scripts/ch01_tokens.py "Hello, world. Is this-- a test?"      # ids and token pieces
    python scripts/ch01_tokens.py --special "a <|endoftext|> b"          # <|endoftext|> as the special token
    python scripts/ch01_tokens.py --decode 15496 11 995                  # ids back to text

What it does, in order:
 1. Encodes each text with the offline GPT-2 tokenizer (gpt/tokenizer.py, built from data/gpt2.tiktoken;
    never tiktoken.get_encoding, which downloads) and prints the ids, one `id:piece` per token, and the
    decoded text (byte-level BPE is lossless: decode(encode(s)) == s). --decode does the reverse.
 2. Checks two reference sentences against GPT-2's known ids (the book's chapter 2 examples); a mismatch
    is an error (the vocabulary file is not GPT-2's).
 3. Counts the GPT-2 tokens of every message of the SMS Spam Collection and plots the length histogram by
    label (--out/01_sms_token_lengths.png): the spam classifier pads to the longest training message, so this
    is the width of every batch in chapter 7.
"""

from __future__ import annotations

import json
from pathlib import Path

from classify.data import SMS_SPAM_FILE, SMS_SPAM_LABELS, load_sms_spam
from common.cli import ArgumentParser, run_main
from common.files import atomic_write
from gpt.device import add_device_argument, pick_device
from gpt.tokenizer import END_OF_TEXT, END_OF_TEXT_ID, get_tokenizer
from plots.figures import new_figure, save_figure

ROOT = Path(__file__).resolve().parent.parent

# GPT-2's ids for two sentences of the book (chapter 2); tests/test_tokenizer.py checks them against tiktoken.
REFERENCE_IDS = {
    "Hello, world. Is this-- a test?": [15496, 11, 995, 13, 1148, 428, 438, 257, 1332, 30],
    "Hello, do you like tea? <|endoftext|> In the sunlit terraces of someunknownPlace.":
        [15496, 11, 466, 345, 588, 8887, 30, 220, 50256, 554, 262, 4252, 18250, 8812, 2114, 286, 617,
         34680, 27271, 13],
}


def encode(tokenizer, text: str, special: bool) -> list[int]:
    """GPT-2 ids of `text`. special=True: a literal "<|endoftext|>" is the special token 50256;
    special=False: it is ordinary text (7 tokens), which is how chapter 7 reads SMS messages."""
    if special:
        return tokenizer.encode(text, allowed_special={END_OF_TEXT})
    return tokenizer.encode(text, disallowed_special=())


def token_piece(tokenizer, token_id: int) -> str:
    """What one token stands for, printable: its text, or its raw bytes when they are not valid UTF-8
    on their own (a multi-byte character split over two tokens)."""
    raw = tokenizer.decode_single_token_bytes(token_id)
    try:
        return repr(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return repr(raw)


def describe_text(tokenizer, text: str, special: bool) -> dict:
    ids = encode(tokenizer, text, special)
    decoded = tokenizer.decode(ids)
    if decoded != text:  # cannot happen for byte-level BPE; checked because the chapter claims it
        raise AssertionError(f"decode(encode(text)) != text for {text!r}")
    return {"text": text, "ids": ids, "pieces": [token_piece(tokenizer, i) for i in ids]}


def check_reference_ids(tokenizer) -> None:
    for text, expected in REFERENCE_IDS.items():
        got = encode(tokenizer, text, special=True)
        if got != expected:
            raise ValueError(f"the tokenizer gives {got} for {text!r}, GPT-2 gives {expected}: "
                             f"is data/gpt2.tiktoken GPT-2's vocabulary?")


def sms_token_lengths(tokenizer, path) -> dict[str, list[int]]:
    """{label name: [tokens per message]} for every message of the SMS Spam Collection."""
    messages = load_sms_spam(path)
    counts = [len(ids) for ids in tokenizer.encode_ordinary_batch([m.text for m in messages])]
    names = {index: name for name, index in SMS_SPAM_LABELS.items()}
    out: dict[str, list[int]] = {name: [] for name in SMS_SPAM_LABELS}
    for m, n in zip(messages, counts):
        out[names[m.label]].append(n)
    return out


def length_stats(lengths: list[int]) -> dict:
    import numpy as np

    a = np.asarray(lengths)
    return {"messages": int(a.size), "median": float(np.median(a)), "mean": round(float(a.mean()), 2),
            "p95": float(np.percentile(a, 95)), "max": int(a.max())}


def plot_lengths(lengths: dict[str, list[int]], path: Path, clip: int = 128) -> Path:
    import numpy as np

    fig, ax = new_figure(figsize=(6, 3.5), dpi=100)
    bins = np.arange(0, clip + 4, 4)
    for (name, values), color in zip(lengths.items(), ("tab:blue", "tab:red")):
        ax.hist(np.clip(values, 0, clip), bins=bins, density=True, alpha=0.55, color=color,
                label=f"{name} ({len(values):,} messages, max {max(values)})")
    ax.set_xlabel(f"GPT-2 tokens per message (clipped at {clip})")
    ax.set_ylabel("fraction of messages per token")
    ax.set_title("SMS Spam Collection: message length in tokens")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)
    return path


def build_parser() -> ArgumentParser:
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("texts", nargs="*", default=["Hello, world. Is this-- a test?", "LoRA on a laptop CPU"],
                   help="texts to encode (with --decode: token ids to decode)")
    p.add_argument("--decode", action="store_true", help="the arguments are token ids: print their text")
    p.add_argument("--special", action="store_true",
                   help=f"read a literal {END_OF_TEXT} in the texts as the special token {END_OF_TEXT_ID}")
    p.add_argument("--data", default=str(SMS_SPAM_FILE), help="the SMSSpamCollection file for the histogram")
    p.add_argument("--no-plot", action="store_true", help="skip the SMS token-length histogram")
    p.add_argument("--out", default=str(ROOT / "runs" / "ch01"), help="folder for the PNG and results.json")
    add_device_argument(p, note="Accepted so that every chapter script takes the same flag: this one computes "
                                "nothing with torch (tokenising and counting are plain Python), so the device is "
                                "only checked and recorded in results.json")
    return p


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    device = pick_device(args.device)  # a device that does not exist is an error here too
    tokenizer = get_tokenizer()
    result: dict = {"vocab_size": tokenizer.n_vocab, "device": str(device)}

    if args.decode:
        try:
            ids = [int(t) for t in args.texts]
        except ValueError:
            raise ValueError(f"--decode expects integer token ids, got {args.texts}") from None
        bad = [i for i in ids if not 0 <= i < tokenizer.n_vocab]
        if bad:
            raise ValueError(f"token ids must be in [0, {tokenizer.n_vocab}), got {bad}")
        text = tokenizer.decode(ids)
        print(f"{ids} -> {text!r}")
        print("  " + " | ".join(f"{i}:{token_piece(tokenizer, i)}" for i in ids))
        result["decoded"] = text
    else:
        result["encoded"] = []
        for text in args.texts:
            d = describe_text(tokenizer, text, args.special)
            result["encoded"].append(d)
            print(f"{text!r}: {len(text)} characters -> {len(d['ids'])} tokens")
            print(f"  ids:    {d['ids']}")
            print("  pieces: " + " | ".join(f"{i}:{p}" for i, p in zip(d["ids"], d["pieces"])))

    check_reference_ids(tokenizer)
    print(f"reference ids: the {len(REFERENCE_IDS)} book sentences give GPT-2's ids (vocabulary {tokenizer.n_vocab:,}, "
          f"{END_OF_TEXT} = {END_OF_TEXT_ID})")
    result["reference_ids_ok"] = True

    out = Path(args.out)
    if not args.no_plot:
        lengths = sms_token_lengths(tokenizer, args.data)
        result["sms_lengths"] = {name: length_stats(v) for name, v in lengths.items()}
        for name, s in result["sms_lengths"].items():
            print(f"{name:4}: {s['messages']:5,} messages, tokens per message: median {s['median']:.0f}, "
                  f"mean {s['mean']:.1f}, 95th percentile {s['p95']:.0f}, max {s['max']}")
        png = plot_lengths(lengths, out / "01_sms_token_lengths.png")
        result["figures"] = [str(png)]
        print(f"saved {png}")
    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(out / "results.json") as tmp:
        tmp.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    run_main(main)
