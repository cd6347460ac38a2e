"""Benchmark: plain-Python `count_ngrams` vs numba `count_ngrams_numba` on the chapter 1 training corpus.

    python benchmarks/ngram_counting.py          # print the table (about half a minute)
    python benchmarks/ngram_counting.py --save   # also write benchmarks/results/ngram_counting.json (chapter 1)

Measures both on the same ids (the reference gets them as a list of Python ints), after a warm-up call that
also compiles the numba code. The machine may be shared with other programs, so the two run alternately,
REPEATS times, and every number is a MEDIAN: of each one's times, and of the per-round ratios (Python ÷
numba) that the speedup column shows. Checks the counts are identical. It reports, never asserts: speed
depends on the machine (the goal is >= 20x).

It also shows where the time goes, to explain the method: `count_ngrams_numba` packs each window into a key,
sorts the keys and counts the runs (labkit.ngram); its phases are timed apart. Beside it runs the method it
replaced, a numba hash table (an open-addressing table, counts in place, then the distinct keys sorted;
`_hash_count` below), which is fast when windows repeat (characters) and slow when most are new (words).
And the step before counting, mapping tokens to ids (`Vocab.encode`, Python), is timed for scale: neither
count includes it.

A notebook can call `measure()` and `print_table(rows)` to show the same table.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import time
from pathlib import Path

import numba
import numpy as np

from labkit import ngram
from labkit.corpus import Vocab, char_tokens, load_corpus, word_tokens
from labkit.ngram import count_ngrams, count_ngrams_numba, ngram_arrays_to_counter
from labkit.timing import median_of

REPEATS = 15
ORDERS = (2, 3, 4)
GOAL = 20.0
RESULTS = Path(__file__).parent / "results" / "ngram_counting.json"


# ---- the previous method, kept here as the comparison: count in a hash table, then sort the distinct keys

_FIB = np.int64(-7046029254386353131)  # 2**64 / golden ratio as int64: Fibonacci hashing


@numba.njit(cache=False)
def _hash_insert(ids, n, vocab_size, start, table, bits, distinct, used):  # pragma: no cover
    mask = (1 << bits) - 1
    for i in range(start, ids.size - n + 1):
        if 2 * used > mask:  # half full: the caller doubles the table
            return i, used
        key = 0
        for j in range(n):
            key = key * vocab_size + ids[i + j]
        slot = ((key * _FIB) >> (64 - bits)) & mask
        while table[2 * slot] != key and table[2 * slot] != -1:  # linear probing; slot s = (key, count)
            slot = (slot + 1) & mask
        if table[2 * slot] == -1:
            table[2 * slot] = key
            distinct[used] = key
            used += 1
        table[2 * slot + 1] += 1
    return ids.size - n + 1, used


@numba.njit(cache=False)
def _hash_count(ids, n, vocab_size, bits):  # pragma: no cover
    """Counts of every window in a table that doubles when half full: (table, its bits, the distinct keys)."""
    n_windows = max(ids.size - n + 1, 0)
    table = np.zeros(2 << bits, np.int64)
    table[0::2] = -1
    distinct = np.empty(n_windows, np.int64)
    i, used = 0, 0
    while i < n_windows:
        i, used = _hash_insert(ids, n, vocab_size, i, table, bits, distinct, used)
        if i < n_windows:  # grow: reinsert every key into a table twice the size
            bits += 1
            old, table = table, np.zeros(2 << bits, np.int64)
            table[0::2] = -1
            for s in range(old.size // 2):
                if old[2 * s] != -1:
                    slot = ((old[2 * s] * _FIB) >> (64 - bits)) & ((1 << bits) - 1)
                    while table[2 * slot] != -1:
                        slot = (slot + 1) & ((1 << bits) - 1)
                    table[2 * slot], table[2 * slot + 1] = old[2 * s], old[2 * s + 1]
    return table, bits, distinct[:used]


@numba.njit(cache=False)
def _hash_lookup(keys, table, bits):  # pragma: no cover
    """The count of each key (all present in the table)."""
    counts = np.empty(keys.size, np.int64)
    for u in range(keys.size):
        slot = ((keys[u] * _FIB) >> (64 - bits)) & ((1 << bits) - 1)
        while table[2 * slot] != keys[u]:
            slot = (slot + 1) & ((1 << bits) - 1)
        counts[u] = table[2 * slot + 1]
    return counts


def hash_count_ngrams(ids: np.ndarray, n: int, vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The hash-table method with count_ngrams_numba's output: (ngrams [m, n] sorted, counts [m])."""
    bits = max(6, min(16, (2 * min(max(ids.size - n + 1, 1), vocab_size ** n)).bit_length()))
    table, bits, distinct = _hash_count(ids, n, vocab_size, bits)
    keys = np.sort(distinct)  # numpy's SIMD sort, faster than sorting inside numba
    return ngram._decode_keys(keys, n, vocab_size), _hash_lookup(keys, table, bits)


# ---- the measurement

def _phases(ids: np.ndarray, n: int, vocab_size: int, repeats: int) -> dict:
    """Median seconds of each phase of count_ngrams_numba, run one at a time on the same ids."""
    dtype = np.int32 if vocab_size ** n <= np.iinfo(np.int32).max else np.int64
    buffer = np.empty(max(ids.size - n + 1, 0), dtype)
    keys = ngram._window_keys(ids, n, vocab_size, buffer).copy()
    sorted_keys = np.sort(keys)
    distinct, _ = ngram._run_lengths(sorted_keys)
    return {"pack keys": median_of(lambda: ngram._window_keys(ids, n, vocab_size, buffer), repeats),
            "sort": median_of(lambda: np.sort(keys), repeats),
            "count runs": median_of(lambda: ngram._run_lengths(sorted_keys), repeats),
            "keys -> n-grams": median_of(lambda: ngram._decode_keys(distinct, n, vocab_size), repeats)}


def measure(orders: tuple[int, ...] = ORDERS, repeats: int = REPEATS) -> list[dict]:
    """One row per (level, n): tokens, distinct n-grams, median times (s) of Python, numba (sort) and the hash
    table, the median per-round speedups, identical counts, and the phases of the numba count."""
    corpus = load_corpus()
    rows = []
    for level, tokenize in (("char", char_tokens), ("word", word_tokens)):
        tokens = tokenize(corpus.train)
        vocab = Vocab.build(tokens)
        encode_s = median_of(lambda: vocab.encode(tokens), 3)
        ids = vocab.encode(tokens)
        id_list = ids.tolist()
        for n in orders:
            reference = count_ngrams(id_list, n)            # warm-up (and the answer to check against)
            fast = count_ngrams_numba(ids, n, len(vocab))   # warm-up: compiles on the first call
            hashed = hash_count_ngrams(ids, n, len(vocab))
            identical = ngram_arrays_to_counter(*fast) == reference == ngram_arrays_to_counter(*hashed)
            runs = {"python": lambda: count_ngrams(id_list, n),
                    "numba": lambda: count_ngrams_numba(ids, n, len(vocab)),
                    "hash": lambda: hash_count_ngrams(ids, n, len(vocab))}
            seconds = {name: [] for name in runs}
            for _ in range(repeats):  # alternate, so load from other programs hits all three alike
                for name, run in runs.items():
                    seconds[name].append(median_of(run, 1, warmup=0))
            py = np.array(seconds["python"])
            rows.append(dict(level=level, n=n, tokens=int(ids.size), vocab=len(vocab), distinct=len(reference),
                             encode_s=encode_s, **{f"{k}_s": float(np.median(v)) for k, v in seconds.items()},
                             speedup=float(np.median(py / seconds["numba"])),
                             hash_speedup=float(np.median(py / seconds["hash"])),
                             identical=identical, phases=_phases(ids, n, len(vocab), repeats)))
    return rows


def print_table(rows: list[dict]) -> None:
    """The rows as a fixed-width table, the numba count's phases, then one speedup line per row."""
    print(f"{'level':<5} {'n':>2} {'tokens':>7} {'vocab':>5} {'distinct':>8} {'python ms':>9} {'numba ms':>8} "
          f"{'speedup':>7} {'hash ms':>7} {'speedup':>7} {'same counts':>11}")
    for r in rows:
        print(f"{r['level']:<5} {r['n']:>2} {r['tokens']:>7} {r['vocab']:>5} {r['distinct']:>8} "
              f"{r['python_s'] * 1e3:>9.2f} {r['numba_s'] * 1e3:>8.2f} {r['speedup']:>6.1f}x "
              f"{r['hash_s'] * 1e3:>7.2f} {r['hash_speedup']:>6.1f}x {str(r['identical']):>11}")
    print("where count_ngrams_numba's time goes (ms; each phase timed apart) and ns per window:")
    for r in rows:
        windows = r["tokens"] - r["n"] + 1
        phases = ", ".join(f"{k} {v * 1e3:.2f}" for k, v in r["phases"].items())
        print(f"  {r['level']:<5} n={r['n']}: {phases}; numba {1e9 * r['numba_s'] / windows:.1f} ns/window, "
              f"Python {1e9 * r['python_s'] / windows:.0f} ns/window")
    for level in dict.fromkeys(r["level"] for r in rows):
        r = next(r for r in rows if r["level"] == level)
        print(f"mapping {level} tokens to ids (Vocab.encode, Python, before any count): {r['encode_s'] * 1e3:.1f} ms")
    for r in rows:
        print(f"numba speedup ({r['level']}, n={r['n']}): {r['speedup']:.1f}x (goal >= {GOAL:g}x)")


def machine() -> dict:
    """What the numbers were measured on, and from which revision of the code."""
    try:
        revision = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                  cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        revision = "unknown"
    cpu = platform.processor()
    if Path("/proc/cpuinfo").exists():
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), cpu)
    return dict(cpu=cpu, cores=os.cpu_count(), numpy=np.__version__, numba=numba.__version__, revision=revision,
                load_average_1min=round(os.getloadavg()[0], 2),
                date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--save", action="store_true", help="write benchmarks/results/ngram_counting.json")
    args = parser.parse_args()
    start = time.perf_counter()
    about = machine()
    print(f"{about['cpu']}, {about['cores']} cores, load average {about['load_average_1min']} at start; "
          f"times are medians of {REPEATS} alternating rounds")
    table = measure()
    print_table(table)
    if not all(r["identical"] for r in table):
        print("WARNING: count_ngrams_numba disagrees with count_ngrams")
    end_load = round(os.getloadavg()[0], 2)
    print(f"numpy {np.__version__}; load average {end_load} at the end; "
          f"total benchmark time {time.perf_counter() - start:.1f} s")
    if args.save:
        RESULTS.parent.mkdir(exist_ok=True)
        RESULTS.write_text(json.dumps(dict(machine=about, load_average_1min_at_end=end_load, repeats=REPEATS,
                                           goal=GOAL, rows=table), indent=1) + "\n")
        print(f"wrote {RESULTS}")
