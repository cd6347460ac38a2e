"""Chunking: cutting documents into the passages a retriever indexes, three ways, each with overlap.

A retriever returns passages, not books: a chunk must be small enough to fit an embedding model's window
(all-MiniLM-L6-v2 reads 256 word pieces, about 200 English words) and to be quoted in a prompt, yet large
enough to hold an answer with its context. Three strategies, compared on retrieval quality in the chapter:

- `fixed_size_chunks`: windows of `size` **words** that advance by `size - overlap` words. Words, not
  characters, because both retrievers see words (BM25 counts them, the embedding model reads word pieces), so
  a word budget tracks what the model reads, and a window never cuts a word in half.
- `sentence_chunks`: whole sentences (`split_sentences`) packed greedily up to `size` words; the next chunk
  repeats the previous chunk's last `overlap` sentences, so a fact that spans a boundary is whole in one chunk.
- `heading_chunks`: never crosses a section boundary (`labkit.rag.documents` splits documents at headings): a
  section of at most `size` words is one chunk; a longer one is cut into fixed-size windows within it.

Every chunk is a span of its document: `chunk.text == doc.text[chunk.start:chunk.end]`, with a stable id
`<doc_id>#<n>` (n counts the document's chunks from 0) and the heading of the section it starts in. Spans reach
from the start of their first word to the start of the next chunk's words (or the text's end), trailing
whitespace included, so the chunks of a document cover every character of it — unless a document (or, for
`heading_chunks`, a section) has no word at all, which yields no chunk: there is nothing to retrieve.
"""
from __future__ import annotations

import bisect
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from labkit.rag.documents import Document

_WORD = re.compile(r"\S+")


@dataclass(frozen=True)
class Chunk:
    """A span [start, end) of document `doc_id`; `heading` is the heading of the section where it starts."""
    id: str
    doc_id: str
    text: str
    start: int
    end: int
    heading: str


# ---------------------------------------------------------------- validation

def _check(size: object, overlap: object, overlap_unit: str = "words") -> None:
    for name, value in (("size", size), ("overlap", overlap)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if size < 1:
        raise ValueError(f"size must be >= 1 word, got {size}")
    if overlap < 0:
        raise ValueError(f"overlap must be >= 0 {overlap_unit}, got {overlap}")
    if overlap >= size:
        raise ValueError(f"overlap must be smaller than size (else a chunk would not advance), "
                         f"got overlap={overlap} >= size={size}")


def _check_doc(doc: object) -> Document:
    if not isinstance(doc, Document):
        raise TypeError(f"expected a labkit.rag.documents.Document, got {type(doc).__name__}")
    return doc


# ---------------------------------------------------------------- spans over plain text

def word_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of every word: a maximal run of non-whitespace characters."""
    return [m.span() for m in _WORD.finditer(text)]


def fixed_size_spans(text: str, size: int, overlap: int = 0) -> list[tuple[int, int]]:
    """Windows of `size` words advancing by `size - overlap` words, as character spans of `text`.

    Consecutive windows share exactly `overlap` words; the last window may be shorter. The first span starts
    at 0 and each runs to the start of the word after its last (the last to len(text)), so the spans cover
    the text. No words, no spans."""
    _check(size, overlap)
    words = word_spans(text)
    n, step, spans = len(words), size - overlap, []
    for first in range(0, n, step):
        last = min(first + size, n)  # one past the window's last word
        start = 0 if first == 0 else words[first][0]
        end = words[last][0] if last < n else len(text)
        spans.append((start, end))
        if last == n:
            break
    return spans


# A sentence ends at . ! or ? (and any closing quotes or brackets) followed by whitespace, or at a blank
# line: headings, list items and code lines often carry no full stop, and a paragraph break ends them.
_BOUNDARY = re.compile(r"[.!?][\"')\]]*\s+|\n[ \t]*\n\s*")
# Abbreviations whose full stop does not end a sentence (the common ones in technical English). Others,
# such as initials ("G. van Rossum"), do split: the splitter is simple on purpose, and its errors only make
# some chunks a sentence shorter.
_ABBREVIATIONS = frozenset({"e.g.", "i.e.", "etc.", "vs.", "cf.", "mr.", "dr.", "no.", "fig.", "eq."})


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """Split `text` into sentences, as (start, end) spans that partition it (each keeps its trailing
    whitespace; leading whitespace goes with the first sentence). See `_BOUNDARY` for where a sentence ends.
    Every span holds a word unless the whole text is blank."""
    if not isinstance(text, str):
        raise TypeError(f"expected a str, got {type(text).__name__}")
    cuts = [0]
    for m in _BOUNDARY.finditer(text):
        if m.end() == len(text):
            break
        if not text[cuts[-1]:m.start()].strip():  # leading blank lines join the sentence after them
            continue
        # the word the full stop ends; 8 characters hold every abbreviation listed (and a space before it)
        if m.group()[0] == "." and text[max(0, m.start() - 7):m.start() + 1].rsplit(None, 1)[-1].lower() \
                in _ABBREVIATIONS:
            continue
        cuts.append(m.end())
    return [(a, b) for a, b in zip(cuts, cuts[1:] + [len(text)]) if b > a]


def split_sentences(text: str) -> list[str]:
    """The sentences of `text` (see `sentence_spans`), trailing whitespace stripped."""
    return [text[a:b].rstrip() for a, b in sentence_spans(text)]


def sentence_packs(text: str, size: int, overlap: int = 1) -> list[tuple[int, int]]:
    """Pack whole sentences into chunks of at most `size` words; return (first, last + 1) sentence indices.

    Each chunk after the first starts with the previous chunk's last `overlap` sentences, or fewer: never all
    of the previous chunk's sentences (the chunk must advance), and only as many as leave room for the next
    new sentence within `size`. A single sentence longer than `size` words becomes a chunk of its own, the one
    case where a chunk exceeds `size`."""
    _check(size, overlap, overlap_unit="sentences")
    spans = sentence_spans(text)
    counts = [len(_WORD.findall(text[a:b])) for a, b in spans]
    if not any(counts):
        return []
    packs, first, n = [], 0, len(spans)
    while True:
        last, words = first, 0
        while last < n and (last == first or words + counts[last] <= size):
            words += counts[last]
            last += 1
        packs.append((first, last))
        if last == n:
            return packs
        carry = min(overlap, last - first - 1)
        while carry and sum(counts[last - carry:last]) + counts[last] > size:
            carry -= 1
        first = last - carry


# ---------------------------------------------------------------- chunks of documents

def _heading_at(doc: Document, offset: int) -> str:
    starts = [s.start for s in doc.sections]
    return doc.sections[bisect.bisect_right(starts, offset) - 1].heading


def _chunks(doc: Document, spans: Iterable[tuple[int, int]]) -> list[Chunk]:
    text = doc.text
    return [Chunk(id=f"{doc.id}#{n}", doc_id=doc.id, text=text[a:b], start=a, end=b, heading=_heading_at(doc, a))
            for n, (a, b) in enumerate(spans)]


def fixed_size_chunks(doc: Document, size: int = 200, overlap: int = 40) -> list[Chunk]:
    """Windows of `size` words, consecutive ones sharing `overlap` words (see `fixed_size_spans`)."""
    return _chunks(_check_doc(doc), fixed_size_spans(doc.text, size, overlap))


def sentence_chunks(doc: Document, size: int = 200, overlap: int = 1) -> list[Chunk]:
    """Whole sentences packed up to `size` words, repeating up to `overlap` sentences (see `sentence_packs`)."""
    text = _check_doc(doc).text
    spans = sentence_spans(text)
    packs = sentence_packs(text, size, overlap)
    # the first chunk starts at 0 and the last ends at len(text), so leading blank text is covered too
    return _chunks(doc, [(spans[a][0], spans[b - 1][1]) for a, b in packs])


def heading_chunks(doc: Document, size: int = 200, overlap: int = 40) -> list[Chunk]:
    """One chunk per section of at most `size` words; a longer section is cut into fixed-size windows (with
    `overlap` words) inside it. No chunk crosses a section boundary."""
    _check(size, overlap)
    spans = []
    for section in _check_doc(doc).sections:
        spans += [(section.start + a, section.start + b) for a, b in fixed_size_spans(section.text, size, overlap)]
    return _chunks(doc, spans)


STRATEGIES = {"fixed": fixed_size_chunks, "sentence": sentence_chunks, "heading": heading_chunks}


def chunk_documents(docs: Sequence[Document], strategy: str = "heading", **kwargs) -> list[Chunk]:
    """Chunk every document with one strategy ("fixed", "sentence" or "heading"); kwargs go to it."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {sorted(STRATEGIES)}, got {strategy!r}")
    return [c for doc in docs for c in STRATEGIES[strategy](doc, **kwargs)]
