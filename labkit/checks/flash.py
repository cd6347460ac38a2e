"""Graded checks for lab 7 (FlashAttention: the online-softmax tile update).

    from labkit.checks.flash import check_online_softmax_update, check_tiled_attention
    check_online_softmax_update(online_softmax_update)   # your function, defined in the lab
    check_tiled_attention(online_softmax_update)         # plugged into labkit's tiled attention

The reference is `labkit.flash.online_softmax_update`; the tiled loop is `labkit.flash.flash_attention_forward`.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch

from labkit.attention import scaled_dot_product_attention
from labkit.checks import _call, _passed
from labkit.flash import flash_attention_forward, online_softmax_update as reference_update


def _state(value: object, call: str, like: tuple[torch.Tensor, torch.Tensor, torch.Tensor]):
    if not isinstance(value, tuple) or len(value) != 3:
        raise AssertionError(f"{call} should return a tuple (m, l, acc), got {type(value).__name__}")
    for name, got, want in zip(("m", "l", "acc"), value, like):
        if not isinstance(got, torch.Tensor):
            raise AssertionError(f"{call}: {name} should be a torch.Tensor, got {type(got).__name__}")
        if tuple(got.shape) != tuple(want.shape):
            raise AssertionError(f"{call}: {name} should have shape {list(want.shape)}, got {list(got.shape)}")
    return value


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return bool(torch.allclose(a, b, rtol=1e-9, atol=1e-12, equal_nan=False))


def _cases() -> list[tuple[str, tuple[torch.Tensor, ...]]]:
    """(description, (m, l, acc, scores, v)) in float64, each a situation the update must handle."""
    g = torch.Generator().manual_seed(0)

    def rand(*shape, scale=1.0):
        return scale * torch.randn(*shape, generator=g, dtype=torch.float64)

    def empty(bq, dv, lead=()):
        return (torch.full((*lead, bq), -math.inf, dtype=torch.float64), torch.zeros(*lead, bq, dtype=torch.float64),
                torch.zeros(*lead, bq, dv, dtype=torch.float64))

    def after(scores, v):  # the state after one first tile, from the reference
        return reference_update(*empty(scores.shape[-2], v.shape[-1], scores.shape[:-2]), scores, v)

    first = rand(3, 4, scale=2)
    old = rand(3, 5)
    masked = rand(2, 6)
    masked[0, 3:], masked[1, 1:] = -math.inf, -math.inf
    lead_first = rand(2, 3, 4, 5)
    return [
        ("the first tile (m = -inf, l = 0, acc = 0)", (*empty(3, 2), first, rand(4, 2))),
        ("a second tile whose scores are all larger than the running max (the old terms must shrink)",
         (*after(old, rand(5, 2)), rand(3, 4) + 6, rand(4, 2))),
        ("a second tile whose scores are all smaller than the running max (the max must not go down)",
         (*after(old + 6, rand(5, 2)), rand(3, 4), rand(4, 2))),
        ("a tile with masked (-inf) scores after a first tile",
         (*after(rand(2, 3), rand(3, 2)), masked, rand(6, 2))),
        ("batch and head dims: scores [2, 3, 4, 6] after a first tile",
         (*after(lead_first, rand(2, 3, 5, 3)), rand(2, 3, 4, 6, scale=3), rand(2, 3, 6, 3))),
    ]


def check_online_softmax_update(fn: Callable) -> None:
    """fn(m, l, acc, scores, v) -> (m', l', acc'): m' the running max including this tile, l' the denominator
    and acc' the unnormalised output, both rescaled to m' (see labkit.flash.online_softmax_update)."""
    cases = _cases()
    for what, (m, l, acc, scores, v) in cases:
        call = f"online_softmax_update on {what}"
        expected = reference_update(m, l, acc, scores, v)
        got = _state(_call(fn, call, m.clone(), l.clone(), acc.clone(), scores.clone(), v.clone(),
                           may_modify=(0, 1, 2)), call, expected)  # updating the running state in place is fine
        (m_got, l_got, acc_got), (m_want, l_want, acc_want) = got, expected
        if not _close(m_got, m_want):
            hint = ""
            if _close(m_got, scores.amax(-1)):
                hint = (" You returned this tile's max; m must be the running max over every tile so far, "
                        "max(m, rowmax(scores)), or a later exp(m - m_new) can overflow.")
            raise AssertionError(f"{call}: m should be {m_want.flatten()[:4].tolist()}, got "
                                 f"{m_got.flatten()[:4].tolist()}.{hint}")
        alpha = torch.exp(m - m_want)
        p = torch.exp(scores - m_want[..., None])
        if not _close(l_got, l_want):
            hint = ""
            if _close(l_got, l + p.sum(-1)):
                hint = " You added this tile's sum to the old l without rescaling it by exp(m - m_new)."
            elif _close(l_got, alpha * l):
                hint = " You rescaled the old l but did not add this tile's exp(scores - m_new) summed over keys."
            raise AssertionError(f"{call}: l should be {l_want.flatten()[:4].tolist()}, got "
                                 f"{l_got.flatten()[:4].tolist()}.{hint}")
        if not _close(acc_got, acc_want):
            hint = ""
            if _close(acc_got, acc + p @ v):
                hint = (" You rescaled l but not acc: the old accumulator was weighted with the old max and must "
                        "be multiplied by exp(m - m_new) too.")
            elif _close(acc_got, acc_want / l_want[..., None]):
                hint = (" You normalised acc by l inside the update; keep acc unnormalised and divide once, after "
                        "the last tile (the tiled loop does that).")
            raise AssertionError(f"{call}: acc should be {acc_want.flatten()[:4].tolist()}, got "
                                 f"{acc_got.flatten()[:4].tolist()}.{hint}")
    _passed("online_softmax_update", len(cases))


def check_tiled_attention(fn: Callable) -> None:
    """labkit.flash.flash_attention_forward with `fn` as its tile update must equal naive attention (chapter 3)
    and return the right log-sum-exp, with and without the causal mask, for sizes that are not multiples of the
    blocks, and for scores large enough that exp would overflow without the running max."""
    g = torch.Generator().manual_seed(1)
    cases = [("q, k, v [2, 3, 50, 16], blocks 16 x 16", (2, 3, 50, 16), 50, 16, 16, False, 1.0),
             ("causal, q [1, 2, 37, 8], k, v [1, 2, 37, 8], blocks 8 x 5", (1, 2, 37, 8), 37, 8, 5, True, 1.0),
             ("causal, 10 queries after 30 keys (as with a KV cache), blocks 4 x 8", (1, 1, 10, 8), 30, 4, 8, True, 1.0),
             ("scores up to a few hundred (q multiplied by 40), blocks 8 x 8", (1, 1, 32, 16), 32, 8, 8, False, 40.0)]
    for what, shape, t_k, bq, bk, causal, gain in cases:
        *lead, t_q, d = shape
        q = gain * torch.randn(*shape, generator=g)
        k, v = torch.randn(*lead, t_k, d, generator=g), torch.randn(*lead, t_k, d, generator=g)
        call = f"flash_attention_forward with your update on {what}"
        try:
            out, lse = flash_attention_forward(q, k, v, causal, bq, bk, update=fn)
        except (AssertionError, NotImplementedError):
            raise
        except Exception as e:
            raise AssertionError(f"{call} raised {type(e).__name__}: {e}") from e
        expected = scaled_dot_product_attention(q, k, v, causal=causal)
        if not torch.isfinite(out).all():
            raise AssertionError(f"{call}: the output has inf or NaN. Either an exp overflowed (subtract the "
                                 "running max, not a tile's max, so that every exponent is <= 0) or l stayed 0 "
                                 "(add each tile's sum of exp(scores - m_new)).")
        diff = float((out - expected).abs().max())
        if diff > 1e-4:
            raise AssertionError(f"{call}: the output differs from naive attention by up to {diff:.3g}")
        scores = q @ k.transpose(-2, -1) / math.sqrt(d)
        if causal:
            scores = scores.masked_fill(~torch.ones(t_q, t_k, dtype=torch.bool).tril(t_k - t_q), -math.inf)
        lse_diff = float((lse - torch.logsumexp(scores, -1)).abs().max())
        if not lse_diff <= 1e-3:
            raise AssertionError(f"{call}: the log-sum-exp m + log(l) differs from logsumexp(scores) by up to "
                                 f"{lse_diff:.3g}: m must be the running max and l the sum of exp(scores - m).")
    _passed("tiled attention with your update", len(cases))
