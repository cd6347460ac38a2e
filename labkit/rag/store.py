"""A persistent index: chunks, embeddings and BM25's statistics in one SQLite file, reloaded instead of rebuilt.

Embedding a corpus is the expensive step of retrieval (minutes on a CPU for this chapter's 904 chunks); reading
the vectors back takes milliseconds. So an index is saved once and a restarted notebook reloads it. SQLite
(Python's own `sqlite3`) is one file, transactional and readable from any language; the schema, version 1:

    meta(key, value)          format, version, the corpus fingerprint, strategy, BM25 variant and parameters
    chunks(row, id, doc_id, start, end, heading, text, length, embedding)
                              one row per chunk, in index order; `length` = its BM25 tokens, `embedding` =
                              its vector as little-endian float32 bytes
    terms(term_id, term, df)  the vocabulary and each term's document frequency
    postings(term_id, row, tf)  how often each term occurs in each chunk

The postings, lengths and document frequencies are BM25's statistics: `load` rebuilds the BM25 index from them
(each chunk as its bag of words: BM25 ignores word order) without re-tokenising the text, and checks they add up.

A saved index belongs to one corpus. `load(path, docs)` compares the fingerprint of the documents given
(`labkit.rag.documents.corpus_fingerprint`) with the stored one and raises `StaleIndexError` when they differ:
an index of another corpus would return chunk ids and offsets that no longer point at the right text. It does
not rebuild on its own, because rebuilding means re-embedding (minutes) and should be asked for:
`load_or_build` is that request (it rebuilds and re-saves when the file is missing or stale).
"""
from __future__ import annotations

import os
import sqlite3
from collections import Counter
from collections.abc import Sequence
from contextlib import closing
from pathlib import Path

import numpy as np
import torch

from labkit.rag.bm25 import BM25
from labkit.rag.chunking import Chunk
from labkit.rag.documents import Document, corpus_fingerprint
from labkit.rag.index import Index, tokenize

FORMAT = "labkit.rag.store"
VERSION = 1

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE chunks (row INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, doc_id TEXT NOT NULL, start INTEGER NOT NULL,
                     "end" INTEGER NOT NULL, heading TEXT NOT NULL, text TEXT NOT NULL, length INTEGER NOT NULL,
                     embedding BLOB NOT NULL);
CREATE TABLE terms (term_id INTEGER PRIMARY KEY, term TEXT NOT NULL UNIQUE, df INTEGER NOT NULL);
CREATE TABLE postings (term_id INTEGER NOT NULL, row INTEGER NOT NULL, tf INTEGER NOT NULL,
                       PRIMARY KEY (term_id, row)) WITHOUT ROWID;
"""


class StaleIndexError(ValueError):
    """The saved index was built on a different corpus than the documents given to load it."""


def save(index: Index, path: str | Path) -> Path:
    """Write `index` to the SQLite file `path` (replacing it, atomically: a crash leaves the old file whole)."""
    if not isinstance(index, Index):
        raise TypeError(f"save expects a labkit.rag.index.Index, got {type(index).__name__}")
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    bags = [Counter(tokenize(c.text)) for c in index.chunks]
    vocabulary = sorted(set().union(*bags))
    term_id = {t: i for i, t in enumerate(vocabulary)}
    df = Counter(t for bag in bags for t in bag)
    vectors = index.embeddings.detach().cpu().numpy().astype("<f4")
    meta = {"format": FORMAT, "version": str(VERSION), "fingerprint": index.fingerprint, "strategy": index.strategy,
            "variant": index.variant, "k1": repr(index.bm25.k1), "b": repr(index.bm25.b),
            "delta": repr(index.bm25.delta), "candidates": str(index.candidates), "dim": str(vectors.shape[1]),
            "chunks": str(len(index.chunks))}
    with closing(sqlite3.connect(tmp)) as con, con:
        con.executescript(_SCHEMA)
        con.executemany("INSERT INTO meta VALUES (?, ?)", meta.items())
        con.executemany("INSERT INTO chunks VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        ((row, c.id, c.doc_id, c.start, c.end, c.heading, c.text, sum(bag.values()),
                          vectors[row].tobytes()) for row, (c, bag) in enumerate(zip(index.chunks, bags))))
        con.executemany("INSERT INTO terms VALUES (?, ?, ?)", ((term_id[t], t, df[t]) for t in vocabulary))
        con.executemany("INSERT INTO postings VALUES (?, ?, ?)",
                        ((term_id[t], row, tf) for row, bag in enumerate(bags) for t, tf in bag.items()))
    os.replace(tmp, path)
    return path


def _read(path: Path) -> tuple[dict[str, str], list[tuple], list[tuple], list[tuple]]:
    """The four tables of a store, or a ValueError saying why `path` is not one."""
    if not path.is_file():
        raise FileNotFoundError(f"no saved index at {path}: save one with labkit.rag.store.save(index, path)")
    not_ours = f"{path} is not a labkit RAG index (labkit.rag.store.save writes one)"
    try:
        # read-only: loading must never create or modify the file (sqlite3.connect would create a missing one)
        with closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as con:
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if not {"meta", "chunks", "terms", "postings"} <= tables:
                raise ValueError(f"{not_ours}: it is an SQLite database with tables {sorted(tables)}")
            meta = dict(con.execute("SELECT key, value FROM meta"))
            if meta.get("format") != FORMAT:
                raise ValueError(f"{not_ours}: its meta table says format {meta.get('format')!r}")
            if meta.get("version") != str(VERSION):
                raise ValueError(f"{path} is a labkit RAG index of version {meta.get('version')!r}, but this labkit "
                                 f"reads version {VERSION}: save the index again")
            chunks = con.execute('SELECT row, id, doc_id, start, "end", heading, text, length, embedding '
                                 "FROM chunks ORDER BY row").fetchall()
            terms = con.execute("SELECT term_id, term, df FROM terms ORDER BY term_id").fetchall()
            postings = con.execute("SELECT term_id, row, tf FROM postings").fetchall()
    except sqlite3.DatabaseError as err:  # not a database at all, or a damaged one
        raise ValueError(f"{not_ours}, or it is damaged: sqlite3 says {err}") from None
    return meta, chunks, terms, postings


def load(path: str | Path, docs: Sequence[Document]) -> Index:
    """The index saved in `path`, for the corpus `docs` (the documents it was built from).

    Raises FileNotFoundError if there is no file, ValueError if the file is not a (readable) saved index, and
    StaleIndexError if `docs` is not the corpus the index was built on (the fingerprints differ).
    """
    path = Path(path)
    meta, rows, terms, postings = _read(path)
    docs = list(docs)
    now = corpus_fingerprint(docs)
    if meta["fingerprint"] != now:
        raise StaleIndexError(f"the index in {path} was built on a different corpus (fingerprint "
                              f"{meta['fingerprint'][:12]}... != {now[:12]}... of the documents given): rebuild it "
                              "with labkit.rag.store.load_or_build(path, docs, strategy), or save a new Index")
    damaged = f"{path} is a damaged labkit RAG index"
    dim, n = int(meta["dim"]), int(meta["chunks"])
    if [r[0] for r in rows] != list(range(n)):
        raise ValueError(f"{damaged}: expected chunk rows 0..{n - 1}, found {len(rows)} rows")
    texts = {d.id: d.text for d in docs}
    chunks = [Chunk(id=cid, doc_id=doc, text=text, start=a, end=b, heading=head)
              for _, cid, doc, a, b, head, text, _, _ in rows]
    if any(texts.get(c.doc_id, "")[c.start:c.end] != c.text for c in chunks):
        raise ValueError(f"{damaged}: a chunk's text is not the span of its document it claims to be")
    if any(len(r[8]) != 4 * dim for r in rows):
        raise ValueError(f"{damaged}: an embedding is not {dim} float32 numbers")
    vectors = np.frombuffer(b"".join(r[8] for r in rows), dtype="<f4").reshape(n, dim)

    # BM25 from its statistics: each chunk's bag of words, rebuilt from the postings
    vocabulary = [t for _, t, _ in terms]
    bags: list[list[str]] = [[] for _ in range(n)]
    for term, row, tf in postings:
        bags[row] += [vocabulary[term]] * tf
    lengths, df = [r[7] for r in rows], Counter(vocabulary[term] for term, _, _ in postings)
    if [len(b) for b in bags] != lengths or any(df[t] != d for _, t, d in terms):
        raise ValueError(f"{damaged}: its BM25 statistics do not add up (chunk lengths or document frequencies)")
    variant = meta["variant"]
    delta = float(meta["delta"]) if variant in ("bm25l", "bm25+") else None
    bm25 = BM25(variant, k1=float(meta["k1"]), b=float(meta["b"]), delta=delta).index(bags)
    return Index(docs, chunks, torch.from_numpy(vectors.copy()), strategy=meta["strategy"], variant=variant,
                 candidates=int(meta["candidates"]), bm25=bm25)


def load_or_build(path: str | Path, docs: Sequence[Document], strategy: str = "heading",
                  embeddings: torch.Tensor | np.ndarray | None = None, progress: bool = False) -> Index:
    """Load the index saved in `path` if it exists, was built on `docs` and with `strategy`; otherwise build it
    (`Index.from_documents`: embedding the chunks unless `embeddings` are given) and save it there."""
    try:
        index = load(path, docs)
        if index.strategy == strategy:
            return index
    except (FileNotFoundError, StaleIndexError):
        pass
    index = Index.from_documents(docs, strategy, embeddings=embeddings, progress=progress)
    save(index, path)
    return index

