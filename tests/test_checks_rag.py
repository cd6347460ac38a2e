"""labkit.checks.rag: the lab-12 checks pass labkit's own functions and straightforward right ones, and catch
plausible wrong ones, each with a message that says what is wrong."""
import math
from collections import Counter

import numpy as np
import pytest
import torch

from labkit.checks.rag import (_bm25_like, check_bm25_scores, check_lucene_idf, check_mean_pool,
                               check_ndcg_at_k, check_recall_at_k, check_reciprocal_rank,
                               check_reciprocal_rank_fusion)
from labkit.rag import bm25, dense, fusion, metrics

pytestmark = pytest.mark.usefixtures("torch_one_thread")

CHECKS = (check_lucene_idf, check_bm25_scores, check_mean_pool, check_reciprocal_rank_fusion, check_recall_at_k,
          check_reciprocal_rank, check_ndcg_at_k)


def _expect(check, fn, message, capsys):
    """fn passes the check when message is None, else fails it with a message matching `message`."""
    if message is None:
        check(fn)
        assert "✓" in capsys.readouterr().out
        return
    with pytest.raises(AssertionError, match=message):
        check(fn)
    assert "✓" not in capsys.readouterr().out


def test_labkit_itself_passes(capsys):
    check_lucene_idf(lambda df, n: float(bm25.idf(np.array([df]), n, "lucene")[0]))
    check_bm25_scores(lambda q, docs, k1, b: bm25.BM25("lucene", k1=k1, b=b).index(docs).scores(q))
    check_mean_pool(dense.mean_pool)
    check_reciprocal_rank_fusion(fusion.reciprocal_rank_fusion)
    check_recall_at_k(lambda r, rel, k: metrics.recall_at_k({"q": r}, {"q": rel}, k)["q"])
    check_reciprocal_rank(lambda r, rel: metrics.mrr({"q": r}, {"q": rel})["q"])
    check_ndcg_at_k(lambda r, rel, k=10: metrics.ndcg_at_k({"q": r}, {"q": rel}, k)["q"])
    out = capsys.readouterr().out
    for name in ("lucene_idf", "bm25_scores", "mean_pool", "reciprocal_rank_fusion", "recall_at_k",
                 "reciprocal_rank", "ndcg_at_k"):
        assert f"✓ {name} passes" in out


def test_stubs_raise_not_implemented():
    def stub(*args, **kwargs):
        raise NotImplementedError("Exercise")
    for check in CHECKS:
        with pytest.raises(NotImplementedError):
            check(stub)


# ------------------------------------------------------------------------------------------------- BM25

@pytest.mark.parametrize("fn, message", [
    (lambda df, n: math.log(1 + (n - df + 0.5) / (df + 0.5)), None),
    (lambda df, n: np.log1p((n - df + 0.5) / (df + 0.5)), None),  # a numpy float is a float
    (lambda df, n: math.log((n - df + 0.5) / (df + 0.5)), "without the 1 \\+"),
    (lambda df, n: math.log(1 + (n - df) / df), "without the 0.5s"),
    (lambda df, n: math.log(n / df), "ATIRE"),  # the same number as without the 0.5s
    (lambda df, n: math.log10(1 + (n - df + 0.5) / (df + 0.5)), "base 10"),
    (lambda df, n: math.log(1 + (df + 0.5) / (n - df + 0.5)), "swapped"),
    (lambda df, n: [math.log(1 + (n - df + 0.5) / (df + 0.5))], "should return a float"),
    (lambda df, n: torch.tensor(1.0), "should return a float"),
    (lambda df, n: 1 / 0, "raised ZeroDivisionError"),
])
def test_idf_check_catches(fn, message, capsys):
    _expect(check_lucene_idf, fn, message, capsys)


def _idf(df, n):
    return math.log(1 + (n - df + 0.5) / (df + 0.5))


def _bm25(query, docs, k1=1.5, b=0.75):
    """A plain right answer, as a student writes it."""
    n = len(docs)
    avgdl = sum(len(d) for d in docs) / n
    df = Counter(t for d in docs for t in set(d))
    out = []
    for d in docs:
        tf = Counter(d)
        norm = k1 * (1 - b + b * len(d) / avgdl)
        out.append(sum(_idf(df[t], n) * tf[t] / (tf[t] + norm) for t in query if tf[t] > 0))
    return out


def _bm25_sorts_query(query, docs, k1=1.5, b=0.75):
    query.sort()
    return _bm25(query, docs, k1, b)


@pytest.mark.parametrize("fn, message", [
    (_bm25, None),
    (lambda q, d, k1, b: np.array(_bm25(q, d, k1, b)), None),
    (lambda q, d, k1=1.5, b=0.75: _bm25_like(q, d, k1, b, idf="robertson"), "lacks the 1 \\+"),
    (lambda q, d, k1=1.5, b=0.75: _bm25_like(q, d, k1, b, idf="no_half"), "lacks the 0.5s"),
    (lambda q, d, k1=1.5, b=0.75: _bm25_like(q, d, k1, b, df="occurrences"), "count the DOCUMENTS"),
    (lambda q, d, k1=1.5, b=0.75: _bm25_like(q, d, k1, b, dedupe_query=True), "counts twice"),
    (lambda q, d, k1=1.5, b=0.75: _bm25_like(q, d, k1, b, skip_empty=True), "empty document still counts"),
    (lambda q, d, k1=1.5, b=0.75: _bm25_like(q, d, k1, b, scale=True), "times \\(k1 \\+ 1\\)"),
    (lambda q, d, k1=1.5, b=0.75: _bm25_like(q, d, k1, b, norm="brackets"), "the brackets"),
    (lambda q, d, k1=1.5, b=0.75: _bm25_like(q, d, k1, b, norm="max"), "AVERAGE document length"),
    (lambda q, d, k1=1.5, b=0.75: _bm25(q, d), "use the k1 and b passed in"),
    (lambda q, d, k1=1.5, b=0.75: _bm25(q, [x for x in d if x], k1, b), "one per document"),
    (lambda q, d, k1=1.5, b=0.75: torch.tensor(_bm25(q, d, k1, b)), "should return a list"),
    (lambda q, d, k1=1.5, b=0.75: dict(enumerate(_bm25(q, d, k1, b))), "should return a list"),
    (_bm25_sorts_query, "in place"),
])
def test_bm25_check_catches(fn, message, capsys):
    _expect(check_bm25_scores, fn, message, capsys)


def test_bm25_hint_model_is_labkit_when_no_mistake_is_on():
    """_bm25_like names mistakes by recomputing them: with every option off it must be the reference."""
    docs = [["a", "b", "a"], [], ["b", "c"], ["a"]]
    for q in (["a"], ["b", "b", "z"], ["c", "a"]):
        assert np.allclose(_bm25_like(q, docs, 1.2, 0.6), bm25.BM25("lucene", 1.2, 0.6).index(docs).scores(q))


# ------------------------------------------------------------------------------------------------- pooling

def _pool(x, mask):
    m = mask.unsqueeze(-1).to(x.dtype)
    return (x * m).sum(dim=1) / m.sum(dim=1)


def _pool_in_place(x, mask):
    x *= mask.unsqueeze(-1).to(x.dtype)
    return x.sum(dim=1) / mask.sum(dim=1, keepdim=True).to(x.dtype)


@pytest.mark.parametrize("fn, message", [
    (_pool, None),
    (lambda x, mask: (x * mask[..., None]).sum(1) / mask.sum(1, keepdim=True), None),  # int mask, promotes
    (lambda x, mask: x.mean(dim=1), "padding included"),
    (lambda x, mask: (x * mask[..., None].to(x.dtype)).sum(1) / x.shape[1], "padded length"),
    (lambda x, mask: x.sum(1) / mask.to(x.dtype).sum(1, keepdim=True), "summed the padding vectors"),
    (lambda x, mask: x[:, 0], "CLS"),
    (lambda x, mask: dense.l2_normalize(_pool(x, mask)), "unit length"),
    (lambda x, mask: _pool(x, mask).float(), "dtype"),
    (lambda x, mask: _pool(x, mask)[:, None], "shape"),
    (lambda x, mask: (x * mask[..., None]).sum(0), "not over the batch"),
    (lambda x, mask: _pool(x, mask).tolist(), "should return a torch.Tensor"),
    (_pool_in_place, "in place"),
])
def test_pool_check_catches(fn, message, capsys):
    _expect(check_mean_pool, fn, message, capsys)


# ------------------------------------------------------------------------------------------------- fusion

def _rrf(rankings, k=60, start=1, k_used=None, missing=False, order="id"):
    k = k if k_used is None else k_used
    scores = {}
    every = {d for r in rankings for d in r}
    for ranking in rankings:
        for rank, doc in enumerate(ranking, start=start):
            scores[doc] = scores.get(doc, 0.0) + 1.0 / (k + rank)
        if missing:
            for doc in every - set(ranking):
                scores[doc] = scores.get(doc, 0.0) + 1.0 / (k + len(ranking) + 1)
    if order == "id":
        return sorted(scores.items(), key=lambda item: (-item[1], item[0]))
    if order == "first":  # ties in the order the documents were first seen
        return sorted(scores.items(), key=lambda item: -item[1])
    return sorted(scores.items(), key=lambda item: item[1])


def _rrf_positional(rankings, k=60):
    scores = {}
    for i, docs in enumerate(zip(*rankings)):  # the i-th entries of all lists, as if they were one document
        scores[docs[0]] = len(docs) / (k + i + 1)
    return sorted(scores.items(), key=lambda item: (-item[1], item[0]))


def _rrf_three_lists_reversed(rankings, k=60):
    """Adds the lists in reverse order: near-ties can differ in their last bit, which must not fail."""
    return _rrf(rankings[::-1], k)


@pytest.mark.parametrize("fn, message", [
    (_rrf, None),
    (_rrf_three_lists_reversed, None),
    (lambda r, k=60: [list(p) for p in _rrf(r, k)], None),  # [id, score] lists are pairs too
    (lambda r, k=60: _rrf(r, k, start=0), "start at 0"),
    (lambda r, k=60: _rrf(r, k, k_used=60), "k = 60 whatever"),
    (lambda r, k=60: _rrf(r, k, k_used=1), "should score"),
    (lambda r, k=60: _rrf(r, k, missing=True), "missing from a list must get nothing"),
    (_rrf_positional, "position by position"),
    (lambda r, k=60: _rrf(r, k, order="first"), "ties go to the smaller id"),
    (lambda r, k=60: _rrf(r, k, order="ascending"), "highest first"),
    (lambda r, k=60: dict(_rrf(r, k)), "should return a list"),
    (lambda r, k=60: [d for d, _ in _rrf(r, k)], "pairs"),
    (lambda r, k=60: _rrf(r, k) + _rrf(r, k)[:1], "more than once"),
])
def test_fusion_check_catches(fn, message, capsys):
    _expect(check_reciprocal_rank_fusion, fn, message, capsys)


# ------------------------------------------------------------------------------------------------- metrics

def _top(ranking, k):
    return list(dict.fromkeys(ranking))[:k]


def _recall(ranking, relevance, k):
    relevant = {d for d, g in relevance.items() if g > 0}
    return sum(d in relevant for d in _top(ranking, k)) / len(relevant) if relevant else 0.0


def _relevant(relevance):
    return {d for d, g in relevance.items() if g > 0}


@pytest.mark.parametrize("fn, message", [
    (_recall, None),
    (lambda r, rel, k: sum(d in _relevant(rel) for d in r[:k]) / max(len(_relevant(rel)), 1),
     "counts once, at its first position"),
    (lambda r, rel, k: len(set(r[:k]) & _relevant(rel)) / max(len(_relevant(rel)), 1), "BEFORE cutting"),
    (lambda r, rel, k: sum(d in _relevant(rel) for d in _top(r, k)) / k, "Precision@k"),
    (lambda r, rel, k: sum(d in _relevant(rel) for d in _top(r, k)) / len(rel), "grade 0"),
    (lambda r, rel, k: sum(d in _relevant(rel) for d in _top(r, k)) / len(_relevant(rel)), "ZeroDivisionError"),
    (lambda r, rel, k: _recall(r, rel, k + 1), "expected"),
    (lambda r, rel, k: str(_recall(r, rel, k)), "should return a float"),
])
def test_recall_check_catches(fn, message, capsys):
    _expect(check_recall_at_k, fn, message, capsys)


def _rr(ranking, relevance, dedupe=True, start=1):
    for rank, d in enumerate(dict.fromkeys(ranking) if dedupe else ranking, start=start):
        if relevance.get(d, 0) > 0:
            return 1 / rank
    return 0.0


@pytest.mark.parametrize("fn, message", [
    (_rr, None),
    (lambda r, rel: _rr(r, rel, dedupe=False), "counts once, at its first position"),
    (lambda r, rel: _rr(r, rel, start=2), "1-based"),
    (lambda r, rel: _rr(r, rel, start=0), "1-based"),
    (lambda r, rel: next((1 / i for i, d in enumerate(_top(r, 99), 1) if d in rel), 0.0), "grade 0"),
])
def test_reciprocal_rank_check_catches(fn, message, capsys):
    _expect(check_reciprocal_rank, fn, message, capsys)


def _ndcg(ranking, relevance, k=10, discount=lambda r: math.log2(r + 1), gain=lambda g: g, ideal="judged",
          cut_ideal=True, dedupe=True):
    top = _top(ranking, k) if dedupe else ranking[:k]
    gains = [gain(relevance.get(d, 0)) for d in top]
    pool = relevance.values() if ideal == "judged" else [relevance.get(d, 0) for d in top]
    best = sorted((gain(g) for g in pool if g > 0), reverse=True)
    best = best[:k] if cut_ideal else best
    idcg = sum(g / discount(r) for r, g in enumerate(best, start=1))
    return sum(g / discount(r) for r, g in enumerate(gains, start=1)) / idcg if idcg > 0 else 0.0


@pytest.mark.parametrize("fn, message", [
    (_ndcg, None),
    (lambda r, rel, k=10: _ndcg(r, rel, k, discount=lambda x: math.log(x + 1)), None),  # any log base: it cancels
    (lambda r, rel, k=10: _ndcg(r, rel, k, discount=lambda x: 1.0), "did not discount"),
    (lambda r, rel, k=10: _ndcg(r, rel, k, discount=float), "not 1 / rank"),
    (lambda r, rel, k=10: _ndcg(r, rel, k, discount=lambda x: math.log2(x)), "ZeroDivisionError"),
    (lambda r, rel, k=10: _ndcg(r, rel, k, gain=lambda g: 2 ** g - 1), "2\\*\\*grade - 1"),
    (lambda r, rel, k=10: _ndcg(r, rel, k, ideal="retrieved"), "not just the ones retrieved"),
    (lambda r, rel, k=10: _ndcg(r, rel, k, cut_ideal=False), "Cut the ideal ranking at k"),
    (lambda r, rel, k=10: _ndcg(r, rel, k, dedupe=False), "counts once, at its first position"),
    (lambda r, rel, k=10: _ndcg(r, rel), "expected"),  # ignores k
])
def test_ndcg_check_catches(fn, message, capsys):
    _expect(check_ndcg_at_k, fn, message, capsys)
