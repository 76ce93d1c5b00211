"""BOOK_MAP.md names only what exists: every `package.module.name` it cites imports, every file it cites is there."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGE = (ROOT / "BOOK_MAP.md").read_text(encoding="utf-8")
PACKAGES = ("gpt", "lora", "classify", "plots", "common")
DOTTED = sorted(set(re.findall(rf"`((?:{'|'.join(PACKAGES)})(?:\.\w+)+)`", PAGE)))
FILES = sorted(set(re.findall(r"`((?:scripts|notebooks|data)/[\w./-]+)`", PAGE))
               | set(re.findall(r"\]\(((?:notebooks|scripts)/[^)]+)\)", PAGE)))


def resolve(dotted: str):
    """Import the longest module prefix of `dotted`, then walk the remaining attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for name in parts[cut:]:
            obj = getattr(obj, name)
        return obj
    raise ModuleNotFoundError(dotted)


def test_the_page_cites_names_and_files():
    assert len(DOTTED) >= 20 and len(FILES) >= 5, (DOTTED, FILES)


@pytest.mark.parametrize("dotted", DOTTED)
def test_cited_name_imports(dotted):
    assert resolve(dotted) is not None


@pytest.mark.parametrize("path", FILES)
def test_cited_file_exists(path):
    assert (ROOT / path).exists(), f"BOOK_MAP.md cites {path}, which does not exist"


def test_resolve_rejects_a_name_that_does_not_exist():
    with pytest.raises((ModuleNotFoundError, AttributeError)):
        resolve("classify.train.train_classifier_simple")  # the book's name, not ours
