"""labkit.rag.store: an index saved to a real SQLite file and loaded back ranks exactly as before (BM25, dense,
hybrid), a changed corpus invalidates it, and files that are not (intact) saved indexes are refused clearly."""
import dataclasses
import sqlite3
from contextlib import closing

import numpy as np
import pytest
import torch

from labkit.rag import store
from labkit.rag.chunking import chunk_documents
from labkit.rag.index import Index, corpus_index
from labkit.rag.store import StaleIndexError, load, load_or_build, save

QUERIES = ["How do I leave a loop early?", "what does the with statement call on exit", "grouped-query attention",
           "format a float with two decimals", "KV cache memory per token", "zzyzx qwerty"]


@pytest.fixture(scope="module")
def course():
    return corpus_index("heading")  # the course corpus with its saved embeddings: nothing is embedded here


@pytest.fixture(scope="module")
def saved_file(course, tmp_path_factory):
    return save(course, tmp_path_factory.mktemp("store") / "heading.sqlite")


def test_a_reloaded_index_ranks_exactly_as_the_saved_one(course, saved_file):
    back = load(saved_file, course.docs)
    assert back.chunks == course.chunks and torch.equal(back.embeddings, course.embeddings)
    assert (back.strategy, back.variant, back.candidates, back.fingerprint) == \
        (course.strategy, course.variant, course.candidates, course.fingerprint)
    assert np.array_equal(back.bm25.vocabulary, course.bm25.vocabulary)
    assert np.array_equal(back.bm25.df, course.bm25.df) and back.bm25.avg_len == course.bm25.avg_len
    for q in QUERIES:
        for method in ("bm25", "dense", "hybrid"):
            for k in (10, 50):
                got, want = back.search(q, k, method), course.search(q, k, method)
                assert got.hits == want.hits, (q, method, k)  # ids and scores, bit for bit
        assert back.sections(back.search(q, 20)) == course.sections(course.search(q, 20))


@pytest.mark.parametrize("variant", ["robertson", "bm25l", "bm25+"])
def test_the_bm25_variant_and_its_statistics_survive_the_round_trip(course, tmp_path, variant):
    ix = Index(course.docs, course.chunks, course.embeddings, strategy="heading", variant=variant, candidates=30)
    back = load(save(ix, tmp_path / "v.sqlite"), course.docs)
    assert (back.variant, back.candidates, back.bm25.delta) == (variant, 30, ix.bm25.delta)
    for q in QUERIES[:3]:
        tokens = q.lower().replace("?", "").split()
        assert np.array_equal(back.bm25.scores(tokens), ix.bm25.scores(tokens))


def test_another_strategy_round_trips_too(tmp_path):
    fixed = corpus_index("fixed")
    back = load(save(fixed, tmp_path / "fixed.sqlite"), fixed.docs)
    assert back.strategy == "fixed" and back.chunks == fixed.chunks
    assert back.search(QUERIES[0], 10, "hybrid").hits == fixed.search(QUERIES[0], 10, "hybrid").hits


def test_a_changed_corpus_invalidates_the_saved_index(course, saved_file):
    edited = list(course.docs)
    first = edited[0]
    section = dataclasses.replace(first.sections[-1], text=first.sections[-1].text + "One more sentence.\n")
    edited[0] = dataclasses.replace(first, sections=first.sections[:-1] + (section,))
    for docs in (edited, course.docs[:-1], course.docs[::-1]):
        with pytest.raises(StaleIndexError, match=r"built on a different corpus \(fingerprint [0-9a-f]{12}\.\.\. != "
                                                  r"[0-9a-f]{12}\.\.\. of the documents given\): rebuild it"):
            load(saved_file, docs)
    assert issubclass(StaleIndexError, ValueError)


def test_load_or_build_rebuilds_a_stale_or_missing_index_and_reloads_a_current_one(course, saved_file, tmp_path):
    path = tmp_path / "copy.sqlite"
    path.write_bytes(saved_file.read_bytes())
    docs = course.docs[:3]  # a different (smaller) corpus: the saved file is stale for it
    n = len(chunk_documents(docs, "heading"))
    rebuilt = load_or_build(path, docs, "heading", embeddings=course.embeddings[:n])
    assert len(rebuilt.chunks) == n and load(path, docs).fingerprint == rebuilt.fingerprint  # re-saved
    with pytest.raises(StaleIndexError):
        load(path, course.docs)
    # now current: it is loaded, not rebuilt (embeddings=None would embed, which the wrong shape below proves)
    again = load_or_build(path, docs, "heading", embeddings=torch.zeros(1, 384))
    assert torch.equal(again.embeddings, rebuilt.embeddings)
    # asked for another strategy: rebuilt with it
    with pytest.raises(ValueError, match="embeddings must have shape"):
        load_or_build(path, docs, "fixed", embeddings=torch.zeros(1, 384))
    missing = tmp_path / "new.sqlite"
    assert load_or_build(missing, docs, "heading", embeddings=course.embeddings[:n]).chunks == rebuilt.chunks
    assert missing.is_file()


def test_a_missing_file_is_reported_and_not_created(course, tmp_path):
    path = tmp_path / "absent.sqlite"
    with pytest.raises(FileNotFoundError, match="no saved index at .*absent.sqlite: save one with"):
        load(path, course.docs)
    assert not path.exists()


def test_files_that_are_not_saved_indexes_are_refused(course, saved_file, tmp_path):
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(ValueError, match=r"junk.sqlite is not a labkit RAG index .*, or it is damaged: sqlite3 says "
                                         r"file is not a database"):
        load(junk, course.docs)

    truncated = tmp_path / "truncated.sqlite"
    truncated.write_bytes(saved_file.read_bytes()[:len(saved_file.read_bytes()) // 3])
    with pytest.raises(ValueError, match=r"truncated.sqlite is not a labkit RAG index .*damaged"):
        load(truncated, course.docs)

    foreign = tmp_path / "people.sqlite"
    with closing(sqlite3.connect(foreign)) as con, con:
        con.execute("CREATE TABLE people (name TEXT)")
    with pytest.raises(ValueError, match=r"people.sqlite is not a labkit RAG index .*: it is an SQLite database "
                                         r"with tables \['people'\]"):
        load(foreign, course.docs)


def _tampered(saved_file, tmp_path, sql):
    path = tmp_path / "tampered.sqlite"
    path.write_bytes(saved_file.read_bytes())
    with closing(sqlite3.connect(path)) as con, con:
        con.execute(sql)
    return path


@pytest.mark.parametrize("sql,message", [
    ("UPDATE meta SET value = 'other.tool' WHERE key = 'format'", "is not a labkit RAG index .*format 'other.tool'"),
    ("UPDATE meta SET value = '99' WHERE key = 'version'", "index of version '99', but this labkit reads version 1"),
    ("UPDATE chunks SET text = 'forged' WHERE row = 5", "damaged .*a chunk's text is not the span of its document"),
    ("DELETE FROM chunks WHERE row = 7", r"damaged .*expected chunk rows 0..903, found 903 rows"),
    ("UPDATE chunks SET embedding = x'00' WHERE row = 2", "damaged .*an embedding is not 384 float32 numbers"),
    ("DELETE FROM postings WHERE row = 3 AND term_id = (SELECT MIN(term_id) FROM postings WHERE row = 3)",
     "damaged .*BM25 statistics do not add up"),
    ("UPDATE terms SET df = df + 1 WHERE term_id = 0", "damaged .*BM25 statistics do not add up"),
])
def test_a_tampered_index_is_refused(course, saved_file, tmp_path, sql, message):
    with pytest.raises(ValueError, match=message):
        load(_tampered(saved_file, tmp_path, sql), course.docs)


def test_save_refuses_what_is_not_an_index(tmp_path):
    with pytest.raises(TypeError, match="save expects a labkit.rag.index.Index, got dict"):
        save({"chunks": []}, tmp_path / "x.sqlite")
    assert not (tmp_path / "x.sqlite").exists()


def test_saving_replaces_the_file_whole(course, saved_file, tmp_path):
    path = tmp_path / "twice.sqlite"
    save(course, path)
    small = Index(course.docs, course.chunks, course.embeddings, strategy="heading", candidates=7)
    save(small, path)
    assert load(path, course.docs).candidates == 7
    assert not path.with_name(path.name + ".tmp").exists()
    assert store.VERSION == 1 and store.FORMAT == "labkit.rag.store"
