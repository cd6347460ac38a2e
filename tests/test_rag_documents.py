"""labkit.rag.documents: the offline corpus, its stable ids, its sections and its fingerprint."""
import dataclasses
import json
import warnings

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import labkit.rag.documents as documents
from labkit.corpus import CorpusDriftWarning
from labkit.course import manifest
from labkit.rag.documents import (COURSE_CHAPTERS, Document, Section, corpus_fingerprint, course_documents,
                                  load_documents, notebook_document, pydoc_document, split_sections)


@pytest.fixture(scope="module")
def docs() -> list[Document]:
    return load_documents(strict=True)


def test_counts_and_ids(docs):
    from pydoc_data.topics import topics

    book = manifest.load()
    lessons = [(c.id, nb) for c in book.chapters if c.id in COURSE_CHAPTERS for nb in c.notebooks]
    assert len(lessons) == 26  # chapters 1-11 as book.yml lists them today
    assert len(docs) == len(topics) + len(lessons) == 79 + 26
    ids = [d.id for d in docs]
    assert len(set(ids)) == len(ids)
    assert ids[:79] == [f"pydoc/{t}" for t in sorted(topics)]
    assert ids[79:] == [f"course/{cid}/{nb.rsplit('/', 1)[1].removesuffix('.ipynb')}" for cid, nb in lessons]
    assert "course/01-ngrams/ngrams" in ids and "pydoc/class" in ids


def test_ids_are_stable_across_loads(docs):
    again = load_documents(strict=True)
    assert [d.id for d in again] == [d.id for d in docs]
    assert corpus_fingerprint(again) == corpus_fingerprint(docs)


def test_course_chapters_are_chapters_1_to_11():
    assert [int(c.split("-")[0]) for c in COURSE_CHAPTERS] == list(range(1, 12))
    known = {c.id for c in manifest.load().chapters}
    assert set(COURSE_CHAPTERS) <= known


def test_pydoc_text_is_kept_whole(docs):
    from pydoc_data.topics import topics

    for d in docs[:79]:
        assert d.text == topics[d.id.removeprefix("pydoc/")]
        assert d.source == "pydoc_data.topics"


def test_sections_partition_each_document(docs):
    for d in docs:
        assert d.sections, d.id
        pos = 0
        for n, s in enumerate(d.sections):
            assert s.start == pos and s.text and d.text[s.start:s.end] == s.text
            assert s.id == f"{d.id}@{n}"
            pos = s.end
        assert pos == len(d.text)
    section_ids = [s.id for d in docs for s in d.sections]
    assert len(set(section_ids)) == len(section_ids)


def test_known_headings(docs):
    by_id = {d.id: d for d in docs}
    assert by_id["pydoc/assignment"].title == "Assignment statements"
    assert [s.heading for s in by_id["pydoc/assignment"].sections] == [
        "Assignment statements", "Augmented assignment statements", "Annotated assignment statements"]
    ngrams = by_id["course/01-ngrams/ngrams"]
    assert ngrams.title == "n-gram language models"
    assert ngrams.sections[1].heading == "The chain rule, and why the joint table is hopeless"
    assert ngrams.sections[1].text.startswith("## The chain rule")
    assert sum(len(d.sections) for d in docs) > 2 * len(docs)  # headings were found, not one section each


def test_course_text_is_the_markdown_cells_only(docs):
    ngrams = next(d for d in docs if d.id == "course/01-ngrams/ngrams")
    cells = json.loads((manifest.ROOT / ngrams.source).read_text())["cells"]
    code = "".join(cells[next(i for i, c in enumerate(cells) if c["cell_type"] == "code")]["source"])
    assert code.strip() and code.strip() not in ngrams.text
    assert "A **language model** assigns a probability" in ngrams.text


def test_rst_headings():
    text = "Title\n*****\n\nintro\n\nPart one\n========\nbody\n=====  ====\na      b\n=====  ====\nx\n---\n"
    d = pydoc_document("t", text)
    assert d.title == "Title"
    assert [s.heading for s in d.sections] == ["Title", "Part one"]  # the table rule and the short rule are not
    assert d.text == text


def test_markdown_headings_skip_code_fences(tmp_path):
    nb = {"cells": [{"cell_type": "markdown", "source": ["intro\n"]},
                    {"cell_type": "code", "source": ["# not a heading\n"], "outputs": []},
                    {"cell_type": "markdown", "source": ["## Real\n", "```python\n", "# fenced comment\n", "```\n"]},
                    {"cell_type": "markdown", "source": ["### Deeper ##\n", "text"]}]}
    path = tmp_path / "demo.ipynb"
    path.write_text(json.dumps(nb))
    d = notebook_document("99-x", path, "chapters/99-x/demo.ipynb")
    assert d.id == "course/99-x/demo"
    assert d.title == "Real"
    assert [s.heading for s in d.sections] == ["Real", "Real", "Deeper"]  # text before the first heading: title
    assert "# not a heading" not in d.text and "# fenced comment" in d.text


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(["word ", "line\n", "\n", "# H\n", "Head\n", "====\n", "**\n"]), max_size=30))
def test_split_sections_partitions_any_text(parts):
    text = "".join(parts)
    lines = text.splitlines(keepends=True)
    heads = documents._rst_headings(lines) + [h for h in documents._md_headings(lines)]
    heads = sorted(set(heads))
    sections = split_sections("d", text, heads, "T")
    assert "".join(s.text for s in sections) == text
    assert all(s.text for s in sections)


def test_fingerprint_changes_on_any_edit_and_only_then(docs):
    base = corpus_fingerprint(docs)
    assert corpus_fingerprint(list(docs)) == base
    d = docs[5]
    s = d.sections[0]
    edited = dataclasses.replace(d, sections=(dataclasses.replace(s, text=s.text + " "), *d.sections[1:]))
    assert corpus_fingerprint([*docs[:5], edited, *docs[6:]]) != base
    assert corpus_fingerprint([*docs[:5], dataclasses.replace(d, title=d.title + "!"), *docs[6:]]) != base
    assert corpus_fingerprint(docs[:-1]) != base
    # moving a section boundary changes it even though the concatenated text is the same
    two = Document("x", "t", "s", (Section("x@0", "h", "ab", 0), Section("x@1", "k", "c", 2)))
    moved = Document("x", "t", "s", (Section("x@0", "h", "a", 0), Section("x@1", "k", "bc", 1)))
    assert two.text == moved.text and corpus_fingerprint([two]) != corpus_fingerprint([moved])


def test_fingerprint_rejects_other_things():
    with pytest.raises(TypeError, match="expects Documents"):
        corpus_fingerprint(["text"])


def test_unknown_chapter():
    with pytest.raises(ValueError, match=r"chapters \['99-nope'\] are not in"):
        course_documents(["99-nope"])


def test_drift_warns_or_refuses(monkeypatch):
    monkeypatch.setattr(documents, "PYDOC_TOPICS_SHA256", "0" * 64)
    with pytest.warns(CorpusDriftWarning, match="differs from the course's pinned snapshot"):
        documents.pydoc_documents()
    with pytest.raises(ValueError, match="differs from the course's pinned snapshot"):
        documents.pydoc_documents(strict=True)


def test_load_without_course_and_no_warning_on_the_pinned_python():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        docs = load_documents(course=False)
    assert len(docs) == 79 and all(d.id.startswith("pydoc/") for d in docs)
