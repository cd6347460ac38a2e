"""Build the course book with Jupyter Book 1 from the notebooks' committed outputs: no execution, offline.

Every script, style and font the pages load is served from the built site itself (the widget manager
and MathJax are fetched once from npm into .cache/js/), so the book works without internet.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import yaml
from jupyter_book.config import get_default_sphinx_config

from labkit.course import manifest as manifest_mod
from labkit.course.manifest import Manifest

ROOT = manifest_mod.ROOT
CACHE = ROOT / ".cache" / "js"  # gitignored; becomes the site's _static/ (widgets/, mathjax/)
# npm package -> (folder in its tarball, folder under CACHE, the file a page loads from it)
ASSETS = {
    "@jupyter-widgets/html-manager@1.0.15": ("package/dist", "widgets", "embed.js"),
    "mathjax@3.2.2": ("package/es5", "mathjax", "tex-chtml.js"),
}
# Never part of the book, and slow or confusing for Sphinx to look into.
EXCLUDE = [".venv", ".cache", ".git", "_build", "**/.ipynb_checkpoints", "*.egg-info", "node_modules",
           ".pytest_cache", ".hypothesis"]

# Small files the pages need, written next to the generated config and served from _static/ too.
SITE_FILES = {
    # ipywidgets 8 typesets widget labels with MathJax 2's API (MathJax.Hub.Queue), which MathJax 3 lacks:
    # a page error on every widget page. The widget manager renders on "load"; this listener, registered
    # before it, runs first, after MathJax 3 (a deferred script) has replaced the window.MathJax config.
    "widgets-mathjax3.js": """window.addEventListener("load", () => {
  const mj = window.MathJax;
  if (mj && mj.typesetPromise && !mj.Hub) {
    mj.Hub = {Queue: ([, , element]) => mj.startup.promise.then(() => mj.typesetPromise([element]))};
  }
});
""",
    # Without an icon, every browser asks the server for /favicon.ico and logs the 404 as a console error.
    "favicon.svg": '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 32 32"><rect width="32" height="32" '
                   'rx="6" fill="#2a6fdb"/><text x="16" y="21" font-size="13" font-family="sans-serif" '
                   'font-weight="bold" text-anchor="middle" fill="#fff">LLM</text></svg>\n',
}


def fetch_assets(cache: Path = CACHE) -> Path:
    """Fetch the pages' JavaScript from npm into `cache` (once: files already there are kept)."""
    for spec, (inside, dest, entry) in ASSETS.items():
        target = cache / dest
        stamp = target / ".npm-spec"  # records the version, so bumping a pin in ASSETS refetches
        if (target / entry).is_file() and stamp.is_file() and stamp.read_text() == spec:
            continue
        npm = shutil.which("npm")
        if npm is None:
            raise RuntimeError(f"npm not found, so the book's JavaScript ({spec}) cannot be fetched: install "
                               "Node.js with npm (apt-get install npm, or conda install nodejs) and run "
                               "`python -m labkit.course assets` again")
        with tempfile.TemporaryDirectory() as tmp:
            done = subprocess.run([npm, "pack", spec, "--silent"], cwd=tmp, capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"`npm pack {spec}` failed:\n{done.stderr}")
            staged = Path(tmp) / "staged"
            with tarfile.open(next(Path(tmp).glob("*.tgz"))) as tar:
                # Source maps are only for debugging and double the size of the widget bundle.
                members = [m for m in tar.getmembers()
                           if m.name.startswith(inside + "/") and not m.name.endswith(".map")]
                tar.extractall(staged, members=members, filter="data")
            (staged / inside / ".npm-spec").write_text(spec)
            shutil.rmtree(target, ignore_errors=True)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(staged / inside, target)  # whole folder at once: a killed fetch leaves nothing half-done
        print(f"fetched {spec} into {target}")
    return cache


def _doc(path: str) -> str:
    """Jupyter Book's toc names files without their suffix."""
    return str(Path(path).with_suffix("").as_posix())


def toc(m: Manifest) -> dict:
    """The _toc.yml content: parts -> chapters (first lesson) -> further lessons, lab, [solution]."""
    parts = []
    for part in m.parts:
        chapters = []
        for c in part.chapters:
            sections = [*c.notebooks[1:], *([c.lab] if c.lab else []),
                        *([c.solution] if c.solution and m.publish_solutions else [])]
            entry: dict = {"file": _doc(c.notebooks[0]), "title": c.title}
            if sections:
                entry["sections"] = [{"file": _doc(s)} for s in sections]
            chapters.append(entry)
        parts.append({"caption": part.title, "numbered": True, "chapters": chapters})
    if m.appendix:
        parts.append({"caption": "Appendix", "chapters": [{"file": _doc(f)} for f in m.appendix]})
    return {"format": "jb-book", "root": _doc(m.intro), "parts": parts}


def config(m: Manifest, site: Path, cache: Path = CACHE) -> dict:
    """The _config.yml content: built from committed outputs, every asset served from cache and site."""
    return {
        "title": m.title,
        "author": m.author,
        "copyright": "",
        "only_build_toc_files": True,
        "exclude_patterns": EXCLUDE,
        "execute": {"execute_notebooks": "off"},  # outputs were verified by nbval; never re-run them here
        "parse": {"myst_enable_extensions": ["amsmath", "colon_fence", "dollarmath", "substitution"]},
        # No launch/repository/edit buttons or comments: each would link to or load from the internet.
        "launch_buttons": {"notebook_interface": "classic", "binderhub_url": "", "jupyterhub_url": "",
                           "thebe": False, "colab_url": "", "deepnote_url": ""},
        "repository": {"url": "", "branch": "main"},
        "html": {"favicon": str((site / "favicon.svg").resolve()), "use_repository_button": False,
                 "use_issues_button": False, "use_edit_page_button": False,
                 "comments": {"hypothesis": False, "utterances": False}},
        "sphinx": {"recursive_update": True, "config": {  # merged into Jupyter Book's own settings
            # sphinx-thebe (live code via Binder) is off here yet still injects its config script twice, a
            # console error on every page, with a CDN URL in it: leave the extension out.
            "extensions": [e for e in get_default_sphinx_config()["extensions"] if e != "sphinx_thebe"],
            # Without a default the theme logs "Got invalid theme mode" on every page.
            "html_context": {"default_mode": "auto"},
            # "page.ipynb#a-heading" links (chapter 4 points at a section of chapter 13): anchors for ## and ###
            "myst_heading_anchors": 3,
            # Copied whole into _static/: fonts and MathJax's lazily loaded parts come along.
            "html_static_path": [str(cache.resolve()), str(site.resolve())],
            # The standalone html-manager bundle (no require.js) instead of myst-nb's CDN default,
            # preceded by the MathJax 2 -> 3 bridge (dict order is page order).
            "nb_ipywidgets_js": {"widgets-mathjax3.js": {}, "widgets/embed.js": {}},
            "mathjax_path": "mathjax/tex-chtml.js",  # relative paths are taken from _static/
        }},
    }


def write_config(m: Manifest, out_dir: Path, cache: Path = CACHE) -> tuple[Path, Path]:
    """Write _config.yml and _toc.yml (and the SITE_FILES they name) into out_dir; return the two paths."""
    site = out_dir / "site"
    site.mkdir(parents=True, exist_ok=True)
    for name, text in SITE_FILES.items():
        (site / name).write_text(text, encoding="utf-8")
    paths = out_dir / "_config.yml", out_dir / "_toc.yml"
    for path, content in zip(paths, (config(m, site, cache), toc(m))):
        path.write_text("# Generated from book.yml by labkit.course.book; do not edit.\n"
                        + yaml.safe_dump(content, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return paths


def build(root: Path = ROOT) -> Path:
    """Build the book of the course at root into root/_build/html; return the path of index.html."""
    fetch_assets()
    m = manifest_mod.load(root / "book.yml")
    out = root / "_build"
    # Start fresh: Sphinx only re-reads changed pages, so an incremental build would hide old warnings.
    for stale in ("html", ".doctrees", "jupyter_execute"):
        shutil.rmtree(out / stale, ignore_errors=True)
    cfg, toc_file = write_config(m, out)
    # Jupyter Book's CLI in a child process: Sphinx keeps global state, and the CLI resolves the config.
    cmd = [sys.executable, "-c", "from jupyter_book.cli.main import main; main()", "build", str(root),
           "--path-output", str(root), "--config", str(cfg), "--toc", str(toc_file),
           "--warningiserror", "--keep-going"]  # any warning fails the build, after listing all of them
    if subprocess.run(cmd).returncode != 0:
        raise RuntimeError(f"the book failed to build (see the warnings above); command: {' '.join(cmd)}")
    index = out / "html" / "index.html"
    if not index.is_file():
        raise RuntimeError(f"the build succeeded but wrote no {index}")
    print(f"The book is at {index}")
    return index
