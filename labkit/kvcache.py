"""The KV-cache: keep every layer's keys and values, so each new token costs one position, not the whole prefix.

Without a cache, generating token t runs the model on all t tokens again, although the keys and values of
tokens 0..t-1 are the same as last step (a causal model never lets a token see its future, so nothing about an
old token changes). The cache stores them once and the model feeds only the new token:

    prefill   run the prompt (P tokens) once, storing k and v of every layer      time to first token, t_a
    decode    run 1 token, append its k and v, attend over all stored ones      per-token time, t_b

so generating m tokens costs about t = t_a + t_b * m (the latency model chapter 5 measures), instead of a sum
that grows with the square of the length. Queries are never cached: only the newest token's query is needed.

    KVCache       preallocated [layers, batch, kv_heads, max_len, head_dim] tensors for k and v, filled in place
    generate      the sampling loop of chapter 4 (`labkit.sampling.generate`), with a cache: prefill, then decode
    cache_bytes   2 * layers * kv_heads * head_dim * bytes * tokens: what the cache costs in memory
    token_times   the clock read after every greedy token, with or without the cache: t(m) = t_a + t_b * m
    DecodeStep    the fast path for one decode step: Llama.forward for one new token per sequence, each block
                  one compiled function (`_block`) whose matrix products stream the weights (`matvec`'s loop)

The cache is what `labkit.llama.Llama.forward(ids, cache=...)` talks to: `update(layer, k, v)` stores the new
keys and values of one layer and returns all of them, `advance(n)` moves on once every layer has stored n
tokens, `seen` is how many tokens it has seen (the next token's absolute position).

Why a fast path: with a cache, one decode step multiplies every weight matrix by a single vector, so it does
~2 FLOPs per weight read and its speed is set by memory bandwidth (the decode roofline: bytes of weights and
cache ÷ bytes per second). Two things keep the plain `Llama.forward` far from it: torch's matrix-vector
product streams the model's narrow matrices (576 or 1536 columns) more slowly than a plain loop compiled by
numba does, and the ~40 small torch operations of each block (norms, RoPE, attention over the cache, SiLU,
residuals) each cost a few microseconds of dispatch, more than their arithmetic. `DecodeStep` compiles each
block, loops for all of it, into one function; `benchmarks/decode.py` profiles where its time goes. Tests
check it against Llama.forward (logits, cache contents, generated tokens).
"""
from __future__ import annotations

import time
from typing import NamedTuple

import numba
import numpy as np
import torch

from .llama import Llama, LlamaConfig
from .rope import rope_cos_sin, rope_inv_freq
from .sampling import _check_generate_args, sample_next


def cache_bytes(n_layers: int, n_kv_heads: int, head_dim: int, tokens: int, bytes_per_value: int = 4) -> int:
    """Memory of a KV-cache holding `tokens` tokens: a key and a value vector per kv head, per layer."""
    for name, value in (("n_layers", n_layers), ("n_kv_heads", n_kv_heads), ("head_dim", head_dim),
                        ("bytes_per_value", bytes_per_value)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
        raise ValueError(f"tokens must be an int >= 0, got {tokens!r}")
    return 2 * n_layers * n_kv_heads * head_dim * bytes_per_value * tokens


class KVCache:
    """A preallocated KV-cache for `batch` sequences of up to `max_len` tokens.

    Allocating once and writing in place (rather than torch.cat-ing a growing tensor every step) keeps decode
    free of copies: step t writes one position and reads a view of the first t + 1.
    """

    def __init__(self, cfg: LlamaConfig, batch: int = 1, max_len: int = 2048, dtype: torch.dtype = torch.float32):
        if not isinstance(cfg, LlamaConfig):
            raise TypeError(f"cfg must be a LlamaConfig (model.cfg), got {type(cfg).__name__}")
        for name, value in (("batch", batch), ("max_len", max_len)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if max_len > cfg.max_seq_len:
            raise ValueError(f"max_len {max_len} exceeds the model's trained context of {cfg.max_seq_len} tokens")
        shape = (cfg.n_layers, batch, cfg.n_kv_heads, max_len, cfg.head_dim)
        self.k = torch.zeros(shape, dtype=dtype)
        self.v = torch.zeros(shape, dtype=dtype)
        self.seen = 0  # tokens stored in every layer so far = the absolute position of the next token

    @property
    def max_len(self) -> int:
        return self.k.shape[3]

    @property
    def nbytes(self) -> int:
        """Memory held by the preallocated tensors (all of max_len, used or not)."""
        return self.k.nbytes + self.v.nbytes

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v [batch, kv_heads, T, head_dim] of `layer` after the `seen` tokens; return views of every
        stored key and value of that layer, [batch, kv_heads, seen + T, head_dim]."""
        if not 0 <= layer < self.k.shape[0]:
            raise ValueError(f"layer must lie in [0, {self.k.shape[0]}), got {layer}")
        expected = (*self.k.shape[1:3], self.k.shape[4])
        if k.shape != v.shape or k.ndim != 4 or (k.shape[0], k.shape[1], k.shape[3]) != expected:
            raise ValueError(f"k and v must both be [batch, kv_heads, T, head_dim] with (batch, kv_heads, head_dim)"
                             f" = {expected}, got {tuple(k.shape)} and {tuple(v.shape)}")
        end = self.seen + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"the cache holds {self.max_len} tokens; storing {k.shape[2]} more after "
                             f"{self.seen} would need {end}")
        self.k[layer, :, :, self.seen:end] = k
        self.v[layer, :, :, self.seen:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def advance(self, n: int) -> None:
        """Every layer has stored n more tokens: the next call writes after them."""
        self.seen += n

    def reset(self) -> None:
        """Forget everything (the memory stays allocated, ready for the next sequence)."""
        self.seen = 0


# ----------------------------------------------------------------------------------------------------------
# the fast decode step

@numba.njit(fastmath=True, cache=False)
def _matvec_kernel(w: np.ndarray, x: np.ndarray, out: np.ndarray) -> None:
    # W is read front to back, four rows at a time: a pure stream through memory, with four independent sums in
    # flight (on the model's narrow matrices that streams faster than one row at a time)
    rows = w.shape[0] - w.shape[0] % 4
    for i in range(0, rows, 4):
        for b in range(x.shape[0]):
            a0 = a1 = a2 = a3 = np.float32(0.0)
            for j in range(w.shape[1]):  # fastmath lets numba reorder each sum into SIMD lanes
                xj = x[b, j]
                a0 += w[i, j] * xj
                a1 += w[i + 1, j] * xj
                a2 += w[i + 2, j] * xj
                a3 += w[i + 3, j] * xj
            out[b, i], out[b, i + 1], out[b, i + 2], out[b, i + 3] = a0, a1, a2, a3
    for i in range(rows, w.shape[0]):  # the last rows, fewer than four
        for b in range(x.shape[0]):
            acc = np.float32(0.0)
            for j in range(w.shape[1]):
                acc += w[i, j] * x[b, j]
            out[b, i] = acc


def matvec(x: torch.Tensor, w: np.ndarray) -> torch.Tensor:
    """x [B, in] @ w.T for a float32 weight w [out, in] (as stored by nn.Linear) -> [B, out]: F.linear(x, w)
    for the few rows of a decode step, summed in another order (equal to ~1e-6 relative, not bit for bit)."""
    if x.ndim != 2 or x.dtype != torch.float32 or w.dtype != np.float32 or x.shape[1] != w.shape[1]:
        raise ValueError(f"matvec needs float32 x [B, {w.shape[1]}] and w [out, in], got x {tuple(x.shape)} "
                         f"{x.dtype} and w {w.shape} {w.dtype}")
    out = torch.empty(x.shape[0], w.shape[0])
    _matvec_kernel(w, x.contiguous().numpy(), out.numpy())
    return out


# The rest of a block, written as loops over one new token per sequence (x is [B, dim]): the same formulas as
# labkit.transformer.RMSNorm, labkit.rope.apply_rope and labkit.attention.scaled_dot_product_attention, in
# float32. Compiled into the block below, they cost no per-operation overhead: in torch each of the ~40 small
# operations of a block costs a few microseconds of dispatch, more than its arithmetic (benchmarks/decode.py).

@numba.njit(fastmath=True, cache=False)
def _matmat_kernel(w: np.ndarray, x: np.ndarray, out: np.ndarray) -> None:
    # Several sequences at once (n samples of one prompt, chapter 10): one pass over W serves the whole batch,
    # and each tile of 4 weight rows x 4 sequences keeps 16 sums in flight, so every weight and every input
    # value loaded is used four times (the one-row-at-a-time loop above loads a weight once per sequence and
    # becomes load-bound at batch 16). A band of 64 rows (~150 KB) stays in cache while the batch passes over it.
    rows, batch = w.shape[0] - w.shape[0] % 4, x.shape[0] - x.shape[0] % 4
    for band in range(0, rows, 64):
        for b in range(0, batch, 4):
            for i in range(band, min(band + 64, rows), 4):
                s00 = s01 = s02 = s03 = s10 = s11 = s12 = s13 = np.float32(0.0)
                s20 = s21 = s22 = s23 = s30 = s31 = s32 = s33 = np.float32(0.0)
                for j in range(w.shape[1]):
                    w0, w1, w2, w3 = w[i, j], w[i + 1, j], w[i + 2, j], w[i + 3, j]
                    x0, x1, x2, x3 = x[b, j], x[b + 1, j], x[b + 2, j], x[b + 3, j]
                    s00 += w0 * x0; s01 += w0 * x1; s02 += w0 * x2; s03 += w0 * x3  # noqa: E702
                    s10 += w1 * x0; s11 += w1 * x1; s12 += w1 * x2; s13 += w1 * x3  # noqa: E702
                    s20 += w2 * x0; s21 += w2 * x1; s22 += w2 * x2; s23 += w2 * x3  # noqa: E702
                    s30 += w3 * x0; s31 += w3 * x1; s32 += w3 * x2; s33 += w3 * x3  # noqa: E702
                out[b, i], out[b + 1, i], out[b + 2, i], out[b + 3, i] = s00, s01, s02, s03
                out[b, i + 1], out[b + 1, i + 1], out[b + 2, i + 1], out[b + 3, i + 1] = s10, s11, s12, s13
                out[b, i + 2], out[b + 1, i + 2], out[b + 2, i + 2], out[b + 3, i + 2] = s20, s21, s22, s23
                out[b, i + 3], out[b + 1, i + 3], out[b + 2, i + 3], out[b + 3, i + 3] = s30, s31, s32, s33
    if batch < x.shape[0]:  # the last sequences (fewer than four), every row
        _matvec_kernel(w, x[batch:], out[batch:])
    for i in range(rows, w.shape[0]):  # the last rows (fewer than four), the first `batch` sequences
        for b in range(batch):
            acc = np.float32(0.0)
            for j in range(w.shape[1]):
                acc += w[i, j] * x[b, j]
            out[b, i] = acc


@numba.njit(fastmath=True, cache=False)
def _linear(x, w):  # x [B, in] @ w.T -> [B, out]
    out = np.empty((x.shape[0], w.shape[0]), np.float32)
    if x.shape[0] >= 4:
        _matmat_kernel(w, x, out)  # a batch: tiles of 4 rows x 4 sequences
    else:
        _matvec_kernel(w, x, out)  # one sequence (or two, three): a stream through W
    return out


@numba.njit(fastmath=True, cache=False)
def _rmsnorm(x, weight, eps):  # x / sqrt(mean(x^2) + eps) * weight, per row
    out = np.empty_like(x)
    for b in range(x.shape[0]):
        mean_sq = np.float32(0.0)
        for j in range(x.shape[1]):
            mean_sq += x[b, j] * x[b, j]
        scale = np.float32(1.0) / np.sqrt(mean_sq / np.float32(x.shape[1]) + eps)
        for j in range(x.shape[1]):
            out[b, j] = weight[j] * (x[b, j] * scale)
    return out


@numba.njit(fastmath=True, cache=False)
def _rope(x, cos, sin, head_dim):  # in place, per head: the pair (x[i], x[i + D/2]) turned by angle i
    half = head_dim // 2
    for b in range(x.shape[0]):
        for start in range(0, x.shape[1], head_dim):
            for i in range(half):
                a, c = x[b, start + i], x[b, start + half + i]
                x[b, start + i] = a * cos[i] - c * sin[i]
                x[b, start + half + i] = c * cos[half + i] + a * sin[half + i]
    return x


@numba.njit(fastmath=True, cache=False)
def _attend(q, k, v, length, head_dim):
    """softmax(q k^T / sqrt(D)) v for one query per head: q [B, H * D] against the first `length` positions
    of k, v [B, H_kv, max_len, D]. Query head h reads key/value head h // (H / H_kv) (no copies of k, v)."""
    B, H, H_kv = q.shape[0], q.shape[1] // head_dim, k.shape[1]
    out = np.zeros_like(q)
    scores = np.empty(length, np.float32)
    sqrt_d = np.sqrt(np.float32(head_dim))
    for b in range(B):
        for h in range(H):
            g, qh = h // (H // H_kv), h * head_dim
            # 1-D views of this head's query and output row: the d loops over them compiled 3.7x faster than
            # 2-D indexing into q and out (30 layers, 78 positions); the arithmetic and its result are the same
            qv, acc = q[b, qh:qh + head_dim], out[b, qh:qh + head_dim]
            best = np.float32(-np.inf)
            for t in range(length):
                kt = k[b, g, t]
                s = np.float32(0.0)
                for d in range(head_dim):
                    s += qv[d] * kt[d]
                scores[t] = s / sqrt_d
                best = max(best, scores[t])
            total = np.float32(0.0)
            for t in range(length):  # subtract the max before exp: no overflow (chapter 3)
                scores[t] = np.exp(scores[t] - best)
                total += scores[t]
            for t in range(length):
                p = scores[t] / total
                vt = v[b, g, t]
                for d in range(head_dim):
                    acc[d] += p * vt[d]
    return out


@numba.njit(fastmath=True, cache=False)
def _cache_write(cache, pos, x, head_dim):  # cache[:, :, pos, :] = x [B, H_kv * D]: the cache update
    for b in range(x.shape[0]):
        for g in range(cache.shape[1]):
            for d in range(head_dim):
                cache[b, g, pos, d] = x[b, g * head_dim + d]


class BlockWeights(NamedTuple):
    """One Llama block's parameters as numpy views (no copies): what `_block` reads."""
    attn_norm: np.ndarray
    q: np.ndarray
    k: np.ndarray
    v: np.ndarray
    o: np.ndarray
    mlp_norm: np.ndarray
    gate: np.ndarray
    up: np.ndarray
    down: np.ndarray


@numba.njit(fastmath=True, cache=False)
def _block(x, w, k_cache, v_cache, pos, cos, sin, head_dim, eps):
    """One Llama block for one new token per sequence, x [B, dim] -> [B, dim]; stores the token's key and value
    at position `pos` of this layer's cache k_cache, v_cache [B, H_kv, max_len, D]. labkit.llama's wiring."""
    h = _rmsnorm(x, w.attn_norm, eps)
    q = _rope(_linear(h, w.q), cos, sin, head_dim)
    _cache_write(k_cache, pos, _rope(_linear(h, w.k), cos, sin, head_dim), head_dim)
    _cache_write(v_cache, pos, _linear(h, w.v), head_dim)
    x = x + _linear(_attend(q, k_cache, v_cache, pos + 1, head_dim), w.o)
    h = _rmsnorm(x, w.mlp_norm, eps)
    gate, up = _linear(h, w.gate), _linear(h, w.up)
    return x + _linear(gate / (np.float32(1.0) + np.exp(-gate)) * up, w.down)  # SwiGLU: silu(gate) * up


class DecodeStep:
    """One decode step of `model`, fast: tokens [B] (one new token per sequence) + cache -> logits [B, vocab].

    The same computation as `model(tokens[:, None], cache=cache)[:, -1]` (labkit.llama's wiring, its norms and
    RoPE), with two changes that only pay off for a single new token:
    * every weight matrix is read by `_matvec_kernel` (on numpy views of the parameters, made once: no copy);
    * each block is one compiled function (`_block`), so the ~40 small operations between the matrix products
      (norms, RoPE, attention over the cache, SiLU, residuals) cost their arithmetic, not a torch dispatch
      each. Grouped-query attention reads each key/value head for its n_rep query heads, without copies.
    """

    def __init__(self, model: Llama):
        if not isinstance(model, Llama):
            raise TypeError(f"model must be labkit's Llama, got {type(model).__name__}")
        self.model = model
        self.inv_freq = rope_inv_freq(model.cfg.head_dim, model.cfg.rope_theta)
        w = lambda module: module.weight.detach().numpy()  # shares memory with the parameter
        self.blocks = [BlockWeights(w(b.input_layernorm), w(b.self_attn.q_proj), w(b.self_attn.k_proj),
                                    w(b.self_attn.v_proj), w(b.self_attn.o_proj), w(b.post_attention_layernorm),
                                    w(b.mlp.gate_proj), w(b.mlp.up_proj), w(b.mlp.down_proj)) for b in model.layers]
        self.embed, self.norm = w(model.embed_tokens), w(model.norm)
        self.head = w(model.embed_tokens if model.lm_head is None else model.lm_head)
        self.eps = np.float32(model.cfg.norm_eps)

    @torch.no_grad()
    def __call__(self, tokens: torch.Tensor, cache: KVCache) -> torch.Tensor:
        if not isinstance(tokens, torch.Tensor) or tokens.ndim != 1 or tokens.is_floating_point():
            raise ValueError(f"tokens must be an integer tensor [batch] (one new token per sequence), got "
                             f"{tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__}")
        if not isinstance(cache, KVCache) or cache.k.dtype != torch.float32 or cache.k.shape[1] != tokens.shape[0]:
            raise ValueError(f"cache must be a float32 KVCache for a batch of {tokens.shape[0]}")
        if cache.seen >= cache.max_len:
            raise ValueError(f"the cache holds {cache.max_len} tokens and is full")
        pos, D = cache.seen, self.model.cfg.head_dim
        cos, sin = (t[0].numpy() for t in rope_cos_sin(torch.tensor([pos]), self.inv_freq))  # [D] each
        k_all, v_all = cache.k.numpy(), cache.v.numpy()  # views: writing them writes the cache
        x = self.embed[tokens.numpy()]  # [B, dim]
        for i, w in enumerate(self.blocks):
            x = _block(x, w, k_all[i], v_all[i], pos, cos, sin, D, self.eps)
        cache.advance(1)
        return torch.from_numpy(_linear(_rmsnorm(x, self.norm, self.eps), self.head))


@torch.no_grad()
def generate(model: Llama, ids: torch.Tensor, max_new_tokens: int, temperature: float = 0.0,
             top_k: int | None = None, top_p: float | None = None, generator: torch.Generator | None = None,
             eos_id: int | None = None, cache: KVCache | None = None, fast: bool = False) -> torch.Tensor:
    """`labkit.sampling.generate` with a KV-cache: ids [B, T] -> [B, T + new], the same tokens, far fewer FLOPs.

    Prefill runs the prompt once; each decode step then feeds only the token just chosen. A fresh cache sized
    for the prompt plus max_new_tokens is made unless one is passed (an empty one: `cache.seen == 0`).
    fast=True runs the decode steps with `DecodeStep` (the same logits to ~1e-4, see tests/test_kvcache.py).
    """
    if not isinstance(model, Llama):
        raise TypeError(f"model must be labkit's Llama (the cache plugs into its attention), got {type(model).__name__}")
    _check_generate_args(ids, max_new_tokens, temperature, generator)
    if cache is None:
        cache = KVCache(model.cfg, batch=ids.shape[0], max_len=ids.shape[1] + max(max_new_tokens, 1))
    elif cache.seen != 0:
        raise ValueError(f"pass an empty cache (seen == 0), this one has seen {cache.seen} tokens: call cache.reset()")
    step = DecodeStep(model) if fast else lambda new, cache: model(new[:, None], cache=cache)[:, -1]
    finished = torch.zeros(ids.shape[0], dtype=torch.bool)
    new = None
    for _ in range(max_new_tokens):
        # prefill: the whole prompt once; then decode: only the token just chosen, one per row
        logits = model(ids, cache=cache)[:, -1] if new is None else step(new, cache)
        token = sample_next(logits, temperature, top_k, top_p, generator)
        if eos_id is not None:
            token = token.masked_fill(finished, eos_id)
            finished |= token == eos_id
        new = token.to(ids.dtype)
        ids = torch.cat([ids, new[:, None]], dim=1)
        if eos_id is not None and finished.all():
            break
    return ids


@torch.no_grad()
def token_times(model: Llama, ids: torch.Tensor, max_new_tokens: int, cache: bool = True,
                fast: bool = False) -> tuple[torch.Tensor, list[float]]:
    """Greedy generation with the clock read after every token: (ids [B, T + new], seconds[m - 1] = wall-clock
    time from the start until token m is known). Without a cache it runs `labkit.sampling.generate`'s loop
    (a forward over the whole sequence per token); with it, `generate`'s (prefill, then one token per step).
    For the latency model t(m) = t_a + t_b * m; tests check only the tokens, never the times."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    kv = KVCache(model.cfg, batch=ids.shape[0], max_len=ids.shape[1] + max_new_tokens) if cache else None
    step = DecodeStep(model) if fast else None
    seconds, start = [], time.perf_counter()
    for m in range(max_new_tokens):
        if not cache:
            logits = model(ids)[:, -1]                 # everything again, every step
        elif m == 0:
            logits = model(ids, cache=kv)[:, -1]       # prefill
        else:
            new = ids[:, -1]
            logits = step(new, kv) if fast else model(new[:, None], cache=kv)[:, -1]
        ids = torch.cat([ids, logits.argmax(-1, keepdim=True).to(ids.dtype)], dim=1)
        seconds.append(time.perf_counter() - start)
    return ids, seconds
