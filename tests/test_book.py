"""The book builds offline from the committed outputs, and its pages work with no internet.

The browser half drives Debian's Chromium through the `playwright` package (never `playwright install`,
which downloads a browser) over a loopback http.server, and lets no request leave 127.0.0.1.
"""
from __future__ import annotations

import functools
import re
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from labkit.course import book, manifest

pytestmark = pytest.mark.browser

ROOT = manifest.ROOT
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-default-apps", "--disable-extensions"]
# Tags whose attribute makes the browser fetch something (an <a href> is only a link, and may leave the site).
FETCHING = re.compile(r"<(?:script|link|img|iframe|source|embed|video|audio)\b[^>]*?\b(?:src|href|srcset|data)"
                      r"\s*=\s*[\"']?\s*((?:https?:)?//[^\"'\s>]+)", re.IGNORECASE)
CSS_URL = re.compile(r"""(?:url\(\s*["']?|@import\s+["'])\s*((?:https?:)?//[^"')\s]+)""", re.IGNORECASE)
# The text of the widget's HTML outputs that is on screen (a Stack hides all children but the selected one).
CHART_TEXT = ("el => [...el.querySelectorAll('.widget-html-content, .widget-htmlmath-content')]"
              ".filter(e => e.offsetParent !== null).map(e => e.innerText).join(' | ')")


@pytest.fixture(scope="module")
def index() -> Path:
    return book.build(ROOT)


@pytest.fixture(scope="module")
def html_dir(index: Path) -> Path:
    return index.parent


def test_toc_lists_every_lesson_and_lab(index: Path, html_dir: Path) -> None:
    m = manifest.load(ROOT / "book.yml")
    toc_text = (ROOT / "_build" / "_toc.yml").read_text(encoding="utf-8")
    files = set(re.findall(r"(?:file|root): (\S+)", toc_text))
    assert yaml.safe_load(toc_text)["root"] == Path(m.intro).with_suffix("").as_posix()
    for c in m.chapters:
        for nb in (*c.notebooks, *([c.lab] if c.lab else [])):
            doc = Path(nb).with_suffix("").as_posix()
            assert doc in files, f"{nb} (chapter {c.id}) is missing from the generated _toc.yml"
            assert (html_dir / f"{doc}.html").is_file(), f"{nb} was not built into a page"
        if c.solution:
            published = Path(c.solution).with_suffix("").as_posix() in files
            assert published == m.publish_solutions, f"{c.solution}: publish_solutions is {m.publish_solutions}"


def test_no_page_loads_anything_from_the_internet(html_dir: Path) -> None:
    offenders = []
    for page in html_dir.rglob("*.html"):
        text = page.read_text(encoding="utf-8", errors="replace")
        offenders += [f"{page.relative_to(html_dir)}: {url}" for url in FETCHING.findall(text)]
        offenders += [f"{page.relative_to(html_dir)} (style): {url}" for url in CSS_URL.findall(text)]
    for css in html_dir.rglob("*.css"):
        text = css.read_text(encoding="utf-8", errors="replace")
        offenders += [f"{css.relative_to(html_dir)}: {url}" for url in CSS_URL.findall(text)]
    assert not offenders, "external resources in the built book:\n" + "\n".join(offenders)


# ---- in a real browser --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(html_dir: Path) -> Iterator[str]:
    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(html_dir)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()
    thread.join()


@pytest.fixture(scope="module")
def browser():  # -> playwright Browser
    if not CHROMIUM.is_file():
        pytest.skip("headless Chromium not found: install Debian's chromium package (apt-get install chromium) "
                    "to run the book's browser test")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def visit(browser, server: str):
    """Open a page of the book; return it with a list of every problem the browser reported."""
    opened = []

    def _visit(path: str):
        page = browser.new_page()
        opened.append(page)
        problems: list[str] = []

        def route(r) -> None:  # nothing may leave the machine
            if r.request.url.startswith(server):
                r.continue_()
            else:
                problems.append(f"external request: {r.request.url}")
                r.abort()

        page.route("**/*", route)
        page.on("console", lambda m: m.type == "error" and problems.append(f"console error: {m.text}"))
        page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
        page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url} ({r.failure})"))
        page.on("response", lambda r: r.status >= 400 and problems.append(f"HTTP {r.status}: {r.url}"))
        page.goto(server + path, wait_until="load")
        return page, problems

    yield _visit
    for page in opened:
        page.close()


def test_index_opens_cleanly(visit) -> None:
    page, problems = visit("index.html")
    page.wait_for_selector("nav", timeout=15_000)  # index.html redirects to the intro
    page.wait_for_load_state("networkidle")
    assert problems == []


def test_chapter_one_figures_math_and_widget_work(visit) -> None:
    first = manifest.load(ROOT / "book.yml").chapters[0].notebooks[0]
    page, problems = visit(Path(first).with_suffix(".html").as_posix())

    # Figures: every image decoded, and there is at least one notebook figure.
    figures = page.locator(".cell_output img")
    assert figures.count() > 0, "no figure in the chapter's outputs"
    page.wait_for_function("[...document.images].every(i => i.complete)", timeout=15_000)
    widths = page.eval_on_selector_all("img", "imgs => imgs.map(i => [i.src, i.naturalWidth])")
    assert all(w > 0 for _, w in widths), f"images that did not load: {[s for s, w in widths if not w]}"

    # Math: MathJax (served from _static) typeset the page.
    page.wait_for_selector("mjx-container", timeout=30_000)

    # Widget: the html-manager rendered it; another option in the <select> changes the visible chart text.
    select = page.locator(".cell_output select").first
    select.wait_for(state="visible", timeout=30_000)
    output = select.locator("xpath=ancestor::div[contains(@class, 'cell_output')][1]")
    before = output.evaluate(CHART_TEXT)
    assert before.strip(), "the widget shows no HTML text"
    options = select.locator("option").count()
    assert options > 1, "the widget's <select> has a single option"
    current = select.evaluate("s => s.selectedIndex")
    select.select_option(index=(current + 1) % options)
    page.wait_for_function(f"([el, before]) => ({CHART_TEXT})(el) !== before",
                           arg=[output.element_handle(), before], timeout=10_000)
    page.wait_for_load_state("networkidle")
    assert problems == []


def _lesson_pages() -> list[tuple[str, int]]:
    """(page, number of widget outputs) for every lesson notebook the manifest lists."""
    import nbformat

    pages = []
    for c in manifest.load(ROOT / "book.yml").chapters:
        for nb in c.notebooks:
            cells = nbformat.read(ROOT / nb, as_version=4).cells
            widgets = sum("application/vnd.jupyter.widget-view+json" in o.get("data", {})
                          for cell in cells if cell.cell_type == "code" for o in cell.outputs)
            pages.append((Path(nb).with_suffix(".html").as_posix(), widgets))
    return pages


@pytest.mark.parametrize("path, n_widgets", _lesson_pages())
def test_every_lesson_page_opens_cleanly_and_renders_its_widgets(visit, path: str, n_widgets: int) -> None:
    page, problems = visit(path)
    page.wait_for_function("[...document.images].every(i => i.complete)", timeout=15_000)
    broken = page.eval_on_selector_all("img", "imgs => imgs.filter(i => !i.naturalWidth).map(i => i.src)")
    assert not broken, f"{path}: images that did not load: {broken}"
    if n_widgets:  # the html-manager turned each stored widget view into DOM elements
        page.wait_for_function(f"document.querySelectorAll('.cell_output .jupyter-widgets').length >= {n_widgets}",
                               timeout=30_000)
    page.wait_for_load_state("networkidle")
    assert problems == [], f"{path}: {problems}"
