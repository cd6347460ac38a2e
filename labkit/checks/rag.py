"""Graded checks for lab 12 (retrieval-augmented generation: BM25 scoring, mean pooling, reciprocal rank fusion,
and the retrieval metrics Recall@k, reciprocal rank and nDCG@k).

    from labkit.checks.rag import (check_lucene_idf, check_bm25_scores, check_mean_pool,
                                   check_reciprocal_rank_fusion, check_recall_at_k, check_reciprocal_rank,
                                   check_ndcg_at_k)
    check_lucene_idf(lucene_idf)                 # your functions, defined in the lab
    check_bm25_scores(bm25_scores)
    ...

The references are labkit's own: `labkit.rag.bm25` (variant "lucene"), `labkit.rag.dense.mean_pool`,
`labkit.rag.fusion.reciprocal_rank_fusion` and `labkit.rag.metrics` (each per-query function is the labkit
metric on a run of one query). Every check runs a few hand-made cases, the corners included (a term in half or
in every document, empty documents, padding on the left, a document missing from one ranked list, a ranking
that lists a document twice), then seeded random ones. When an answer is wrong, the message names the input,
the expected and the received value, and, when the received value is what a known mistake gives, the mistake.
"""
from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np
import torch

from labkit.checks import _call, _passed, _short
from labkit.rag import metrics
from labkit.rag.bm25 import BM25
from labkit.rag.bm25 import idf as reference_idf
from labkit.rag.dense import mean_pool as reference_pool
from labkit.rag.fusion import reciprocal_rank_fusion as reference_rrf


def _number(got: object, call: str, what: str = "a float") -> float:
    if isinstance(got, bool) or not isinstance(got, (int, float, np.integer, np.floating)):
        raise AssertionError(f"{call} should return {what}, got {type(got).__name__}: {_short(got)}")
    return float(got)


# ----------------------------------------------------------------------------------------------------------
# BM25 (Lucene's variant)

_IDF_CASES: list[tuple[int, int, str]] = [
    (1, 10, "a rare term: in 1 of 10 documents"),
    (3, 10, "a term in 3 of 10 documents"),
    (5, 10, "a term in exactly half of the documents"),
    (7, 10, "a term in more than half of the documents"),
    (10, 10, "a term in every document"),
    (1, 1, "a one-document corpus"),
    (1, 2, "a two-document corpus, the term in one"),
    (3, 1000, "a rare term in a large corpus"),
]


def _idf_hint(got: float, df: int, n: int) -> str:
    candidates = {
        "without the 1 + inside the log: that is Robertson's original IDF, which goes negative for a term in "
        "more than half of the documents (and is 0 at exactly half). Lucene adds 1 so that it never does":
            lambda: math.log((n - df + 0.5) / (df + 0.5)),
        "without the 0.5s (log(1 + (N - df) / df) is log(N / df), ATIRE's IDF): they smooth the ratio, so "
        "that a term in every document still weighs a little more than 0 and a rare term is not overweighted":
            lambda: math.log(n / df),
        "log((N - df) / df), without the 1 + and without the 0.5s": lambda: math.log((n - df) / df),
        "with log base 10: use the natural log (math.log)": lambda: math.log10(1 + (n - df + 0.5) / (df + 0.5)),
        "with log base 2: use the natural log (math.log)": lambda: math.log2(1 + (n - df + 0.5) / (df + 0.5)),
        "with the 0.5s swapped: (N - df + 0.5) goes above the fraction bar, (df + 0.5) below it":
            lambda: math.log(1 + (df + 0.5) / (n - df + 0.5)),
    }
    for hint, value in candidates.items():
        try:
            v = value()
        except (ValueError, ZeroDivisionError):
            continue
        if math.isclose(got, v, rel_tol=1e-9, abs_tol=1e-12):
            return f" That is the IDF {hint}."
    return ""


def check_lucene_idf(fn: Callable) -> None:
    """lucene_idf(df, n_docs) -> float: log(1 + (n_docs - df + 0.5) / (df + 0.5)), the natural log."""
    for df, n, what in _IDF_CASES:
        call = f"lucene_idf({df}, {n}) ({what})"
        got = _number(_call(fn, call, df, n), call)
        expected = float(reference_idf(np.array([df]), n, "lucene")[0])
        if not math.isclose(got, expected, rel_tol=1e-9, abs_tol=1e-12):
            raise AssertionError(f"{call}: expected {expected:.6f}, got {got:.6f}.{_idf_hint(got, df, n)}")
    _passed("lucene_idf", len(_IDF_CASES))


# Known mistakes, computed only to name them in a message: (hint, options of _bm25_like).
_BM25_MISTAKES: list[tuple[str, dict]] = [
    ("df must count the DOCUMENTS that contain the term (each document once), not the term's occurrences in the "
     "whole corpus", {"df": "occurrences"}),
    ("A query token that occurs twice counts twice (the query 'cat cat' asks for cat twice as hard): sum over "
     "the query's tokens, not over set(query)", {"dedupe_query": True}),
    ("An empty document still counts: in the number of documents N and in the average length (its length is 0)",
     {"skip_empty": True}),
    ("Your scores are the formula times (k1 + 1): that is the classic Robertson form of the tf part. Lucene drops "
     "the constant (it changes no ranking); use tf / (tf + k1 * (1 - b + b * |d| / avgdl)) as given",
     {"scale": True}),
    ("The length normalisation is k1 * (1 - b + b * |d| / avgdl): the brackets hold the whole "
     "1 - b + b * |d| / avgdl", {"norm": "brackets"}),
    ("Normalise the length by the AVERAGE document length avgdl (total tokens / N), not by the longest document",
     {"norm": "max"}),
    ("The IDF is Lucene's, log(1 + (N - df + 0.5) / (df + 0.5)): yours lacks the 1 + (Robertson's IDF, negative "
     "for a term in more than half the documents)", {"idf": "robertson"}),
    ("The IDF is Lucene's, log(1 + (N - df + 0.5) / (df + 0.5)): yours lacks the 0.5s", {"idf": "no_half"}),
]


def _bm25_like(query: Sequence[str], docs: Sequence[Sequence[str]], k1: float, b: float, df: str = "docs",
               dedupe_query: bool = False, skip_empty: bool = False, scale: bool = False, norm: str = "avg",
               idf: str = "lucene") -> list[float]:
    """BM25 with one known mistake switched on (plain Python; only used to name the mistake in a message)."""
    counted = [d for d in docs if d] if skip_empty else docs
    n = len(counted)
    lengths = [len(d) for d in docs]
    avg = sum(len(d) for d in counted) / n
    if norm == "max":
        avg = max(lengths)
    freq: Counter = Counter()
    for d in counted:
        freq.update(d if df == "occurrences" else set(d))
    terms = list(dict.fromkeys(query)) if dedupe_query else list(query)
    out = []
    for d, length in zip(docs, lengths):
        tf = Counter(d)
        s = 0.0
        for t in terms:
            if freq[t] == 0 or tf[t] == 0:
                continue
            f = freq[t]
            w = {"lucene": lambda: math.log(1 + (n - f + 0.5) / (f + 0.5)),
                 "robertson": lambda: math.log((n - f + 0.5) / (f + 0.5)),
                 "no_half": lambda: math.log(1 + (n - f) / f)}[idf]()
            ln = k1 * (1 - b) + b * length / avg if norm == "brackets" else k1 * (1 - b + b * length / avg)
            s += w * tf[t] * ((k1 + 1) if scale else 1) / (tf[t] + ln)
        out.append(s)
    return out


def _bm25_hint(got: np.ndarray, query, docs, k1, b) -> str:
    if (k1, b) != (1.5, 0.75) and np.allclose(got, _bm25_like(query, docs, 1.5, 0.75), rtol=1e-9, atol=1e-12):
        return " Those are the scores for k1 = 1.5, b = 0.75: use the k1 and b passed in."
    for hint, options in _BM25_MISTAKES:
        try:
            wrong = np.array(_bm25_like(query, docs, k1, b, **options))
        except (ValueError, ZeroDivisionError):
            continue
        if np.allclose(got, wrong, rtol=1e-9, atol=1e-12):
            return " " + hint + "."
    return ""


_TOY_DOCS = [["the", "cat", "sat", "on", "the", "mat"], ["the", "dog", "chased", "the", "cat"],
             ["a", "cat", "and", "a", "cat", "and", "a", "cat"], [], ["dogs", "and", "cats"],
             ["the", "the", "the"]]


def _random_corpus(rng: random.Random, n_docs: int) -> list[list[str]]:
    words = ["alpha", "beta", "gamma", "delta", "eps", "zeta", "eta", "theta", "iota", "kappa", "lambda", "mu"]
    weights = [2 ** -(i / 2) for i in range(len(words))]  # Zipf-like: a few common terms, many rare ones
    docs = [rng.choices(words, weights, k=rng.randint(1, 14)) for _ in range(n_docs)]
    docs[rng.randrange(n_docs)] = []  # one empty document per corpus
    return docs


def _bm25_cases() -> list[tuple[str, list[str], list[list[str]], float, float]]:
    cases = [
        ("one query term", ["cat"], _TOY_DOCS, 1.5, 0.75),
        ("a term in more than half of the documents, and a rare one", ["the", "dog"], _TOY_DOCS, 1.5, 0.75),
        ("a repeated query token", ["cat", "cat", "dogs"], _TOY_DOCS, 1.5, 0.75),
        ("a query token that no document holds, and one that some do", ["bird", "mat"], _TOY_DOCS, 1.5, 0.75),
        ("only unseen tokens: every score is 0", ["bird"], _TOY_DOCS, 1.5, 0.75),
        ("an empty query: every score is 0", [], _TOY_DOCS, 1.5, 0.75),
        ("k1 = 1.2, b = 0.5", ["the", "cat", "and"], _TOY_DOCS, 1.2, 0.5),
        ("b = 0: no length normalisation", ["cat", "the"], _TOY_DOCS, 1.5, 0.0),
        ("b = 1: full length normalisation, k1 = 0.9", ["cat", "a", "the"], _TOY_DOCS, 0.9, 1.0),
        ("a two-document corpus, the term in one", ["cat"], [["cat", "sat"], ["dog", "sat", "down"]], 1.5, 0.75),
    ]
    rng = random.Random(12)
    for i in range(6):
        docs = _random_corpus(rng, rng.randint(3, 12))
        words = sorted({t for d in docs for t in d}) + ["unseen"]
        query = rng.choices(words, k=rng.randint(1, 5))
        k1, b = rng.choice([1.2, 1.5, 2.0]), rng.choice([0.0, 0.5, 0.75, 1.0])
        cases.append((f"seeded random corpus {i + 1}", query, docs, k1, b))
    return cases


def check_bm25_scores(fn: Callable) -> None:
    """bm25_scores(query, docs, k1, b) -> one Lucene BM25 score per document (a list or 1-D array of floats)."""
    cases = _bm25_cases()
    for what, query, docs, k1, b in cases:
        call = f"bm25_scores({_short(query, 60)}, docs, k1={k1}, b={b}) on {len(docs)} documents ({what})"
        got = _call(fn, call, list(query), [list(d) for d in docs], k1, b)
        expected = BM25("lucene", k1=k1, b=b).index(docs).scores(query)
        if isinstance(got, torch.Tensor) or not isinstance(got, (list, tuple, np.ndarray)):
            raise AssertionError(f"{call} should return a list of floats (or a 1-D numpy array), one per "
                                 f"document, got {type(got).__name__}: {_short(got)}")
        try:
            arr = np.asarray(got, dtype=np.float64)
        except (TypeError, ValueError):
            raise AssertionError(f"{call} should return numbers, one per document, got {_short(got)}") from None
        if arr.shape != (len(docs),):
            raise AssertionError(f"{call} should return {len(docs)} scores (one per document, the empty document "
                                 f"included), got shape {arr.shape}")
        if not np.allclose(arr, expected, rtol=1e-9, atol=1e-12):
            i = int(np.argmax(np.abs(arr - expected)))
            raise AssertionError(
                f"{call}: document {i} {_short(docs[i], 80)} should score {expected[i]:.6f}, got {arr[i]:.6f}. "
                f"All expected: {_short([round(x, 4) for x in expected.tolist()], 200)}; got "
                f"{_short([round(x, 4) for x in arr.tolist()], 200)}.{_bm25_hint(arr, query, docs, k1, b)}")
    _passed("bm25_scores", len(cases))


# ----------------------------------------------------------------------------------------------------------
# mean pooling

def _pool_cases() -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(12)
    x1 = torch.randn(2, 5, 4, generator=g)
    m1 = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    x3 = torch.randn(3, 7, 16, generator=g) + 3.0  # padding vectors far from 0: counting them shows
    m3 = torch.tensor([[1, 1, 1, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0, 0]])
    cases = [
        ("2 sequences of 5 tokens, the second padded after 3 real tokens, an int64 mask as the tokenizer "
         "returns it", x1, m1),
        ("padding on the LEFT (some tokenizers pad there)", torch.randn(2, 6, 8, generator=g),
         torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])),
        ("3 sequences padded to 7 tokens", x3, m3),
        ("a bool mask", x3.clone(), m3.bool()),
        ("one sequence, no padding", torch.randn(1, 4, 3, generator=g), torch.ones(1, 4, dtype=torch.int64)),
        ("float64 embeddings (keep their dtype)", torch.randn(2, 4, 5, generator=g, dtype=torch.float64),
         torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0]])),
    ]
    rng = random.Random(12)
    for i in range(3):
        b, t, d = rng.randint(2, 6), rng.randint(3, 12), rng.choice([8, 32, 384])
        lengths = [rng.randint(1, t) for _ in range(b)]
        mask = torch.tensor([[1] * n + [0] * (t - n) for n in lengths])
        cases.append((f"seeded random batch {i + 1}: {b} sequences of {t} tokens, dim {d}",
                      torch.randn(b, t, d, generator=g), mask))
    return cases


def _pool_hint(got: torch.Tensor, x: torch.Tensor, mask: torch.Tensor) -> str:
    m = mask.unsqueeze(-1).to(x.dtype)
    summed = (x * m).sum(dim=1)
    right = summed / m.sum(dim=1)
    candidates = {
        "You averaged over every position, padding included: multiply by the mask before summing and divide by "
        "the number of real tokens (mask.sum over the tokens), so a text's embedding does not depend on how much "
        "padding its batch needed": x.mean(dim=1),
        "You zeroed the padding vectors but divided by the padded length t: divide by the number of real tokens, "
        "mask.sum(dim=1)": summed / x.shape[1],
        "You divided by the number of real tokens but summed the padding vectors too: multiply by the mask "
        "first": x.sum(dim=1) / m.sum(dim=1),
        "You took the first token's vector ([CLS] pooling): this model's sentence embedding is the mean of its "
        "real tokens": x[:, 0],
        "You normalised the mean to unit length: mean pooling stops at the mean (the L2 normalisation is a "
        "separate step, done after it)": right / right.norm(dim=-1, keepdim=True),
    }
    for hint, value in candidates.items():
        if value.shape == got.shape and torch.allclose(got.double(), value.double(), rtol=1e-5, atol=1e-6):
            return " " + hint + "."
    return ""


def check_mean_pool(fn: Callable) -> None:
    """mean_pool(token_embeddings [b, t, d], attention_mask [b, t]) -> [b, d]: each sequence's mean over its real
    tokens (mask 1), in the embeddings' dtype."""
    cases = _pool_cases()
    for what, x, mask in cases:
        call = f"mean_pool(token_embeddings {list(x.shape)}, attention_mask {list(mask.shape)}) ({what})"
        got = _call(fn, call, x.clone(), mask.clone())
        expected = reference_pool(x, mask)
        if not isinstance(got, torch.Tensor):
            raise AssertionError(f"{call} should return a torch.Tensor [b, d], got {type(got).__name__}: "
                                 f"{_short(got)}")
        if tuple(got.shape) != tuple(expected.shape):
            raise AssertionError(f"{call} should return shape {list(expected.shape)} (one vector per sequence), "
                                 f"got {list(got.shape)}" + (" (sum over the tokens, dim=1, not over the batch)"
                                                             if tuple(got.shape) == tuple(x.shape[1:]) else ""))
        if got.dtype != x.dtype:
            raise AssertionError(f"{call}: keep the embeddings' dtype {x.dtype}, got {got.dtype} (convert the "
                                 f"mask to the embeddings' dtype, not the other way round)")
        if not torch.allclose(got.double(), expected.double(), rtol=1e-5, atol=1e-6):
            i = int((got.double() - expected.double()).abs().amax(dim=1).argmax())
            raise AssertionError(f"{call}: sequence {i} (mask {mask[i].tolist()}) should pool to "
                                 f"{_short([round(v, 4) for v in expected[i, :4].tolist()])[:-1]}, ...], got "
                                 f"{_short([round(v, 4) for v in got[i, :4].tolist()])[:-1]}, ...]."
                                 f"{_pool_hint(got, x, mask)}")
    _passed("mean_pool", len(cases))


# ----------------------------------------------------------------------------------------------------------
# reciprocal rank fusion

def _rrf_cases() -> list[tuple[str, list[list[str]], int]]:
    cases = [
        ("two lists that rank the same three documents differently", [["a", "b", "c"], ["c", "a", "b"]], 60),
        ("a document missing from one list gets nothing from that list", [["a", "b", "c", "d"], ["b", "e"]], 60),
        ("three lists of different lengths", [["d1", "d2", "d3"], ["d3", "d1"], ["d2", "d4", "d5", "d1"]], 60),
        ("the same lists with k = 1", [["d1", "d2", "d3"], ["d3", "d1"], ["d2", "d4", "d5", "d1"]], 1),
        ("lists whose positions do not line up: fuse by id, never by position",
         [["x", "y", "z"], ["z", "w", "x"]], 60),
        ("a tie in fused score: ties go to the smaller id first", [["b", "a"], ["a", "b"]], 60),
        ("k = 10: the k asked for, not a constant", [["p", "q", "r"], ["r", "s"]], 10),
        ("one list: its order kept, scores 1/(k + rank)", [["m", "k", "z", "a"]], 60),
        ("an empty list among the others", [[], ["a", "b"], ["b"]], 60),
        ("no lists at all: an empty result", [], 60),
    ]
    rng = random.Random(12)
    ids = [f"doc{i:02d}" for i in range(14)]
    for i in range(6):
        lists = [rng.sample(ids, rng.randint(0, 9)) for _ in range(rng.randint(2, 4))]
        cases.append((f"seeded random lists {i + 1}", lists, rng.choice([60, 60, 5, 1])))
    return cases


def _rrf_hint(got_scores: dict, rankings: list[list[str]], k: int) -> str:
    def fused(rank_of: Callable[[int], float], k_used: float = k, missing: bool = False) -> dict:
        out: dict = {}
        every = {d for r in rankings for d in r}
        for r in rankings:
            for i, d in enumerate(r):
                out[d] = out.get(d, 0.0) + 1.0 / (k_used + rank_of(i))
            if missing:
                for d in every - set(r):
                    out[d] = out.get(d, 0.0) + 1.0 / (k_used + len(r) + 1)
        return out

    def positional() -> dict:
        out: dict = {}
        for i in range(max(map(len, rankings), default=0)):
            first = rankings[0][i] if i < len(rankings[0]) else None
            for d in (first,) if first is not None else ():
                out[d] = sum(1.0 / (k + i + 1) for r in rankings if i < len(r))
        return out

    candidates = [
        ("Your ranks start at 0: the top document of a list has rank 1 and scores 1/(k + 1) "
         "(enumerate(ranking, start=1))", fused(lambda i: i)),
        (f"You used k = 60 whatever k was asked for (k = {k} here)", fused(lambda i: i + 1, 60)),
        ("You used k = 1", fused(lambda i: i + 1, 1)),
        ("A document missing from a list must get nothing from that list: you gave it a rank just below the "
         "list's end", fused(lambda i: i + 1, missing=True)),
        ("You fused the lists position by position (as if the i-th entries of every list were the same "
         "document): add each document's 1/(k + rank) under its id, in a dict", positional()),
    ]
    for hint, scores in candidates:
        if set(scores) == set(got_scores) and all(math.isclose(got_scores[d], s, rel_tol=1e-9)
                                                  for d, s in scores.items()):
            return " " + hint + "."
    return ""


def check_reciprocal_rank_fusion(fn: Callable) -> None:
    """reciprocal_rank_fusion(rankings, k=60) -> [(id, score), ...]: score = sum over the lists holding the id
    of 1/(k + rank), rank 1-based; best first, equal scores by id ascending."""
    cases = _rrf_cases()
    for what, rankings, k in cases:
        call = f"reciprocal_rank_fusion({_short(rankings, 120)}, k={k}) ({what})"
        got = _call(fn, call, [list(r) for r in rankings], k)
        expected = reference_rrf(rankings, k)
        if not isinstance(got, list):
            raise AssertionError(f"{call} should return a list of (id, score) pairs, best first, got "
                                 f"{type(got).__name__}: {_short(got)}")
        if not all(isinstance(p, (tuple, list)) and len(p) == 2 for p in got):
            raise AssertionError(f"{call} should return (id, score) pairs, got {_short(got)}")
        got_scores = {d: s for d, s in got}
        if len(got_scores) != len(got):
            raise AssertionError(f"{call} lists a document more than once: {_short(got)}")
        exp_scores = dict(expected)
        if set(got_scores) != set(exp_scores):
            missing, extra = sorted(set(exp_scores) - set(got_scores)), sorted(set(got_scores) - set(exp_scores))
            raise AssertionError(f"{call}: every document in any list, and only those, must appear once. "
                                 f"Missing {missing}, unexpected {extra}.{_rrf_hint(got_scores, rankings, k)}")
        for d, s in expected:
            g = got_scores[d]
            if isinstance(g, bool) or not isinstance(g, (int, float, np.floating)) or \
                    not math.isclose(g, s, rel_tol=1e-9):
                raise AssertionError(f"{call}: {d!r} should score {s:.6f}, got {_short(g)}. Expected "
                                     f"{[(e, round(v, 5)) for e, v in expected]}."
                                     f"{_rrf_hint(got_scores, rankings, k)}")
        # the order: by score, highest first; equal scores by id. Two sums of the same terms added in another
        # order may differ in their last bit: such a near-tie may come in either order.
        for (d1, s1), (d2, s2) in zip(got, got[1:]):
            tie = s1 == s2
            if (s1 < s2 and not math.isclose(s1, s2, rel_tol=1e-12)) or (tie and d1 > d2):
                order = [d for d, _ in expected]
                why = (f"{d1!r} and {d2!r} tie (score {s1:.6f}): ties go to the smaller id first, so the result "
                       f"does not depend on the order of the lists" if tie else
                       f"{d1!r} (score {s1:.6f}) comes before {d2!r} (score {s2:.6f}): sort by score, highest first")
                raise AssertionError(f"{call}: right scores, wrong order: {why}. Expected the order {order}.")
    _passed("reciprocal_rank_fusion", len(cases))


# ----------------------------------------------------------------------------------------------------------
# retrieval metrics of one query

def _metric_cases() -> list[tuple[str, list[str], dict[str, int], int]]:
    rel = {"d1": 1, "d2": 1, "d9": 1}
    graded = {"a": 3, "b": 2, "c": 1, "z": 0}
    cases = [
        ("a plain ranking", ["d3", "d1", "d7", "d2"], rel, 2),
        ("a plain ranking", ["d3", "d1", "d7", "d2"], rel, 3),
        ("a plain ranking, shorter than k", ["d3", "d1", "d7", "d2"], rel, 10),
        ("a relevant document listed three times (two chunks of the same section, say): it counts once",
         ["a", "a", "a"], {"a": 1, "b": 1}, 3),
        ("repeats before the relevant document: drop them and the documents below move up",
         ["x", "x", "x", "a", "y"], {"a": 1}, 3),
        ("graded relevance; 'z' is judged NOT relevant (grade 0)", ["z", "c", "b", "q", "a"], graded, 10),
        ("graded relevance, the ideal order", ["a", "b", "c"], graded, 10),
        ("graded relevance", ["c", "x", "a", "b"], graded, 2),
        ("no relevant document retrieved", ["u", "v", "w"], rel, 10),
        ("an empty ranking", [], rel, 5),
        ("a query with no relevant document at all scores 0", ["a", "b"], {"a": 0}, 10),
        ("more relevant documents than k", ["r1", "x", "r2", "r3"], {f"r{i}": 1 for i in range(1, 7)}, 3),
    ]
    rng = random.Random(12)
    ids = [f"s{i}" for i in range(10)]
    for i in range(8):
        ranking = rng.choices(ids, k=rng.randint(1, 12))  # with repeats
        judged = {d: rng.choice([0, 1, 1, 2, 3]) for d in rng.sample(ids, rng.randint(1, 5))}
        cases.append((f"seeded random ranking {i + 1}", ranking, judged, rng.choice([1, 3, 5, 10])))
    return cases


def _dedupe(ranking: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(ranking))


def _dcg(gains: Sequence[float], discount: Callable[[int], float] = lambda r: math.log2(r + 1)) -> float:
    return sum(g / discount(r) for r, g in enumerate(gains, start=1))


def _metric_mistakes(name: str, ranking: list[str], relevance: dict[str, int], k: int) -> list[tuple[str, float]]:
    relevant = {d for d, r in relevance.items() if r > 0}
    top, raw = _dedupe(ranking)[:k], ranking[:k]
    dup = ("A document listed twice counts once, at its first position: remove the repeats first "
           "(list(dict.fromkeys(ranking)))" + ("" if name == "reciprocal_rank" else ", then cut at k"))
    grade0 = "A document judged with grade 0 is NOT relevant: only grades > 0 are"
    if name == "recall_at_k":
        n = len(relevant)
        return [] if not n else [
            ("Remove the repeats BEFORE cutting at k: the documents below a repeat move up into the top k",
             len(set(raw) & relevant) / n),
            (dup, sum(d in relevant for d in raw) / n),
            ("You divided by k: that is Precision@k. Recall divides by the number of relevant documents",
             sum(d in relevant for d in top) / k),
            (grade0 + ", in the denominator too", sum(d in relevant for d in top) / len(relevance)),
        ]
    if name == "reciprocal_rank":
        first = next((r for r, d in enumerate(ranking, start=1) if d in relevant), None)
        first0 = next((r for r, d in enumerate(_dedupe(ranking)) if d in relevant), None)
        judged = next((r for r, d in enumerate(_dedupe(ranking), start=1) if d in relevance), None)
        one_based = "Ranks are 1-based: the reciprocal rank of the top document is 1/1, of the second 1/2"
        return [(dup, 1 / first if first else 0.0),
                (grade0, 1 / judged if judged else 0.0),
                (one_based, 1 / (first0 + 2) if first0 is not None else 0.0),
                (one_based, 1 / first0 if first0 else math.nan)]
    gains = [relevance.get(d, 0) for d in top]
    ideal = sorted((r for r in relevance.values() if r > 0), reverse=True)
    if not ideal:
        return []
    i_dcg = _dcg(ideal[:k])
    return [
        ("You did not discount: each gain must be divided by log2(rank + 1), rank 1-based, so a relevant "
         "document found lower counts less", sum(gains) / sum(ideal[:k])),
        ("The discount is 1 / log2(rank + 1), not 1 / rank", _dcg(gains, float) / _dcg(ideal[:k], float)),
        ("The gain is the relevance grade itself (as trec_eval computes it), not 2**grade - 1",
         _dcg([2 ** g - 1 for g in gains]) / _dcg([2 ** g - 1 for g in ideal[:k]])),
        ("The ideal DCG sorts ALL the judged relevant documents by grade, not just the ones retrieved",
         _dcg(gains) / (_dcg(sorted(gains, reverse=True)) or math.inf)),
        ("Cut the ideal ranking at k too: the ideal DCG@k sums only its first k gains", _dcg(gains) / _dcg(ideal)),
        (dup, _dcg([relevance.get(d, 0) for d in raw]) / i_dcg),
    ]


def _reference_metric(name: str, ranking: list[str], relevance: dict[str, int], k: int) -> float:
    run, qrels = {"q": list(ranking)}, {"q": dict(relevance)}
    if name == "recall_at_k":
        return metrics.recall_at_k(run, qrels, k)["q"]
    if name == "reciprocal_rank":
        return metrics.mrr(run, qrels)["q"]
    return metrics.ndcg_at_k(run, qrels, k)["q"]


def _check_metric(fn: Callable, name: str) -> None:
    cases = _metric_cases()
    if name == "reciprocal_rank":  # it has no k: each (ranking, relevance) once
        unique: dict = {}
        for case in cases:
            unique.setdefault((tuple(case[1]), tuple(case[2].items())), case)
        cases = list(unique.values())
    for what, ranking, relevance, k in cases:
        args = (list(ranking), dict(relevance)) + (() if name == "reciprocal_rank" else (k,))
        shown = ", ".join([_short(ranking, 80), _short(relevance, 80)] + ([] if name == "reciprocal_rank"
                                                                          else [str(k)]))
        call = f"{name}({shown}) ({what})"
        got = _number(_call(fn, call, *args), call)
        expected = _reference_metric(name, ranking, relevance, k)
        if not math.isclose(got, expected, rel_tol=1e-9, abs_tol=1e-12):
            hint = next((" " + h + "." for h, v in _metric_mistakes(name, ranking, relevance, k)
                         if math.isclose(got, v, rel_tol=1e-9, abs_tol=1e-12)), "")
            raise AssertionError(f"{call}: expected {expected:.6f}, got {got:.6f}.{hint}")
    _passed(name, len(cases))


def check_recall_at_k(fn: Callable) -> None:
    """recall_at_k(ranking, relevance, k) -> float: the fraction of the relevant documents (grade > 0) in the top
    k of the ranking with its repeats removed; 0 when nothing is relevant."""
    _check_metric(fn, "recall_at_k")


def check_reciprocal_rank(fn: Callable) -> None:
    """reciprocal_rank(ranking, relevance) -> float: 1 / the 1-based rank of the first relevant document in the
    ranking with its repeats removed; 0 when none is retrieved (its mean over queries is the MRR)."""
    _check_metric(fn, "reciprocal_rank")


def check_ndcg_at_k(fn: Callable) -> None:
    """ndcg_at_k(ranking, relevance, k=10) -> float: DCG of the top k (gain = grade, discount log2(rank + 1))
    over the DCG of the ideal top k; repeats removed first; 0 when nothing is relevant."""
    _check_metric(fn, "ndcg_at_k")
