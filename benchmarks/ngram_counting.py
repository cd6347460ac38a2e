"""Benchmark: plain-Python `count_ngrams` vs numba `count_ngrams_numba` on the chapter 1 training corpus.

    python benchmarks/ngram_counting.py

Measures both on the same ids (the reference gets them as a list of Python ints), after a warm-up call that
also compiles the numba kernels; each time is the best of REPEATS back-to-back runs (time.perf_counter).
Checks the counts are identical, prints a table
and the speedups. It reports, never asserts: speed depends on the machine (the goal is >= 20x at n = 3).
A notebook can call `measure()` and `print_table(rows)` to show the same table.
"""
from __future__ import annotations

import time

import numpy as np

from labkit.corpus import Vocab, char_tokens, load_corpus, word_tokens
from labkit.ngram import count_ngrams, count_ngrams_numba, ngram_arrays_to_counter
from labkit.timing import best_of

REPEATS = 5
ORDERS = (2, 3, 4)
GOAL = 20.0


def measure(orders: tuple[int, ...] = ORDERS, repeats: int = REPEATS) -> list[dict]:
    """One row per (level, n): tokens, distinct n-grams, best times (s) of both, speedup, identical counts."""
    corpus = load_corpus()
    rows = []
    for level, tokenize in (("char", char_tokens), ("word", word_tokens)):
        tokens = tokenize(corpus.train)
        vocab = Vocab.build(tokens)
        ids = vocab.encode(tokens)
        id_list = ids.tolist()
        for n in orders:
            reference = count_ngrams(id_list, n)            # warm-up (and the answer to check against)
            fast = count_ngrams_numba(ids, n, len(vocab))   # warm-up: compiles on the first call
            identical = ngram_arrays_to_counter(*fast) == reference
            best_ref = best_of(lambda: count_ngrams(id_list, n), repeats, warmup=0)
            best_fast = best_of(lambda: count_ngrams_numba(ids, n, len(vocab)), repeats, warmup=0)
            rows.append(dict(level=level, n=n, tokens=int(ids.size), vocab=len(vocab), distinct=len(reference),
                             python_s=best_ref, numba_s=best_fast, speedup=best_ref / best_fast,
                             identical=identical))
    return rows


def print_table(rows: list[dict]) -> None:
    """The rows as a fixed-width table, then one speedup line per row."""
    print(f"{'level':<5} {'n':>2} {'tokens':>8} {'vocab':>6} {'distinct':>9} {'python ms':>10} "
          f"{'numba ms':>9} {'speedup':>8} {'same counts':>12}")
    for r in rows:
        print(f"{r['level']:<5} {r['n']:>2} {r['tokens']:>8} {r['vocab']:>6} {r['distinct']:>9} "
              f"{r['python_s'] * 1e3:>10.2f} {r['numba_s'] * 1e3:>9.2f} {r['speedup']:>7.1f}x "
              f"{str(r['identical']):>12}")
    for r in rows:
        print(f"numba speedup ({r['level']}, n={r['n']}): {r['speedup']:.1f}x (goal >= {GOAL:g}x)")


if __name__ == "__main__":
    start = time.perf_counter()
    table = measure()
    print_table(table)
    if not all(r["identical"] for r in table):
        print("WARNING: count_ngrams_numba disagrees with count_ngrams")
    print(f"numpy {np.__version__}; total benchmark time {time.perf_counter() - start:.1f} s")
