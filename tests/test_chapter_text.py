"""The chapters' text, read as a student reads it: no wall of text, references that resolve, verdicts that were
printed, figures that can be read.

* **No wall of text.** Between two code cells there are at most MAX_WORDS_BETWEEN_CODE words of Markdown: a reader
  never faces more than a screen of text without running something.
* **References resolve.** "chapter N" names a chapter that exists; "section N.M" (also "chapter N.M", "§N.M",
  "sections N.M and N.K") names a heading `## N.M ...` of chapter N. A bare "5.7" after "in", "see", "(" ... is
  not how the chapters refer to a section: write "section 5.7". Where the sentence says what is there ("the curves
  in section 7.3", "the table in section 9.2"), that section must hold a figure, or a table.
* **A verdict in words was printed.** A comparison stated in words (VERDICTS: "no trend", "near chance", ...) must
  also appear in an output of the same notebook, printed by the code that measured it; tests/test_quoted_numbers.py
  then keeps it from drifting, as it does for numbers.
* **Figures for reading.** Every PNG in a committed notebook's outputs was drawn at 100 dpi or more (the pHYs chunk
  matplotlib writes) and is at least MIN_FIGURE_WIDTH_PX wide.

Each rule is shown to fail on a planted example (the `test_*_catches_*` tests), so that a rule that can no longer fail
is noticed.
"""

from __future__ import annotations

import base64
import re
import struct
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))

MAX_WORDS_BETWEEN_CODE = 300  # about a screen of text
MIN_DPI = 100
MIN_FIGURE_WIDTH_PX = 400
VERDICTS = ("no trend", "near chance", "at chance", "above chance", "falls off faster", "faster than", "slower than",
            "within noise", "within the spread", "better than", "worse than", "ahead of", "no better than",
            "grows with", "shrinks with", "beats", "outperforms")
PICTURE_WORDS = re.compile(r"\b(curves?|plots?|figures?|pictures?|heat ?maps?|diagrams?)\b", re.IGNORECASE)
TABLE_WORDS = re.compile(r"\btables?\b", re.IGNORECASE)

SECTION_REF = re.compile(r"\b(?:sections?|chapters?|§)\s*(\d{1,2})\.(\d{1,2})\b((?:\s*(?:,|and|or)\s*\d{1,2}\.\d{1,2}\b)*)",
                         re.IGNORECASE)
CHAPTER_REF = re.compile(r"\bchapters?\s+(\d{1,2})\b(?!\.\d)((?:\s*(?:,|and|or|to|-|–)\s*\d{1,2}\b(?!\.\d))*)",
                         re.IGNORECASE)
BARE_REF = re.compile(r"(?:\(|\bin |\bsee |\bfrom |\bof )(\d{1,2})\.([1-9]\d?)\b(?![\d%.])(?!\s*(?:%|s\b|x\b|×|ms|MB|KB))")
BOOK = re.compile(r"\b(the book|book's|Raschka|the paper|paper's|appendix)\b", re.IGNORECASE)


# ------------------------------------------------------------------------------------------------ reading
def markdown_cells(nb) -> list[tuple[int, str]]:
    return [(i, c.source) for i, c in enumerate(nb.cells) if c.cell_type == "markdown"]


def prose(source: str) -> str:
    """Markdown without code blocks, inline code, math, link targets and HTML comments: what a reader reads as text."""
    text = re.sub(r"```.*?```", " ", source, flags=re.DOTALL)
    text = re.sub(r"<!--.*?-->", " ", text, flags=re.DOTALL)
    text = re.sub(r"\$\$.*?\$\$", " ", text, flags=re.DOTALL)
    text = re.sub(r"\$[^$\n]+\$", " ", text)
    text = re.sub(r"`[^`\n]+`", " ", text)
    text = re.sub(r"\]\([^)]*\)", "]", text)
    return text


def outputs_text(nb) -> str:
    """Everything the code cells printed or displayed as text."""
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if "text" in out:
                parts.append(out["text"] if isinstance(out["text"], str) else "".join(out["text"]))
            for kind in ("text/plain", "text/markdown", "text/html"):
                data = out.get("data", {}).get(kind)
                if data:
                    parts.append(data if isinstance(data, str) else "".join(data))
    return "\n".join(parts)


def headings(nb) -> dict[str, int]:
    """'7.3' -> index of the cell whose Markdown holds `## 7.3 ...`."""
    found = {}
    for i, source in markdown_cells(nb):
        for match in re.finditer(r"^#{2,3}\s+(\d{1,2}\.\d{1,2})\b", source, re.MULTILINE):
            found.setdefault(match.group(1), i)
    return found


def section_cells(nb, number: str) -> list:
    """The cells of section `number`: from its heading to the next heading of the same or a higher level."""
    start = headings(nb)[number]
    cells = [nb.cells[start]]
    for cell in nb.cells[start + 1:]:
        if cell.cell_type == "markdown" and re.search(r"^#{1,2}\s", cell.source, re.MULTILINE):
            break
        cells.append(cell)
    return cells


def has_picture(cells) -> bool:
    for cell in cells:
        if cell.cell_type == "markdown" and re.search(r"!\[[^\]]*\]\(|<img ", cell.source):
            return True
        if any("image/png" in out.get("data", {}) or "image/svg+xml" in out.get("data", {})
               for out in cell.get("outputs", [])):
            return True
    return False


def has_table(cells) -> bool:
    for cell in cells:
        if cell.cell_type == "markdown" and re.search(r"^\|.*\|\s*$\n^\|\s*:?-{3,}", cell.source, re.MULTILINE):
            return True
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if "text/html" in data and "<table" in "".join(data["text/html"]):
                return True
            if "text/markdown" in data and "|---" in "".join(data["text/markdown"]).replace(" ", ""):
                return True
            text = out.get("text", "") if "text" in out else "".join(data.get("text/plain", ""))
            lines = [line for line in ("".join(text)).splitlines() if line.strip()]
            if sum(1 for line in lines if line.count("|") >= 2) >= 3:  # a printed table: rows with columns
                return True
    return False


# ------------------------------------------------------------------------------------------------ the rules
def walls_of_text(nb) -> list[str]:
    """Runs of Markdown between two code cells longer than MAX_WORDS_BETWEEN_CODE words."""
    problems, run, first = [], 0, None
    for i, cell in enumerate([*nb.cells, nbformat.v4.new_code_cell("")]):
        if cell.cell_type == "markdown":
            first = i if first is None else first
            run += len(prose(cell.source).split())
        elif cell.cell_type == "code":
            if run > MAX_WORDS_BETWEEN_CODE:
                problems.append(f"cells {first}-{i - 1}: {run} words of text before the next code cell "
                                f"(at most {MAX_WORDS_BETWEEN_CODE}: split the step, or cut)")
            run, first = 0, None
    return problems


def sentence_around(text: str, start: int, end: int) -> str:
    left = max(text.rfind(". ", 0, start), text.rfind("\n\n", 0, start), text.rfind("\n- ", 0, start))
    right_candidates = [p for p in (text.find(". ", end), text.find("\n\n", end), text.find("\n- ", end)) if p != -1]
    return text[left + 1: min(right_candidates) if right_candidates else len(text)]


def dangling_references(nb, chapter: int, notebooks: dict[int, object]) -> list[str]:
    """References in this chapter's Markdown that do not resolve, or whose target lacks what the sentence says."""
    problems = []
    for i, source in markdown_cells(nb):
        text = prose(source)
        for match in SECTION_REF.finditer(text):
            sentence = sentence_around(text, match.start(), match.end())
            if BOOK.search(text[max(0, match.start() - 40):match.start()]):
                continue  # "the book's section 6.4", "the paper's section 7.2": not ours
            numbers = [(int(match.group(1)), int(match.group(2)))]
            numbers += [tuple(map(int, m.split("."))) for m in re.findall(r"\d{1,2}\.\d{1,2}", match.group(3))]
            for n, m in numbers:
                target = notebooks.get(n)
                if target is None:
                    problems.append(f"cell {i}: {match.group(0)!r}: there is no chapter {n}")
                    continue
                if f"{n}.{m}" not in headings(target):
                    problems.append(f"cell {i}: {match.group(0)!r}: chapter {n} has no heading '## {n}.{m}'")
                    continue
                cells = section_cells(target, f"{n}.{m}")
                near = sentence[:200]
                if PICTURE_WORDS.search(near) and not TABLE_WORDS.search(near) and not has_picture(cells):
                    problems.append(f"cell {i}: {sentence.strip()[:120]!r}: section {n}.{m} shows no figure")
                if TABLE_WORDS.search(near) and not PICTURE_WORDS.search(near) and not has_table(cells):
                    problems.append(f"cell {i}: {sentence.strip()[:120]!r}: section {n}.{m} has no table")
        for match in CHAPTER_REF.finditer(text):
            if BOOK.search(text[max(0, match.start() - 40):match.start()]):
                continue
            numbers = [int(match.group(1))] + [int(x) for x in re.findall(r"\d{1,2}", match.group(2))]
            for n in numbers:
                if n not in notebooks:
                    problems.append(f"cell {i}: {match.group(0)!r}: there is no chapter {n}")
        for match in BARE_REF.finditer(text):
            n, m = int(match.group(1)), int(match.group(2))
            if n in notebooks and f"{n}.{m}" in headings(notebooks[n]):
                problems.append(f"cell {i}: {match.group(0)!r}: write 'section {n}.{m}'")
    return problems


def unprinted_verdicts(nb) -> list[str]:
    printed = outputs_text(nb).lower()
    problems = []
    for i, source in markdown_cells(nb):
        text = prose(source).lower()
        for phrase in VERDICTS:
            if re.search(rf"\b{re.escape(phrase)}\b", text) and phrase not in printed:
                problems.append(f"cell {i}: says {phrase!r}, which no output of this notebook prints: print the verdict "
                                "from the numbers that decide it")
    return problems


def png_size_and_dpi(png: bytes) -> tuple[int, int, int | None]:
    width, height = struct.unpack(">II", png[16:24])
    i = 8
    while i < len(png):
        (length,), kind = struct.unpack(">I", png[i:i + 4]), png[i + 4:i + 8]
        if kind == b"pHYs":
            x, _, unit = struct.unpack(">IIB", png[i + 8:i + 17])
            return width, height, round(x * 0.0254) if unit == 1 else None
        if kind == b"IDAT":
            break
        i += 12 + length
    return width, height, None


def unreadable_figures(nb) -> list[str]:
    problems = []
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            data = out.get("data", {}).get("image/png")
            if not data:
                continue
            width, height, dpi = png_size_and_dpi(base64.b64decode(data))
            if dpi is None or dpi < MIN_DPI:
                problems.append(f"cell {i}: a {width}x{height} figure at {dpi} dpi (at least {MIN_DPI})")
            elif width < MIN_FIGURE_WIDTH_PX:
                problems.append(f"cell {i}: a figure {width} px wide (at least {MIN_FIGURE_WIDTH_PX})")
    return problems


# ------------------------------------------------------------------------------------------------ tests
def load_all() -> dict[int, object]:
    return {int(p.name[:2]): nbformat.read(p, as_version=4) for p in NOTEBOOKS}


ALL = load_all()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_wall_of_text(path):
    problems = walls_of_text(ALL[int(path.name[:2])])
    assert not problems, f"{path.name}:\n" + "\n".join(problems)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_references_resolve(path):
    problems = dangling_references(ALL[int(path.name[:2])], int(path.name[:2]), ALL)
    assert not problems, f"{path.name}:\n" + "\n".join(problems)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_verdicts_in_words_were_printed(path):
    problems = unprinted_verdicts(ALL[int(path.name[:2])])
    assert not problems, f"{path.name}:\n" + "\n".join(problems)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_figures_are_readable(path):
    problems = unreadable_figures(ALL[int(path.name[:2])])
    assert not problems, f"{path.name}:\n" + "\n".join(problems)


# ------------------------------------------------------------------------------------------------ the rules can fail
def tiny_chapter(*cells) -> object:
    nb = nbformat.v4.new_notebook()
    nb.cells = list(cells)
    return nb


def md(text):
    return nbformat.v4.new_markdown_cell(text)


def code(printed=""):
    cell = nbformat.v4.new_code_cell("print(...)")
    if printed:
        cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=printed)]
    return cell


def test_wall_rule_catches_a_long_run_of_text():
    assert walls_of_text(tiny_chapter(md("word " * 200), md("word " * 150), code())) != []
    assert walls_of_text(tiny_chapter(md("word " * 200), code(), md("word " * 150), code())) == []


def test_reference_rule_catches_a_missing_section_a_bare_number_and_a_missing_figure():
    five = tiny_chapter(md("# Chapter 5\n## 5.1 Rank"), code("rank 2"), md("## 5.2 SVD"), code("s = 3.0"))
    chapters = {5: five}
    assert dangling_references(tiny_chapter(md("As section 5.7 shows, ...")), 6, chapters) != []  # no 5.7
    assert dangling_references(tiny_chapter(md("As chapter 9 shows, ...")), 6, chapters) != []  # no chapter 9
    assert dangling_references(tiny_chapter(md("The rank (see 5.1) is ...")), 6, chapters) != []  # bare
    assert dangling_references(tiny_chapter(md("The curves in section 5.2 fall.")), 6, chapters) != []  # no figure
    assert dangling_references(tiny_chapter(md("The table in section 5.1 lists them.")), 6, chapters) != []
    assert dangling_references(tiny_chapter(md("Section 5.2 computes it; p = 0.5 in 5.0 s.")), 6, chapters) == []
    assert dangling_references(tiny_chapter(md("The book's section 5.9 does it too.")), 6, chapters) == []


def test_verdict_rule_catches_an_unprinted_comparison():
    assert unprinted_verdicts(tiny_chapter(md("Accuracy shows no trend over r."), code("r=1: 95.1 %"))) != []
    assert unprinted_verdicts(tiny_chapter(md("Accuracy shows no trend over r."), code("verdict: no trend"))) == []


def test_figure_rule_catches_a_72_dpi_figure():
    import io

    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    def figure_cell(dpi):
        buffer = io.BytesIO()
        Figure(figsize=(6, 3)).savefig(buffer, format="png", dpi=dpi)
        cell = code()
        cell.outputs = [nbformat.v4.new_output("display_data", data={"image/png": base64.b64encode(
            buffer.getvalue()).decode()})]
        return cell

    assert unreadable_figures(tiny_chapter(figure_cell(72))) != []
    assert unreadable_figures(tiny_chapter(figure_cell(100))) == []
