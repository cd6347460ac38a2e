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
    DecodeStep    the fast path for one decode step: Llama.forward for one new token per sequence, with each
                  weight matrix read by `matvec`, a loop that streams it from memory at full speed

The cache is what `labkit.llama.Llama.forward(ids, cache=...)` talks to: `update(layer, k, v)` stores the new
keys and values of one layer and returns all of them, `advance(n)` moves on once every layer has stored n
tokens, `seen` is how many tokens it has seen (the next token's absolute position).

Why a fast path: with a cache, one decode step multiplies every weight matrix by a single vector, so it does
~2 FLOPs per weight read and its speed is set by memory bandwidth (the decode roofline: bytes of weights and
cache ÷ bytes per second). On the course's CPU, torch's matrix-vector product (MKL) streams the model's narrow
matrices (576 or 1536 columns) at only ~10-13 GB/s, while a plain loop compiled by numba streams them at
~25-30 GB/s, about the speed of `tensor.sum()` (benchmarks/decode.py measures both).
`DecodeStep` is that loop plus the same block wiring as `labkit.llama`; a test checks it against Llama.forward.
"""
from __future__ import annotations

import time

import numba
import numpy as np
import torch
from torch.nn import functional as F

from .attention import scaled_dot_product_attention
from .llama import Llama, LlamaConfig
from .rope import apply_rope, rope_cos_sin, rope_inv_freq
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
    for i in range(w.shape[0]):          # one row of W at a time, front to back: a pure stream through memory
        for b in range(x.shape[0]):
            acc = np.float32(0.0)
            for j in range(w.shape[1]):  # fastmath lets numba reorder this sum into SIMD lanes
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


class DecodeStep:
    """One decode step of `model`, fast: tokens [B] (one new token per sequence) + cache -> logits [B, vocab].

    The same computation as `model(tokens[:, None], cache=cache)[:, -1]` (labkit.llama's wiring, its norms and
    RoPE), with two changes that only pay off for a single new token:
    * every weight matrix is read by `matvec` (numpy views of the parameters, made once: no copy);
    * grouped-query attention without `repeat_kv`: the n_rep query heads of a group are viewed as n_rep
      queries of its one key/value head, [B, H_kv, n_rep, D] against [B, H_kv, T, D] (no causal mask is
      needed: the newest token may read every cached one).
    """

    def __init__(self, model: Llama):
        if not isinstance(model, Llama):
            raise TypeError(f"model must be labkit's Llama, got {type(model).__name__}")
        self.model = model
        self.inv_freq = rope_inv_freq(model.cfg.head_dim, model.cfg.rope_theta)
        w = lambda linear: linear.weight.detach().numpy()  # shares memory with the parameter
        self.layers = [(w(b.self_attn.q_proj), w(b.self_attn.k_proj), w(b.self_attn.v_proj), w(b.self_attn.o_proj),
                        w(b.mlp.gate_proj), w(b.mlp.up_proj), w(b.mlp.down_proj)) for b in model.layers]
        head = model.embed_tokens if model.lm_head is None else model.lm_head
        self.head = head.weight.detach().numpy()

    @torch.no_grad()
    def __call__(self, tokens: torch.Tensor, cache) -> torch.Tensor:
        if not isinstance(tokens, torch.Tensor) or tokens.ndim != 1 or tokens.is_floating_point():
            raise ValueError(f"tokens must be an integer tensor [batch] (one new token per sequence), got "
                             f"{tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__}")
        cfg, model = self.model.cfg, self.model
        B, H, H_kv, D = tokens.shape[0], cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        cos, sin = rope_cos_sin(torch.tensor([cache.seen]), self.inv_freq)  # [1, D]: the new token's position
        x = model.embed_tokens(tokens)  # [B, dim]
        for i, (block, (wq, wk, wv, wo, wg, wu, wd)) in enumerate(zip(model.layers, self.layers)):
            h = block.input_layernorm(x)
            q = apply_rope(matvec(h, wq).view(B, H, 1, D), cos, sin)
            k = apply_rope(matvec(h, wk).view(B, H_kv, 1, D), cos, sin)
            k, v = cache.update(i, k, matvec(h, wv).view(B, H_kv, 1, D))
            y = scaled_dot_product_attention(q.view(B, H_kv, H // H_kv, D), k, v)  # [B, H_kv, n_rep, D]
            x = x + matvec(y.reshape(B, H * D), wo)
            h = block.post_attention_layernorm(x)
            x = x + matvec(F.silu(matvec(h, wg)) * matvec(h, wu), wd)
        cache.advance(1)
        return matvec(model.norm(x), self.head)


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
