"""The course website's own Sphinx extension: the table of contents, a page per script, the "Code for this
chapter" box, and MathJax served from the site.

* The front page (README.md, also read on GitHub) gets its hidden tables of contents here, at build time, so
  README.md itself holds no Sphinx markup. The chapters are globbed (`notebooks/[0-9][0-9]_*.ipynb`).
* Every `scripts/*.py` becomes a page (`docs/_generated/scripts/NAME.md`, written at build time, ignored by git)
  that shows its docstring's first paragraph and its code.
* Every chapter page gets a box under its title: download the .ipynb, the chapter's scripts and the API it
  teaches, from `CHAPTER_CODE` in conf.py. A name there that does not resolve is a build warning (an error
  under -W), so the box cannot point to something renamed.
* MathJax 3 is copied from the django-static-mathjax wheel (PyPI; only the static files, no Django) into
  `_static/mathjax/`, so no page loads anything from another host.
"""

from __future__ import annotations

import ast
import re
import shutil
from pathlib import Path

from docutils import nodes
from sphinx import addnodes
from sphinx.util import logging

LOG = logging.getLogger(__name__)
CHAPTER = re.compile(r"^notebooks/(\d\d)_[^/]+$")
GENERATED = "docs/_generated/scripts"
GENERATED_API = "docs/_generated/api"

# The reading order of the site's own pages (docs/*.md); any other docs/*.md follows, sorted.
MEASURED = ["docs/spam_classifier", "docs/sentiment", "docs/claims_measured", "docs/numbers", "docs/gpt_mini",
            "docs/bad_input", "docs/devices", "docs/testing", "docs/project_layout"]


def _root(app) -> Path:
    return Path(app.srcdir)


def chapters(root: Path) -> list[str]:
    return [p.relative_to(root).with_suffix("").as_posix() for p in sorted((root / "notebooks").glob("[0-9][0-9]_*.ipynb"))]


def scripts_of(root: Path) -> list[Path]:
    """The command lines: scripts/*.py, without the package's __init__.py."""
    return [p for p in sorted((root / "scripts").glob("*.py")) if not p.name.startswith("_")]


def docstring_summary(path: Path) -> str:
    """The first paragraph of a script's module docstring, or an empty string."""
    try:
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    except SyntaxError:
        return ""
    return doc.strip().split("\n\n")[0].strip()


def write_script_pages(app) -> None:
    """docs/_generated/scripts/NAME.md for every scripts/*.py, rewritten only when it changes (so a rebuild
    reads only what changed)."""
    root = _root(app)
    out = root / GENERATED
    out.mkdir(parents=True, exist_ok=True)
    users = {}
    for number, code in app.config.CHAPTER_CODE.items():
        for script in code.get("scripts", []):
            users.setdefault(script, []).append(number)
    by_number = {int(Path(d).name[:2]): d for d in chapters(root)}
    wanted = set()
    for script in scripts_of(root):
        summary = docstring_summary(script)
        used = [f"[chapter {n}](/{by_number[n]}.ipynb)" for n in users.get(script.name, []) if n in by_number]
        text = (f"# scripts/{script.name}\n\n"
                + (f"```text\n{summary}\n```\n\n" if summary else "")
                + (f"Used in {', '.join(used)}.\n\n" if used else "")
                + f"```{{literalinclude}} /scripts/{script.name}\n:language: python\n:linenos:\n```\n")
        page = out / f"{script.stem}.md"
        wanted.add(page.name)
        _write_if_changed(page, text)
    for stale in out.glob("*.md"):
        if stale.name not in wanted:
            stale.unlink()


def _write_if_changed(page: Path, text: str) -> None:
    if not page.is_file() or page.read_text(encoding="utf-8") != text:
        page.write_text(text, encoding="utf-8")


def write_classify_page(app) -> None:
    """docs/_generated/api/classify.md: every module of classify/ (it re-exports nothing, so each module is
    documented on its own; a new module appears without a change here)."""
    root = _root(app)
    out = root / GENERATED_API
    out.mkdir(parents=True, exist_ok=True)
    modules = [p.stem for p in sorted((root / "classify").glob("*.py")) if not p.name.startswith("_")]
    text = ("# API: classify\n\nText classification with a GPT: labelled data sets, the classification head, the "
            "training loop, the fine-tuning job, one module at a time.\n\n```{eval-rst}\n.. automodule:: classify\n\n"
            + "".join(f".. automodule:: classify.{m}\n   :members:\n\n" for m in modules) + "```\n")
    _write_if_changed(out / "classify.md", text)


def toctrees(app) -> str:
    """The front page's hidden tables of contents, in reading order."""
    root = _root(app)
    own = [p.relative_to(root).with_suffix("").as_posix() for p in sorted((root / "docs").glob("*.md"))]
    measured = [d for d in MEASURED if d in own] + [d for d in own if d not in MEASURED]
    course = [d for d in ("TEACHING", "BOOK_MAP", "data/README") if (root / f"{d}.md").is_file()]
    bench = [d for d in ("benchmarks/README", "benchmarks/results/README") if (root / f"{d}.md").is_file()]
    bench += [p.relative_to(root).with_suffix("").as_posix()
              for p in sorted((root / "benchmarks" / "results").glob("*.md")) if p.name != "README.md"]
    bench += ["results/spam_comparison"] if (root / "results" / "spam_comparison.md").is_file() else []
    api = sorted((p.relative_to(root).with_suffix("").as_posix() for folder in ("docs/api", GENERATED_API)
                  for p in (root / folder).glob("*.md")), key=lambda d: Path(d).name)
    scripts = [f"{GENERATED}/{p.stem}" for p in scripts_of(root)]
    groups = [("Chapters", chapters(root)), ("Measured results", measured), ("The course", course),
              ("Benchmarks", bench), ("API", api), ("Scripts", scripts)]
    return "".join(f"\n\n```{{toctree}}\n:hidden:\n:caption: {caption}\n:maxdepth: 1\n\n"
                   + "".join(f"/{d}\n" for d in docs) + "```\n" for caption, docs in groups if docs)


def add_toctrees(app, docname: str, source: list[str]) -> None:
    if docname == app.config.root_doc:
        source[0] += toctrees(app)


def _xref(domain: str, reftype: str, target: str, text: str, docname: str) -> addnodes.pending_xref:
    ref = addnodes.pending_xref("", refdomain=domain, reftype=reftype, reftarget=target, refexplicit=True,
                                refwarn=True, refdoc=docname)
    ref["chapter_code"] = True
    ref += nodes.literal(text, text)
    return ref


def _line(label: str, items: list[nodes.Node]) -> nodes.paragraph:
    para = nodes.paragraph()
    para += nodes.strong(label, label)
    para += nodes.Text(" ")
    for i, item in enumerate(items):
        if i:
            para += nodes.Text(", ")
        para += item
    return para


def add_chapter_box(app, doctree: nodes.document) -> None:
    """Under a chapter's title: its .ipynb to download, its scripts, the API it teaches."""
    docname = app.env.docname
    match = CHAPTER.match(docname)
    if not match:
        return
    name = Path(docname).name + ".ipynb"
    box = nodes.admonition(classes=["tip", "chapter-code"])
    box += nodes.title("Code for this chapter", "Code for this chapter")
    download = addnodes.download_reference("", "", reftarget=f"/{docname}.ipynb", refdoc=docname, refexplicit=True,
                                           classes=["chapter-download"])
    download += nodes.literal(name, name)
    box += _line("Download the notebook:", [download])
    code = app.config.CHAPTER_CODE.get(int(match.group(1)), {})
    scripts = [_xref("std", "doc", f"/{GENERATED}/{Path(s).stem}", f"scripts/{s}", docname)
               for s in code.get("scripts", [])]
    if scripts:
        box += _line("Scripts:", scripts)
    api = [_xref("py", "obj", target, target, docname) for target in code.get("api", [])]
    if api:
        box += _line("API:", api)
    section = next(iter(doctree.findall(nodes.section)), None)
    if section is None:
        doctree.insert(0, box)
    else:
        title = next((i for i, child in enumerate(section.children) if isinstance(child, nodes.title)), -1)
        section.insert(title + 1, box)


def _is_clean_rst(text: str, env) -> bool:
    """Whether docutils parses `text` without a warning or error (a docstring written as plain text may not)."""
    import io

    from docutils.core import publish_doctree

    doctree = publish_doctree(text, settings_overrides={"report_level": 5, "halt_level": 5,
                                                         "warning_stream": io.StringIO(), "env": env})
    return not any(m["level"] >= 2 for m in doctree.findall(nodes.system_message)) and not any(
        doctree.findall(nodes.problematic))


def plain_docstrings(app, what, name, obj, options, lines: list[str]) -> None:
    """The project's docstrings are plain text (indented lists, `<|endoftext|>`, `*args`), not always valid
    reStructuredText: a docstring that does not parse cleanly is shown as it is written, preformatted."""
    if lines and not _is_clean_rst("\n".join(lines), app.env):
        lines[:] = ["::", ""] + ["    " + line for line in lines] + [""]


def copy_mathjax(app, exception) -> None:
    """MathJax 3's tex-mml-chtml bundle, its CommonHTML fonts and the parts it loads on demand, into _static."""
    if exception is not None or app.builder.format != "html":
        return
    import mathjax  # django-static-mathjax: MathJax's files, nothing of Django is imported

    src = Path(mathjax.__file__).parent / "static" / "mathjax"
    dest = Path(app.outdir) / "_static" / "mathjax"
    dest.mkdir(parents=True, exist_ok=True)
    es5 = src / "es5"
    shutil.copy2(es5 / "tex-mml-chtml.js", dest / "tex-mml-chtml.js")
    shutil.copy2(src / "LICENSE", dest / "LICENSE")
    for sub in ("input", "ui", "a11y", "sre", "adaptors", "output/chtml"):
        shutil.copytree(es5 / sub, dest / sub, dirs_exist_ok=True)
    shutil.copy2(es5 / "output" / "chtml.js", dest / "output" / "chtml.js")


def setup(app):
    app.add_config_value("CHAPTER_CODE", {}, "env")
    app.connect("builder-inited", write_script_pages)
    app.connect("builder-inited", write_classify_page)
    app.connect("source-read", add_toctrees)
    app.connect("doctree-read", add_chapter_box, priority=400)  # before the collector of download files
    app.connect("build-finished", copy_mathjax)
    app.connect("autodoc-process-docstring", plain_docstrings)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
