"""Wall-clock timing for notebooks and benchmark scripts (never for tests: tests check correctness)."""
from __future__ import annotations

import time
from collections.abc import Callable


def best_of(fn: Callable[[], object], repeat: int = 5, warmup: int = 1) -> float:
    """Best wall-clock seconds of `repeat` calls of fn() after `warmup` untimed calls (compilation, caches).

    The minimum, not the mean: other work on the machine only ever adds time, so the fastest run is the
    closest to what the code itself costs.
    """
    if repeat < 1 or warmup < 0:
        raise ValueError(f"need repeat >= 1 and warmup >= 0, got repeat={repeat}, warmup={warmup}")
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best
