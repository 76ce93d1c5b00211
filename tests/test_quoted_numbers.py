"""Every number a notebook's text quotes is a number its code printed (or a results file holds).

The committed notebooks carry the outputs of a full run, so the prose can be checked against them.

The markup, in a notebook's markdown cells:

* A number (or a short piece of output text) the prose takes from an output is wrapped
  ``<span class="q">61.7 %</span>``; Jupyter and GitHub render it as plain text. The wrapped text must
  appear verbatim in the text output of a code cell of the same notebook (whitespace runs count as one
  space, "61.7 %" matches "61.7%", and a number must not be part of a longer number: "0.5" does not
  match "0.56").
* ``<span class="q" data-src="results/xyz.json">97.11 %</span>``: the number must equal a number in that
  file (a JSON file, path from the repository root) within the rounding written (97.11 -> +-0.005);
  a fraction in the file counts as its percentage too (0.9711 for "97.11 %").
* A number that is not measured (a definition, a choice, the book's or a paper's number, arithmetic the
  reader can redo) is listed in the notebook's metadata with its source:
  ``"quoted_constants": {"50,257": "GPT-2's vocabulary size (definition)", ...}``.

The lint: any other number in markdown that looks measured must be wrapped or listed: a percentage, a
decimal with two or more digits after the point, a size (KB, MB, GiB, bytes), a time (s, ms, min,
minutes, hours), a count with a thousands separator (LaTeX's ``{,}`` counts), an amount of money (£, €).
Inline code (backticks), section numbers ("## 3.10", "chapter 7.6"), arXiv numbers and an exercise's
expected minutes ("★★ · 15 min") are exempt: they are not measurements. Vague quantity words ("most", "roughly",
"about" before a quantity, "almost", "nearly", "approximately", "well under/over/below/above", "exactly"
before a quantity, "coin toss", "far more/less/below/from/...") are allowed only in a sentence that
also has a wrapped number: say the number.

Run ``python tests/test_quoted_numbers.py notebooks/06_lora_layers.ipynb`` to list what a notebook
still needs. The planted tests below put sentences that once stood in the notebooks (and were wrong)
into copies of the notebooks and assert the checker flags each of them.
"""

from __future__ import annotations

import copy
import html
import json
import re
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))

SPAN = re.compile(r'<span class="q"(?:\s+data-src="([^"]*)")?\s*>(.*?)</span>', re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")
FENCED_CODE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
INDENTED_CODE = re.compile(r"(?:^|\n\n)((?: {4}.*(?:\n|$))+)")
LINK_TARGET = re.compile(r"\]\([^)]*\)")
# Section numbers are not measurements: "## 3.10 ...", "chapter 7.6", "notebook 4.4", "section 4.2".
SECTION_NUMBER = re.compile(r"^(#+\s*)\d+(?:\.\d+)+|\b((?:[Cc]hapter|[Ss]ection|[Nn]otebook)s?\s+)\d+(?:\.\d+)+",
                            re.MULTILINE)
# A paper's arXiv number is an identifier: "arXiv:2106.09685".
ARXIV_ID = re.compile(r"arXiv:\s*\d{4}\.\d{4,5}(?:v\d+)?", re.IGNORECASE)
# An exercise's label gives its difficulty and the expected minutes, an estimate: "**Exercise 2.4** ★★ · 15 min."
EXERCISE_LABEL = re.compile(r"(★+)\s*·\s*\d+\s*min\b")
PLACEHOLDER = "\u27e6Q\u27e7"  # stands for a wrapped number once its span has been checked

NUM = r"\d+(?:,\d{3})*(?:\.\d+)?"
MEASURED = [
    ("percentage", re.compile(rf"(?<![\w.]){NUM}\s?(?:\\?%|percent\b)")),
    ("decimal", re.compile(r"(?<![\w.])\d+\.\d{2,}(?![\d.]*\d)")),
    ("size", re.compile(rf"(?<![\w.]){NUM}\s?(?:[KMGT]i?B|kB|bytes?)\b(?!\s*(?:strings?|tokens?)\b|-)")),
    ("time", re.compile(rf"(?<![\w.]){NUM}\s?(?:ms|µs|s|sec|seconds?|min|minutes?|h|hours?)(?![\w-])")),
    ("thousands", re.compile(r"(?<![\w.])\d{1,3}(?:,\d{3})+(?![\d])")),
    ("money", re.compile(r"[£€]\s?\d")),
]
QUANTITY = r"(?:\$?\d|a |an |one\b|two\b|three\b|four\b|five\b|ten\b|half\b|twice\b|the same\b|chance\b)"
VAGUE = [
    re.compile(r"(?<!\bthe )(?<!\bat )\bmost\b(?! likely)", re.IGNORECASE),
    re.compile(r"\b(?:roughly|almost|nearly|approximately|coin toss)\b", re.IGNORECASE),
    re.compile(r"\bwell (?:under|over|below|above)\b", re.IGNORECASE),
    re.compile(rf"\babout {QUANTITY}", re.IGNORECASE),
    re.compile(r"\bexactly (?:\w+ )?(?:\$?\d|half\b|twice\b|the same\b|that\b|chance\b)", re.IGNORECASE),
    re.compile(r"\b(?:by far|far (?:from|more|less|fewer|better|worse|below|above|behind|ahead|larger|smaller|too))\b",
               re.IGNORECASE),
]
SENTENCE_BREAK = re.compile(r"\n\s*\n|\n(?=\s*(?:[*-] |\d+\. |\||#))|(?<=[.!?])\s+(?=[A-Z*(\[\"$])")


def normalise(text: str) -> str:
    """Whitespace runs to one space, LaTeX's {,} to a comma, no space before a percent sign."""
    text = html.unescape(text).replace("{,}", ",").replace("\\%", "%")
    return re.sub(r"\s+%", "%", re.sub(r"\s+", " ", text)).strip()


def cell_outputs(nb) -> str:
    """All text the notebook's code cells printed or displayed, normalised."""
    parts = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                parts.append(out.get("text", ""))
            for mime in ("text/plain", "text/markdown"):
                value = out.get("data", {}).get(mime)
                if value:
                    parts.append(value if isinstance(value, str) else "".join(value))
    return normalise("\n".join(parts))


def appears_in(needle: str, haystack: str) -> bool:
    """`needle` occurs in `haystack`, and a number at either end of it is not part of a longer number."""
    before = r"(?<![\d.])" if needle[:1].isdigit() else ""
    after = r"(?![\d]|\.\d)" if needle[-1:].isdigit() else ""
    return re.search(before + re.escape(needle) + after, haystack) is not None


def numbers_in_json(value):
    if isinstance(value, bool):
        return
    if isinstance(value, (int, float)):
        yield float(value)
    elif isinstance(value, dict):
        for v in value.values():
            yield from numbers_in_json(v)
    elif isinstance(value, list):
        for v in value:
            yield from numbers_in_json(v)


def check_source(text: str, src: str) -> str | None:
    """None if the number in `text` is in the JSON file `src` within its written rounding, else the problem."""
    path = ROOT / src
    if not path.is_file():
        return f"data-src file {src} does not exist"
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        return f"data-src file {src} is not JSON ({exc})"
    match = re.search(NUM, text)
    if match is None:
        return f"no number in {text!r} to compare with {src}"
    written = match.group(0).replace(",", "")
    value = float(written)
    tol = 0.5 * 10 ** -(len(written.split(".")[1]) if "." in written else 0) + 1e-12
    is_percent = "%" in text[match.end():match.end() + 3]
    for x in numbers_in_json(data):
        if abs(x - value) <= tol or (is_percent and abs(100 * x - value) <= tol):
            return None
    return f"{text!r} matches no number in {src} to the rounding written (+-{tol:g})"


def sentences(text: str):
    return [s for s in SENTENCE_BREAK.split(text) if s and s.strip()]


def check_notebook(nb) -> list[str]:
    """Every problem the quoted-numbers rules find in a notebook, as 'cell N: ...' lines."""
    problems = []
    outputs = cell_outputs(nb)
    constants = nb.metadata.get("quoted_constants", {})
    for key, source in constants.items():
        if not isinstance(source, str) or len(source.strip()) < 4:
            problems.append(f"metadata: quoted constant {key!r} needs its source (a book, paper, seed, definition)")
    constant_keys = {normalise(k) for k in constants}
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "markdown":
            continue
        text = FENCED_CODE.sub(" ", cell.source)
        text = INDENTED_CODE.sub("\n\n", text)

        def wrapped(match, i=i):
            src, inner = match.group(1), normalise(re.sub(r"<[^>]+>", "", match.group(2)))
            if not inner:
                problems.append(f"cell {i}: empty quoted span")
            elif src is not None:
                problem = check_source(inner, src)
                if problem:
                    problems.append(f"cell {i}: {problem}")
            elif not appears_in(inner, outputs):
                problems.append(f"cell {i}: quoted {inner!r} appears in no code cell's output")
            return PLACEHOLDER

        text = SPAN.sub(wrapped, text)
        text = LINK_TARGET.sub("]", INLINE_CODE.sub(" ", text))
        text = SECTION_NUMBER.sub(lambda m: m.group(1) or m.group(2), text)
        text = EXERCISE_LABEL.sub(r"\1", text)
        text = ARXIV_ID.sub("arXiv", text)
        for sentence in sentences(text):
            flat = normalise(sentence)
            for kind, pattern in MEASURED:
                for m in pattern.finditer(flat):
                    number = normalise(m.group(0))
                    if number in constant_keys:
                        continue
                    problems.append(f"cell {i}: unwrapped {kind} {number!r} in: {flat[:160]!r}")
            if PLACEHOLDER not in flat:
                for pattern in VAGUE:
                    m = pattern.search(flat)
                    if m:
                        problems.append(f"cell {i}: vague {m.group(0)!r} and no wrapped number in: {flat[:160]!r}")
                        break
    return list(dict.fromkeys(problems))  # a number matched by two patterns is reported once per kind


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_quoted_numbers(path):
    problems = check_notebook(nbformat.read(path, as_version=4))
    assert not problems, f"{path.name}:\n" + "\n".join(problems)


# --- the checker catches what it must ------------------------------------------------------------------

def _notebook(name: str):
    path = ROOT / "notebooks" / name
    if not path.is_file():
        pytest.skip(f"{name} not found")
    return nbformat.read(path, as_version=4)


def _with_cell(nb, markdown: str):
    planted = copy.deepcopy(nb)
    planted.cells.append(nbformat.v4.new_markdown_cell(markdown))
    return planted, len(planted.cells) - 1


# Sentences that once stood in the notebooks, with what a code cell printed at the time (in brackets).
PLANTS = {
    "ch4 c12: a continuation no cell shows": (
        "04_pretraining.ipynb",
        'Stage 2 was added because the classifier on the stage-1 base called a short prize message ham; after it, '
        'the base continues "Congratulations! You have been selected to" with "be a £1000 cash prize".'),
    "ch5 c11: 8 ranks capture most (relative error 0.56)": (
        "05_low_rank_math.ipynb",
        "A matrix with low-rank structure has a few large singular values, then a floor of noise: 8 ranks "
        "capture most of it and more ranks add little."),
    "ch6 c32: alpha/r roughly cancels": (
        "06_lora_layers.ipynb",
        "With AdamW each entry of $A$ and $B$ moves by about the learning rate per step whatever its gradient, "
        "so the update grows with $r$; dividing by $r$ roughly cancels that."),
    "ch7 c12: coin toss (61.7 %)": (
        "07_spam_lora.ipynb",
        "An untrained head on frozen features is a coin toss. Here is the validation accuracy before any training:"),
    "ch7 c2: all-ham scores exactly 50 % (47.0 / 49.7 %)": (
        "07_spam_lora.ipynb",
        'Balanced classes make accuracy easy to read: 50 % is chance, and a model that says "ham" to everything '
        "gets exactly that."),
    "ch8 c0: well under a megabyte (907 KB)": (
        "08_adapters_in_practice.ipynb",
        "Each task is a small adapter that is saved as a file of well under a megabyte, loaded onto the base, "
        "swapped for another, or merged into the weights for inference."),
    "ch8 c17: about 50 % (43.0 %)": (
        "08_adapters_in_practice.ipynb",
        "Each adapter on its own test set, and, as a sanity check, on the other task's test set, where its labels "
        "mean nothing (about 50 %, chance):"),
}


@pytest.mark.parametrize("plant", PLANTS, ids=list(PLANTS))
def test_checker_flags_old_sentences(plant):
    name, sentence = PLANTS[plant]
    nb, cell = _with_cell(_notebook(name), sentence)
    problems = [p for p in check_notebook(nb) if p.startswith(f"cell {cell}:")]
    assert problems, f"the checker missed: {sentence}"


def test_checker_flags_a_wrapped_number_no_output_shows():
    nb = _notebook("05_low_rank_math.ipynb")
    planted, cell = _with_cell(nb, 'The error at rank 8 is <span class="q">0.5</span>, at rank 16 '
                                   '<span class="q">0.123456</span>.')
    problems = [p for p in check_notebook(planted) if p.startswith(f"cell {cell}:")]
    assert len(problems) == 2 and all("appears in no code cell" in p for p in problems), problems


def test_checker_accepts_a_wrapped_number_an_output_shows():
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("print(...)", outputs=[nbformat.v4.new_output(
                    "stream", name="stdout", text="structured: relative error at r = 8: 0.56, r = 16: 0.52\n"
                                                 "test acc 95.7%  | 32,768 numbers\n")]),
                nbformat.v4.new_markdown_cell('At rank 8 the error is still <span class="q">0.56</span> of the '
                                              'norm, most of it; <span class="q">95.7 %</span> test accuracy; '
                                              '<span class="q">32,768</span> numbers.')]
    assert check_notebook(nb) == []
    nb.cells[1].source = nb.cells[1].source.replace("0.56", "0.5")  # a prefix of a printed number is not it
    assert len(check_notebook(nb)) == 1


def test_checker_compares_with_a_results_file(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    (tmp_path / "r.json").write_text(json.dumps({"runs": [{"test_accuracy": 0.97111}], "seconds": 45.2}))
    nb = nbformat.v4.new_notebook()
    ok = ('<span class="q" data-src="r.json">97.11 %</span> and <span class="q" data-src="r.json">45 s</span> '
          'and <span class="q" data-src="r.json">97.1 %</span>')
    nb.cells = [nbformat.v4.new_markdown_cell(ok)]
    assert check_notebook(nb) == []
    nb.cells = [nbformat.v4.new_markdown_cell('<span class="q" data-src="r.json">97.13 %</span>, '
                                              '<span class="q" data-src="r.json">44 s</span>, '
                                              '<span class="q" data-src="missing.json">1.0</span>')]
    problems = check_notebook(nb)
    assert len(problems) == 3 and "does not exist" in problems[2], problems


def test_checker_lint_kinds_and_constants():
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell(
        "It scored 96.3 % in 45 s, a loss of 0.049, a 907 KB file, 1,045 messages, £1000. "
        "`lr = 0.0008` is code. Rank $r = 8$ of 768. **Exercise 2.4** ★★ · 15 min. See chapter 7.6, arXiv:2106.09685.")]
    kinds = sorted(p.split("unwrapped ")[1].split(" ")[0] for p in check_notebook(nb))
    assert kinds == ["decimal", "money", "percentage", "size", "thousands", "time"], kinds
    nb.metadata["quoted_constants"] = {"96.3 %": "a made-up source", "45 s": "x"}
    problems = check_notebook(nb)
    assert not any("'96.3 %'" in p for p in problems) and any("needs its source" in p for p in problems), problems


def test_checker_vague_words_need_a_wrapped_number():
    nb = nbformat.v4.new_notebook()
    vague = ["It captures most of the energy.", "The loss roughly halves.", "It is almost one-hot.",
             "It takes about a minute.", "The file is well under a megabyte.", "It is a coin toss.",
             "All-ham gets exactly that: chance.", "It needs far more text."]
    fine = ["It has at most 2 r ranks.", "Take the most likely token.", "Talk about the model.",
            "Runs exactly this loop.", 'It captures most of it (<span class="q">0.56</span>).']
    nb.cells = [nbformat.v4.new_code_cell("", outputs=[nbformat.v4.new_output("stream", name="stdout", text="0.56")])]
    nb.cells += [nbformat.v4.new_markdown_cell(s) for s in vague + fine]
    flagged = {int(p.split(":")[0].split()[1]) for p in check_notebook(nb)}
    assert flagged == set(range(1, 1 + len(vague))), flagged


if __name__ == "__main__":  # list what notebooks still need: python tests/test_quoted_numbers.py notebooks/0*.ipynb
    for arg in sys.argv[1:] or map(str, NOTEBOOKS):
        found = check_notebook(nbformat.read(arg, as_version=4))
        print(f"{Path(arg).name}: {len(found)} problem(s)")
        for line in found:
            print("  " + line)
