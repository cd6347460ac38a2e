"""Benchmark: labkit's BM25 (labkit.rag.bm25) against bm25s 0.3.16 on the pydoc paragraphs.

    python benchmarks/bm25.py            # print the numbers (about 15 s on a quiet 2-core machine)
    python benchmarks/bm25.py --save     # also write benchmarks/results/bm25.json

The corpus is chapter 1's pydoc topics split at blank lines into paragraphs, as lowercased words and numbers
(labkit.corpus.word_tokens, punctuation dropped); the queries are QUERIES deterministic word lists (a
paragraph's first words plus two random vocabulary words, seeded). Both libraries get the same tokens and use the
Lucene variant with k1 = 1.5, b = 0.75 (bm25s' defaults), and the script checks they give the same scores.

Timed, alternating labkit and bm25s in REPEATS rounds, every number a MEDIAN over the rounds (the machine may be
shared): indexing the corpus; scoring every document for every query (labkit `scores` vs bm25s `get_scores`,
one query at a time); and the top 10 for every query (labkit `top_k` one query at a time vs bm25s `retrieve` on
the whole batch, its intended use; with its default numpy backend and, for reference, its numba backend, compiled
in an untimed warm-up). Ratios are labkit's speed ÷ bm25s' (> 1: labkit is faster); the goal is >= 0.5 on
queries. It reports, never asserts: speed depends on the machine.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import bm25s
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from decode import machine  # noqa: E402  (the machine record every benchmark shares)

from labkit.corpus import word_tokens
from labkit.rag.bm25 import BM25
from labkit.timing import interleaved_medians

REPEATS = 5
QUERIES = 300
K = 10
GOAL_QUERIES = 0.5
RESULTS = Path(__file__).parent / "results" / "bm25.json"


def pydoc_paragraphs() -> list[list[str]]:
    """Chapter 1's pydoc topics, split at blank lines, as lowercased words and numbers (punctuation dropped)."""
    from pydoc_data.topics import topics
    paragraphs = (p for name in sorted(topics) for p in topics[name].split("\n\n"))
    docs = ([t for t in word_tokens(p) if t[0].isalnum() or t[0] == "_"] for p in paragraphs)
    return [d for d in docs if d]


def make_queries(docs: list[list[str]], vocabulary: np.ndarray) -> list[list[str]]:
    rng = np.random.default_rng(0)
    picks = rng.choice(len(docs), QUERIES, replace=False)
    return [docs[i][:int(rng.integers(2, 6))] + rng.choice(vocabulary, 2).tolist() for i in picks]




def measure() -> dict:
    about = machine(bm25s=bm25s.__version__)
    docs = pydoc_paragraphs()
    ours = BM25("lucene").index(docs)
    theirs = bm25s.BM25(method="lucene")
    theirs.index(docs, show_progress=False)
    numba_backend = bm25s.BM25(method="lucene", backend="numba")
    numba_backend.index(docs, show_progress=False)
    queries = make_queries(docs, ours.vocabulary)

    # the same scores? (bm25s stores float32 by default: compare relative to the largest score)
    diff = max(float(np.abs(ours.scores(q) - theirs.get_scores(q)).max() / theirs.get_scores(q).max())
               for q in queries)
    top_ours = [ours.top_k(q, K) for q in queries]
    docs_theirs, scores_theirs = theirs.retrieve(queries, k=K, show_progress=False)
    top_diff = float(np.abs(np.array([t.scores for t in top_ours]) - scores_theirs).max())
    same_sets = sum(set(t.indices.tolist()) == set(d.tolist()) for t, d in zip(top_ours, docs_theirs))
    # where the sets differ, is every document in one and not the other tied with the cut (the 10th score)?
    unexplained = 0
    for q, t, d in zip(queries, top_ours, docs_theirs):
        s, cut = ours.scores(q), t.scores[-1]
        unexplained += any(abs(s[i] - cut) > 1e-5 * t.scores[0] for i in set(t.indices.tolist()) ^ set(d.tolist()))

    def index_ours():
        BM25("lucene").index(docs)

    def index_theirs():
        bm25s.BM25(method="lucene").index(docs, show_progress=False)

    index_s = interleaved_medians(dict(labkit=index_ours, bm25s=index_theirs), REPEATS)
    score_s = interleaved_medians(dict(labkit=lambda: [ours.scores(q) for q in queries],
                                       bm25s=lambda: [theirs.get_scores(q) for q in queries]), REPEATS)
    top_s = interleaved_medians(dict(labkit=lambda: [ours.top_k(q, K) for q in queries],
                                     bm25s=lambda: theirs.retrieve(queries, k=K, show_progress=False),
                                     bm25s_numba=lambda: numba_backend.retrieve(queries, k=K, show_progress=False,
                                                                                backend_selection="numba")),
                                REPEATS)
    qps = lambda s: QUERIES / s  # noqa: E731
    return dict(
        machine=about, corpus=dict(documents=len(docs), tokens=int(sum(map(len, docs))),
                                   terms=int(ours.vocabulary.size)),
        variant="lucene", k1=1.5, b=0.75, queries=QUERIES, k=K, repeats=REPEATS,
        agreement=dict(max_score_diff_relative=diff, top_k_max_score_diff=top_diff, same_top_k_sets=int(same_sets),
                       differences_not_ties=int(unexplained)),
        index_s=index_s, scores_queries_per_s={n: qps(s) for n, s in score_s.items()},
        top_k_queries_per_s={n: qps(s) for n, s in top_s.items()},
        ratios=dict(index=index_s["bm25s"] / index_s["labkit"], scores=score_s["bm25s"] / score_s["labkit"],
                    top_k=top_s["bm25s"] / top_s["labkit"], top_k_vs_numba=top_s["bm25s_numba"] / top_s["labkit"]),
        goal_queries=GOAL_QUERIES, load_average_1min_at_end=round(os.getloadavg()[0], 2))


def report(r: dict) -> None:
    m, c, a, ra = r["machine"], r["corpus"], r["agreement"], r["ratios"]
    print(f"machine: {m['cpu']}, {m['cores']} cores, numpy {m['numpy']}, bm25s {m['bm25s']}, load average "
          f"{m['load_average_1min']} at start and {r['load_average_1min_at_end']} at the end, {m['date']}, "
          f"revision {m['revision']}")
    print(f"corpus: {c['documents']} pydoc paragraphs, {c['tokens']} tokens, {c['terms']} terms; {r['queries']} "
          f"queries; {r['variant']}, k1={r['k1']}, b={r['b']}; medians of {r['repeats']} alternating rounds")
    print(f"agreement: scores differ by at most {a['max_score_diff_relative']:.1e} of the best score (bm25s stores "
          f"float32); top-{r['k']} scores by {a['top_k_max_score_diff']:.1e}; same top-{r['k']} sets for "
          f"{a['same_top_k_sets']}/{r['queries']} queries; the others differ only by documents tied at the cut "
          f"except in {a['differences_not_ties']} (bm25s breaks ties arbitrarily, labkit by lower index)")
    i, s, t = r["index_s"], r["scores_queries_per_s"], r["top_k_queries_per_s"]
    print(f"  {'':34} {'labkit':>10} {'bm25s':>10} {'labkit ÷ bm25s':>15}")
    print(f"  {'indexing, ms':34} {1e3 * i['labkit']:>10.1f} {1e3 * i['bm25s']:>10.1f} {ra['index']:>14.2f}x")
    print(f"  {'all scores, queries/s':34} {s['labkit']:>10.0f} {s['bm25s']:>10.0f} {ra['scores']:>14.2f}x")
    top = f"top {r['k']}"
    print(f"  {top + ', queries/s':34} {t['labkit']:>10.0f} {t['bm25s']:>10.0f} {ra['top_k']:>14.2f}x")
    print(f"  {top + ', bm25s numba backend':34} {'':>10} {t['bm25s_numba']:>10.0f} "
          f"{ra['top_k_vs_numba']:>14.2f}x")
    print(f"queries: labkit ÷ bm25s {min(ra['scores'], ra['top_k']):.2f}x at worst (goal >= {r['goal_queries']:g}x)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--save", action="store_true", help=f"write {RESULTS.name} under benchmarks/results")
    args = parser.parse_args()
    begin = time.perf_counter()
    results = measure()
    report(results)
    if args.save:
        RESULTS.parent.mkdir(exist_ok=True)
        RESULTS.write_text(json.dumps(results, indent=1) + "\n")
        print(f"wrote {RESULTS}")
    print(f"total benchmark time {time.perf_counter() - begin:.1f} s")
