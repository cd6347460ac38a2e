"""Graded checks for lab 5 (the KV-cache: the cache update and attention-sink eviction).

    from labkit.checks.kvcache import (check_cache_update, check_cache_update_in_model,
                                       check_kept_positions, check_kept_positions_in_model)
    check_cache_update(cache_update)                  # your functions, defined in the lab
    check_cache_update_in_model(cache_update, model)  # model = labkit.llama.Llama.from_pretrained()
    check_kept_positions(kept_positions)
    check_kept_positions_in_model(kept_positions, model)

The references are `labkit.kvcache.KVCache.update` and `labkit.streaming.kept_positions`; the in-model checks
plug your function into a cache and compare generation / logits with the model run without one.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from labkit import sampling
from labkit.checks import _call, _passed
from labkit.kvcache import KVCache, generate
from labkit.llama import Llama
from labkit.streaming import SinkCache, kept_positions as reference_kept, sink_window_mask


def _pair(value: object, call: str) -> tuple[torch.Tensor, torch.Tensor]:
    if not (isinstance(value, tuple) and len(value) == 2 and all(isinstance(t, torch.Tensor) for t in value)):
        raise AssertionError(f"{call} should return a pair of tensors (k_all, v_all), got {type(value).__name__}")
    return value


def _check_model(model: object) -> Llama:
    if not isinstance(model, Llama):
        raise AssertionError(f"pass labkit's model (labkit.llama.Llama.from_pretrained()), got {type(model).__name__}")
    return model


# ----------------------------------------------------------------------------------------------------------
# the cache update

def check_cache_update(fn: Callable) -> None:
    """cache_update(k_cache, v_cache, k_new, v_new, start): write k_new, v_new [B, H, T, D] into the
    preallocated k_cache, v_cache [B, H, max_len, D] at positions start..start+T-1 (in place), and return
    views of positions 0..start+T-1 of both: views into the cache, not copies (a copy gives the right values
    at the cost of copying the whole cache at every step, which the cache exists to avoid)."""
    cases = [((1, 2, 8, 4), 0, 3),   # prefill: 3 tokens into an empty cache
             ((1, 2, 8, 4), 3, 1),   # decode: one token after 3
             ((2, 3, 10, 2), 5, 2),  # a batch of 2, two new tokens
             ((1, 1, 6, 3), 5, 1),   # the last free slot
             ((1, 2, 5, 3), 0, 5)]   # a prompt that fills the whole cache
    g = torch.Generator().manual_seed(0)
    copied = None  # the first case whose result was a copy, not a view
    for (b, h, max_len, d), start, t in cases:
        k_cache, v_cache = torch.zeros(b, h, max_len, d), torch.zeros(b, h, max_len, d)
        k_cache[:, :, :start] = torch.randn(b, h, start, d, generator=g)  # what earlier steps stored
        v_cache[:, :, :start] = torch.randn(b, h, start, d, generator=g)
        old_k, old_v = k_cache[:, :, :start].clone(), v_cache[:, :, :start].clone()
        k_new, v_new = torch.randn(b, h, t, d, generator=g), torch.randn(b, h, t, d, generator=g)
        call = f"cache_update(k_cache [{b}, {h}, {max_len}, {d}], ..., k_new [{b}, {h}, {t}, {d}], ..., start={start})"
        k_all, v_all = _pair(_call(fn, call, k_cache, v_cache, k_new.clone(), v_new.clone(), start,
                                         may_modify=(0, 1)), call)  # the cache is written in place
        expected = (b, h, start + t, d)
        if tuple(k_all.shape) != expected or tuple(v_all.shape) != expected:
            hint = ""
            if tuple(k_all.shape) == tuple(k_new.shape):
                hint = " You returned only the new keys: attention needs the old ones too."
            elif k_all.shape[2] == max_len:
                hint = " You returned the whole buffer: positions after start + T hold no token yet (zeros)."
            raise AssertionError(f"{call}: expected k_all and v_all of shape [B, H, start + T, D] = {list(expected)},"
                                 f" got {list(k_all.shape)} and {list(v_all.shape)}.{hint}")
        for name, got, old, new in (("k", k_all, old_k, k_new), ("v", v_all, old_v, v_new)):
            if not torch.equal(got[:, :, :start], old):
                raise AssertionError(f"{call}: {name}_all[:, :, :start] must be the {start} keys/values stored "
                                     f"before; they changed. Write the new ones after them, at start.")
            if not torch.equal(got[:, :, start:], new):
                raise AssertionError(f"{call}: {name}_all[:, :, start:start + T] must be {name}_new.")
        if not (torch.equal(k_cache[:, :, start:start + t], k_new) and torch.equal(v_cache[:, :, start:start + t], v_new)):
            raise AssertionError(f"{call}: k_cache and v_cache themselves must hold the new entries at "
                                 f"positions {start}..{start + t - 1} afterwards (write in place): the next step "
                                 "reads them from there.")
        for name, got, cache in (("k_all", k_all, k_cache), ("v_all", v_all, v_cache)):
            if copied is None and got.untyped_storage().data_ptr() != cache.untyped_storage().data_ptr():
                copied = (call, name, start + t)
    if copied is not None:  # right values on every case: only now is "a copy" the whole story
        call, name, length = copied
        raise AssertionError(f"{call}: {name} has the right values but is a copy (torch.cat, .clone() or a new "
                             f"tensor), not a view of the cache: every step would copy the whole cache, {length} "
                             f"positions here, which is the cost the cache avoids. Return a slice of the cache: "
                             f"cache[:, :, :start + T].")
    _passed("cache_update", len(cases))


class _StudentCache(KVCache):
    """labkit's KVCache with the lab's `cache_update` doing the writing."""

    def __init__(self, fn: Callable, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fn = fn

    def update(self, layer, k, v):
        call = f"cache_update(..., start={self.seen}) in layer {layer}"
        return _pair(_call(self.fn, call, self.k[layer], self.v[layer], k, v, self.seen, may_modify=(0, 1)), call)


def check_cache_update_in_model(fn: Callable, model: Llama, n_new: int = 12) -> None:
    """Greedy generation through a KVCache that writes with `fn` must give the tokens of generation without
    any cache (the model re-run on the whole text at every step), and feeding that text through such a cache
    (prompt, then one token at a time) must give the logits of one uncached forward over it."""
    model = _check_model(model)
    ids = torch.tensor([[504, 3458, 282, 4649, 314, 253, 1345, 30]]) % model.cfg.vocab_size
    P = ids.shape[1]
    expected = sampling.generate(model, ids, n_new)
    got = generate(model, ids, n_new, cache=_StudentCache(fn, model.cfg, batch=1, max_len=P + n_new))
    if not torch.equal(got, expected):
        new_got, new_expected = got[0, P:].tolist(), expected[0, P:].tolist()
        first = next((i for i, (a, b) in enumerate(zip(new_got, new_expected)) if a != b), len(new_expected))
        raise AssertionError(f"cached generation differs from uncached generation from new token {first} on: "
                             f"got {new_got}, expected {new_expected}. Token 0 comes from the prefill alone; "
                             "later ones read what your function stored earlier.")
    cache = _StudentCache(fn, model.cfg, batch=1, max_len=P + n_new)
    with torch.no_grad():
        reference = model(expected)[0]
        steps = [model(expected[:, :P], cache=cache)[0]]
        steps += [model(expected[:, t:t + 1], cache=cache)[0] for t in range(P, P + n_new)]
    err = (torch.cat(steps) - reference).abs().amax(dim=-1)
    if not err.max() <= 1e-3:
        worst = int(err.argmax())
        raise AssertionError(f"cached generation differs from uncached generation in its logits: at position "
                             f"{worst} by up to {float(err[worst]):.3g} (tolerance 1e-3; prompt = positions "
                             f"0..{P - 1}). Attention must see every stored key and value, in order.")
    _passed("cache_update in the model", 2)


# ----------------------------------------------------------------------------------------------------------
# attention-sink eviction

def check_kept_positions(fn: Callable) -> None:
    """kept_positions(seen, n_sink, window): the positions a StreamingLLM cache keeps after `seen` tokens, so
    that the next token attends to the n_sink first and the `window` most recent positions (itself included)."""
    cases = [(0, 4, 16), (3, 4, 16), (19, 4, 16), (20, 4, 16), (21, 4, 16), (60, 4, 16), (10, 2, 4),
             (10, 0, 4), (10, 2, 1), (6, 2, 4), (5, 2, 4), (100, 1, 8)]
    for seen, n_sink, window in cases:
        call = f"kept_positions(seen={seen}, n_sink={n_sink}, window={window})"
        got = _call(fn, call, seen, n_sink, window)
        try:
            got = [int(p) for p in got]
        except (TypeError, ValueError):
            raise AssertionError(f"{call} should return a list of ints, got {got!r}") from None
        expected = reference_kept(seen, n_sink, window)
        if got != expected:
            hint = ""
            recent = [p for p in got if p >= n_sink]
            unseen = sorted(p for p in set(got) if not 0 <= p < seen)
            if unseen:
                held = f"positions 0..{seen - 1} only" if seen else "none yet"
                hint = (f" Position(s) {unseen[:5]} are not in the cache: after seen={seen} tokens it holds "
                        f"{held} (with fewer than n_sink tokens, every one is a sink).")
            elif not set(range(min(n_sink, seen))) <= set(got):
                hint = " The first n_sink positions (the attention sinks) must never be evicted."
            elif len(got) != len(set(got)):
                hint = " Some positions appear twice: a sink can also be among the recent ones."
            elif got != sorted(got):
                hint = " Return them in ascending order (oldest first), as the cache stores them."
            elif seen - n_sink > window - 1 and len(recent) != window - 1:
                hint = (f" You keep {len(recent)} recent positions; keep window - 1 = {window - 1}, so that with "
                        f"the next token the query sees `window` recent ones.")
            raise AssertionError(f"{call}: expected {expected}, got {got}.{hint}")
    _passed("kept_positions", len(cases))


def check_kept_positions_in_model(fn: Callable, model: Llama, n_tokens: int = 40, n_sink: int = 4,
                                  window: int = 12) -> None:
    """Decoding token by token through a SinkCache that evicts with `fn` must give the logits of one forward
    over the whole text with the sink + window attention mask."""
    model = _check_model(model)
    ids = (torch.arange(n_tokens)[None] * 7919 + 11) % model.cfg.vocab_size  # any tokens do
    cache = SinkCache(model.cfg, n_sink, window, keep=fn)
    with torch.no_grad():
        expected = model(ids, mask=sink_window_mask(n_tokens, n_sink, window))[0]
        for t in range(n_tokens):
            try:
                got = model(ids[:, t:t + 1], cache=cache)[0, 0]
            except ValueError as e:
                raise AssertionError(f"decoding token {t}: the SinkCache refused your positions: {e}") from e
            err = float((got - expected[t]).abs().max())
            if not err <= 1e-3:
                raise AssertionError(f"decoding token {t} through a SinkCache(n_sink={n_sink}, window={window}) "
                                     f"that keeps your positions: its logits differ from the masked forward by "
                                     f"up to {err:.3g} (tolerance 1e-3). The cache held {cache.positions}.")
    _passed("kept_positions in the model", n_tokens)
