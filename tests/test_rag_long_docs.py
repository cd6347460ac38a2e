"""Long documents: whole-document retrieval (and what truncation at 256 word pieces does to it) vs chunks mapped
to their documents by max or sum; document-level judgements; bad input."""
from __future__ import annotations

import pytest
import torch

from labkit.rag import long_docs
from labkit.rag.dense import MAX_LENGTH, embed
from labkit.rag.documents import Document, Section
from labkit.rag.evalset import Question
from labkit.rag.fusion import reciprocal_rank_fusion


def _doc(doc_id: str, *texts: str) -> Document:
    sections, start = [], 0
    for n, t in enumerate(texts):
        sections.append(Section(f"{doc_id}@{n}", f"h{n}", t, start))
        start += len(t)
    return Document(doc_id, doc_id, "test", tuple(sections))


DOCS = [_doc("toy/loops", "The for statement iterates over a sequence. ", "A break statement ends the loop. "),
        _doc("toy/files", "Open a file with open() and read it line by line. "),
        _doc("toy/errors", "The try statement catches exceptions raised in its block. ")]


def test_document_of_sections_and_chunks():
    assert long_docs.document_of("pydoc/with@3") == "pydoc/with"
    assert long_docs.document_of("course/01-ngrams/ngrams#12") == "course/01-ngrams/ngrams"
    for bad in ("pydoc/with", "@3", "pydoc/with@x", "pydoc/with#"):
        with pytest.raises(ValueError, match="neither a section id"):
            long_docs.document_of(bad)
    with pytest.raises(TypeError, match="section or chunk id string"):
        long_docs.document_of(3)


def test_document_qrels_merge_sections_of_one_document():
    q = Question("q1", "?", ("a",), ("pydoc/for@0", "pydoc/compound@3", "pydoc/for@2"), "dev", "pydoc")
    assert long_docs.document_qrels([q]) == {"q1": {"pydoc/for": 1, "pydoc/compound": 1}}


def test_chunks_to_documents_max_and_sum():
    hits = [("a#0", 0.9), ("b#0", 0.8), ("b#1", 0.7), ("c#3", 0.1), ("a#4", 0.05)]
    assert long_docs.chunks_to_documents(hits, "max") == [("a", 0.9), ("b", 0.8), ("c", 0.1)]
    got = long_docs.chunks_to_documents(hits, "sum")
    assert [d for d, _ in got] == ["b", "a", "c"] and got[0][1] == pytest.approx(1.5)  # two fair chunks beat one good
    assert long_docs.chunks_to_documents([("z#0", 1.0), ("y#0", 1.0)]) == [("y", 1.0), ("z", 1.0)]  # ties by id
    assert long_docs.chunks_to_documents([]) == []
    with pytest.raises(ValueError, match="how must be one of"):
        long_docs.chunks_to_documents(hits, "mean")
    with pytest.raises(TypeError, match=r"\(chunk id, score\) pairs"):
        long_docs.chunks_to_documents(["a#0"])


def test_truncation_embeds_only_the_visible_prefix():
    short = "A short text about loops."
    assert long_docs.visible_prefix(short) == len(short) and long_docs.wordpieces(short) < MAX_LENGTH
    long_text = " ".join(f"sentence {i} talks about topic{i}." for i in range(200))
    cut = long_docs.visible_prefix(long_text)
    assert 0 < cut < len(long_text) and long_docs.wordpieces(long_text) > MAX_LENGTH
    assert long_docs.wordpieces(long_text[:cut]) == MAX_LENGTH  # the prefix is exactly the 254 pieces kept + 2
    whole, prefix, changed_tail = embed([long_text, long_text[:cut], long_text[:cut] + " Completely different."])
    assert float(whole @ prefix) > 0.9999  # nothing after the cut reaches the embedding
    assert float(whole @ changed_tail) > 0.9999


def test_truncation_matches_sentence_transformers():
    from sentence_transformers import SentenceTransformer

    from labkit.models import minilm_dir

    st = SentenceTransformer(str(minilm_dir()), device="cpu")
    long_text = " ".join(f"word{i}" for i in range(600))
    ours = embed([long_text, long_text[:long_docs.visible_prefix(long_text)]])
    theirs = torch.as_tensor(st.encode([long_text], normalize_embeddings=True))
    assert st.max_seq_length == MAX_LENGTH
    assert float(ours[0] @ theirs[0]) > 0.9999 and float(ours[1] @ theirs[0]) > 0.9999


def test_document_index_whole_documents():
    index = long_docs.DocumentIndex(DOCS)
    assert index.embeddings.shape == (3, 384)
    assert index.search("break statement", 1, "bm25").ids == ["toy/loops"]  # the word is in its second section
    assert index.search("reading a file", 3, "dense").ids[0] == "toy/files"
    q = "exceptions in a try block"
    fused = reciprocal_rank_fusion([index.search(q, 3, "bm25").ids, index.search(q, 3, "dense").ids])
    assert index.search(q, 3, "hybrid").hits == fused
    empty = index.search("   ", 3)
    assert empty.hits == [] and "empty query" in empty.reason


def test_document_index_bad_input():
    with pytest.raises(ValueError, match="empty corpus"):
        long_docs.DocumentIndex([])
    with pytest.raises(TypeError, match="not a labkit.rag.documents.Document"):
        long_docs.DocumentIndex(["text"])
    with pytest.raises(ValueError, match="one id per embedding"):
        long_docs.DocumentIndex(DOCS, embeddings=torch.ones(2, 384))
    index = long_docs.DocumentIndex(DOCS, embeddings=torch.eye(3, 384))
    with pytest.raises(ValueError, match="k must be >= 1"):
        index.search("loops", 0)
    with pytest.raises(ValueError, match="method must be one of"):
        index.search("loops", 1, "splade")
