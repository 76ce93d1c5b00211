"""The course website (docs/conf.py), built once per test session and read in a real browser as a student meets it.

* The build: Sphinx with warnings as errors (a missing figure, a bad cross-reference, a broken docstring are
  errors), every chapter a page with its "Code for this chapter" box and its .ipynb to download, MathJax served
  from the site, and no page that makes the browser load anything from another host (read from the HTML).
* In headless Chromium (Debian's /usr/bin/chromium, driven by playwright; never `playwright install`), with the
  site served on localhost by a thread: every page loads with no console error and no request leaving localhost,
  every link and image resolves (a crawl of every page's href and src), the math of chapter 5 is typeset, the
  search finds the chapters that teach "fused qkv", "alpha/r" and "merge", and chapter 7 shows the test accuracy
  that results/spam_comparison.json holds.
* Negative controls: the crawler reports a dead link, a missing image and a request to another host on a tiny
  hand-made site; the static scan reports a CDN script.
"""

from __future__ import annotations

import functools
import html as html_module
import http.server
import json
import re
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import pytest

pytestmark = pytest.mark.slow  # builds the course website (also `browser`)

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = sorted(p.stem for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
OWN_PAGES = sorted(p.stem for p in (ROOT / "docs").glob("*.md"))
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
NO_BROWSER = f"no browser: {CHROMIUM} is absent (Debian: apt-get install chromium; .ci/run installs it when run as root)"
BUILD = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", "-c", "docs", "."]



def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # the crawl makes hundreds of requests
        pass


@pytest.fixture(scope="session")
def site_dir(tmp_path_factory) -> Path:
    """The site, built once per session the way README says, into a temporary folder."""
    out = tmp_path_factory.mktemp("site") / "html"
    done = subprocess.run(BUILD + [str(out), "-d", str(out.parent / "doctrees")], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, f"the site build failed or warned:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    return out


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):  # a browser that moves on drops its open connections
        pass


def serve(folder: Path):
    """An http.server for `folder` on a free localhost port, in a thread; returns (base url, server)."""
    port = free_port()
    server = Server(("127.0.0.1", port), functools.partial(QuietHandler, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{port}", server


@pytest.fixture(scope="session")
def site_url(site_dir):
    url, server = serve(site_dir)
    yield url
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


# ---------------------------------------------------------------------------------------------------------------
# What the browser would load, read from the HTML (no browser needed)

class LoadedURLs(HTMLParser):
    """The URLs a browser loads by itself from a page: scripts, stylesheets, images, media, frames, preloads (not
    the <a href> a reader may click)."""

    def __init__(self):
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag in ("script", "img", "iframe", "source", "audio", "video", "embed") and a.get("src"):
            self.urls.append(a["src"])
        if tag == "link" and a.get("href") and not {"canonical", "alternate"} & set((a.get("rel") or "").split()):
            self.urls.append(a["href"])
        if tag == "object" and a.get("data"):
            self.urls.append(a["data"])
        for value in (a.get("srcset") or "").split(","):
            if value.strip():
                self.urls.append(value.split()[0])


def remote_loads(html: str) -> list[str]:
    """The URLs on another host that the page makes the browser load (http, https, protocol-relative)."""
    parser = LoadedURLs()
    parser.feed(html)
    found = [u for u in parser.urls if re.match(r"^(https?:)?//", u.strip(), re.IGNORECASE)]
    # CSS can load too: @import and url(...) in inline styles
    found += re.findall(r"""(?:@import\s+|url\()\s*['"]?((?:https?:)?//[^'")\s]+)""", html, re.IGNORECASE)
    return found


def test_static_scan_reports_a_cdn_script_and_accepts_local_files():
    page = ('<html><head><script src="_static/mathjax/tex-mml-chtml.js"></script>'
            '<link rel="stylesheet" href="_static/a.css"><a href="https://example.org/">a link is not a load</a>'
            '<script src="https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-mml-chtml.js"></script>'
            '<style>@import url("//fonts.example.com/x.css");</style></head></html>')
    assert remote_loads(page) == ["https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-mml-chtml.js",
                                  "//fonts.example.com/x.css"]


def test_site_builds_every_page_with_local_mathjax_and_no_remote_load(site_dir):
    expected = (["README", "TEACHING", "BOOK_MAP", "data/README", "benchmarks/README", "benchmarks/results/README"]
                + [f"notebooks/{c}" for c in CHAPTERS] + [f"docs/{p}" for p in OWN_PAGES]
                + [f"docs/api/{m}" for m in ("gpt", "lora", "peft_methods")] + ["docs/_generated/api/classify"]
                + [f"docs/_generated/scripts/{p.stem}" for p in sorted((ROOT / "scripts").glob("*.py"))
                   if not p.name.startswith("_")])
    missing = [page for page in expected if not (site_dir / f"{page}.html").is_file()]
    assert not missing, f"pages missing from the site: {missing}"
    assert (site_dir / "_static" / "mathjax" / "tex-mml-chtml.js").stat().st_size > 500_000
    pages = sorted(site_dir.rglob("*.html"))
    assert len(pages) >= len(expected)
    remote = {p.relative_to(site_dir).as_posix(): urls for p in pages
              if (urls := remote_loads(p.read_text(encoding="utf-8", errors="replace")))}
    assert remote == {}, f"pages that load from another host: {remote}"
    # the site's address opens the front page (index.html sends the browser on to README.html)
    assert 'url=README.html' in (site_dir / "index.html").read_text()
    assert 'src="../_static/mathjax/tex-mml-chtml.js' in (site_dir / "notebooks" / f"{CHAPTERS[4]}.html").read_text()


def test_api_pages_document_every_public_function_and_class(site_dir):
    """Every class and function a package exports (its __all__, or what gpt/__init__.py imports) has its entry,
    and every module of classify/ its section."""
    import importlib
    import inspect

    for name in ("gpt", "lora", "peft_methods"):
        package = importlib.import_module(name)
        public = getattr(package, "__all__", None) or [n for n in vars(package) if not n.startswith("_")]
        documented = [n for n in public if inspect.isclass(getattr(package, n)) or inspect.isfunction(getattr(package, n))]
        html = (site_dir / "docs" / "api" / f"{name}.html").read_text(encoding="utf-8")
        assert len(documented) >= 15
        missing = [n for n in documented if f'id="{name}.{n}"' not in html]
        assert not missing, f"docs/api/{name}: no entry for {missing}"
    html = (site_dir / "docs" / "_generated" / "api" / "classify.html").read_text(encoding="utf-8")
    modules = [p.stem for p in (ROOT / "classify").glob("*.py") if not p.name.startswith("_")]
    assert [m for m in modules if f'id="module-classify.{m}"' not in html] == []


def test_every_chapter_page_has_its_code_box_and_its_notebook_to_download(site_dir):
    for chapter in CHAPTERS:
        html = (site_dir / "notebooks" / f"{chapter}.html").read_text(encoding="utf-8")
        assert "Code for this chapter" in html, chapter
        link = re.search(rf'href="(\.\./_downloads/[0-9a-f]+/{re.escape(chapter)}\.ipynb)"', html)
        assert link, f"{chapter}: no download link to its .ipynb"
        downloaded = (site_dir / "notebooks" / link.group(1)).resolve()
        assert downloaded.read_bytes() == (ROOT / "notebooks" / f"{chapter}.ipynb").read_bytes()
    # the exercises' check cells are on the page, one per check file of the chapter
    for chapter in CHAPTERS:
        text = html_module.unescape(re.sub(r"<[^>]+>", "", (site_dir / "notebooks" / f"{chapter}.html").read_text()))
        checks = sorted(p.stem for p in (ROOT / "notebooks" / "checks" / f"ch{chapter[:2]}").glob("ex*.py"))
        assert [c for c in checks if f'grader.check("{c}")' not in text] == [], chapter
    # next/previous at the foot of each chapter, in the chapters' order
    for before, chapter, after in zip(CHAPTERS, CHAPTERS[1:], CHAPTERS[2:]):
        footer = (site_dir / "notebooks" / f"{chapter}.html").read_text(encoding="utf-8").split('class="prev-next-area"')[1]
        assert re.search(rf'class="left-prev"\s+href="{before}.html"', footer), chapter
        assert re.search(rf'class="right-next"\s+href="{after}.html"', footer), chapter
    six = (site_dir / "notebooks" / f"{CHAPTERS[5]}.html").read_text(encoding="utf-8")
    assert 'href="../docs/_generated/scripts/ch06_lora_layers.html"' in six
    assert 'href="../docs/api/lora.html#lora.merge_lora"' in six


# ---------------------------------------------------------------------------------------------------------------
# In the browser

def crawl(browser, base_url: str, start: str = "index.html") -> dict:
    """Load every page reachable from `start` on base_url's host, as a reader's browser does.

    Returns {"pages": [...], "dead": [(page, url, status)], "console_errors": [(page, text)],
    "remote": [(page, url)]}: every href and src of every page is followed (pages are loaded, other files are
    fetched), and every request to another host is blocked and recorded."""
    origin = urlsplit(base_url).netloc
    report = {"pages": [], "dead": [], "console_errors": [], "remote": []}
    context = browser.new_context()
    current = {"page": start}

    def route(r):
        if urlsplit(r.request.url).netloc == origin or r.request.url.startswith(("data:", "blob:", "about:")):
            r.continue_()
        else:
            report["remote"].append((current["page"], r.request.url))
            r.abort()

    context.route("**/*", route)
    page = context.new_page()
    page.on("console", lambda msg: msg.type == "error" and report["console_errors"].append((current["page"], msg.text)))
    page.on("pageerror", lambda exc: report["console_errors"].append((current["page"], str(exc))))
    page.on("response", lambda resp: resp.status >= 400 and report["dead"].append((current["page"], resp.url,
                                                                                 resp.status)))
    queue, seen, checked = [urljoin(base_url + "/", start)], set(), set()
    try:
        while queue:
            url = queue.pop(0)
            if url in seen:
                continue
            seen.add(url)
            current["page"] = url[len(base_url) + 1:]
            response = page.goto(url, wait_until="load")
            if response is None or response.status >= 400:
                continue  # the response handler recorded it
            report["pages"].append(current["page"])
            links = page.eval_on_selector_all("[href], [src]", "els => els.map(e => e.href || e.src)")
            for link in links:
                if not isinstance(link, str) or not link:
                    continue
                target = link.split("#")[0]
                parts = urlsplit(target)
                if parts.scheme not in ("http", "https") or parts.netloc != origin:
                    continue  # a link a reader may click to another site is not loaded by the page
                if target.endswith((".html", "/")):
                    if target not in seen:
                        queue.append(target)
                elif target not in checked:
                    checked.add(target)
                    try:
                        with urllib.request.urlopen(target, timeout=30) as got:
                            status = got.status
                    except urllib.error.HTTPError as exc:
                        status = exc.code
                    if status >= 400:
                        report["dead"].append((current["page"], target, status))
    finally:
        context.close()
    return report


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason=NO_BROWSER)
def test_crawler_reports_a_dead_link_a_missing_image_and_a_remote_load(browser, tmp_path):
    """Negative control: on a hand-made site with one good page, one dead link, one missing image and one CDN
    script, the crawl must find each."""
    (tmp_path / "index.html").write_text('<html><body><a href="good.html">good</a> <a href="gone.html">gone</a>'
                                         '</body></html>')
    (tmp_path / "good.html").write_text('<html><body><img src="missing.png" alt="x"><a href="index.html">back</a>'
                                        '<script src="https://cdn.example.com/lib.js"></script></body></html>')
    url, server = serve(tmp_path)
    try:
        report = crawl(browser, url)
    finally:
        server.shutdown()
        server.server_close()
    assert sorted(report["pages"]) == ["good.html", "index.html"]
    dead = sorted((page, target[len(url) + 1:], status) for page, target, status in report["dead"])
    assert ("good.html", "missing.png", 404) in dead and ("gone.html", "gone.html", 404) in dead
    assert report["remote"] == [("good.html", "https://cdn.example.com/lib.js")]


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason=NO_BROWSER)
def test_every_page_loads_cleanly_and_every_link_and_image_resolves(browser, site_url, site_dir):
    report = crawl(browser, site_url, start="README.html")
    assert report["dead"] == [], f"links or images that do not resolve: {report['dead'][:20]}"
    assert report["remote"] == [], f"requests that left localhost: {report['remote'][:20]}"
    assert report["console_errors"] == [], f"console errors: {report['console_errors'][:20]}"
    # the crawl reached every page of the table of contents, from the front page
    for chapter in CHAPTERS:
        assert f"notebooks/{chapter}.html" in report["pages"]
    for page in OWN_PAGES:
        assert f"docs/{page}.html" in report["pages"]
    assert len(report["pages"]) >= len(list(site_dir.glob("docs/_generated/scripts/*.html"))) + len(CHAPTERS) + 10


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason=NO_BROWSER)
def test_chapter_5_math_is_typeset_and_no_raw_tex_is_left(browser, site_url):
    chapter = next(c for c in CHAPTERS if c.startswith("05_"))
    page = browser.new_page()
    try:
        page.goto(f"{site_url}/notebooks/{chapter}.html", wait_until="load")
        page.wait_for_function("() => window.MathJax && MathJax.startup && MathJax.startup.promise", timeout=60_000)
        page.evaluate("() => MathJax.startup.promise")
        typeset = page.locator("article mjx-container").count()
        text = page.evaluate("""() => {
            const article = document.querySelector('article').cloneNode(true);
            article.querySelectorAll('pre, code, mjx-container, script, style, .cell_output').forEach(e => e.remove());
            return article.textContent;
        }""")
    finally:
        page.close()
    assert typeset >= 20, f"only {typeset} typeset formulas on {chapter}"
    assert not re.search(r"\$[^$\s][^$]*\$", text), re.search(r".{40}\$[^$\s][^$]*\$.{40}", text, re.DOTALL)
    assert "\\(" not in text and "\\[" not in text, "TeX delimiters left untypeset"


def search(browser, site_url: str, query: str) -> list[str]:
    """The pages Sphinx's own (offline) search lists for `query`, as their paths."""
    page = browser.new_page()
    try:
        page.goto(f"{site_url}/search.html?q={urllib.request.quote(query)}", wait_until="load")
        page.wait_for_function("() => document.querySelector('#search-results .search-summary') &&"
                               " !document.querySelector('#search-results .search-summary').textContent"
                               ".includes('Preparing')", timeout=60_000)
        hrefs = page.eval_on_selector_all("#search-results ul.search li > a", "els => els.map(e => e.href)")
    finally:
        page.close()
    return [urlsplit(h).path.lstrip("/").removesuffix(".html") for h in hrefs]


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason=NO_BROWSER)
@pytest.mark.parametrize("query, teachers", [("fused qkv", ("02_", "06_")), ("alpha/r", ("05_", "06_")),
                                             ("merge", ("06_", "08_"))])
def test_search_finds_the_chapters_that_teach_it(browser, site_url, query, teachers):
    found = search(browser, site_url, query)
    chapters = [Path(p).name for p in found if p.startswith("notebooks/")]
    assert any(c.startswith(teachers) for c in chapters), f"{query!r}: search lists {found}"


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason=NO_BROWSER)
def test_search_of_a_word_no_page_has_lists_nothing(browser, site_url):
    """The search test's control: a made-up word finds no page (so "found" above means something)."""
    assert search(browser, site_url, "zqxjvw") == []


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason=NO_BROWSER)
def test_chapter_7_shows_the_committed_test_accuracy(browser, site_url):
    rows = json.loads((ROOT / "results" / "spam_comparison.json").read_text())["rows"]
    lora = rows["lora-separate"]
    written = f"{100 * lora['test_accuracy']:.2f} ± {100 * lora['test_accuracy_std']:.2f}"  # as the chapter's table
    chapter = next(c for c in CHAPTERS if c.startswith("07_"))
    page = browser.new_page()
    try:
        page.goto(f"{site_url}/notebooks/{chapter}.html", wait_until="load")
        row = page.locator("table tr", has_text="lora-separate").first
        cells = [c.strip() for c in row.locator("td").all_inner_texts()]
    finally:
        page.close()
    assert cells[0] == "lora-separate" and written in cells, (written, cells)
