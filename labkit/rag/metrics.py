"""How good is a retriever, and how good is an answer? The metrics of retrieval evaluation, from scratch.

Retrieval metrics compare a *run* with *qrels* (relevance judgements), in the TREC layout:

    run   = {query_id: [doc_id, doc_id, ...]}          # ranked, best first
    qrels = {query_id: {doc_id: relevance, ...}}       # int >= 0; > 0 means relevant

Each metric returns {query_id: value} for every query in `qrels` (average with `mean`). Conventions, chosen to
agree with trec_eval (and so with `pytrec_eval`, the test oracle):

- A document is relevant when its relevance is >= 1; unjudged documents count as non-relevant (relevance 0).
- A query in `qrels` that the run lacks gets an empty ranking (every metric 0), so a retriever cannot look
  better by skipping hard queries. A query in the run but not in `qrels` is an error: nothing can judge it
  (usually it means the ids of the run and the judgements do not line up).
- A document listed twice in a ranking counts once, at its **first** position; later copies are dropped
  and the documents below them move up. Without this, a ranking ["a", "a", "a"] would earn Recall@3 = 3
  for one relevant document.
- Ranks are 1-based and given by list order, so ties cannot happen.

Answer metrics (SQuAD's): `exact_match` and `token_f1` compare a predicted answer with one or more gold
answers after normalising both (lowercase, drop punctuation, drop the articles a/an/the, collapse whitespace),
taking the best score over the golds.
"""
from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Mapping, Sequence

Run = Mapping[str, Sequence[str]]
Qrels = Mapping[str, Mapping[str, int]]


# ---------------------------------------------------------------- validation and shared steps

def _check_k(k: object, name: str = "k") -> int:
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"{name} must be an int, got {type(k).__name__}")
    if k < 1:
        raise ValueError(f"{name} must be >= 1 (a cutoff of {k} keeps no documents), got {k}")
    return k


def _check(run: object, qrels: object) -> None:
    if not isinstance(run, Mapping):
        raise TypeError(f"run must be a dict {{query_id: [doc_id, ...]}}, got {type(run).__name__}")
    if not isinstance(qrels, Mapping):
        raise TypeError(f"qrels must be a dict {{query_id: {{doc_id: relevance}}}}, got {type(qrels).__name__}")
    for qid, ranking in run.items():
        if isinstance(ranking, (str, bytes)) or not isinstance(ranking, Sequence):
            raise TypeError(f"run[{qid!r}] must be a list of doc ids in rank order, got {type(ranking).__name__}")
        if not all(isinstance(d, str) for d in ranking):
            raise TypeError(f"run[{qid!r}] must hold str doc ids")
        if qid not in qrels:
            raise ValueError(f"run has query {qid!r}, which qrels does not judge: do the query ids line up?")
    for qid, judged in qrels.items():
        if not isinstance(judged, Mapping):
            raise TypeError(f"qrels[{qid!r}] must be a dict {{doc_id: relevance}}, got {type(judged).__name__}")
        for doc, rel in judged.items():
            if isinstance(rel, bool) or not isinstance(rel, int) or rel < 0:
                raise ValueError(f"qrels[{qid!r}][{doc!r}] must be an int relevance >= 0, got {rel!r}")


def dedupe(ranking: Sequence[str]) -> list[str]:
    """The ranking with every repeated document removed after its first position (order otherwise kept)."""
    return list(dict.fromkeys(ranking))


def _per_query(run: Run, qrels: Qrels) -> list[tuple[str, list[str], Mapping[str, int]]]:
    _check(run, qrels)
    return [(qid, dedupe(run.get(qid, ())), judged) for qid, judged in qrels.items()]


def mean(per_query: Mapping[str, float]) -> float:
    """Average of a metric over queries (what papers report as e.g. "MRR")."""
    if not per_query:
        raise ValueError("mean of no queries is undefined: the metric returned an empty dict")
    return math.fsum(per_query.values()) / len(per_query)


# ---------------------------------------------------------------- retrieval metrics

def recall_at_k(run: Run, qrels: Qrels, k: int = 10) -> dict[str, float]:
    """Recall@k: the fraction of a query's relevant documents found in the top k (0 if it has none)."""
    _check_k(k)
    out = {}
    for qid, ranking, judged in _per_query(run, qrels):
        relevant = {d for d, r in judged.items() if r > 0}
        found = sum(1 for d in ranking[:k] if d in relevant)
        out[qid] = found / len(relevant) if relevant else 0.0
    return out


def precision_at_k(run: Run, qrels: Qrels, k: int = 10) -> dict[str, float]:
    """Precision@k: relevant documents in the top k, divided by k (also when fewer than k were retrieved)."""
    _check_k(k)
    out = {}
    for qid, ranking, judged in _per_query(run, qrels):
        out[qid] = sum(1 for d in ranking[:k] if judged.get(d, 0) > 0) / k
    return out


def mrr(run: Run, qrels: Qrels, k: int | None = None) -> dict[str, float]:
    """Reciprocal rank of the first relevant document (1/rank, 1-based; 0 if none in the top k, or at all when
    k is None). Its mean over queries is the MRR."""
    if k is not None:
        _check_k(k)
    out = {}
    for qid, ranking, judged in _per_query(run, qrels):
        out[qid] = next((1.0 / rank for rank, d in enumerate(ranking[:k], start=1) if judged.get(d, 0) > 0), 0.0)
    return out


def dcg(gains: Sequence[float]) -> float:
    """Discounted cumulative gain of gains in rank order: sum of gain / log2(rank + 1), rank 1-based, so the
    first document is undiscounted and each later one counts a little less."""
    return math.fsum(g / math.log2(rank + 1) for rank, g in enumerate(gains, start=1))


def ndcg_at_k(run: Run, qrels: Qrels, k: int = 10) -> dict[str, float]:
    """nDCG@k with graded relevance: DCG of the top k divided by the DCG of the ideal ranking's top k.

    The gain of a document is its relevance value itself (as trec_eval's `ndcg_cut` computes it), not the
    2**rel - 1 of Burges et al. (2005); with binary relevance the two agree. The ideal ranking sorts all of the
    query's judged documents by relevance. A query with no relevant document scores 0.
    """
    _check_k(k)
    out = {}
    for qid, ranking, judged in _per_query(run, qrels):
        ideal = dcg(sorted((r for r in judged.values() if r > 0), reverse=True)[:k])
        out[qid] = dcg([judged.get(d, 0) for d in ranking[:k]]) / ideal if ideal > 0 else 0.0
    return out


# ---------------------------------------------------------------- answer metrics

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lowercase, drop ASCII punctuation, drop the articles a/an/the, collapse whitespace."""
    if not isinstance(text, str):
        raise TypeError(f"an answer must be a str, got {type(text).__name__}")
    text = text.lower().translate(_PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _golds(gold: str | Sequence[str]) -> list[str]:
    golds = [gold] if isinstance(gold, str) else list(gold) if isinstance(gold, Sequence) else None
    if not golds or not all(isinstance(g, str) for g in golds):
        raise TypeError(f"gold must be a str or a non-empty list of str, got {gold!r}")
    return golds


def exact_match(prediction: str, gold: str | Sequence[str]) -> float:
    """1.0 if the normalised prediction equals some normalised gold answer, else 0.0."""
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(g) for g in _golds(gold)))


def _f1(pred: list[str], gold: list[str]) -> float:
    if not pred or not gold:  # SQuAD: an empty answer scores 1 against an empty gold, 0 otherwise
        return float(pred == gold)
    common = sum((Counter(pred) & Counter(gold)).values())  # shared tokens, each counted as often as in both
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def token_f1(prediction: str, gold: str | Sequence[str]) -> float:
    """Harmonic mean of token precision and recall between the normalised answers; the best over the golds."""
    pred = normalize_answer(prediction).split()
    return max(_f1(pred, normalize_answer(g).split()) for g in _golds(gold))
