"""Benchmark: peak memory and time of naive attention, labkit's tiled (FlashAttention-style) attention and
torch's scaled_dot_product_attention, on CPU, one thread, up to N = 8192.

    python benchmarks/flash_attention.py          # prints the table (about a minute); writes nothing
    python benchmarks/flash_attention.py --save   # also writes benchmarks/results/flash_attention.json

Peak memory: each measurement runs in a fresh process that resets Linux's peak-resident-set counter (VmHWM) after
creating q, k, v and reports how far it rose (`labkit.flash.peak_memory`). Time: best of 3 after a warm-up
(`labkit.timing.best_of`). It reports, never asserts: the goal is tiled ÷ naive peak memory <= 0.1 at N = 8192.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from labkit.flash import benchmark, format_benchmark

GOAL = 0.1
RESULTS = Path(__file__).with_name("results") / "flash_attention.json"

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--save", action="store_true", help=f"write the numbers to {RESULTS}")
    args = parser.parse_args()
    start = time.perf_counter()
    result = benchmark()
    print(format_benchmark(result))
    for r in result["rows"]:
        print(f"tiled / naive peak memory at N={r['n']}: {r['memory_ratio']:.4f} (goal <= {GOAL:g}); "
              f"max |tiled - naive| = {r['max_abs_diff']:.2g}")
    if args.save:
        RESULTS.parent.mkdir(exist_ok=True)
        RESULTS.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
        print(f"wrote {RESULTS}")
    print(f"total benchmark time {time.perf_counter() - start:.1f} s")
