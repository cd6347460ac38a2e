"""Benchmark: labkit's HNSW (labkit.rag.hnsw) against hnswlib 0.8 at equal M, ef_construction and ef.

    python benchmarks/hnsw.py            # print the numbers (a few minutes on a quiet 2-core machine)
    python benchmarks/hnsw.py --save     # also write benchmarks/results/hnsw.json

Two data sets, each searched for its 10 nearest neighbours by cosine:
* corpus: the chapter's MiniLM embeddings of the heading-aware chunks (labkit.rag.index.corpus_index(), the
  saved run "12-embeddings"), queried with the embeddings of the sentence-packed chunks of the same documents
  (the same text cut elsewhere: near the corpus, never in it), QUERIES of them, seeded;
* synthetic: SYNTHETIC unit vectors of dim 384 around 100 random centres (a Gaussian mixture: neighbourhoods
  mean something, as in embeddings), queried with QUERIES more from the same mixture.

A missed neighbour whose identical twin (a repeated chunk) was returned instead is counted as a twin: the
exact search and labkit give such ties to the vector stored first, hnswlib to either.

For each: both indexes are built once on the same vectors in the same order (hnswlib on one thread), exact top-10
(brute force) is the truth, and recall@10 is measured at each ef in EFS for both. Speed, as ratios ours ÷ hnswlib
(< 1: labkit is slower): build time (one build each), and queries/s one query at a time (medians of REPEATS
alternating rounds; hnswlib on one thread), with labkit's exact search (DenseIndex) for reference. It reports,
never asserts: speed depends on the machine. The goal is recall within GOAL_RECALL of hnswlib at every ef.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import hnswlib
import numpy as np
from importlib.metadata import version

sys.path.insert(0, str(Path(__file__).parent))
from decode import machine  # noqa: E402  (the machine record every benchmark shares)

from labkit.rag.dense import DenseIndex
from labkit.rag.hnsw import HNSW
from labkit.timing import interleaved_medians

M, EF_CONSTRUCTION, K = 16, 100, 10
EFS = (10, 20, 40, 80, 160)
QUERIES = 200
SYNTHETIC = 20_000
QUICK_SYNTHETIC = 5_000  # the default run (make test); the saved run uses SYNTHETIC
REPEATS = 3
GOAL_RECALL = 0.02
RESULTS = Path(__file__).parent / "results" / "hnsw.json"


def corpus_vectors() -> tuple[np.ndarray, np.ndarray, str]:
    from labkit.rag.index import corpus_index
    data = corpus_index("heading").embeddings.numpy()
    sentences = corpus_index("sentence").embeddings.numpy()
    pick = np.random.default_rng(0).choice(len(sentences), min(QUERIES, len(sentences)), replace=False)
    return data, sentences[np.sort(pick)], "MiniLM embeddings of the heading chunks; queries: sentence chunks"


def synthetic_vectors(n: int, dim: int = 384, centres: int = 100) -> tuple[np.ndarray, np.ndarray, str]:
    rng = np.random.default_rng(0)
    mu = rng.normal(size=(centres, dim))
    x = mu[rng.integers(0, centres, n + QUERIES)] + 2.5 * rng.normal(size=(n + QUERIES, dim))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    return x[:n], x[n:], f"{n} unit vectors of dim {dim} around {centres} Gaussian centres (noise 2.5)"


def recall(found: list, true: np.ndarray) -> float:
    return float(np.mean([len(set(map(int, f)) & set(t.tolist())) / len(t) for f, t in zip(found, true)]))


def misses(found: list, true: np.ndarray, data: np.ndarray) -> tuple[int, int]:
    """(true neighbours missed, how many of those have an identical twin among the vectors returned instead)."""
    missed = twins = 0
    for f, t in zip(found, true):
        f, t = set(map(int, f)), set(t.tolist())
        for m in t - f:
            missed += 1
            twins += any(np.array_equal(data[m], data[e]) for e in f - t)
    return missed, twins




def measure_one(data: np.ndarray, queries: np.ndarray, about: str) -> dict:
    n, dim = data.shape
    exact = DenseIndex(data, list(range(n)))
    true = np.array([exact.search(q, K).ids for q in queries])

    start = time.perf_counter()
    ours = HNSW(dim, M=M, ef_construction=EF_CONSTRUCTION, seed=0).add(data)
    build_ours = time.perf_counter() - start
    theirs = hnswlib.Index(space="cosine", dim=dim)
    theirs.init_index(max_elements=n, M=M, ef_construction=EF_CONSTRUCTION, random_seed=0)
    start = time.perf_counter()
    theirs.add_items(data, np.arange(n), num_threads=1)
    build_theirs = time.perf_counter() - start

    rows = []
    for ef in EFS:
        theirs.set_ef(ef)
        found_ours = [ours.search(q, K, ef).ids for q in queries]
        found_theirs = theirs.knn_query(queries, k=K, num_threads=1)[0]
        r_ours, r_theirs = recall(found_ours, true), recall(found_theirs, true)
        (miss_ours, twins_ours), (miss_theirs, twins_theirs) = (misses(found_ours, true, data),
                                                                misses(found_theirs, true, data))
        s = interleaved_medians(dict(labkit=lambda: [ours.search(q, K, ef) for q in queries],
                                     hnswlib=lambda: [theirs.knn_query(q, k=K, num_threads=1) for q in queries]),
                                REPEATS)
        rows.append(dict(ef=ef, recall_labkit=r_ours, recall_hnswlib=r_theirs, misses_labkit=miss_ours,
                         misses_twins_labkit=twins_ours, misses_hnswlib=miss_theirs,
                         misses_twins_hnswlib=twins_theirs,
                         queries_per_s_labkit=len(queries) / s["labkit"],
                         queries_per_s_hnswlib=len(queries) / s["hnswlib"],
                         queries_ratio=s["hnswlib"] / s["labkit"]))
    exact_s = interleaved_medians(dict(exact=lambda: [exact.search(q, K) for q in queries]), REPEATS)["exact"]
    return dict(about=about, n=n, dim=dim, distinct=len(np.unique(data, axis=0)), queries=len(queries),
                levels=len(ours.graph),
                nodes_per_level=[len(g) for g in ours.graph], build_s_labkit=build_ours,
                build_s_hnswlib=build_theirs, build_ratio=build_theirs / build_ours,
                exact_queries_per_s=len(queries) / exact_s, by_ef=rows,
                worst_recall_gap=max(r["recall_hnswlib"] - r["recall_labkit"] for r in rows))


def measure(synthetic: int = SYNTHETIC) -> dict:
    about = machine(hnswlib=version("hnswlib"))
    sets = {"corpus": corpus_vectors(), "synthetic": synthetic_vectors(synthetic)}
    return dict(machine=about, M=M, M0=2 * M, ef_construction=EF_CONSTRUCTION, k=K, repeats=REPEATS,
                goal_recall=GOAL_RECALL, data={name: measure_one(*v) for name, v in sets.items()},
                load_average_1min_at_end=round(os.getloadavg()[0], 2))


def report(r: dict) -> None:
    m = r["machine"]
    print(f"machine: {m['cpu']}, {m['cores']} cores, numpy {m['numpy']}, hnswlib {m['hnswlib']}, load average "
          f"{m['load_average_1min']} at start and {r['load_average_1min_at_end']} at the end, {m['date']}, "
          f"revision {m['revision']}")
    print(f"M = {r['M']} (M0 = {r['M0']}), ef_construction = {r['ef_construction']}, recall@{r['k']} against "
          f"exact search; one query at a time, hnswlib on one thread; medians of {r['repeats']} rounds")
    for name, d in r["data"].items():
        print(f"\n{name}: {d['about']}; n = {d['n']}, dim = {d['dim']}, {d['queries']} queries; labkit's graph has "
              f"{d['levels']} layers of {d['nodes_per_level']} nodes")
        print(f"  build: labkit {d['build_s_labkit']:.2f} s, hnswlib {d['build_s_hnswlib']:.3f} s, "
              f"labkit ÷ hnswlib speed {d['build_ratio']:.3f}x")
        print(f"  {'ef':>5} {'recall labkit':>14} {'recall hnswlib':>15} {'labkit q/s':>11} {'hnswlib q/s':>12} "
              f"{'labkit ÷ hnswlib':>17}   misses (twins) labkit, hnswlib")
        for row in d["by_ef"]:
            print(f"  {row['ef']:>5} {row['recall_labkit']:>14.3f} {row['recall_hnswlib']:>15.3f} "
                  f"{row['queries_per_s_labkit']:>11.0f} {row['queries_per_s_hnswlib']:>12.0f} "
                  f"{row['queries_ratio']:>16.3f}x   {row['misses_labkit']} ({row['misses_twins_labkit']}), "
                  f"{row['misses_hnswlib']} ({row['misses_twins_hnswlib']})")
        print(f"  exact search (labkit DenseIndex, recall 1): {d['exact_queries_per_s']:.0f} queries/s")
        print(f"  recall gap (hnswlib - labkit), worst over ef: {d['worst_recall_gap']:+.3f} "
              f"(goal <= {r['goal_recall']})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--save", action="store_true", help=f"write {RESULTS.name} under benchmarks/results")
    parser.add_argument("--synthetic", type=int, default=None,
                        help=f"synthetic set size (default {SYNTHETIC:,} with --save; {QUICK_SYNTHETIC:,} otherwise, "
                             "which keeps `make test` short: building our graph in Python dominates)")
    args = parser.parse_args()
    begin = time.perf_counter()
    results = measure(args.synthetic or (SYNTHETIC if args.save else QUICK_SYNTHETIC))
    report(results)
    if args.save:
        RESULTS.parent.mkdir(exist_ok=True)
        RESULTS.write_text(json.dumps(results, indent=1) + "\n")
        print(f"wrote {RESULTS}")
    print(f"total benchmark time {time.perf_counter() - begin:.1f} s")
