"""The retrieval corpus: documents that are the same on every install, split into sections at their headings.

Two sources, both offline:

- CPython's bundled documentation topics (`pydoc_data.topics`, chapter 1's corpus, see `labkit.corpus`): one
  document per topic, id `pydoc/<topic>`. Headings are reStructuredText-style: a title line underlined by a
  line of one repeated mark (`*`, `=`, `-`, ...) exactly as long as the title, as Sphinx's text builder writes.
- This course's own prose: the markdown cells of every lesson notebook of chapters 1-11, as `book.yml` lists
  them, one document per notebook, id `course/<chapter-id>/<notebook-stem>`. Headings are markdown `#` lines
  (ignored inside ``` fenced code).

A `Document`'s text is the concatenation of its sections' texts, in order: the sections partition the text,
each starting at its heading line (text before the first heading, if any, is a section headed by the title).
This is what heading-aware chunking (`labkit.rag.chunking`) relies on.

`corpus_fingerprint` hashes every id, title and text, so an evaluation set or a saved index built on one corpus
can tell when the corpus has changed under it.
"""
from __future__ import annotations

import hashlib
import json
import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from labkit.corpus import PINNED_PYTHON, PYDOC_TOPICS_SHA256, CorpusDriftWarning, fingerprint
from labkit.course import manifest

# The lessons chapter 12 retrieves over: chapters 1-11 (a fixed list, so that adding chapter 12's own notebooks
# to book.yml does not change the corpus its evaluation set was written against).
COURSE_CHAPTERS: tuple[str, ...] = ("01-ngrams", "02-neural-lm", "03-attention", "04-smollm2", "05-kvcache",
                                    "06-kv-heads", "07-flash-attention", "08-gpu-triton", "09-compress-finetune",
                                    "10-prompting", "11-reasoning")


@dataclass(frozen=True)
class Section:
    """A contiguous piece of a document that starts at a heading (`start`: its offset in the document text).

    `id` is `<doc_id>@<n>`, n counting the document's sections from 0: a gold label for section-level retrieval
    that does not depend on how the section is later chunked."""
    id: str
    heading: str
    text: str
    start: int

    @property
    def end(self) -> int:
        return self.start + len(self.text)


@dataclass(frozen=True)
class Document:
    """One document: a stable `id`, a `title`, where it came from (`source`), and its sections in order."""
    id: str
    title: str
    source: str
    sections: tuple[Section, ...]

    @property
    def text(self) -> str:
        return "".join(s.text for s in self.sections)


# ---------------------------------------------------------------- splitting text at headings

_UNDERLINE = re.compile(r"([*=\-^~\"#+])\1{2,}")


def _rst_headings(lines: Sequence[str]) -> list[tuple[int, str]]:
    """(line index, heading) for each reST heading: a non-blank, unindented line whose next line is one mark
    repeated to exactly its length (a table rule has spaces or a different length, so it does not match)."""
    bare = [line.rstrip("\n") for line in lines]
    return [(i, bare[i].strip()) for i in range(len(bare) - 1)
            if bare[i].strip() and not bare[i][0].isspace()
            and _UNDERLINE.fullmatch(bare[i + 1]) and len(bare[i + 1]) == len(bare[i])]


_MD_HEADING = re.compile(r"(#{1,6})\s+(.*?)\s*#*\s*")


def _md_headings(lines: Sequence[str]) -> list[tuple[int, str]]:
    """(line index, heading) for each markdown `#` heading outside fenced code blocks."""
    out, fenced = [], False
    for i, line in enumerate(lines):
        bare = line.rstrip("\n")
        if bare.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
        elif not fenced and (m := _MD_HEADING.fullmatch(bare)):
            out.append((i, m.group(2)))
    return out


def split_sections(doc_id: str, text: str, headings: Sequence[tuple[int, str]], title: str
                   ) -> tuple[Section, ...]:
    """Cut `text` (split into lines with their line ends kept) before every heading line (given as
    (line index, heading)); text before the first heading becomes a section headed by `title`."""
    lines = text.splitlines(keepends=True)
    cuts = [(0, title)] if not headings or headings[0][0] != 0 else []
    cuts += list(headings)
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line))
    sections, bounds = [], [c[0] for c in cuts] + [len(lines)]
    for (line_no, heading), stop in zip(cuts, bounds[1:]):
        piece = text[offsets[line_no]:offsets[stop]]
        if piece:
            sections.append(Section(id=f"{doc_id}@{len(sections)}", heading=heading, text=piece,
                                    start=offsets[line_no]))
    return tuple(sections)


def pydoc_document(topic: str, text: str) -> Document:
    """A pydoc topic as a Document; its title is its first heading (or the topic name)."""
    lines = text.splitlines(keepends=True)
    heads = _rst_headings(lines)
    title = heads[0][1] if heads else topic
    doc_id = f"pydoc/{topic}"
    return Document(id=doc_id, title=title, source="pydoc_data.topics",
                    sections=split_sections(doc_id, text, heads, title))


def notebook_markdown(path: Path) -> str:
    """The markdown cells of a notebook, joined by blank lines (code and outputs are left out)."""
    cells = json.loads(Path(path).read_text(encoding="utf-8"))["cells"]
    texts = ["".join(c["source"]).strip("\n") for c in cells if c["cell_type"] == "markdown"]
    return "\n\n".join(t for t in texts if t.strip()) + "\n"


def notebook_document(chapter_id: str, path: Path, rel: str) -> Document:
    text = notebook_markdown(path)
    heads = _md_headings(text.splitlines(keepends=True))
    title = heads[0][1] if heads else Path(rel).stem
    doc_id = f"course/{chapter_id}/{Path(rel).stem}"
    return Document(id=doc_id, title=title, source=rel, sections=split_sections(doc_id, text, heads, title))


# ---------------------------------------------------------------- the corpus

def pydoc_documents(strict: bool = False) -> list[Document]:
    """One Document per pydoc topic, sorted by id; warns (or raises, if `strict`) when this Python's topics differ
    from the course's pinned snapshot, as `labkit.corpus.load_corpus` does."""
    from pydoc_data.topics import topics

    sha = fingerprint(topics)
    if sha != PYDOC_TOPICS_SHA256:
        msg = (f"pydoc_data.topics differs from the course's pinned snapshot (Python {PINNED_PYTHON}): "
               f"fingerprint {sha[:12]}... != {PYDOC_TOPICS_SHA256[:12]}...; retrieval results will differ")
        if strict:
            raise ValueError(msg)
        warnings.warn(msg, CorpusDriftWarning, stacklevel=2)
    return [pydoc_document(name, topics[name]) for name in sorted(topics)]


def course_documents(chapters: Iterable[str] = COURSE_CHAPTERS, book: Path | str = manifest.MANIFEST
                     ) -> list[Document]:
    """One Document per lesson notebook of the given chapters, in book order."""
    m = manifest.load(book)
    wanted = list(chapters)
    known = {c.id: c for c in m.chapters}
    missing = [c for c in wanted if c not in known]
    if missing:
        raise ValueError(f"chapters {missing} are not in {book}; it has {sorted(known)}")
    return [notebook_document(cid, m.root / nb, nb) for cid in wanted for nb in known[cid].notebooks]


def load_documents(strict: bool = False, course: bool = True) -> list[Document]:
    """The corpus: pydoc topics, then (unless `course=False`) the lessons of chapters 1-11. Ids are unique."""
    docs = pydoc_documents(strict=strict) + (course_documents() if course else [])
    ids = [d.id for d in docs]
    if len(set(ids)) != len(ids):  # e.g. two notebooks with one stem in a chapter
        raise ValueError(f"document ids repeat: {sorted({i for i in ids if ids.count(i) > 1})}")
    return docs


def corpus_fingerprint(docs: Iterable[Document]) -> str:
    """SHA-256 (hex) of the corpus: a JSON list of [id, title, section headings and texts] in the given order.

    JSON escaping makes the encoding unambiguous (no text can forge a separator), so any change to any text,
    title, id, section boundary or document order changes the fingerprint, and nothing else does."""
    docs = list(docs)
    if not all(isinstance(d, Document) for d in docs):
        raise TypeError("corpus_fingerprint expects Documents (from load_documents)")
    blob = json.dumps([[d.id, d.title, [[s.heading, s.text] for s in d.sections]] for d in docs],
                      ensure_ascii=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()
