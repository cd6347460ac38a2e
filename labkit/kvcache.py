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

The cache is what `labkit.llama.Llama.forward(ids, cache=...)` talks to: `update(layer, k, v)` stores the new
keys and values of one layer and returns all of them, `advance(n)` moves on once every layer has stored n
tokens, `seen` is how many tokens it has seen (the next token's absolute position).
"""
from __future__ import annotations

import torch

from .llama import Llama, LlamaConfig
from .sampling import _check_temperature, sample_next


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


@torch.no_grad()
def generate(model: Llama, ids: torch.Tensor, max_new_tokens: int, temperature: float = 0.0,
             top_k: int | None = None, top_p: float | None = None, generator: torch.Generator | None = None,
             eos_id: int | None = None, cache: KVCache | None = None) -> torch.Tensor:
    """`labkit.sampling.generate` with a KV-cache: ids [B, T] -> [B, T + new], the same tokens, far fewer FLOPs.

    Prefill runs the prompt once; each decode step then feeds only the token just chosen. A fresh cache sized
    for the prompt plus max_new_tokens is made unless one is passed (an empty one: `cache.seen == 0`).
    """
    if not isinstance(model, Llama):
        raise TypeError(f"model must be labkit's Llama (the cache plugs into its attention), got {type(model).__name__}")
    if not isinstance(ids, torch.Tensor) or ids.ndim != 2 or ids.shape[1] == 0 or ids.is_floating_point():
        shape = tuple(ids.shape) if isinstance(ids, torch.Tensor) else type(ids).__name__
        raise ValueError(f"ids must be an integer tensor [batch, time] with time >= 1, got {shape}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    if _check_temperature(temperature) > 0 and not isinstance(generator, torch.Generator):
        raise TypeError("sampling (temperature > 0) needs a seeded torch.Generator, "
                        "e.g. generator=torch.Generator().manual_seed(0)")
    if cache is None:
        cache = KVCache(model.cfg, batch=ids.shape[0], max_len=ids.shape[1] + max(max_new_tokens, 1))
    elif cache.seen != 0:
        raise ValueError(f"pass an empty cache (seen == 0), this one has seen {cache.seen} tokens: call cache.reset()")
    finished = torch.zeros(ids.shape[0], dtype=torch.bool)
    new = ids  # prefill: the whole prompt; afterwards, one token per row
    for _ in range(max_new_tokens):
        logits = model(new, cache=cache)[:, -1]
        token = sample_next(logits, temperature, top_k, top_p, generator)
        if eos_id is not None:
            token = token.masked_fill(finished, eos_id)
            finished |= token == eos_id
        new = token[:, None].to(ids.dtype)
        ids = torch.cat([ids, new], dim=1)
        if eos_id is not None and finished.all():
            break
    return ids
