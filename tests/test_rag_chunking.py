"""labkit.rag.chunking: coverage, overlap, size bounds, section boundaries, ids, errors; on hand cases, on random
documents (hypothesis) and on the real corpus."""
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labkit.rag.chunking import (STRATEGIES, Chunk, chunk_documents, fixed_size_chunks, fixed_size_spans,
                                 heading_chunks, sentence_chunks, sentence_packs, sentence_spans, split_sentences)
from labkit.rag.documents import Document, Section, load_documents, split_sections

WORD = re.compile(r"\S+")


def words(text: str) -> list[str]:
    return WORD.findall(text)


def doc_of(*sections: str, doc_id: str = "d") -> Document:
    """A Document whose sections are the given texts (each headed by its first word)."""
    out, pos = [], 0
    for n, text in enumerate(sections):
        out.append(Section(f"{doc_id}@{n}", (words(text) or ["-"])[0], text, pos))
        pos += len(text)
    return Document(doc_id, "title", "test", tuple(out))


def covered(text: str, chunks: list[Chunk]) -> bool:
    seen = [False] * len(text)
    for c in chunks:
        for i in range(c.start, c.end):
            seen[i] = True
    return all(seen)


# ---------------------------------------------------------------- hand cases

def test_fixed_size_hand_case():
    text = "a b c d e f g"
    assert [text[a:b] for a, b in fixed_size_spans(text, 3, 1)] == ["a b c ", "c d e ", "e f g"]
    assert [text[a:b] for a, b in fixed_size_spans(text, 3, 0)] == ["a b c ", "d e f ", "g"]
    assert [text[a:b] for a, b in fixed_size_spans(text, 7, 2)] == [text]
    assert [(a, b) for a, b in fixed_size_spans("  x  ", 2, 1)] == [(0, 5)]  # leading blanks are covered too
    assert fixed_size_spans("   \n ", 3, 1) == [] and fixed_size_spans("", 3, 1) == []


def test_sentence_splitter():
    text = "Use it, e.g. here. A list (see above.) Then!  Next one?\n\nA heading\nNo stop here"
    assert split_sentences(text) == ["Use it, e.g. here.", "A list (see above.)", "Then!", "Next one?",
                                     "A heading\nNo stop here"]
    assert "".join(text[a:b] for a, b in sentence_spans(text)) == text
    assert split_sentences("\n\n  Lead. In.") == ["\n\n  Lead.", "In."]
    assert split_sentences("x = 3.14 and f.read() work.") == ["x = 3.14 and f.read() work."]
    assert split_sentences('He said "stop." Then left.') == ['He said "stop."', "Then left."]


def test_sentence_packing_hand_case():
    text = "One two. Three four five. Six. Seven eight nine ten."
    # sentences of 2, 3, 1, 4 words; size 6, overlap 1
    assert sentence_packs(text, 6, 1) == [(0, 3), (2, 4)]
    chunks = sentence_chunks(doc_of(text), size=6, overlap=1)
    assert [c.text for c in chunks] == ["One two. Three four five. Six. ", "Six. Seven eight nine ten."]
    assert sentence_packs(text, 6, 0) == [(0, 3), (3, 4)]
    # overlap 2 would carry "Three four five. Six." (4 words) + the 4-word sentence > 6: carry shrinks to 1
    assert sentence_packs(text, 6, 2) == [(0, 3), (2, 4)]


def test_an_over_long_sentence_is_its_own_chunk():
    text = "Short one. " + " ".join(["w"] * 10) + ". Tail."
    chunks = sentence_chunks(doc_of(text), size=4, overlap=1)
    assert [len(words(c.text)) for c in chunks] == [2, 10, 1]


def test_heading_chunks_hand_case():
    d = doc_of("# A\nx y\n\n", "# B\n" + " ".join("abcdefg") + "\n")
    chunks = heading_chunks(d, size=4, overlap=1)
    assert [c.text for c in chunks] == ["# A\nx y\n\n", "# B\na b ", "b c d e ", "e f g\n"]
    assert [c.heading for c in chunks] == ["#", "#", "#", "#"]
    assert [c.id for c in chunks] == ["d#0", "d#1", "d#2", "d#3"]
    # fixed-size chunking of the same document crosses the boundary
    assert any(c.start < d.sections[1].start < c.end for c in fixed_size_chunks(d, size=4, overlap=1))


def test_chunk_headings_come_from_the_section_where_they_start():
    d = Document("d", "T", "s", (Section("d@0", "First", "one two three ", 0),
                                 Section("d@1", "Second", "four five six", 14)))
    chunks = fixed_size_chunks(d, size=2, overlap=0)
    # fixed-size windows ignore sections: "three four " starts in the first and is headed by it
    assert [(c.text, c.heading) for c in chunks] == [("one two ", "First"), ("three four ", "First"),
                                                     ("five six", "Second")]


# ---------------------------------------------------------------- properties on random documents

TOKENS = st.sampled_from(["alpha", "beta", "x", "A.", "end.", "why?", "e.g.", "(see", "it.)", " ", "  ", "\n",
                          "\n\n", "\t"])
TEXTS = st.lists(TOKENS, max_size=60).map(" ".join)
SIZES = st.integers(1, 12).flatmap(lambda size: st.tuples(st.just(size), st.integers(0, size - 1)))


def check_common(doc: Document, chunks: list[Chunk]) -> None:
    assert [c.id for c in chunks] == [f"{doc.id}#{n}" for n in range(len(chunks))]
    for c in chunks:
        assert c.doc_id == doc.id and doc.text[c.start:c.end] == c.text and c.start < c.end
    if words(doc.text):
        assert chunks and all(words(c.text) for c in chunks)
    assert [c.start for c in chunks] == sorted(c.start for c in chunks)


@settings(max_examples=150, deadline=None)
@given(TEXTS, SIZES)
def test_fixed_size_properties(text, size_overlap):
    size, overlap = size_overlap
    doc = doc_of(text)
    chunks = fixed_size_chunks(doc, size=size, overlap=overlap)
    check_common(doc, chunks)
    if words(text):
        assert covered(text, chunks)
    assert all(len(words(c.text)) <= size for c in chunks)
    assert all(len(words(c.text)) == size for c in chunks[:-1])
    for a, b in zip(chunks, chunks[1:]):
        assert len(words(doc.text[b.start:a.end])) == overlap  # exactly `overlap` words shared
    # the windows' words, overlaps removed, are the text's words
    step = size - overlap
    rebuilt = [w for c in chunks[:-1] for w in words(c.text)[:step]] + (words(chunks[-1].text) if chunks else [])
    assert rebuilt == words(text)


@settings(max_examples=150, deadline=None)
@given(TEXTS, SIZES)
def test_sentence_properties(text, size_overlap):
    size, overlap = size_overlap
    doc = doc_of(text)
    chunks = sentence_chunks(doc, size=size, overlap=overlap)
    check_common(doc, chunks)
    spans = sentence_spans(text)
    assert "".join(text[a:b] for a, b in spans) == text  # sentences partition the text
    assert len(spans) <= 1 or all(words(text[a:b]) for a, b in spans)
    if words(text):
        assert covered(text, chunks)
    counts = [len(words(text[a:b])) for a, b in spans]
    packs = sentence_packs(text, size, overlap)
    for (first, last), c in zip(packs, chunks):
        assert (c.start, c.end) == (spans[first][0], spans[last - 1][1])  # whole sentences only
        assert sum(counts[first:last]) <= size or last - first == 1  # only a lone over-long sentence exceeds
    for (f0, l0), (f1, l1) in zip(packs, packs[1:]):
        carried = l0 - f1
        assert 0 <= carried <= overlap and f1 > f0 and l1 > l0
        if carried < overlap and carried < l0 - f0 - 1:  # fewer than asked only when one more would not fit
            assert sum(counts[f1 - 1:l0]) + counts[l0] > size
    if packs:
        assert packs[-1][1] == len(spans)


@st.composite
def sectioned(draw):
    parts = draw(st.lists(TEXTS, min_size=1, max_size=5))
    return doc_of(*[f"# H{n}\n{p}\n" for n, p in enumerate(parts)])


@settings(max_examples=150, deadline=None)
@given(sectioned(), SIZES)
def test_heading_properties(doc, size_overlap):
    size, overlap = size_overlap
    chunks = heading_chunks(doc, size=size, overlap=overlap)
    check_common(doc, chunks)
    assert covered(doc.text, chunks)
    assert all(len(words(c.text)) <= size for c in chunks)
    for c in chunks:  # inside exactly one section, and headed by it
        inside = [s for s in doc.sections if s.start <= c.start and c.end <= s.end]
        assert len(inside) == 1 and c.heading == inside[0].heading
    for s in doc.sections:  # a section that fits is one chunk
        mine = [c for c in chunks if s.start <= c.start < s.end]
        if len(words(s.text)) <= size:
            assert [(c.start, c.end) for c in mine] == [(s.start, s.end)]
        for a, b in zip(mine, mine[1:]):
            assert len(words(doc.text[b.start:a.end])) == overlap


@settings(max_examples=50, deadline=None)
@given(TEXTS, SIZES)
def test_chunking_is_deterministic(text, size_overlap):
    size, overlap = size_overlap
    doc = doc_of(text)
    for fn in STRATEGIES.values():
        assert fn(doc, size=size, overlap=overlap) == fn(doc, size=size, overlap=overlap)


# ---------------------------------------------------------------- the real corpus

@pytest.fixture(scope="module")
def docs():
    return load_documents(strict=True)


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_real_corpus(docs, strategy):
    chunks = chunk_documents(docs, strategy, size=200, overlap=1 if strategy == "sentence" else 40)
    ids = [c.id for c in chunks]
    assert len(set(ids)) == len(ids)
    by_doc = {}
    for c in chunks:
        by_doc.setdefault(c.doc_id, []).append(c)
    assert set(by_doc) == {d.id for d in docs}
    for d in docs:
        assert covered(d.text, by_doc[d.id])
    if strategy != "sentence":
        assert max(len(words(c.text)) for c in chunks) <= 200
    assert len(chunks) > len(docs)


def test_split_sections_sections_work_with_chunking():
    text = "Intro line.\n# A\none two three.\n# B\nfour.\n"
    sections = split_sections("t", text, [(1, "A"), (3, "B")], "T")
    d = Document("t", "T", "s", sections)
    assert [c.heading for c in heading_chunks(d, size=5, overlap=0)] == ["T", "A", "B"]


# ---------------------------------------------------------------- errors

@pytest.mark.parametrize("fn", list(STRATEGIES.values()))
def test_errors(fn):
    d = doc_of("some text here")
    with pytest.raises(ValueError, match="size must be >= 1 word, got 0"):
        fn(d, size=0, overlap=0)
    with pytest.raises(ValueError, match=r"overlap must be smaller than size.*overlap=3 >= size=3"):
        fn(d, size=3, overlap=3)
    with pytest.raises(ValueError, match="overlap must be >= 0"):
        fn(d, size=3, overlap=-1)
    with pytest.raises(TypeError, match="size must be an int, got float"):
        fn(d, size=2.5, overlap=0)
    with pytest.raises(TypeError, match="expected a labkit.rag.documents.Document, got str"):
        fn("some text", size=3, overlap=1)


def test_unknown_strategy():
    with pytest.raises(ValueError, match=r"strategy must be one of \['fixed', 'heading', 'sentence'\]"):
        chunk_documents([], "semantic")


def test_sentence_spans_rejects_non_text():
    with pytest.raises(TypeError, match="expected a str, got bytes"):
        sentence_spans(b"x")
