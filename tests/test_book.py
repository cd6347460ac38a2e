"""The book builds offline from the committed outputs, its pages work with no internet, and they read right.

What a reader sees is tested on the built pages: every display equation fits its column (a too-wide one is cut
off at the right edge with no visible scrollbar), every printed result stays in one output box with its label,
and every reference to another chapter names one the book has (a dangling *link* already fails the build,
which runs with warnings as errors; these tests catch the references that are plain words).

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
VIEWPORT = {"width": 1280, "height": 900}  # a laptop screen: both sidebars shown, the text column at its narrowest
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


# ---- what a reader sees, read from the built HTML --------------------------------------------------------

def _book_pages() -> list[str]:
    """The built pages of the manifest's intro, lessons and labs, in reading order (as .html paths)."""
    m = manifest.load(ROOT / "book.yml")
    docs = [m.intro] + [nb for c in m.chapters for nb in (*c.notebooks, *([c.lab] if c.lab else []))]
    return [Path(d).with_suffix(".html").as_posix() for d in docs]


ROMAN = {"I": 1, "II": 2, "III": 3, "IV": 4, "V": 5, "VI": 6, "VII": 7, "VIII": 8, "IX": 9, "X": 10}
CHAPTER_NUMBERS = re.compile(r"\b[Cc]hapters?\s+(\d+(?:\s*(?:,|–|-|to|and|or)\s*\d+)*)")
PART_NUMBER = re.compile(r"\bPart\s+(X|IX|IV|V?I{0,3})\b")
# Words that point at another chapter without naming it: fine with a link (the build checks its target),
# dangling without one.
VAGUE = re.compile(r"\b(?:later|last|final|coming|upcoming|future)\s+(?:chapters?|parts?|lessons?)\b"
                   r"|\blater in (?:the|this) (?:course|book)\b|\bthe [\w-]+ chapter\b(?!\s*\d)", re.IGNORECASE)
NEXT = re.compile(r"\bnext\s+(?:chapter|lesson|part)\b", re.IGNORECASE)


def forward_reference_problems(html: str, n_chapters: int, n_parts: int, last_page: bool) -> list[str]:
    """References in a page's prose to chapters or parts the book does not have."""
    from bs4 import BeautifulSoup

    problems = []
    article = BeautifulSoup(html, "html.parser").find("article") or BeautifulSoup(html, "html.parser")
    for el in article.find_all(["p", "li", "h1", "h2", "h3"]):
        if el.find(["p", "li"]):  # judge the innermost paragraph, once
            continue
        text = " ".join(el.get_text(" ").split())
        linked = el.find("a", class_="internal") is not None
        for m in CHAPTER_NUMBERS.finditer(text):
            numbers = [int(n) for n in re.findall(r"\d+", m.group(1))]
            if max(numbers) > n_chapters:
                problems.append(f"{m.group()!r}: the book has {n_chapters} chapters — {text[:120]!r}")
        for m in PART_NUMBER.finditer(text):
            if m.group(1) and ROMAN[m.group(1)] > n_parts:
                problems.append(f"{m.group()!r}: the book has {n_parts} parts — {text[:120]!r}")
        for m in VAGUE.finditer(text):
            if not linked:
                problems.append(f"{m.group()!r} without a link to it — {text[:120]!r}")
        if last_page and not linked and NEXT.search(text):
            problems.append(f"{NEXT.search(text).group()!r} on the last page — {text[:120]!r}")
    return problems


def output_box_problems(html: str) -> list[str]:
    """One printed result drawn as several boxes: a stream cut into consecutive boxes, or a label whose value
    landed in the next box."""
    from bs4 import BeautifulSoup

    problems = []
    for cell_output in BeautifulSoup(html, "html.parser").select("div.cell_output"):
        boxes = [d for d in cell_output.find_all("div", recursive=False) if "output" in d.get("class", [])]
        for a, b in zip(boxes, boxes[1:]):
            kind_a, kind_b = ({c for c in d.get("class", []) if c in ("stream", "stderr")} for d in (a, b))
            text = a.get_text().rstrip()
            if kind_a and kind_a == kind_b:
                problems.append(f"one stream in two boxes, the first ending {text[-60:]!r}")
            elif kind_a and text.endswith(("=", ":")):
                problems.append(f"a label whose value is in the next box: {text[-60:]!r}")
    return problems


def test_reference_and_box_checks_catch_what_they_claim() -> None:
    """The two checks below are not vacuous: each fails on a page made to have the problem."""
    page = ('<article><p>The agents chapter shows it.</p><p>See chapter 11.</p><p>Part VI is next.</p>'
            '<p>As <a class="reference internal" href="x.html">the agents chapter</a> shows.</p>'
            '<p>Chapter 3 and chapters 4–5.</p><p>The next lesson.</p></article>')
    found = forward_reference_problems(page, n_chapters=8, n_parts=4, last_page=True)
    assert [re.match(r"'([^']*)'", p).group(1) for p in found] == [
        "The agents chapter", "chapter 11", "Part VI", "next lesson"]
    assert forward_reference_problems(page, n_chapters=11, n_parts=6, last_page=False) == [found[0]]
    box = '<div class="output stream"><pre>{}</pre></div>'
    split = f'<div class="cell_output">{box.format("step 1")}{box.format("step 2")}</div>'
    label = f'<div class="cell_output">{box.format("max err =")}<div class="output text_plain">1e-7</div></div>'
    whole = f'<div class="cell_output">{box.format("max err = 1e-7")}<div class="output text_plain">x</div></div>'
    assert len(output_box_problems(split)) == 1 and len(output_box_problems(label)) == 1
    assert output_box_problems(whole) == []


def test_references_name_chapters_the_book_has(html_dir: Path) -> None:
    m = manifest.load(ROOT / "book.yml")
    pages = _book_pages()
    problems = [f"{page}: {p}" for page in pages
                for p in forward_reference_problems((html_dir / page).read_text(encoding="utf-8"), len(m.chapters),
                                                    len(m.parts), last_page=page == pages[-1])]
    assert not problems, "references to chapters the book does not have:\n" + "\n".join(problems)


def test_each_printed_result_stays_in_one_output_box(html_dir: Path) -> None:
    problems = [f"{page}: {p}" for page in _book_pages()
                for p in output_box_problems((html_dir / page).read_text(encoding="utf-8"))]
    assert not problems, ("outputs split over boxes (print a result in one write; labkit.course.execute "
                          "coalesces streams when it executes a notebook):\n" + "\n".join(problems))


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
        page = browser.new_page(viewport=VIEWPORT)
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
    """(page, number of widget outputs) for every lesson and lab notebook the manifest lists."""
    import nbformat

    pages = []
    for c in manifest.load(ROOT / "book.yml").chapters:
        for nb in (*c.notebooks, *([c.lab] if c.lab else [])):
            cells = nbformat.read(ROOT / nb, as_version=4).cells
            widgets = sum("application/vnd.jupyter.widget-view+json" in o.get("data", {})
                          for cell in cells if cell.cell_type == "code" for o in cell.outputs)
            pages.append((Path(nb).with_suffix(".html").as_posix(), widgets))
    return pages


@pytest.mark.parametrize("path, n_widgets", _lesson_pages())
def test_every_lesson_page_opens_cleanly_and_renders_its_widgets_and_math(visit, path: str, n_widgets: int) -> None:
    page, problems = visit(path)
    # Display math: MathJax typeset it, and no equation is wider than the text column (it would be cut off).
    page.wait_for_function("!document.querySelector('.math') || (window.MathJax && MathJax.startup"
                           " && MathJax.startup.promise)", timeout=30_000)
    clipped = page.evaluate("""() => !window.MathJax ? [] : MathJax.startup.promise.then(() =>
        [...document.querySelectorAll('mjx-container[display="true"]')]
          .filter(e => e.scrollWidth > e.clientWidth + 1)
          .map(e => `${e.scrollWidth}px in ${e.clientWidth}px: ${e.textContent.slice(0, 50)}`))""")
    assert not clipped, (f"{path}: display equations wider than the {VIEWPORT['width']}px page's column (split "
                         f"them with \\begin{{aligned}}): {clipped}")
    page.wait_for_function("[...document.images].every(i => i.complete)", timeout=15_000)
    broken = page.eval_on_selector_all("img", "imgs => imgs.filter(i => !i.naturalWidth).map(i => i.src)")
    assert not broken, f"{path}: images that did not load: {broken}"
    if n_widgets:  # the html-manager turned each stored widget view into DOM elements
        page.wait_for_function(f"document.querySelectorAll('.cell_output .jupyter-widgets').length >= {n_widgets}",
                               timeout=30_000)
    page.wait_for_load_state("networkidle")
    assert problems == [], f"{path}: {problems}"
