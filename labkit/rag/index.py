"""The retrieval index of chapter 12: chunks of the corpus searchable by BM25, by dense cosine, or by both fused.

`Index` ties the chapter's pieces together for one chunking strategy:

    documents --chunk_documents--> chunks --tokenize--> BM25 (lexical: the words must match)
                                          --embed-----> DenseIndex (semantic: the meaning must match)
    search(query, method="hybrid") = reciprocal_rank_fusion(BM25 top candidates, dense top candidates)

Retrieval returns chunks, but the evaluation set labels **sections** (`<doc_id>@<n>`, independent of how a
document was chunked), so that the three chunking strategies can be compared on one set of gold labels.
`Index.sections` maps a ranking of chunks to the sections they cover: a chunk maps to every section it overlaps
(a fixed-size window can straddle a heading), in the order of first appearance, each section once.

Embedding the whole corpus takes minutes on a CPU, so `corpus_index()` loads the embeddings of every strategy's
chunks from the saved run "12-embeddings" (`python -m labkit.course save 12-embeddings`) and refuses them when
the corpus they were computed on differs from the one loaded now (its fingerprint changed).
"""
from __future__ import annotations

import functools
import re
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np
import torch

from labkit.rag import metrics
from labkit.rag.bm25 import BM25
from labkit.rag.chunking import STRATEGIES, Chunk, chunk_documents
from labkit.rag.dense import DIM, DenseIndex, Results, _check_k, embed
from labkit.rag.documents import Document, corpus_fingerprint, load_documents
from labkit.rag.fusion import DEFAULT_K, reciprocal_rank_fusion

METHODS = ("bm25", "dense", "hybrid")
CANDIDATES = 100  # how deep each retriever's list goes into the fusion (RRF needs more than the k returned)
SAVED_RUN = "12-embeddings"

# Words (letters, digits and underscores, starting with a letter or an underscore) and numbers. Punctuation is
# dropped: BM25 counts term matches, and "(" or "." would match nearly every chunk of a documentation corpus.
_TOKEN = re.compile(r"[^\W\d]\w*|\d+")


def tokenize(text: str) -> list[str]:
    """BM25's tokens of `text`: its lower-cased words and numbers, punctuation dropped.

    Lower-casing makes "List" in a heading match "list" in a question; keeping underscores inside words keeps
    Python names whole (`__init__`, `sys_path`), which is what a user types when asking about them. No stemming
    and no stop-word list: BM25's IDF already gives "the" almost no weight, and a stemmer would be one more
    thing to explain (and to disagree with bm25s about).

    >>> tokenize("What does os.path.join() return, 2 times?")
    ['what', 'does', 'os', 'path', 'join', 'return', '2', 'times']
    """
    if not isinstance(text, str):
        raise TypeError(f"tokenize expects a str, got {type(text).__name__}")
    return _TOKEN.findall(text.lower())


def _check_method(method: object) -> str:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    return method  # type: ignore[return-value]


def _word_span(chunk: Chunk) -> tuple[int, int]:
    """The chunk's span without its leading and trailing whitespace (whitespace belongs to no section's content)."""
    text = chunk.text
    return chunk.start + len(text) - len(text.lstrip()), chunk.start + len(text.rstrip())


class Index:
    """BM25 + dense search over the chunks of a list of documents, with the chunk -> section map.

    Build it with `Index.from_documents` (or `corpus_index()` for the course corpus with saved embeddings).
    """

    def __init__(self, docs: Sequence[Document], chunks: Sequence[Chunk], embeddings: torch.Tensor,
                 strategy: str = "heading", variant: str = "lucene", candidates: int = CANDIDATES,
                 bm25: BM25 | None = None):
        """Index `chunks` (of `docs`, made by `strategy`) with their `embeddings`; `bm25`, if given, is an index
        of the chunks already built (labkit.rag.store rebuilds it from stored statistics), else one is built."""
        if not chunks:
            raise ValueError("cannot build an index over an empty corpus: there are no chunks "
                             f"(got {len(docs)} documents)")
        emb = torch.as_tensor(np.asarray(embeddings, dtype=np.float32)) if not isinstance(embeddings, torch.Tensor) \
            else embeddings.float()
        if emb.ndim != 2 or emb.shape != (len(chunks), DIM):
            raise ValueError(f"embeddings must have shape [n_chunks, {DIM}] = [{len(chunks)}, {DIM}] (one "
                             f"all-MiniLM-L6-v2 vector per chunk, in chunk order), got {tuple(emb.shape)}")
        _check_k(candidates)
        self.docs, self.chunks, self.embeddings = list(docs), list(chunks), emb
        self.strategy, self.variant, self.candidates = strategy, variant, int(candidates)
        self.fingerprint = corpus_fingerprint(self.docs)
        self.ids = [c.id for c in self.chunks]
        self._by_id = {c.id: c for c in self.chunks}
        if len(self._by_id) != len(self.chunks):
            raise ValueError("chunk ids must be unique")
        if bm25 is None:
            bm25 = BM25(variant).index([tokenize(c.text) for c in self.chunks])
        elif bm25.variant != variant or getattr(bm25, "n_docs", None) != len(self.chunks):
            raise ValueError(f"bm25 must index these {len(self.chunks)} chunks with variant {variant!r}, got {bm25!r}")
        self.bm25 = bm25
        self.dense = DenseIndex(emb, self.ids)
        self._sections = self._section_map()

    @classmethod
    def from_documents(cls, docs: Sequence[Document], strategy: str = "heading",
                       embeddings: torch.Tensor | np.ndarray | None = None, progress: bool = False,
                       variant: str = "lucene", candidates: int = CANDIDATES) -> Index:
        """Chunk `docs` with `strategy` ("fixed", "sentence" or "heading") and index the chunks.

        `embeddings`: one all-MiniLM-L6-v2 vector per chunk, [n_chunks, 384] in chunk order, or None to embed
        the chunks now (a tqdm bar if `progress`). `variant` is the BM25 variant; `candidates` how many of
        each retriever's best chunks the hybrid search fuses.
        """
        if isinstance(docs, (str, bytes)) or not isinstance(docs, Sequence):
            raise TypeError(f"docs must be a list of Documents, got {type(docs).__name__}")
        bad = [i for i, d in enumerate(docs) if not isinstance(d, Document)]
        if bad:
            raise TypeError(f"docs must hold labkit.rag.documents.Document objects; docs[{bad[0]}] is "
                            f"{type(docs[bad[0]]).__name__}")
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {sorted(STRATEGIES)}, got {strategy!r}")
        if not docs:
            raise ValueError("cannot build an index over an empty corpus: docs is empty")
        chunks = chunk_documents(docs, strategy)
        if embeddings is None and chunks:
            embeddings = embed([c.text for c in chunks], progress=progress)
        elif embeddings is None:
            embeddings = torch.empty(0, DIM)
        return cls(docs, chunks, embeddings, strategy=strategy, variant=variant, candidates=candidates)

    def __len__(self) -> int:
        return len(self.chunks)

    def __repr__(self) -> str:
        return (f"Index({self.strategy!r}: {len(self.docs)} documents, {len(self.chunks)} chunks, "
                f"BM25 {self.variant!r}, fingerprint {self.fingerprint[:12]})")

    def chunk(self, chunk_id: Hashable) -> Chunk:
        """The chunk with id `chunk_id` (`<doc_id>#<n>`)."""
        try:
            return self._by_id[chunk_id]
        except KeyError:
            raise KeyError(f"no chunk {chunk_id!r} in this {self.strategy!r} index") from None

    # ------------------------------------------------------------ search

    def _bm25(self, query: str, k: int) -> Results:
        top = self.bm25.top_k(tokenize(query), k)
        return Results([(self.ids[i], float(s)) for i, s in zip(top.indices.tolist(), top.scores.tolist())],
                       reason=top.reason)

    def search(self, query: str, k: int = 10, method: str = "hybrid") -> Results:
        """The k best chunks for `query`, as Results of (chunk id, score), best first.

        method "bm25" scores with BM25 (score = BM25), "dense" with the cosine of MiniLM embeddings (score =
        cosine), "hybrid" fuses both retrievers' top-`candidates` lists by reciprocal rank fusion with k = 60
        (score = RRF). An empty or whitespace-only query returns an empty Results with a reason.
        """
        _check_k(k)
        _check_method(method)
        if not isinstance(query, str):
            raise TypeError(f"query must be a str, got {type(query).__name__}")
        if not query.strip():
            return Results([], reason="empty query: it has no words to search for")
        if method == "bm25":
            return self._bm25(query, k)
        if method == "dense":
            return self.dense.search(_query_vector(query), k)
        depth = max(k, self.candidates)
        lexical, semantic = self._bm25(query, depth), self.dense.search(_query_vector(query), depth)
        fused = reciprocal_rank_fusion([lexical.ids, semantic.ids], k=DEFAULT_K)[:k]
        return Results(fused, reason=None if fused else f"no hits: {lexical.reason}; {semantic.reason}")

    # ------------------------------------------------------------ chunks -> sections

    def _section_map(self) -> dict[str, tuple[str, ...]]:
        docs = {d.id: d for d in self.docs}
        out = {}
        for c in self.chunks:
            a, b = _word_span(c)
            out[c.id] = tuple(s.id for s in docs[c.doc_id].sections if s.start < b and a < s.end)
        return out

    def chunk_sections(self, chunk_id: Hashable) -> tuple[str, ...]:
        """The ids of the sections chunk `chunk_id` overlaps (by its words), in document order."""
        self.chunk(chunk_id)
        return self._sections[chunk_id]

    def sections(self, results: Results | Sequence[Any], k: int | None = None) -> list[str]:
        """Section ids of a ranking of chunks, in order of first appearance, each once; the first k if k is given.

        `results` is what `search` returns, or a list of chunk ids (or of (chunk id, score) pairs), best first.
        A chunk maps to every section it overlaps, in document order.
        """
        if k is not None:
            _check_k(k)
        if isinstance(results, (str, bytes)):
            raise TypeError("results must be a ranking of chunks (Results or a list of chunk ids), got a str")
        ids = [r[0] if isinstance(r, tuple) else r for r in results]
        out = list(dict.fromkeys(s for cid in ids for s in self.chunk_sections(cid)))
        return out if k is None else out[:k]


@functools.lru_cache(maxsize=4096)
def _query_vector(query: str) -> torch.Tensor:
    """The query's MiniLM embedding, embedded alone (as DenseIndex.search embeds a text), cached: the hybrid
    search and the evaluation of several methods ask for the same question's vector more than once."""
    return embed([query])[0]


# ---------------------------------------------------------------- evaluation

def evaluate(index: Index, questions: Sequence[Any], k: int = 10, method: str = "hybrid") -> dict[str, float]:
    """Section-level retrieval quality over `questions` (labkit.rag.evalset.Question): mean Recall@k, MRR and
    nDCG@10 (labkit.rag.metrics) of the section rankings `index.sections(index.search(...))`.

    Each question's chunk ranking is searched deep enough (5 chunks per section wanted, `index.candidates` at
    least) that at least max(k, 10) sections usually come out; the section ranking is cut there.
    """
    from labkit.rag.evalset import qrels  # the evaluation set's gold labels, {question id: {section id: 1}}

    _check_k(k)
    _check_method(method)
    if not isinstance(index, Index):
        raise TypeError(f"index must be a labkit.rag.index.Index, got {type(index).__name__}")
    if not questions:
        raise ValueError("evaluate needs at least one question, got none")
    depth = max(k, 10)
    chunks_deep = max(5 * depth, index.candidates)
    run = {q.id: index.sections(index.search(q.question, chunks_deep, method), depth) for q in questions}
    judged = qrels(questions)
    return {f"recall@{k}": metrics.mean(metrics.recall_at_k(run, judged, k)),
            "mrr": metrics.mean(metrics.mrr(run, judged)),
            "ndcg@10": metrics.mean(metrics.ndcg_at_k(run, judged, 10))}


# ---------------------------------------------------------------- the course corpus, with saved embeddings

def embeddings_run(progress: bool = True) -> tuple[dict, dict[str, torch.Tensor]]:
    """The saved run "12-embeddings": MiniLM vectors of every chunk of each strategy, for the course corpus.

    Stored as float32 (2451 x 384 x 4 bytes is about 3.8 MB: small enough that no rounding to float16 is
    needed, so the saved vectors are exactly what `embed` returned on the machine that saved them)."""
    docs = load_documents()
    record: dict[str, Any] = {"fingerprint": corpus_fingerprint(docs), "model": "sentence-transformers/all-MiniLM-L6-v2",
                              "dim": DIM, "dtype": "float32", "strategies": {}}
    tensors = {}
    for strategy in ("fixed", "sentence", "heading"):
        chunks = chunk_documents(docs, strategy)
        if progress:
            print(f"{strategy}: {len(chunks)} chunks", flush=True)
        tensors[strategy] = embed([c.text for c in chunks], progress=progress)
        record["strategies"][strategy] = {"chunks": len(chunks), "first": chunks[0].id, "last": chunks[-1].id}
    return record, tensors


@functools.lru_cache(maxsize=3)
def corpus_index(strategy: str = "heading") -> Index:
    """The course corpus (`load_documents()`) chunked by `strategy`, with the saved "12-embeddings" vectors.

    Raises ValueError, naming the command that re-saves them, when the saved vectors were computed on a
    different corpus (fingerprint) or chunking (chunk count). Cached: one Index per strategy per process.
    """
    from labkit.course import saved

    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {sorted(STRATEGIES)}, got {strategy!r}")
    run = saved.load(SAVED_RUN)
    docs = load_documents()
    redo = f"run `python -m labkit.course save {SAVED_RUN}` to embed the corpus again"
    now = corpus_fingerprint(docs)
    if run.record["fingerprint"] != now:
        raise ValueError(f"the saved embeddings ({SAVED_RUN}) were computed on a different corpus: fingerprint "
                         f"{run.record['fingerprint'][:12]}... != {now[:12]}... now; {redo}")
    chunks = chunk_documents(docs, strategy)
    emb = run.tensors[strategy]
    if emb.shape[0] != len(chunks):
        raise ValueError(f"the saved {strategy!r} embeddings hold {emb.shape[0]} vectors but the corpus has "
                         f"{len(chunks)} {strategy!r} chunks now (the chunking changed); {redo}")
    return Index(docs, chunks, emb, strategy=strategy)
