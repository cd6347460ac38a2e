"""Reciprocal rank fusion: merge ranked lists from different retrievers without comparing their scores.

BM25 scores and cosine similarities live on different scales, so adding them needs tuning. Reciprocal rank
fusion (Cormack, Clarke & Büttcher, SIGIR 2009, "Reciprocal Rank Fusion outperforms Condorcet and individual
rank learning methods") uses only positions:

    RRF(d) = sum over lists L that contain d of 1 / (k + rank_L(d)),   rank 1 = the top of L,   k = 60.

The details other libraries got wrong, each pinned by a test in tests/test_rag_fusion.py:
- ranks are 1-based (a 0-based rank gives the top document 1/60 instead of 1/61 and changes ties);
- k is the k asked for (60 by default), not 1 or a constant baked in elsewhere;
- documents are matched by id, never by their position in each list (lists of different retrievers are not
  aligned);
- a document missing from a list adds nothing from that list: no synthetic "last rank" is invented for it.

Two choices the paper leaves open, made here:
- a document repeated within one list counts once, at its first (best) rank;
- the output is sorted by fused score, highest first, and equal scores are ordered by document id (ascending),
  so the result does not depend on the order of the input lists.
"""
from __future__ import annotations

import math
from collections.abc import Hashable, Sequence

DEFAULT_K = 60


def reciprocal_rank_fusion(rankings: Sequence[Sequence[Hashable]], k: float = DEFAULT_K) -> list[tuple[Hashable, float]]:
    """Fuse ranked lists of document ids into one ranking of (id, fused score), best first.

    `rankings` holds one list per retriever, each a sequence of document ids, best first (pass ids, not
    (id, score) pairs: the scores are deliberately ignored). Ties in fused score are broken by id ascending,
    so all ids must be mutually comparable (all str or all int, say).
    """
    if isinstance(k, bool) or not isinstance(k, (int, float)):
        raise TypeError(f"k must be a number (the paper uses 60), got {type(k).__name__}")
    if not (k > 0 and math.isfinite(k)):
        raise ValueError(f"k must be a finite number > 0 (the paper uses 60); got k={k}")
    if isinstance(rankings, (str, bytes)) or not isinstance(rankings, Sequence):
        raise TypeError(f"rankings must be a list of ranked lists of document ids, got {type(rankings).__name__}")
    # Keep each document's terms and add them with math.fsum (exactly rounded): a plain running sum depends on
    # the order of the lists in its last bit, which could flip a near-tie.
    terms: dict[Hashable, list[float]] = {}
    for i, ranking in enumerate(rankings):
        if isinstance(ranking, (str, bytes)) or not isinstance(ranking, Sequence):
            raise TypeError(f"rankings[{i}] must be a list of document ids, got {type(ranking).__name__}")
        seen: set[Hashable] = set()
        for rank, doc in enumerate(ranking, start=1):  # 1-based: the top document scores 1/(k+1)
            if isinstance(doc, tuple):
                raise TypeError(f"rankings[{i}][{rank - 1}] is a tuple {doc!r}: pass document ids, not (id, score) pairs")
            if doc in seen:  # a repeat counts once, at its first (best) rank
                continue
            seen.add(doc)
            terms.setdefault(doc, []).append(1.0 / (k + rank))
    scores = {doc: math.fsum(t) for doc, t in terms.items()}
    try:
        return sorted(scores.items(), key=lambda item: (-item[1], item[0]))
    except TypeError as err:
        raise TypeError(f"document ids must be mutually comparable to break ties (all str or all int): {err}") from None
