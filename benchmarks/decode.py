"""Benchmark: SmolLM2 decoding with labkit's KV-cache against transformers and against the memory roofline.

    python benchmarks/decode.py            # print the numbers (about two minutes on a quiet 2-core machine)
    python benchmarks/decode.py --save     # also write benchmarks/results/decode.json (chapter 5 prints it)
    python benchmarks/decode.py --full     # also run uncached generation end to end to 512 tokens (slow)

Everything is fp32, greedy, batch 1, on the CPU, with torch.set_num_threads(THREADS) for every torch call
(labkit's fast decode step is single-threaded numba code). The machine may be shared with other programs, so
every time is a MEDIAN: of the steps of a run, and of repeated runs (labkit.timing.median_of); the load average
at the start is recorded. It reports, never asserts: speed depends on the machine. Four results, with goals:

1. labkit decode tokens/s ÷ transformers `generate` (goal >= 1): the same prompt, 128 new tokens each; the
   script checks both produced 128 tokens and the same ones. The clock is read after every token (labkit's
   `token_times`; a clock-only streamer for transformers); a run's decode time per token is its median step
   (the prefill, until the first token, is reported apart); the median of 3 alternating runs each.
   transformers is also timed with 2 threads, shown for reference.
2. labkit decode ÷ the memory roofline (goal >= 0.8). One decode step must read every weight matrix once plus
   the cache; roofline tokens/s = bandwidth ÷ those bytes. Bandwidth is measured in this run, three ways, and
   the HIGHEST is used: `tensor.sum()` over 512 MB (a pure streaming read), torch's fp32 matrix-vector product
   with an 8192 x 8192 matrix (256 MB), and labkit.kvcache.matvec on the same matrix.
3. Where a fast decode step's time goes: the step replayed piece by piece with the kernels `_block` calls
   (the replay's logits are checked against the real step's), each kind of work timed apart, beside the real
   step, which runs the same kernels in one compiled call per block.
4. The KV-cache speedup at 32..512 generated tokens (goal >= 10x at 512), the cache ALONE: uncached
   generation ÷ cached generation, both with labkit's plain `Llama.forward` (torch operations). The fast decode
   step is a separate factor, reported beside it (plain cached ÷ fast cached), and the product of the two is
   what the reader gets from `generate(..., fast=True)`. Uncached generation to 512 tokens takes minutes, so
   step t's cost (one forward over the whole prefix, as labkit.sampling.generate runs it) is timed at several
   prefix lengths and summed over t, interpolating linearly in between; the estimate is checked against an
   end-to-end uncached run of 16 tokens, printed next to it (--full runs 512 end to end). The cached sides
   are one real run each to 512 tokens, the clock read after every token.
5. Chapter 9's int8 weight-only decode step (labkit.compress.int8_decode): every matrix, the tied embedding/LM
   head included, as int8 codes with one float32 scale per row. Its tokens/s (timed like labkit's fast step,
   in the same alternating runs) ÷ transformers fp32 (goal >= 3: the weights are ~4x fewer bytes) and ÷ its own
   roofline (int8 codes + scales + norms + the same cache, over the same bandwidth; goal >= 0.7), with its
   profile (as in 3). Beside them what the rounding costs: greedy agreement with the fp32 run over the 128
   tokens (the length of the identical prefix, and teacher-forced: the int8 step's argmax at every position of
   the fp32 text), and the perplexity change on held-out windows (labkit.gqa.heldout_windows/window_losses,
   the same windows for both; int8 = the fp32 model with the dequantized weights, which the int8 step
   reproduces to float32 summation error; goal <= +2%). And what torch offers for the same product on the CPU,
   `torch._weight_int8pack_mm`, timed against labkit's kernel on the LM head (49152 x 576). Last, each kernel's
   compute ceiling: its weights/s on a matrix that stays in cache (the roofline's other roof).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import time
from collections import defaultdict
from pathlib import Path

import numba
import numpy as np
import torch

from labkit import kvcache
from labkit.compress import int8_decode
from labkit.compress.int8_decode import Int8DecodeStep, dequantized_model
from labkit.gqa import heldout_windows, window_losses
from labkit.kvcache import DecodeStep, KVCache, cache_bytes, matvec, token_times
from labkit.llama import Llama
from labkit.models import load_smollm2
from labkit.rope import rope_cos_sin
from labkit.sampling import generate as generate_uncached
from labkit.timing import median_of

THREADS = 1
PROMPT = "Once upon a time, in a small village by the sea,"  # SmolLM2 tells a story well past 128 tokens
NEW_TOKENS = 128
LENGTHS = (32, 64, 128, 256, 512)
RESULTS = Path(__file__).parent / "results" / "decode.json"
GOALS = dict(vs_transformers=1.0, vs_roofline=0.8, cache_speedup_512=10.0)
INT8_GOALS = dict(vs_transformers=3.0, vs_roofline=0.7, perplexity_change=0.02)
PPL_WINDOWS = 8  # held-out windows of 257 tokens for the perplexity change


def machine(**extra) -> dict:
    """What the numbers were measured on, and from which revision of the code (+ a benchmark's own `extra`
    fields, e.g. the version of the library it compares with). benchmarks/llm.py, bm25.py, constrained.py use it."""
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() \
        else platform.processor()
    try:
        revision = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                  cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        revision = "unknown"
    return dict(cpu=cpu, cores=os.cpu_count(), torch_threads=THREADS, torch=torch.__version__,
                numpy=np.__version__, **extra, load_average_1min=round(os.getloadavg()[0], 2), revision=revision,
                date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))


def bandwidth() -> dict:
    """GB/s of three ways to stream fp32 from memory (each far larger than the CPU's caches)."""
    big = torch.randn(128 * 1024 * 1024)  # 512 MB
    w, x = torch.randn(8192, 8192), torch.randn(8192)
    w_np = w.numpy()
    return dict(sum=big.nbytes / median_of(big.sum, 7) / 1e9,
                torch_matvec=w.nbytes / median_of(lambda: torch.mv(w, x), 7) / 1e9,
                labkit_matvec=w.nbytes / median_of(lambda: matvec(x[None], w_np), 7) / 1e9)


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
def decode_times(model: Llama, hf, ids: torch.Tensor, step8: Int8DecodeStep, rounds: int = 3) -> dict:
    """Per-token decode seconds (the median step of a run of NEW_TOKENS greedy tokens; the median over
    `rounds` runs), prefill seconds (until the first token, median over the runs) and the tokens, for labkit's
    fast step, its plain cached Llama.forward, transformers and the int8 step. The runs alternate, so load from
    other programs hits all of them alike."""
    kw = dict(do_sample=False, pad_token_id=hf.generation_config.eos_token_id)

    def hf_run(n=NEW_TOKENS):
        clock = _Clock()
        out = hf.generate(ids, max_new_tokens=n, streamer=clock, **kw)
        return out, [t - clock.stamps[0] for t in clock.stamps[2:]]  # [1]: the prompt was handed over

    runs = {"labkit_fast": lambda: token_times(model, ids, NEW_TOKENS, fast=True),
            "labkit_plain_cache": lambda: token_times(model, ids, NEW_TOKENS),
            "transformers": hf_run,
            "labkit_int8": lambda: int8_decode.token_times(step8, ids, NEW_TOKENS)}
    seen = defaultdict(lambda: dict(prefill_s=[], decode_s=[]))

    def record(name, result):
        tokens, seconds = result
        seen[name]["ids"] = tokens
        seen[name]["prefill_s"].append(seconds[0])
        seen[name]["decode_s"].append(float(np.median(np.diff(seconds))))

    hf_run(8), token_times(model, ids, 8, fast=True), int8_decode.token_times(step8, ids, 8)  # warm-up
    for r in range(rounds):
        for name, run in runs.items():
            if name != "labkit_plain_cache" or r == 0:  # the plain path is shown for reference: one run
                record(name, run())
    torch.set_num_threads(2)
    try:
        record("transformers_2_threads", hf_run())
    finally:
        torch.set_num_threads(THREADS)
    return {name: dict(ids=v["ids"], prefill_s=float(np.median(v["prefill_s"])),
                       decode_s=float(np.median(v["decode_s"])), runs=len(v["decode_s"])) for name, v in seen.items()}


@torch.no_grad()
def profile_step(model: Llama, ids: torch.Tensor, context: int, repeats: int = 15,
                 step: DecodeStep | Int8DecodeStep | None = None) -> dict:
    """Where one fast decode step's time goes, at a cache of `context` tokens: the step replayed from Python,
    one kernel call at a time (the kernels `kvcache._block` is made of), each kind of work timed apart; the
    median over `repeats` replays. The real step (median of as many calls) runs the same kernels inside one
    compiled function per block. The replay must give the real step's logits (checked). `step`: the fp32
    DecodeStep by default, or an Int8DecodeStep (its int8 matrix products, `int8_decode._linear8`)."""
    step, cfg = step or DecodeStep(model), model.cfg
    int8 = isinstance(step, Int8DecodeStep)
    linear = int8_decode._linear8 if int8 else kvcache._linear
    prompt = torch.randint(0, cfg.vocab_size, (1, context), generator=torch.Generator().manual_seed(0))
    prompt[0, :ids.shape[1]] = ids[0]
    cache = KVCache(cfg, 1, context + 1)
    model(prompt, cache=cache)
    token, pos, D, eps = prompt[:, -1], cache.seen, cfg.head_dim, step.eps
    cos, sin = (t[0].numpy() for t in rope_cos_sin(torch.tensor([pos]), step.inv_freq))
    k_all, v_all = cache.k.numpy(), cache.v.numpy()
    clock = time.perf_counter

    def replay(acc):
        rows = token.numpy()
        x = step.embed.codes[rows].astype(np.float32) * step.embed.scale[rows, None] if int8 else step.embed[rows]
        for i, w in enumerate(step.blocks):
            t0 = clock(); h = kvcache._rmsnorm(x, w.attn_norm, eps)
            t1 = clock(); q, k, v = linear(h, w.q), linear(h, w.k), linear(h, w.v)
            t2 = clock(); q, k = kvcache._rope(q, cos, sin, D), kvcache._rope(k, cos, sin, D)
            t3 = clock(); kvcache._cache_write(k_all[i], pos, k, D), kvcache._cache_write(v_all[i], pos, v, D)
            t4 = clock(); y = kvcache._attend(q, k_all[i], v_all[i], pos + 1, D)
            t5 = clock(); x = x + linear(y, w.o)
            t6 = clock(); h = kvcache._rmsnorm(x, w.mlp_norm, eps)
            t7 = clock(); gate, up = linear(h, w.gate), linear(h, w.up)
            t8 = clock(); a = gate / (np.float32(1.0) + np.exp(-gate)) * up
            t9 = clock(); x = x + linear(a, w.down)
            t10 = clock()
            acc["matrix products, 210 block matrices"] += (t2 - t1) + (t6 - t5) + (t8 - t7) + (t10 - t9)
            acc["RMSNorm"] += (t1 - t0) + (t7 - t6)
            acc["RoPE"] += t3 - t2
            acc["cache write"] += t4 - t3
            acc["attention over the cache"] += t5 - t4
            acc["SiLU(gate) * up"] += t9 - t8
        t0 = clock(); h = kvcache._rmsnorm(x, step.norm, eps)
        t1 = clock(); logits = linear(h, step.head)
        t2 = clock()
        acc["RMSNorm"] += t1 - t0
        acc["matrix product, LM head"] += t2 - t1
        return logits

    real_logits = step(token, cache).numpy()  # compiles; writes position pos, which every replay rewrites
    cache.seen = pos
    replay_logits = replay(defaultdict(float))
    max_diff = float(np.abs(replay_logits - real_logits).max())
    parts = defaultdict(list)
    real = []
    for _ in range(repeats):
        acc = defaultdict(float)
        replay(acc)
        for name, seconds in acc.items():
            parts[name].append(seconds)
        start = clock()
        step(token, cache)
        real.append(clock() - start)
        cache.seen = pos  # the next call writes the same position again
    parts = {name: float(np.median(v)) for name, v in parts.items()}
    real_s = float(np.median(real))
    matrices = [m for b in step.blocks for m in (b.q, b.k, b.v, b.o, b.gate, b.up, b.down)]
    return dict(context=context, repeats=repeats, step_s=real_s, parts_s=parts,  # .nbytes: numpy or Int8Matrix
                replay_max_abs_diff=max_diff,
                block_matrix_bytes=sum(m.nbytes for m in matrices), head_bytes=step.head.nbytes)


@torch.no_grad()
def cached_stamps(model: Llama, ids: torch.Tensor, n_max: int, fast: bool) -> list[float]:
    """Seconds from the start until each of n_max greedy tokens is known, with the cache: prefill, then one
    token per step, by the fast decode step or by the plain Llama.forward."""
    cache = KVCache(model.cfg, 1, ids.shape[1] + n_max)
    step = DecodeStep(model) if fast else (lambda new, cache: model(new[:, None], cache=cache)[:, -1])
    start = time.perf_counter()
    token, stamps = model(ids, cache=cache)[:, -1].argmax(-1), []
    for _ in range(n_max):
        stamps.append(time.perf_counter() - start)  # time until token number len(stamps) + 1 is known
        token = step(token, cache).argmax(-1)
    return stamps


@torch.no_grad()
def cache_speedup(model: Llama, ids: torch.Tensor, full: bool) -> dict:
    """Seconds to generate n tokens without the cache, with it (plain Llama.forward) and with it and the fast
    decode step, for n in LENGTHS."""
    P, n_max = ids.shape[1], max(LENGTHS)
    plain, fast = cached_stamps(model, ids, n_max, fast=False), cached_stamps(model, ids, n_max, fast=True)
    # without: step t is a forward over P + t tokens; time it at a few prefix lengths, sum over t (linear interp.)
    long_ids = torch.randint(0, model.cfg.vocab_size, (1, P + n_max), generator=torch.Generator().manual_seed(0))
    probe = [0, 32, 128, 256, 384, n_max - 1]
    probe_s = [median_of(lambda: model(long_ids[:, :P + t]), 3, warmup=0 if i else 1) for i, t in enumerate(probe)]
    per_step = np.interp(np.arange(n_max), probe, probe_s)
    uncached = [float(per_step[:n].sum()) for n in LENGTHS]
    n_check = 16
    measured = median_of(lambda: generate_uncached(model, ids, n_check), 1, warmup=0)
    plain_s, fast_s = [plain[n - 1] for n in LENGTHS], [fast[n - 1] for n in LENGTHS]
    out = dict(lengths=list(LENGTHS), uncached_estimated_s=uncached, cached_plain_s=plain_s, cached_fast_s=fast_s,
               cache_speedup=[u / c for u, c in zip(uncached, plain_s)],
               fast_step_factor=[c / f for c, f in zip(plain_s, fast_s)],
               total_speedup=[u / f for u, f in zip(uncached, fast_s)],
               probe_prefix=[P + t for t in probe], probe_forward_s=probe_s, check_tokens=n_check,
               check_uncached_measured_s=measured, check_uncached_estimated_s=float(per_step[:n_check].sum()))
    if full:
        out["full_uncached_512_measured_s"] = median_of(lambda: generate_uncached(model, ids, n_max), 1, warmup=0)
    return out


def measure(full: bool = False) -> dict:
    torch.set_num_threads(THREADS)
    about = machine()
    tokenizer, hf = load_smollm2()
    model = Llama.from_pretrained()
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    bw = bandwidth()
    step8 = Int8DecodeStep(model)
    t = decode_times(model, hf, ids, step8)
    t8 = t.pop("labkit_int8")
    fast_tok, plain_tok, hf1_tok, hf2_tok = (t[k]["decode_s"] for k in
                                             ("labkit_fast", "labkit_plain_cache", "transformers", "transformers_2_threads"))
    fast_ids, plain_ids, hf_ids = (t[k]["ids"] for k in ("labkit_fast", "labkit_plain_cache", "transformers"))
    context = ids.shape[1] + NEW_TOKENS // 2  # the cache's average length over the 128 steps
    step_bytes = bytes_per_token(model, context)
    best_bw = max(bw.values())
    return dict(
        machine=about, prompt=PROMPT, prompt_tokens=ids.shape[1], new_tokens=NEW_TOKENS,
        tokens_generated=dict(labkit=fast_ids.shape[1] - ids.shape[1], transformers=hf_ids.shape[1] - ids.shape[1]),
        same_tokens=dict(fast_vs_transformers=torch.equal(fast_ids, hf_ids), plain_vs_fast=torch.equal(plain_ids, fast_ids)),
        greedy_ids=fast_ids[0, ids.shape[1]:].tolist(),
        decode_s_per_token=dict(labkit_fast=fast_tok, labkit_plain_cache=plain_tok, transformers=hf1_tok,
                                transformers_2_threads=hf2_tok),
        runs={k: v["runs"] for k, v in t.items()},
        prefill_s={k: v["prefill_s"] for k, v in t.items()},
        bandwidth_gb_s=bw, roofline=dict(bytes_per_token=step_bytes, average_context=context, bandwidth_gb_s=best_bw,
                                         s_per_token=step_bytes / (best_bw * 1e9)),
        ratios=dict(vs_transformers=hf1_tok / fast_tok, vs_transformers_2_threads=hf2_tok / fast_tok,
                    plain_cache_vs_transformers=hf1_tok / plain_tok,
                    vs_roofline=step_bytes / (best_bw * 1e9) / fast_tok),
        goals=GOALS, profile=profile_step(model, ids, context), cache_speedup=cache_speedup(model, ids, full),
        int8=int8_rows(model, tokenizer, ids, step8, t8, fast_ids, hf1_tok, fast_tok, best_bw, context),
        load_average_1min_at_end=round(os.getloadavg()[0], 2))


@torch.no_grad()
def teacher_forced_agreement(step8: Int8DecodeStep, full_ids: torch.Tensor, prompt_len: int) -> int:
    """How many of the tokens after the prompt in full_ids [1, T] (fp32's greedy text) are also the int8 step's
    argmax when it reads that same text: each position judged on the same context, unlike free generation,
    where one different token changes every context after it."""
    cache = KVCache(step8.cfg, 1, full_ids.shape[1])
    same = 0
    for t in range(full_ids.shape[1] - 1):
        logits = step8(full_ids[:, t], cache)
        if t + 1 >= prompt_len:
            same += int(logits.argmax(-1).item() == full_ids[0, t + 1].item())
    return same


def int8_rows(model: Llama, tokenizer, ids: torch.Tensor, step8: Int8DecodeStep, t8: dict, fast_ids: torch.Tensor,
              hf_s: float, fast_s: float, bw_gb_s: float, context: int) -> dict:
    """Result 5: the int8 step's speed against transformers and its roofline, its profile, and what rounding
    the weights to int8 costs (greedy agreement, perplexity)."""
    P, new = ids.shape[1], fast_ids.shape[1] - ids.shape[1]
    int8_ids = t8["ids"][0, P:].tolist()
    fp32_ids = fast_ids[0, P:].tolist()
    prefix = next((i for i, (a, b) in enumerate(zip(int8_ids, fp32_ids)) if a != b), len(fp32_ids))
    cfg = model.cfg
    step_bytes = step8.nbytes + cache_bytes(cfg.n_layers, cfg.n_kv_heads, cfg.head_dim, context)
    roof_s = step_bytes / (bw_gb_s * 1e9)
    windows = heldout_windows(tokenizer, PPL_WINDOWS)
    fp32_loss = window_losses(model, windows)
    int8_loss = window_losses(dequantized_model(model), windows)
    fp32_ppl, int8_ppl = float(fp32_loss.mean().exp()), float(int8_loss.mean().exp())
    # what torch offers: its weight-only int8 product, on the LM head, against labkit's kernel
    head = step8.head
    codes, scale = torch.from_numpy(head.codes), torch.from_numpy(head.scale)
    x = torch.randn(1, codes.shape[1], generator=torch.Generator().manual_seed(0))
    torch_s = median_of(lambda: torch._weight_int8pack_mm(x, codes, scale), 5)
    ours_s = median_of(lambda: int8_decode.matvec_int8(x, codes, scale), 5)
    op_diff = float((torch._weight_int8pack_mm(x, codes, scale) - int8_decode.matvec_int8(x, codes, scale)).abs().max())
    return dict(
        decode_s_per_token=t8["decode_s"], runs=t8["runs"], prefill_s=t8["prefill_s"],
        tokens_generated=len(int8_ids), greedy_ids=int8_ids,
        weight_bytes=step8.nbytes, fp32_weight_bytes=sum(p.nbytes for p in model.parameters()),
        roofline=dict(bytes_per_token=step_bytes, average_context=context, bandwidth_gb_s=bw_gb_s, s_per_token=roof_s),
        ratios=dict(vs_transformers=hf_s / t8["decode_s"], vs_labkit_fast=fast_s / t8["decode_s"],
                    vs_roofline=roof_s / t8["decode_s"]),
        agreement=dict(tokens=new, same_prefix=prefix,
                       teacher_forced_same=teacher_forced_agreement(step8, fast_ids, P)),
        perplexity=dict(windows=PPL_WINDOWS, window_tokens=windows.shape[1], fp32=fp32_ppl, int8=int8_ppl,
                        change=int8_ppl / fp32_ppl - 1),
        torch_weight_int8pack_mm=dict(matrix=list(codes.shape), torch_s=torch_s, labkit_s=ours_s,
                                      max_abs_diff=op_diff),
        profile=profile_step(model, ids, context, step=step8), in_cache=in_cache_rates(model, step8),
        goals=INT8_GOALS)


@numba.njit(cache=False)
def _repeat_matvec(w, x, out, n):  # n calls of chapter 5's fp32 kernel, from compiled code (no call overhead)
    for _ in range(n):
        kvcache._matvec_kernel(w, x, out)


@numba.njit(cache=False)
def _repeat_matvec_int8(codes, scale, x, out, n):  # the same for chapter 9's int8 kernel
    for _ in range(n):
        int8_decode._matvec_int8_kernel(codes, scale, x, out)


def in_cache_rates(model: Llama, step8: Int8DecodeStep, repeats: int = 2000) -> dict:
    """Weights per second of each kernel on one matrix that stays in the core's cache (the first block's
    k_proj, 192 x 576: 442 KB in fp32, 111 KB in int8), called `repeats` times in a row: its speed with memory
    taken away, i.e. the kernel's own compute ceiling. The roofline model takes the lower of this and the
    bandwidth ceiling; a kernel close to both at once reaches neither."""
    w = model.layers[0].self_attn.k_proj.weight.detach().numpy()
    q = step8.blocks[0].k
    x = np.random.default_rng(0).standard_normal((1, w.shape[1])).astype(np.float32)
    out = np.empty((1, w.shape[0]), np.float32)
    rates = {}
    for name, run in (("fp32", lambda n: _repeat_matvec(w, x, out, n)),
                      ("int8", lambda n: _repeat_matvec_int8(q.codes, q.scale, x, out, n))):
        run(2)  # compile
        rates[name] = w.size / median_of(lambda: run(repeats), 5) * repeats
    return dict(matrix=list(w.shape), repeats=repeats, fp32_weights_per_s=rates["fp32"],
                int8_weights_per_s=rates["int8"])


def profile_rows(p: dict) -> list[tuple[str, float, str]]:
    """(what, seconds, note) for each kind of work of a fast decode step, largest first."""
    gb_s = {"matrix products, 210 block matrices": p["block_matrix_bytes"], "matrix product, LM head": p["head_bytes"]}
    return [(name, s, f"{gb_s[name] / s / 1e9:.1f} GB/s" if name in gb_s else "")
            for name, s in sorted(p["parts_s"].items(), key=lambda kv: -kv[1])]


def report(r: dict) -> None:
    m, d, bw, ro, ra = r["machine"], r["decode_s_per_token"], r["bandwidth_gb_s"], r["roofline"], r["ratios"]
    print(f"machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} with {m['torch_threads']} thread(s), "
          f"load average {m['load_average_1min']} at start and {r['load_average_1min_at_end']} at the end, "
          f"{m['date']}, revision {m['revision']}")
    print(f"prompt {r['prompt']!r} ({r['prompt_tokens']} tokens), greedy, fp32, batch 1; tokens generated: "
          f"labkit {r['tokens_generated']['labkit']}, transformers {r['tokens_generated']['transformers']}; "
          f"identical tokens: {r['same_tokens']['fast_vs_transformers']}")
    print("decode, per token (prefill excluded; median step of a run, median over runs):")
    for name, label in (("labkit_fast", "labkit, KV-cache + fast decode step"),
                        ("labkit_plain_cache", "labkit, KV-cache, plain Llama.forward"),
                        ("transformers", f"transformers generate, {m['torch_threads']} thread(s)"),
                        ("transformers_2_threads", "transformers generate, 2 threads")):
        print(f"  {label:42} {1e3 * d[name]:7.1f} ms  {1 / d[name]:6.1f} tokens/s  ({r['runs'][name]} run(s))")
    print(f"1. labkit ÷ transformers (same threads): {ra['vs_transformers']:.2f}x (goal >= "
          f"{GOALS['vs_transformers']:g}); vs transformers with 2 threads {ra['vs_transformers_2_threads']:.2f}x; "
          f"plain cached path {ra['plain_cache_vs_transformers']:.2f}x")
    print(f"bandwidth: tensor.sum 512 MB {bw['sum']:.1f} GB/s, torch.mv 8192x8192 {bw['torch_matvec']:.1f} GB/s, "
          f"labkit matvec 8192x8192 {bw['labkit_matvec']:.1f} GB/s -> roofline uses {ro['bandwidth_gb_s']:.1f} GB/s")
    print(f"one decode step reads {ro['bytes_per_token'] / 1e6:.1f} MB (weights + cache of {ro['average_context']} "
          f"tokens): roofline {1e3 * ro['s_per_token']:.1f} ms/token = {1 / ro['s_per_token']:.1f} tokens/s")
    print(f"2. labkit ÷ roofline: {ra['vs_roofline']:.2f} (goal >= {GOALS['vs_roofline']:g})")
    p = r["profile"]
    print(f"3. profile of one fast decode step at a cache of {p['context']} tokens (median of {p['repeats']}; "
          f"replay's logits equal the step's to {p['replay_max_abs_diff']:.1e}): step {1e3 * p['step_s']:.1f} ms")
    for name, s, note in profile_rows(p):
        print(f"  {name:48} {1e3 * s:6.2f} ms {100 * s / p['step_s']:5.1f}%  {note}")
    print(f"  the kinds of work add up to {1e3 * sum(p['parts_s'].values()):.1f} ms, each timing with its own call "
          f"from Python; the real step makes one call per block: {1e3 * p['step_s']:.1f} ms")
    c = r["cache_speedup"]
    print("4. KV-cache speedup (uncached: estimated from forwards at prefix lengths "
          f"{c['probe_prefix']}, summed; cached: one real run each):")
    print(f"  {'new tokens':>10} {'uncached s':>11} {'cached s':>9} {'cache alone':>12} {'fast step s':>12} "
          f"{'fast step':>10} {'both':>7}")
    for i, n in enumerate(c["lengths"]):
        print(f"  {n:>10} {c['uncached_estimated_s'][i]:>11.2f} {c['cached_plain_s'][i]:>9.2f} "
              f"{c['cache_speedup'][i]:>11.1f}x {c['cached_fast_s'][i]:>12.2f} {c['fast_step_factor'][i]:>9.2f}x "
              f"{c['total_speedup'][i]:>6.1f}x")
    print(f"  check: uncached {c['check_tokens']} tokens end to end {c['check_uncached_measured_s']:.2f} s, "
          f"estimate {c['check_uncached_estimated_s']:.2f} s")
    if "full_uncached_512_measured_s" in c:
        print(f"  --full: uncached 512 tokens end to end {c['full_uncached_512_measured_s']:.1f} s, "
              f"cache alone {c['full_uncached_512_measured_s'] / c['cached_plain_s'][-1]:.1f}x")
    print(f"KV-cache speedup at 512, the cache alone: {c['cache_speedup'][-1]:.1f}x (goal >= "
          f"{GOALS['cache_speedup_512']:g}x); the fast decode step adds {c['fast_step_factor'][-1]:.2f}x")
    report_int8(r["int8"], r["decode_s_per_token"])


def report_int8(q: dict, fp32: dict) -> None:
    ro, ra, g, a, pp = q["roofline"], q["ratios"], q["goals"], q["agreement"], q["perplexity"]
    print(f"5. int8 weight-only decode (chapter 9): {q['weight_bytes'] / 1e6:.1f} MB of weights (codes + scales + "
          f"norms) against {q['fp32_weight_bytes'] / 1e6:.1f} MB in fp32")
    print(f"  int8 step {1e3 * q['decode_s_per_token']:.1f} ms/token, {1 / q['decode_s_per_token']:.1f} tokens/s "
          f"({q['runs']} runs); fp32 fast step {1e3 * fp32['labkit_fast']:.1f} ms; transformers fp32 "
          f"{1e3 * fp32['transformers']:.1f} ms")
    print(f"  int8 ÷ transformers fp32: {ra['vs_transformers']:.2f}x (goal >= {g['vs_transformers']:g}); "
          f"int8 ÷ labkit fp32 fast step: {ra['vs_labkit_fast']:.2f}x")
    print(f"  roofline: {ro['bytes_per_token'] / 1e6:.1f} MB per token (with the cache of {ro['average_context']} tokens)"
          f" at {ro['bandwidth_gb_s']:.1f} GB/s = {1e3 * ro['s_per_token']:.1f} ms/token; int8 ÷ roofline "
          f"{ra['vs_roofline']:.2f} (goal >= {g['vs_roofline']:g})")
    print(f"  greedy agreement with fp32 over {a['tokens']} tokens: identical prefix {a['same_prefix']} tokens; "
          f"teacher-forced {a['teacher_forced_same']}/{a['tokens']} positions")
    print(f"  perplexity on {pp['windows']} held-out windows of {pp['window_tokens']} tokens: fp32 {pp['fp32']:.3f}, "
          f"int8 {pp['int8']:.3f}, change {100 * pp['change']:+.2f}% (goal <= +{100 * g['perplexity_change']:g}%)")
    o = q["torch_weight_int8pack_mm"]
    print(f"  torch._weight_int8pack_mm on the {o['matrix'][0]} x {o['matrix'][1]} LM head: {1e3 * o['torch_s']:.1f} ms, "
          f"labkit's kernel {1e3 * o['labkit_s']:.2f} ms ({o['torch_s'] / o['labkit_s']:.0f}x faster; outputs "
          f"differ by {o['max_abs_diff']:.1e})")
    p = q["profile"]
    print(f"  profile of one int8 step at a cache of {p['context']} tokens (median of {p['repeats']}; replay's logits "
          f"equal the step's to {p['replay_max_abs_diff']:.1e}): step {1e3 * p['step_s']:.1f} ms")
    for name, s, note in profile_rows(p):
        print(f"    {name:48} {1e3 * s:6.2f} ms {100 * s / p['step_s']:5.1f}%  {note}")
    c, ro = q["in_cache"], q["roofline"]
    print(f"  each kernel on a {c['matrix'][0]} x {c['matrix'][1]} matrix that stays in cache (its compute ceiling): "
          f"fp32 {c['fp32_weights_per_s'] / 1e9:.1f} G weights/s, int8 {c['int8_weights_per_s'] / 1e9:.1f} G "
          f"weights/s = {c['int8_weights_per_s'] / 1e9:.1f} GB/s of codes, against the {ro['bandwidth_gb_s']:.1f} GB/s "
          f"the roofline uses: widening each code to float32 caps the int8 loop near the memory bandwidth itself")


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
