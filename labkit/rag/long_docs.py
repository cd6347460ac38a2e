"""Long documents: retrieve a whole document, or retrieve its chunks and vote for the document?

LoCoV1 (Saad-Falcon et al. 2024, "Benchmarking and Building Long-Context Retrieval Models with LoCo and
M2-BERT") asks retrievers for whole long documents (legal cases, reports, papers) instead of passages, and
M2-BERT reads up to 32k tokens to embed one. Our corpus has the same shape: a pydoc topic or a lesson is one
long document of many sections. There are two ways to find the right document:

- **whole documents**: index each document as one text. BM25 counts every word of it. A 256-word-piece
  encoder cannot: sentence-transformers truncates all-MiniLM-L6-v2's input at 256 word pieces (`MAX_LENGTH`
  in `labkit.rag.dense`, [CLS] and [SEP] included) and silently drops the rest, so a document's embedding
  is the embedding of its first ~200 words, whatever follows (`visible_prefix` finds where the cut falls).
- **chunks mapped to documents**: search the chunk index as usual, then score each document by its chunks'
  scores among the top `depth` hits, either the best one (`max`: the document holding the best passage) or
  their sum (`sum`: many fairly good passages add up, which also favours documents with many chunks).

Both are measured at document level (a question's gold documents are those holding its gold sections) by
`long_docs_run`, part of the saved run "12-advanced".
"""
from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch

from labkit.rag import metrics
from labkit.rag.bm25 import BM25
from labkit.rag.dense import MAX_LENGTH, DenseIndex, Results, _check_k, _minilm, embed
from labkit.rag.documents import Document
from labkit.rag.fusion import DEFAULT_K, reciprocal_rank_fusion

AGGREGATIONS = ("max", "sum")
METHODS = ("bm25", "dense", "hybrid")


def document_of(item_id: str) -> str:
    """The document id of a section id (`<doc_id>@<n>`) or a chunk id (`<doc_id>#<n>`)."""
    if not isinstance(item_id, str):
        raise TypeError(f"expected a section or chunk id string, got {type(item_id).__name__}")
    cut = max(item_id.rfind("@"), item_id.rfind("#"))
    if cut <= 0 or not item_id[cut + 1:].isdigit():
        raise ValueError(f"{item_id!r} is neither a section id '<doc_id>@<n>' nor a chunk id '<doc_id>#<n>'")
    return item_id[:cut]


def document_qrels(questions: Sequence[Any]) -> dict[str, dict[str, int]]:
    """{question id: {document id: 1}}: the documents that hold each question's gold sections."""
    return {q.id: {document_of(s): 1 for s in q.gold} for q in questions}


def wordpieces(text: str) -> int:
    """How many MiniLM word pieces `text` is, [CLS] and [SEP] included, before any truncation."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    tokenizer, _ = _minilm()
    return len(tokenizer(text, truncation=False, verbose=False)["input_ids"])


def visible_prefix(text: str, max_length: int = MAX_LENGTH) -> int:
    """How many characters of `text` the encoder reads when its input is cut at `max_length` word pieces: the
    end of the last word piece kept. Everything after it has no effect on the embedding."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    _check_k(max_length)
    tokenizer, _ = _minilm()
    offsets = tokenizer(text, truncation=True, max_length=max_length, return_offsets_mapping=True)["offset_mapping"]
    return max((end for _, end in offsets), default=0)  # special tokens have (0, 0)


def chunks_to_documents(hits: Results | Sequence[tuple[Hashable, float]], how: str = "max"
                        ) -> list[tuple[str, float]]:
    """Score documents by their chunks' scores in a chunk ranking: the best (`max`) or the `sum`; best first,
    equal scores by document id. A document with no chunk in the ranking is not listed."""
    if how not in AGGREGATIONS:
        raise ValueError(f"how must be one of {AGGREGATIONS}, got {how!r}")
    per_doc: dict[str, list[float]] = {}
    for i, hit in enumerate(hits):
        if not (isinstance(hit, tuple) and len(hit) == 2):
            raise TypeError(f"hits must be (chunk id, score) pairs; hit {i} is {hit!r:.60}")
        per_doc.setdefault(document_of(hit[0]), []).append(float(hit[1]))
    score = {d: (max(s) if how == "max" else math.fsum(s)) for d, s in per_doc.items()}
    return sorted(score.items(), key=lambda ds: (-ds[1], ds[0]))


class DocumentIndex:
    """Whole documents as single texts: BM25 over all their words, MiniLM embeddings of their first 256 word
    pieces (what sentence-transformers would embed), and the RRF of the two, as `Index.search` fuses chunks."""

    def __init__(self, docs: Sequence[Document], embeddings: torch.Tensor | None = None, progress: bool = False):
        from labkit.rag.index import tokenize  # the chunk index's tokens, so both BM25s count the same words

        if isinstance(docs, (str, bytes)) or not isinstance(docs, Sequence):
            raise TypeError(f"docs must be a list of Documents, got {type(docs).__name__}")
        if not docs:
            raise ValueError("cannot index an empty corpus: docs is empty")
        bad = [i for i, d in enumerate(docs) if not isinstance(d, Document)]
        if bad:
            raise TypeError(f"docs[{bad[0]}] is {type(docs[bad[0]]).__name__}, not a labkit.rag.documents.Document")
        self.docs, self.ids = list(docs), [d.id for d in docs]
        self._tokenize = tokenize
        self.bm25 = BM25("lucene").index([tokenize(d.text) for d in self.docs])
        if embeddings is None:
            embeddings = embed([d.text for d in self.docs], progress=progress)  # embed() truncates at 256
        self.dense = DenseIndex(embeddings, self.ids)  # checks one vector per document
        self.embeddings = self.dense.vectors

    def search(self, query: str, k: int = 10, method: str = "hybrid") -> Results:
        """The k best documents for `query`, as Results of (document id, score); an empty query gives an
        empty Results with a reason."""
        _check_k(k)
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if not isinstance(query, str):
            raise TypeError(f"query must be a str, got {type(query).__name__}")
        if not query.strip():
            return Results([], reason="empty query: it has no words to search for")
        depth = len(self.ids) if method == "hybrid" else k
        lexical = dense = None
        if method in ("bm25", "hybrid"):
            top = self.bm25.top_k(self._tokenize(query), depth)
            lexical = Results([(self.ids[i], float(s)) for i, s in zip(top.indices.tolist(), top.scores.tolist())],
                              reason=top.reason)
        if method in ("dense", "hybrid"):
            from labkit.rag.index import _query_vector  # the cached query embedding the chunk index uses

            dense = self.dense.search(_query_vector(query), depth)
        if method == "bm25":
            return lexical
        if method == "dense":
            return dense
        return Results(reciprocal_rank_fusion([lexical.ids, dense.ids], k=DEFAULT_K)[:k])


def document_metrics(run: Mapping[str, Sequence[str]], qrels: Mapping[str, Mapping[str, int]]) -> dict[str, float]:
    """Mean document-level Recall@1, Recall@5 and MRR of a run {question id: [document ids, best first]}."""
    return {"recall@1": metrics.mean(metrics.recall_at_k(run, qrels, 1)),
            "recall@5": metrics.mean(metrics.recall_at_k(run, qrels, 5)),
            "mrr": metrics.mean(metrics.mrr(run, qrels))}


def long_docs_run(index: Any, questions: Sequence[Any], doc_index: DocumentIndex,
                  depth: int = 100) -> dict[str, Any]:
    """Whole-document retrieval vs chunks mapped to documents (max and sum of the top `depth` chunk scores), for
    BM25, dense and hybrid, at document level; plus what truncation at 256 word pieces hides of each document.

    Returns plain numbers: per configuration, the ranked document ids per question (top 10) and the metrics."""
    _check_k(depth)
    qrels = document_qrels(questions)
    runs: dict[str, dict[str, list[str]]] = {}
    for method in METHODS:
        runs[f"whole document, {method}"] = {q.id: doc_index.search(q.question, 10, method).ids for q in questions}
        hits = {q.id: index.search(q.question, depth, method) for q in questions}
        for how in AGGREGATIONS:
            runs[f"chunks -> document ({how}), {method}"] = {
                qid: [d for d, _ in chunks_to_documents(h, how)[:10]] for qid, h in hits.items()}
    # what the encoder sees: word pieces per document, and whether each question's gold section starts in the
    # part of its document that survives truncation
    seen = {d.id: visible_prefix(d.text) for d in doc_index.docs}
    starts = {s.id: s.start for d in doc_index.docs for s in d.sections}
    visible = {q.id: all(starts[s] < seen[document_of(s)] for s in q.gold) for q in questions}
    return {
        "depth": depth,
        "documents": {d.id: {"wordpieces": wordpieces(d.text), "characters": len(d.text), "visible": seen[d.id]}
                      for d in doc_index.docs},
        "gold_visible": visible,
        "metrics": {name: document_metrics(run, qrels) for name, run in runs.items()},
        "runs": runs,
        "n_questions": len(questions),
    }
