"""Benchmark: SmolLM2 decoding with labkit's KV-cache against transformers and against the memory roofline.

    python benchmarks/decode.py            # print the numbers (about a minute on a quiet 2-core machine)
    python benchmarks/decode.py --save     # also write benchmarks/results/decode.json (chapter 5 prints it)
    python benchmarks/decode.py --full     # also run uncached generation end to end to 512 tokens (slow)

Everything is fp32, greedy, batch 1, on the CPU, with torch.set_num_threads(THREADS) for every torch call
(labkit's fast matvec is a single-threaded numba loop). Times are the best of a few runs (labkit.timing).
It reports, never asserts: speed depends on the machine. Three numbers, each with its goal:

1. labkit decode tokens/s ÷ transformers `generate` (goal >= 1): the same prompt, 128 new tokens each; the
   script checks both produced 128 tokens and the same ones. The clock is read after every token (labkit's
   `token_times`; a clock-only streamer for transformers); a run's decode time per token is its median step
   (the prefill, until the first token, is reported apart); best of 3 alternating runs each. transformers is
   also timed with 2 threads, shown for reference.
2. labkit decode ÷ the memory roofline (goal >= 0.85). One decode step must read every weight matrix once plus
   the cache; roofline tokens/s = bandwidth ÷ those bytes. Bandwidth is measured in this run, three ways, and
   the HIGHEST is used: `tensor.sum()` over 512 MB (a pure streaming read), torch's fp32 matrix-vector product
   with an 8192 x 8192 matrix (256 MB), and labkit.kvcache.matvec on the same matrix.
3. The KV-cache speedup at 32..512 generated tokens (goal >= 10x at 512): time without a cache ÷ time with
   it. Uncached generation to 512 tokens takes minutes, so step t's cost (one forward over the whole prefix, as
   labkit.sampling.generate runs it) is timed at several prefix lengths and summed over t, interpolating
   linearly in between; the estimate is checked against an end-to-end uncached run of 32 tokens, printed
   next to it (--full runs 512 end to end). The cached side is one real cached run to 512 tokens, with the
   fast decode step.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from labkit.kvcache import DecodeStep, KVCache, cache_bytes, matvec, token_times
from labkit.llama import Llama
from labkit.models import load_smollm2
from labkit.sampling import generate as generate_uncached
from labkit.timing import best_of

THREADS = 1
PROMPT = "Once upon a time, in a small village by the sea,"  # SmolLM2 tells a story well past 128 tokens
NEW_TOKENS = 128
LENGTHS = (32, 64, 128, 256, 512)
RESULTS = Path(__file__).parent / "results" / "decode.json"
GOALS = dict(vs_transformers=1.0, vs_roofline=0.85, cache_speedup_512=10.0)


def machine() -> dict:
    """What the numbers were measured on."""
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() \
        else platform.processor()
    return dict(cpu=cpu, cores=os.cpu_count(), torch_threads=THREADS, torch=torch.__version__,
                numpy=np.__version__, load_average_1min=round(os.getloadavg()[0], 2),
                date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))


def bandwidth() -> dict:
    """GB/s of three ways to stream fp32 from memory (each far larger than the CPU's caches)."""
    big = torch.randn(128 * 1024 * 1024)  # 512 MB
    w, x = torch.randn(8192, 8192), torch.randn(8192)
    w_np = w.numpy()
    return dict(sum=big.nbytes / best_of(big.sum, 5) / 1e9,
                torch_matvec=w.nbytes / best_of(lambda: torch.mv(w, x), 5) / 1e9,
                labkit_matvec=w.nbytes / best_of(lambda: matvec(x[None], w_np), 5) / 1e9)


def bytes_per_token(model: Llama, context: int) -> int:
    """What one decode step reads: every weight matrix (the embedding row it looks up is negligible, but the
    tied head reads the whole embedding matrix), the norms, and the cache of `context` tokens."""
    weights = sum(p.nbytes for p in model.parameters())
    cfg = model.cfg
    return weights + cache_bytes(cfg.n_layers, cfg.n_kv_heads, cfg.head_dim, context)


class _Clock:
    """A transformers streamer that only reads the clock: generate calls put() with the prompt, then once per
    new token, so the differences between stamps are the per-token decode times."""

    def __init__(self):
        self.stamps = [time.perf_counter()]

    def put(self, value) -> None:
        self.stamps.append(time.perf_counter())

    def end(self) -> None:
        pass


@torch.no_grad()
def decode_times(model: Llama, hf, ids: torch.Tensor, rounds: int = 3) -> dict:
    """Per-token decode seconds (the median step of a run of NEW_TOKENS greedy tokens, best of `rounds`
    runs), prefill seconds (until the first token) and the tokens, for labkit's fast step, its plain cached
    Llama.forward and transformers. The runs alternate, so load from other programs hits all of them alike;
    the median step, not the mean, so that a burst of load during a few steps does not count."""
    kw = dict(do_sample=False, pad_token_id=hf.generation_config.eos_token_id)

    def hf_run(n=NEW_TOKENS):
        clock = _Clock()
        out = hf.generate(ids, max_new_tokens=n, streamer=clock, **kw)
        return out, [t - clock.stamps[0] for t in clock.stamps[2:]]  # [1]: the prompt was handed over

    runs = {"labkit_fast": lambda: token_times(model, ids, NEW_TOKENS, fast=True),
            "labkit_plain_cache": lambda: token_times(model, ids, NEW_TOKENS),
            "transformers": hf_run}
    out = {name: dict(prefill_s=float("inf"), decode_s=float("inf")) for name in [*runs, "transformers_2_threads"]}

    def record(name, result):
        tokens, seconds = result
        out[name].update(ids=tokens, prefill_s=min(out[name]["prefill_s"], seconds[0]),
                         decode_s=min(out[name]["decode_s"], float(np.median(np.diff(seconds)))))

    hf_run(8), token_times(model, ids, 8, fast=True)  # warm-up
    for r in range(rounds):
        for name, run in runs.items():
            if name != "labkit_plain_cache" or r == 0:  # the plain path is shown for reference: one run
                record(name, run())
    torch.set_num_threads(2)
    try:
        record("transformers_2_threads", hf_run())
    finally:
        torch.set_num_threads(THREADS)
    return out


@torch.no_grad()
def cache_speedup(model: Llama, ids: torch.Tensor, full: bool) -> dict:
    """Seconds to generate n tokens with and without the cache, for n in LENGTHS."""
    P, n_max = ids.shape[1], max(LENGTHS)
    # with the cache (fast decode step): one real run, the clock read after every token
    cache, step = KVCache(model.cfg, 1, P + n_max), DecodeStep(model)
    start = time.perf_counter()
    token, stamps = model(ids, cache=cache)[:, -1].argmax(-1), []
    for _ in range(n_max):
        stamps.append(time.perf_counter() - start)  # time until token number len(stamps) + 1 is known
        token = step(token, cache).argmax(-1)
    cached = {n: stamps[n - 1] for n in LENGTHS}
    # without: step t is a forward over P + t tokens; time it at a few prefix lengths, sum over t (linear interp.)
    long_ids = torch.randint(0, model.cfg.vocab_size, (1, P + n_max), generator=torch.Generator().manual_seed(0))
    probe = [0, 32, 128, 256, 384, n_max - 1]
    probe_s = [best_of(lambda: model(long_ids[:, :P + t]), 1 if t > 200 else 2, warmup=0) for t in probe]
    per_step = np.interp(np.arange(n_max), probe, probe_s)
    uncached = {n: float(per_step[:n].sum()) for n in LENGTHS}
    n_check = 16
    measured = best_of(lambda: generate_uncached(model, ids, n_check), 1, warmup=0)
    out = dict(lengths=list(LENGTHS), cached_s=[cached[n] for n in LENGTHS],
               uncached_estimated_s=[uncached[n] for n in LENGTHS],
               speedup=[uncached[n] / cached[n] for n in LENGTHS], probe_prefix=[P + t for t in probe],
               probe_forward_s=probe_s, check_tokens=n_check, check_uncached_measured_s=measured,
               check_uncached_estimated_s=float(per_step[:n_check].sum()))
    if full:
        out["full_uncached_512_measured_s"] = best_of(lambda: generate_uncached(model, ids, n_max), 1, warmup=0)
    return out


def measure(full: bool = False) -> dict:
    torch.set_num_threads(THREADS)
    tokenizer, hf = load_smollm2()
    model = Llama.from_pretrained()
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    bw = bandwidth()
    t = decode_times(model, hf, ids)
    fast_tok, plain_tok, hf1_tok, hf2_tok = (t[k]["decode_s"] for k in
                                             ("labkit_fast", "labkit_plain_cache", "transformers", "transformers_2_threads"))
    fast_ids, plain_ids, hf_ids = (t[k]["ids"] for k in ("labkit_fast", "labkit_plain_cache", "transformers"))
    context = ids.shape[1] + NEW_TOKENS // 2  # the cache's average length over the 128 steps
    step_bytes = bytes_per_token(model, context)
    best_bw = max(bw.values())
    return dict(
        machine=machine(), prompt=PROMPT, prompt_tokens=ids.shape[1], new_tokens=NEW_TOKENS,
        tokens_generated=dict(labkit=fast_ids.shape[1] - ids.shape[1], transformers=hf_ids.shape[1] - ids.shape[1]),
        same_tokens=dict(fast_vs_transformers=torch.equal(fast_ids, hf_ids), plain_vs_fast=torch.equal(plain_ids, fast_ids)),
        decode_s_per_token=dict(labkit_fast=fast_tok, labkit_plain_cache=plain_tok, transformers=hf1_tok,
                                transformers_2_threads=hf2_tok),
        prefill_s={k: v["prefill_s"] for k, v in t.items()},
        bandwidth_gb_s=bw, roofline=dict(bytes_per_token=step_bytes, average_context=context, bandwidth_gb_s=best_bw,
                                         s_per_token=step_bytes / (best_bw * 1e9)),
        ratios=dict(vs_transformers=hf1_tok / fast_tok, vs_transformers_2_threads=hf2_tok / fast_tok,
                    plain_cache_vs_transformers=hf1_tok / plain_tok,
                    vs_roofline=step_bytes / (best_bw * 1e9) / fast_tok),
        goals=GOALS, cache_speedup=cache_speedup(model, ids, full))


def report(r: dict) -> None:
    m, d, bw, ro, ra = r["machine"], r["decode_s_per_token"], r["bandwidth_gb_s"], r["roofline"], r["ratios"]
    print(f"machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} with {m['torch_threads']} thread(s), "
          f"load average {m['load_average_1min']} at start, {m['date']}")
    print(f"prompt {r['prompt']!r} ({r['prompt_tokens']} tokens), greedy, fp32, batch 1; tokens generated: "
          f"labkit {r['tokens_generated']['labkit']}, transformers {r['tokens_generated']['transformers']}; "
          f"identical tokens: {r['same_tokens']['fast_vs_transformers']}")
    print("decode, per token (prefill excluded):")
    for name, label in (("labkit_fast", "labkit, KV-cache + fast decode step"),
                        ("labkit_plain_cache", "labkit, KV-cache, plain Llama.forward"),
                        ("transformers", f"transformers generate, {m['torch_threads']} thread(s)"),
                        ("transformers_2_threads", "transformers generate, 2 threads")):
        print(f"  {label:42} {1e3 * d[name]:7.1f} ms  {1 / d[name]:6.1f} tokens/s")
    print(f"1. labkit ÷ transformers (same threads): {ra['vs_transformers']:.2f}x (goal >= "
          f"{GOALS['vs_transformers']:g}); vs transformers with 2 threads {ra['vs_transformers_2_threads']:.2f}x; "
          f"plain cached path {ra['plain_cache_vs_transformers']:.2f}x")
    print(f"bandwidth: tensor.sum 512 MB {bw['sum']:.1f} GB/s, torch.mv 8192x8192 {bw['torch_matvec']:.1f} GB/s, "
          f"labkit matvec 8192x8192 {bw['labkit_matvec']:.1f} GB/s -> roofline uses {ro['bandwidth_gb_s']:.1f} GB/s")
    print(f"one decode step reads {ro['bytes_per_token'] / 1e6:.1f} MB (weights + cache of {ro['average_context']} "
          f"tokens): roofline {1e3 * ro['s_per_token']:.1f} ms/token = {1 / ro['s_per_token']:.1f} tokens/s")
    print(f"2. labkit ÷ roofline: {ra['vs_roofline']:.2f} (goal >= {GOALS['vs_roofline']:g})")
    c = r["cache_speedup"]
    print("3. KV-cache speedup (cached: fast decode step, one run; uncached: estimated from forwards at prefix lengths "
          f"{c['probe_prefix']}, summed):")
    print(f"  {'new tokens':>10} {'uncached s':>11} {'cached s':>9} {'speedup':>8}")
    for n, u, k, s in zip(c["lengths"], c["uncached_estimated_s"], c["cached_s"], c["speedup"]):
        print(f"  {n:>10} {u:>11.2f} {k:>9.2f} {s:>7.1f}x")
    print(f"  check: uncached {c['check_tokens']} tokens end to end {c['check_uncached_measured_s']:.2f} s, "
          f"estimate {c['check_uncached_estimated_s']:.2f} s")
    if "full_uncached_512_measured_s" in c:
        print(f"  --full: uncached 512 tokens end to end {c['full_uncached_512_measured_s']:.1f} s, "
              f"speedup {c['full_uncached_512_measured_s'] / c['cached_s'][-1]:.1f}x")
    print(f"speedup at 512: {c['speedup'][-1]:.1f}x (goal >= {GOALS['cache_speedup_512']:g}x)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--save", action="store_true", help=f"write {RESULTS.relative_to(Path.cwd()) if RESULTS.is_relative_to(Path.cwd()) else RESULTS}")
    parser.add_argument("--full", action="store_true", help="also time uncached generation of 512 tokens")
    args = parser.parse_args()
    begin = time.perf_counter()
    results = measure(full=args.full)
    report(results)
    if args.save:
        RESULTS.parent.mkdir(exist_ok=True)
        RESULTS.write_text(json.dumps(results, indent=1) + "\n")
        print(f"wrote {RESULTS}")
    print(f"total benchmark time {time.perf_counter() - begin:.1f} s")
