"""BM25 from scratch: a sparse, vectorised index and the five variants practitioners meet.

BM25 scores a document d for a query q as a sum over the query's terms t (with repetition):

    score(q, d) = sum_t  idf(t) * tf_part(tf(t, d), |d|)

where tf(t, d) counts t in d, |d| is d's length in tokens and L is the average length over the corpus. The
variants differ only in the two factors (Kamphuis, de Vries, Boytsov and Lin, "Which BM25 do you mean? A
large-scale reproducibility study of scoring variants", ECIR 2020, Table 1), with N documents and df(t) of them
containing t, and K = k1 * (1 - b + b * |d| / L):

    variant     idf(t)                                    tf_part
    robertson   log((N - df + 0.5) / (df + 0.5)), >= 0    tf / (K + tf)
    lucene      log(1 + (N - df + 0.5) / (df + 0.5))      tf / (K + tf)
    atire       log(N / df)                               (k1 + 1) tf / (K + tf)
    bm25l       log((N + 1) / (df + 0.5))                 (k1 + 1)(c + delta) / (k1 + c + delta),
                                                          c = tf / (1 - b + b |d| / L)
    bm25+       log((N + 1) / df)                         (k1 + 1) tf / (K + tf) + delta

Robertson is Robertson and Walker's Okapi BM25 (TREC-3, 1994; Robertson and Zaragoza, "The Probabilistic
Relevance Framework: BM25 and Beyond", 2009); its IDF goes negative for a term in more than half the documents,
and, like `bm25s`, we clip it at 0. Lucene adds 1 inside the log so the IDF is always positive (and drops the
constant k1 + 1, which does not change a ranking). ATIRE (Trotman, Puurula and Burgess, "Improvements to BM25
and language models examined", ADCS 2014) uses the plain log(N / df), 0 for a term in every document. BM25L
(Lv and Zhai, "When documents are very long, BM25 fails!", SIGIR 2011) shifts the normalised count c by delta
so long documents are not over-penalised; BM25+ (Lv and Zhai, "Lower-bounding term frequency normalization",
CIKM 2011) adds delta to every occurring term. In both, a document WITHOUT the term still gets
idf * tf_part(0) > 0 (Kamphuis et al. and `bm25s` score it that way, and so do we).

The index is "eager", as in `bm25s`: at indexing time each (term, document) pair's weight idf * tf_part is
precomputed and stored in compressed sparse rows, one row per term: `indptr[t]:indptr[t+1]` slices the doc ids
and weights of term t. A query then only gathers its terms' rows and adds them per document with
`np.bincount` -- no Python loop over documents. For BM25L/BM25+ the rows store the weight minus the
non-occurrence weight idf * tf_part(0), and that per-term constant is added to every document afterwards.

Conventions (all matching `bm25s` 0.3.16, checked by tests/test_rag_bm25.py): a repeated query token counts
each time it occurs; query tokens absent from the corpus contribute nothing; empty documents count in N and in
the average length. Tokenisation is the caller's: documents and queries are lists of str tokens.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Iterator

import numpy as np

VARIANTS = ("robertson", "lucene", "atire", "bm25l", "bm25+")
DEFAULT_DELTA = 0.5  # bm25s' default for BM25L and BM25+ (Lv and Zhai suggest 0.5 for BM25L, 1.0 for BM25+)


def idf(df: np.ndarray, n_docs: int, variant: str = "lucene") -> np.ndarray:
    """Inverse document frequency of terms with document frequencies `df` (each in 1..n_docs), float64."""
    _check_variant(variant)
    df = np.asarray(df, dtype=np.float64)
    n = float(n_docs)
    if variant == "robertson":
        # the +0.5s smooth df = 0 and df = N; clip the ratio at 1 so a common term scores 0, never below
        return np.log(np.maximum((n - df + 0.5) / (df + 0.5), 1.0))
    if variant == "lucene":
        return np.log(1.0 + (n - df + 0.5) / (df + 0.5))
    if variant == "atire":
        return np.log(n / df)
    if variant == "bm25l":
        return np.log((n + 1.0) / (df + 0.5))
    return np.log((n + 1.0) / df)  # bm25+


def tf_part(tf: np.ndarray, doc_len: np.ndarray, avg_len: float, variant: str = "lucene", k1: float = 1.5,
            b: float = 0.75, delta: float = DEFAULT_DELTA) -> np.ndarray:
    """The term-frequency factor of each variant (see the module docstring), float64, broadcast over arrays."""
    _check_variant(variant)
    tf = np.asarray(tf, dtype=np.float64)
    norm = 1.0 - b + b * np.asarray(doc_len, dtype=np.float64) / avg_len  # length normalisation, 1 at |d| = L
    if variant in ("robertson", "lucene"):
        return tf / (k1 * norm + tf)
    if variant == "atire":
        return tf * (k1 + 1.0) / (tf + k1 * norm)
    if variant == "bm25l":
        c = tf / norm
        return (k1 + 1.0) * (c + delta) / (k1 + c + delta)
    return (k1 + 1.0) * tf / (k1 * norm + tf) + delta  # bm25+


@dataclass(frozen=True)
class TopK:
    """A ranking: document indices and their scores, best first. Unpacks as `indices, scores = top_k`.

    Empty, with `reason` saying why, when the query has no token or none of its tokens occurs in the corpus.
    """
    indices: np.ndarray  # int64
    scores: np.ndarray  # float64
    reason: str | None = None

    def __iter__(self) -> Iterator[np.ndarray]:
        return iter((self.indices, self.scores))

    def __len__(self) -> int:
        return len(self.indices)


class BM25:
    """A BM25 index over pre-tokenised documents.

    >>> bm = BM25("lucene").index([["a", "cat"], ["a", "dog"], ["a", "cat", "and", "a", "cat"]])
    >>> bm.top_k(["cat"], 2).indices.tolist()  # the short document wins: b = 0.75 discounts length
    [0, 2]
    """

    def __init__(self, variant: str = "lucene", k1: float = 1.5, b: float = 0.75, delta: float | None = None):
        _check_variant(variant)
        k1, b = _number("k1", k1), _number("b", b)
        if k1 < 0:
            raise ValueError(f"k1 must be >= 0, got {k1}")
        if not 0 <= b <= 1:
            raise ValueError(f"b must lie in [0, 1], got {b}")
        if delta is not None and variant not in ("bm25l", "bm25+"):
            raise ValueError(f"delta is a parameter of 'bm25l' and 'bm25+' only, not of {variant!r}")
        delta = DEFAULT_DELTA if delta is None else _number("delta", delta)
        if delta < 0:
            raise ValueError(f"delta must be >= 0, got {delta}")
        if variant == "bm25l" and k1 == 0 and delta == 0:
            raise ValueError("bm25l needs k1 + delta > 0 (its tf part is 0/0 for an absent term otherwise)")
        self.variant, self.k1, self.b, self.delta = variant, k1, b, delta
        self._indexed = False

    def __repr__(self) -> str:
        size = f"{self.n_docs} docs, {len(self.vocabulary)} terms" if self._indexed else "not indexed"
        extra = f", delta={self.delta}" if self.variant in ("bm25l", "bm25+") else ""
        return f"BM25({self.variant!r}, k1={self.k1}, b={self.b}{extra}; {size})"

    def index(self, tokenized_docs: Sequence[Sequence[str]]) -> BM25:
        """Build the index from a list of documents, each a list of str tokens. Returns self."""
        if isinstance(tokenized_docs, str) or not isinstance(tokenized_docs, Sequence):
            raise TypeError(f"tokenized_docs must be a list of token lists, got {type(tokenized_docs).__name__}")
        if len(tokenized_docs) == 0:
            raise ValueError("cannot index an empty corpus: tokenized_docs has no documents")
        for i, doc in enumerate(tokenized_docs):
            if isinstance(doc, str) or not isinstance(doc, Sequence):
                raise TypeError(f"document {i} must be a list of str tokens, got {type(doc).__name__}"
                                + (" (tokenize it first)" if isinstance(doc, str) else ""))
        lengths = np.fromiter(map(len, tokenized_docs), dtype=np.int64, count=len(tokenized_docs))
        flat = [t for doc in tokenized_docs for t in doc]
        _check_tokens(flat, "tokenized_docs")
        n_docs = len(tokenized_docs)
        doc_of_token = np.repeat(np.arange(n_docs, dtype=np.int64), lengths)

        # Term ids: the sorted vocabulary, and each token's id in it.
        if flat:
            vocabulary, term_of_token = np.unique(np.array(flat, dtype=str), return_inverse=True)
        else:  # every document is empty
            vocabulary, term_of_token = np.array([], dtype=str), np.array([], dtype=np.int64)
        n_terms = len(vocabulary)
        # One key per (term, doc) pair; np.unique sorts the keys (term-major) and counts repeats = tf.
        keys, tf = np.unique(term_of_token.astype(np.int64).ravel() * n_docs + doc_of_token, return_counts=True)
        post_term, post_doc = keys // n_docs, keys % n_docs
        df = np.bincount(post_term, minlength=n_terms)
        indptr = np.zeros(n_terms + 1, dtype=np.int64)
        np.cumsum(df, out=indptr[1:])

        avg_len = float(lengths.mean())
        term_idf = idf(df, n_docs, self.variant)
        weights = term_idf[post_term] * self._tf(tf, lengths[post_doc], avg_len)
        # BM25L/BM25+: an absent term still scores idf * tf_part(0); store the excess over it per posting and
        # add the constant for every document at query time
        absent = term_idf * self._tf(np.zeros(n_terms), np.full(n_terms, avg_len), avg_len) \
            if self.variant in ("bm25l", "bm25+") else np.zeros(n_terms)
        weights -= absent[post_term]

        self.n_docs, self.avg_len, self.doc_lengths = n_docs, avg_len, lengths
        self.vocabulary: np.ndarray = vocabulary
        self.term_id: dict[str, int] = {t: i for i, t in enumerate(vocabulary.tolist())}
        self.df, self.idf = df, term_idf
        self._indptr, self._docs, self._weights, self._absent = indptr, post_doc, weights, absent
        self._indexed = True
        return self

    def _tf(self, tf: np.ndarray, doc_len: np.ndarray, avg_len: float) -> np.ndarray:
        return tf_part(tf, doc_len, avg_len, self.variant, self.k1, self.b, self.delta)

    def _query_ids(self, query_tokens: Sequence[str]) -> np.ndarray:
        if not self._indexed:
            raise RuntimeError("call index(tokenized_docs) before scoring")
        if isinstance(query_tokens, str) or not isinstance(query_tokens, Sequence):
            raise TypeError(f"query_tokens must be a list of str tokens, got {type(query_tokens).__name__}"
                            + (" (tokenize it first)" if isinstance(query_tokens, str) else ""))
        _check_tokens(query_tokens, "query_tokens")
        get = self.term_id.get
        # unseen tokens drop out; a repeated token stays repeated (it counts each time, as in bm25s)
        return np.fromiter((i for i in map(get, query_tokens) if i is not None), dtype=np.int64)

    def scores(self, query_tokens: Sequence[str]) -> np.ndarray:
        """BM25 score of every document for the query, float64 [n_docs]; all zeros if no token is known."""
        return self._scores(self._query_ids(query_tokens))

    def _scores(self, ids: np.ndarray) -> np.ndarray:
        # Gather the rows of the query's terms: positions indptr[t] .. indptr[t+1]-1 for each t, concatenated.
        starts, ends = self._indptr[ids], self._indptr[ids + 1]
        sizes = ends - starts
        offsets = np.repeat(starts - np.cumsum(sizes) + sizes, sizes)  # each row's start, minus where it lands
        pos = offsets + np.arange(int(sizes.sum()))
        out = np.bincount(self._docs[pos], weights=self._weights[pos], minlength=self.n_docs)
        return out + self._absent[ids].sum()

    def top_k(self, query_tokens: Sequence[str], k: int = 10) -> TopK:
        """The k best documents, highest score first; ties go to the LOWER document index first.

        k larger than the corpus returns every document. An empty query, or one whose tokens never occur in the
        corpus, returns an empty TopK with a `reason` (bm25s instead returns k documents scored 0: an arbitrary
        "ranking" that would pollute a fusion with other retrievers).
        """
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
            raise TypeError(f"k must be an int, got {type(k).__name__}")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        ids = self._query_ids(query_tokens)
        empty = np.array([], dtype=np.int64), np.array([], dtype=np.float64)
        if len(query_tokens) == 0:
            return TopK(*empty, reason="the query is empty: it has no tokens")
        if len(ids) == 0:
            shown = list(dict.fromkeys(query_tokens))[:5]
            return TopK(*empty, reason=f"none of the query's tokens occurs in the corpus: {shown}")
        s = self._scores(ids)
        k = min(int(k), self.n_docs)
        if k < self.n_docs:
            # every document scoring at least the k-th best score, in index order, then a stable sort by score:
            # exact ties keep index order, and no tied document at the cut is picked arbitrarily
            kth = np.partition(s, self.n_docs - k)[self.n_docs - k]
            candidates = np.flatnonzero(s >= kth)
        else:
            candidates = np.arange(self.n_docs)
        order = candidates[np.argsort(-s[candidates], kind="stable")][:k]
        return TopK(order, s[order])


def _check_variant(variant: object) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")


def _number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return float(value)


def _check_tokens(tokens: Sequence[object], what: str) -> None:
    """Raise TypeError naming the first token that is not a str (np.array would silently stringify it)."""
    if set(map(type, tokens)) <= {str}:
        return
    for bad in tokens:
        if not isinstance(bad, str):  # (a str subclass is a str)
            raise TypeError(f"{what} must contain str tokens only, got {bad!r} of type {type(bad).__name__}")
