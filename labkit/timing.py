"""Wall-clock timing for notebooks and benchmark scripts (never for tests: tests check correctness)."""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def times_of(fn: Callable[[], object], repeat: int = 5, warmup: int = 1) -> list[float]:
    """Wall-clock seconds of each of `repeat` calls of fn(), after `warmup` untimed calls (compilation, caches)."""
    if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 1 \
            or isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"need int repeat >= 1 and int warmup >= 0, got repeat={repeat!r}, warmup={warmup!r}")
    for _ in range(warmup):
        fn()
    seconds = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    return seconds


def best_of(fn: Callable[[], object], repeat: int = 5, warmup: int = 1) -> float:
    """Best wall-clock seconds of `repeat` calls of fn() after `warmup` untimed calls.

    The minimum: on a quiet machine other work only ever adds time, so the fastest run is the closest to what
    the code itself costs. On a machine shared with other busy programs, prefer `median_of`.
    """
    return min(times_of(fn, repeat, warmup))


def median_of(fn: Callable[[], object], repeat: int = 5, warmup: int = 1) -> float:
    """Median wall-clock seconds of `repeat` calls of fn() after `warmup` untimed calls.

    On a shared machine a lucky minimum can come from a moment when the memory bus was idle; the median is the
    typical cost, and a ratio of two medians taken in the same run (interleaved) is what the benchmarks report.
    """
    return statistics.median(times_of(fn, repeat, warmup))


def interleaved_medians(fns: dict[str, Callable[[], object]], repeat: int = 5) -> dict[str, float]:
    """Median wall-clock seconds of each named fn, called in turn in each of `repeat` rounds (after one warm-up
    each): a change in the machine's load during the run hits every side alike, so their ratio stays fair."""
    if not fns:
        raise ValueError("need at least one function to time")
    times: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()
    for _ in range(repeat):
        for name, fn in fns.items():
            times[name] += times_of(fn, 1, warmup=0)
    return {name: statistics.median(t) for name, t in times.items()}
