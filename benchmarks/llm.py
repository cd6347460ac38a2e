"""Benchmark: the local LLM backend's two speed-ups, prefix caching and batched sampling, on SmolLM2-135M.

    python benchmarks/llm.py                # print the numbers (under a minute on a quiet 2-core machine)
    python benchmarks/llm.py --full --save  # the full sizes; write benchmarks/results/llm.json (chapter 10 prints it)

Everything is fp32 on the CPU with torch.set_num_threads(THREADS) (labkit's decode step is single-threaded
numba code). The machine may be shared, so the two sides of each ratio are run interleaved (a load change hits
both), and the load average at the start is recorded. It reports, never asserts.

1. Prefix caching on a few-shot evaluation: an 8-shot sentiment prompt, then for each query the log-probability
   of 3 label continuations (" positive", " negative", " neutral"): LocalLLM with its prefix caches ÷ the same
   with cache_slots=0 (every sequence run in full), wall time. Also the prompt tokens each side ran
   (usage.prompt_tokens) and the largest difference between their scores.
2. Batched sampling: n = 16 samples of one prompt, 32 new tokens each (temperature 1), as one batch (one
   generate call with n=16) ÷ one sample at a time (generate with n=1), in generated tokens per second
   (goal >= 4: decode is memory-bound at batch 1, so a batch reads the weights once for all its rows).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from decode import machine  # noqa: E402  (the same machine record as benchmarks/decode.py)

from labkit.llm.local import LocalLLM  # noqa: E402

THREADS = 1
RESULTS = Path(__file__).parent / "results" / "llm.json"
GOAL_BATCHED = 4.0
LABELS = [" positive", " negative", " neutral"]
SHOTS = [("A wonderful film, I smiled all the way through.", "positive"),
         ("The plot made no sense and the acting was wooden.", "negative"),
         ("It runs for two hours and was released in spring.", "neutral"),
         ("Best meal I have had this year, the staff were lovely.", "positive"),
         ("The phone stopped working after a week.", "negative"),
         ("The hotel is ten minutes from the station.", "neutral"),
         ("I would happily read this book again.", "positive"),
         ("Cold soup, rude waiter, never again.", "negative")]
QUERIES = ["An absolute delight from start to finish.", "The battery dies before lunch.",
           "The museum opens at nine.", "I was bored within ten minutes.", "Great value and fast delivery.",
           "The manual has forty pages.", "Terrible sound quality.", "My kids loved it.",
           "The train was late again and nobody told us why.", "The shop sells shoes and hats.",
           "A moving, beautifully shot documentary.", "The seats were broken and the film was blurry.",
           "The package weighs two kilograms.", "Friendly staff and a lovely garden.",
           "The update deleted all my photos.", "The course has twelve chapters.",
           "I laughed so hard I cried.", "Overpriced and underwhelming.", "The bus leaves every hour.",
           "Simply the best concert I have been to."]
SAMPLE_PROMPT = [{"role": "user", "content": "Write a short story about a robot who learns to paint."}]
N, NEW_TOKENS = 16, 32


def few_shot_prompt(query: str) -> str:
    shots = "".join(f"Review: {text}\nSentiment: {label}\n\n" for text, label in SHOTS)
    return f"Classify the sentiment of each review.\n\n{shots}Review: {query}\nSentiment:"


def prefix_caching(queries: list[str]) -> dict:
    cached, uncached = LocalLLM.smollm2(), LocalLLM.smollm2(cache_slots=0)
    times = {"cached": 0.0, "uncached": 0.0}
    scores = {"cached": [], "uncached": []}
    for q in queries:  # interleaved: each query scored by both sides, back to back
        for name, llm in (("uncached", uncached), ("cached", cached)):
            start = time.perf_counter()
            scores[name].append(llm.logprobs(few_shot_prompt(q), LABELS))
            times[name] += time.perf_counter() - start
    diff = max(abs(a - b) for x, y in zip(scores["cached"], scores["uncached"]) for a, b in zip(x, y))
    predictions = [LABELS[max(range(3), key=s.__getitem__)].strip() for s in scores["cached"]]
    return dict(queries=len(queries), labels=len(LABELS), shots=len(SHOTS),
                prompt_tokens_per_sequence=len(cached.encode(few_shot_prompt(queries[0]))),
                seconds=times, speedup=times["uncached"] / times["cached"],
                prompt_tokens_run=dict(cached=cached.usage.prompt_tokens, uncached=uncached.usage.prompt_tokens),
                max_abs_score_difference=diff, predictions=predictions)


def batched_sampling(sequential_samples: int, rounds: int = 2) -> dict:
    llm = LocalLLM.smollm2()
    llm.generate(SAMPLE_PROMPT, max_tokens=2)  # warm up: compile the decode step, cache the prompt
    totals = {"batched": [0, 0.0], "sequential": [0, 0.0]}  # tokens, seconds
    for r in range(rounds):
        start = time.perf_counter()
        out = llm.generate(SAMPLE_PROMPT, max_tokens=NEW_TOKENS, temperature=1.0, n=N, seed=r)
        totals["batched"][1] += time.perf_counter() - start
        totals["batched"][0] += sum(c.tokens for c in out)
        for i in range(sequential_samples):
            start = time.perf_counter()
            [one] = llm.generate(SAMPLE_PROMPT, max_tokens=NEW_TOKENS, temperature=1.0, n=1, seed=100 * r + i)
            totals["sequential"][1] += time.perf_counter() - start
            totals["sequential"][0] += one.tokens
    rate = {k: tokens / seconds for k, (tokens, seconds) in totals.items()}
    return dict(n=N, new_tokens=NEW_TOKENS, rounds=rounds, sequential_samples_per_round=sequential_samples,
                tokens=dict((k, v[0]) for k, v in totals.items()), seconds=dict((k, v[1]) for k, v in totals.items()),
                tokens_per_s=rate, speedup=rate["batched"] / rate["sequential"], goal=GOAL_BATCHED)


def measure(full: bool) -> dict:
    torch.set_num_threads(THREADS)
    about = machine()
    about["torch_threads"] = THREADS
    return dict(machine=about, full=full, prefix_caching=prefix_caching(QUERIES if full else QUERIES[:3]),
                batched_sampling=batched_sampling(N if full else 4, rounds=2 if full else 1))


def report(r: dict) -> None:
    m, p, b = r["machine"], r["prefix_caching"], r["batched_sampling"]
    print(f"machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} with {m['torch_threads']} thread(s), "
          f"load average {m['load_average_1min']} at the start, revision {m['revision']}, {m['date']}")
    print(f"1. prefix caching, {p['shots']}-shot prompt ({p['prompt_tokens_per_sequence']} tokens), "
          f"{p['queries']} queries x {p['labels']} labels:")
    print(f"   uncached {p['seconds']['uncached']:.2f} s, cached {p['seconds']['cached']:.2f} s: "
          f"speedup {p['speedup']:.1f}x; prompt tokens run {p['prompt_tokens_run']['uncached']} -> "
          f"{p['prompt_tokens_run']['cached']}; max |score difference| {p['max_abs_score_difference']:.1e}")
    print(f"2. batched sampling, n = {b['n']}, {b['new_tokens']} new tokens each, {b['rounds']} rounds "
          f"({b['sequential_samples_per_round']} sequential samples per round):")
    print(f"   batched {b['tokens_per_s']['batched']:.1f} tokens/s, sequential {b['tokens_per_s']['sequential']:.1f} "
          f"tokens/s: batched / sequential = {b['speedup']:.1f}x (goal >= {b['goal']:g}x: "
          f"{'met' if b['speedup'] >= b['goal'] else 'NOT met'})")
    if b["speedup"] < b["goal"]:
        print("   why: at batch 16 a decode step is no longer memory-bound -- each weight read from memory is used "
              "for 16 rows, so the step becomes arithmetic-bound (~2 x 135M x 16 FLOPs) on one core; on a "
              "machine shared with other programs both sides are CPU-bound and the ratio shrinks further")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--save", action="store_true", help=f"write {RESULTS.name} under benchmarks/results")
    parser.add_argument("--full", action="store_true",
                        help="all 20 queries and 16 sequential samples per round (default: 3 queries, 4 samples, one round: under a minute)")
    args = parser.parse_args()
    begin = time.perf_counter()
    results = measure(args.full)
    report(results)
    if args.save:
        RESULTS.parent.mkdir(exist_ok=True)
        RESULTS.write_text(json.dumps(results, indent=1) + "\n")
        print(f"wrote {RESULTS}")
    print(f"total benchmark time {time.perf_counter() - begin:.1f} s")
