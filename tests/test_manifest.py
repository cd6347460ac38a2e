"""book.yml is the one manifest: everything on disk is in it, everything in it is on disk."""
import textwrap

import pytest

from labkit.course import manifest


def test_manifest_and_disk_agree():
    assert manifest.load().problems() == []


def test_every_chapter_has_lesson_lab_and_solution():
    m = manifest.load()
    assert m.chapters, "book.yml lists no chapters"
    for c in m.chapters:
        assert c.notebooks and c.lab and c.solution, f"chapter {c.id} needs lesson notebook(s), a lab and a solution"


def test_labkit_modules_named_by_chapters_exist():
    m = manifest.load()
    for c in m.chapters:
        for mod in c.labkit:
            assert (m.root / "labkit" / (mod.replace(".", "/") + ".py")).is_file(), f"{c.id}: labkit.{mod} missing"


@pytest.fixture
def tiny_course(tmp_path):
    (tmp_path / "book").mkdir()
    (tmp_path / "book" / "intro.md").write_text("# intro\n")
    for d in ("chapters/01-x", "labs", "solutions"):
        (tmp_path / d).mkdir(parents=True)
    for f in ("chapters/01-x/x.ipynb", "labs/01-x.ipynb", "solutions/01-x.ipynb"):
        (tmp_path / f).write_text("{}")
    (tmp_path / "book.yml").write_text(textwrap.dedent("""\
        title: T
        intro: book/intro.md
        parts:
          - title: P
            chapters:
              - {id: "01-x", title: X, notebooks: [chapters/01-x/x.ipynb], lab: labs/01-x.ipynb, solution: solutions/01-x.ipynb}
        """))
    return tmp_path


def test_unlisted_notebook_is_caught(tiny_course):
    assert manifest.load(tiny_course / "book.yml").problems() == []
    (tiny_course / "chapters" / "01-x" / "scratch.ipynb").write_text("{}")
    assert manifest.load(tiny_course / "book.yml").problems() == [
        "chapters/01-x/scratch.ipynb is on disk but not in book.yml"]


def test_missing_file_is_caught(tiny_course):
    (tiny_course / "labs" / "01-x.ipynb").unlink()
    assert manifest.load(tiny_course / "book.yml").problems() == ["book.yml names labs/01-x.ipynb, which does not exist"]


def test_malformed_manifest_gives_a_clear_error(tiny_course):
    (tiny_course / "book.yml").write_text("title: T\nintro: i.md\nparts:\n  - title: P\n    chapters:\n      - {id: a, title: A}\n")
    with pytest.raises(manifest.ManifestError, match=r"parts\[0\]\.chapters\[0\]: missing required key 'notebooks'"):
        manifest.load(tiny_course / "book.yml")


def test_verified_notebooks_are_lessons_and_solutions_only():
    m = manifest.load()
    verified = m.verified_notebooks()
    assert all(not v.startswith("labs/") for v in verified)
    assert set(verified) == {nb for c in m.chapters for nb in (*c.notebooks, c.solution)}


def test_portability_skips_need_a_listed_notebook_a_reason_and_a_current_digest(tiny_course):
    book = tiny_course / "book.yml"
    nb = tiny_course / "chapters" / "01-x" / "x.ipynb"
    nb.write_text('{"cells": [{"cell_type": "code", "source": ["1 + 1"], "outputs": []}]}')
    digest = manifest.content_digest(nb)
    base = book.read_text()
    book.write_text(base + f"portability_skip:\n  chapters/01-x/x.ipynb: {{why: slow, verified: {digest}}}\n")
    m = manifest.load(book)
    assert m.problems() == [] and m.portable_notebooks() == ["solutions/01-x.ipynb"]
    nb.write_text('{"cells": [{"cell_type": "code", "source": ["1 + 2"], "outputs": []}]}')
    assert manifest.load(book).problems() == [
        "portability_skip: chapters/01-x/x.ipynb changed since it passed the portability run: run `make "
        "portability NOTEBOOKS=chapters/01-x/x.ipynb`, then set its verified: to "
        "`python -m labkit.course digest chapters/01-x/x.ipynb`"]
    book.write_text(base + "portability_skip:\n  chapters/01-x/x.ipynb: {why: ''}\n  chapters/01-x/gone.ipynb: {}\n")
    assert sorted(manifest.load(book).problems()) == [
        "portability_skip names chapters/01-x/gone.ipynb, which is not a lesson or solution in book.yml",
        "portability_skip: chapters/01-x/x.ipynb needs a reason (why:)"]
