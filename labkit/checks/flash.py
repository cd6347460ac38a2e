"""Graded checks for lab 7 (FlashAttention: the online-softmax tile update and the tiled loop around it).

    from labkit.checks.flash import check_online_softmax_update, check_tiled_attention, check_flash_forward
    check_online_softmax_update(online_softmax_update)   # your function, defined in the lab
    check_tiled_attention(online_softmax_update)         # plugged into labkit's tiled attention
    check_flash_forward(flash_forward)                   # your tiled loop: causal, ragged blocks, tiling
    check_flash_padding(flash_forward)                   # padded keys and rows that see no key at all

The references are `labkit.flash.online_softmax_update` and `labkit.flash.flash_attention_forward` (the loop);
the loop's outputs are compared with torch's own `scaled_dot_product_attention` given the same boolean mask
(torch, like FlashAttention, returns 0 for a query that may see no key).
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch

from labkit.attention import causal_mask, scaled_dot_product_attention
from labkit.checks import _call, _passed
from labkit.checks.gqa import _MATMULS, _record_ops
from labkit.flash import causal_tile_grid, flash_attention_forward, online_softmax_update as reference_update


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
    nothing_yet = rand(3, 4)
    nothing_yet[1] = -math.inf  # row 1 sees no key in this tile, and has seen none before
    return [
        ("the first tile (m = -inf, l = 0, acc = 0)", (*empty(3, 2), first, rand(4, 2))),
        ("a second tile whose scores are all larger than the running max (the old terms must shrink)",
         (*after(old, rand(5, 2)), rand(3, 4) + 6, rand(4, 2))),
        ("a second tile whose scores are all smaller than the running max (the max must not go down)",
         (*after(old + 6, rand(5, 2)), rand(3, 4), rand(4, 2))),
        ("a tile with masked (-inf) scores after a first tile",
         (*after(rand(2, 3), rand(3, 2)), masked, rand(6, 2))),
        ("a first tile whose row 1 is entirely masked (-inf scores while m is still -inf)",
         (*empty(3, 2), nothing_yet, rand(4, 2))),
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
        nan = [name for name, t in zip(("m", "l", "acc"), got) if torch.isnan(t).any()]
        if nan and torch.isneginf(m_want).any():
            raise AssertionError(f"{call}: {', '.join(nan)} got NaN. A row whose scores are all -inf so far has "
                                 "m_new = -inf, and exp(-inf - (-inf)) = exp(nan). Where m_new is -inf, subtract 0 "
                                 "instead (that row keeps m = -inf, l = 0, acc = 0: it has seen no key yet).")
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


# ----------------------------------------------------------------------------------------------------------
# the tiled loop itself

def _torch_attention(q, k, v, allowed):
    """torch's own attention with a boolean mask (True = may attend); a row that may see nothing gives 0."""
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=allowed)


def _allowed(t_q: int, t_k: int, causal: bool, key_mask: torch.Tensor | None, strict=False, offset=None):
    """[B or 1, 1, Tq, Tk] bool: query i may see key j (causal: j <= i + Tk - Tq; key_mask [B, Tk])."""
    allowed = torch.ones(t_q, t_k, dtype=torch.bool)
    if causal:
        shift = t_k - t_q if offset is None else offset
        allowed = allowed.tril(shift - 1 if strict else shift)
    allowed = allowed[None, None]
    if key_mask is not None:
        allowed = allowed & key_mask[:, None, None, :]
    return allowed


def _lse(q, k, allowed):
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
    return torch.logsumexp(scores.masked_fill(~allowed, -math.inf), dim=-1)


def _loop_result(got: object, call: str, q: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(got, tuple) or len(got) != 2 or not all(isinstance(t, torch.Tensor) for t in got):
        raise AssertionError(f"{call} should return a tuple (out, lse) of two tensors, got {type(got).__name__}")
    out, lse = got
    if tuple(out.shape) != (*q.shape[:-1], v.shape[-1]):
        raise AssertionError(f"{call}: out should have shape {[*q.shape[:-1], v.shape[-1]]}, got {list(out.shape)}")
    if tuple(lse.shape) != tuple(q.shape[:-1]):
        raise AssertionError(f"{call}: lse should have shape {list(q.shape[:-1])} (one per query), got "
                             f"{list(lse.shape)}")
    return out, lse


def _first_bad_row(out: torch.Tensor, expected: torch.Tensor, tol: float) -> int:
    bad = ((out - expected).abs() > tol) | torch.isnan(out)
    return int(bad.flatten(0, -3).any(0).any(-1).nonzero()[0])


def _diagnose(out, q, k, v, causal, key_mask, bq, bk, tol) -> str:
    """The wrong answer a buggy loop gives, matched against the answers of the usual bugs."""
    t_q, t_k = q.shape[-2], k.shape[-2]

    def same(allowed_or_out) -> bool:
        other = allowed_or_out if allowed_or_out.is_floating_point() else _torch_attention(q, k, v, allowed_or_out)
        return bool(((out - other).abs() <= tol).all())

    if causal and same(_allowed(t_q, t_k, False, key_mask)):
        return " Your result is attention without the causal mask: mask the scores j > i + (Tk - Tq) with -inf."
    if causal and t_q < t_k and same(_allowed(t_q, t_k, True, key_mask, offset=0)):
        return (" Your mask puts the diagonal at the top-left corner (key j <= query i). The queries are the LAST "
                "Tq positions: query i is at position i + Tk - Tq and sees keys j <= i + Tk - Tq.")
    if causal and same(_allowed(t_q, t_k, True, key_mask, strict=True)):
        return " Your mask hides the diagonal too: a query may see its own key (j <= i, not j < i)."
    if key_mask is not None and same(_allowed(t_q, t_k, causal, None)):
        return " Your result ignores key_mask: a padding key (key_mask False) must get score -inf in every tile."
    if t_k % bk and same(_allowed(t_q, t_k, causal, key_mask) & (torch.arange(t_k) < t_k - t_k % bk)):
        return (f" Your loop leaves out the last, shorter key block ({t_k % bk} keys): with Tk = {t_k} and "
                f"block_k = {bk} the blocks start at 0, {bk}, ..., and the last one ends at Tk (min(j0 + block_k, Tk)).")
    allowed = _allowed(t_q, t_k, causal, key_mask)
    seen = allowed.any(-1).expand(out.shape[:-1])
    expected = _torch_attention(q, k, v, allowed)
    row_ok = ((out - expected).abs() <= tol).all(-1) | ~seen
    full_blocks = t_q - t_q % bq
    if t_q % bq and row_ok[..., :full_blocks].all():
        return (f" The rows before {full_blocks} are right, the last, shorter query block is not: with Tq = {t_q} "
                f"and block_q = {bq} the last block holds {t_q % bq} rows (end it at min(i0 + block_q, Tq)).")
    zero = (out == 0).all(-1) & seen
    if zero.any():
        if float(_lse(q, k, allowed).expand(out.shape[:-1])[zero].max()) < -80:
            return (" Rows that see keys came out all zeros: their l ended at 0. Their scores are near -300, and "
                    "with a running max started at 0 instead of -inf, exp(score - 0) underflows to 0 for every key. "
                    "Start m at -inf.")
        return (" Rows that see keys came out all zeros: their l ended at 0 or NaN. The loop's state comes from "
                "your update (exercise 1): make sure its check passes, then that each row starts from m = -inf, "
                "l = 0, acc = 0 and that every tile it may see reaches the update.")
    row = _first_bad_row(out, expected, tol)
    return f" (The first wrong query row is {row}.)"


def _run_loop(fn, what, q, k, v, causal, bq, bk, key_mask=None, structure=False):
    call = f"flash_forward on {what}"

    def by_keyword(q, k, v, *mask):  # as the lab's later cells call it: causal=..., block_q=..., key_mask=...
        return fn(q, k, v, causal=causal, block_q=bq, block_k=bk, **({"key_mask": mask[0]} if mask else {}))

    got, ops = _record_ops(by_keyword, call, q, k, v, *(() if key_mask is None else (key_mask,)))
    out, lse = _loop_result(got, call, q, v)
    t_q, t_k = q.shape[-2], k.shape[-2]
    allowed = _allowed(t_q, t_k, causal, key_mask)
    expected, lse_want = _torch_attention(q, k, v, allowed), _lse(q, k, allowed)
    if (t_q > bq or t_k > bk) and any(shape[-2:] == (t_q, t_k) for _, shape in ops if len(shape) >= 2):
        raise AssertionError(f"{call}: your function built a [{t_q}, {t_k}] tensor of scores (or of mask values): "
                             "the whole matrix FlashAttention never holds. Compute q_i @ k_j^T for one "
                             f"[block_q, block_k] = [{bq}, {bk}] tile at a time.")
    seen = allowed.any(-1).expand(out.shape[:-1])  # rows with at least one visible key
    tol = 1e-5
    if torch.isnan(out[seen]).any() or torch.isinf(out).any() or torch.isnan(lse[seen]).any():
        hint = (" Either an exp overflowed (subtract the running max, so that every exponent is <= 0), or l stayed "
                "0 (add each tile's sum of exp(scores - m_new)).")
        if key_mask is not None or causal:
            hint += (" Or a row met a tile in which all its keys are masked while its m was still -inf: "
                     "exp(-inf - (-inf)) is NaN (exercise 1's masked-row case).")
        raise AssertionError(f"{call}: the output or lse has inf or NaN in rows that see keys.{hint}")
    diff = float((out - expected)[seen].abs().max())
    if diff > tol:
        hint = _diagnose(out, q, k, v, causal, key_mask, bq, bk, tol)
        raise AssertionError(f"{call}: the output differs from torch's attention by up to {diff:.3g}.{hint}")
    if not seen.all():
        empty = out[~seen]
        if torch.isnan(empty).any() or (empty != 0).any() or not torch.isneginf(lse[~seen]).all():
            raise AssertionError(f"{call}: {int((~seen).sum())} query rows may see no key at all (padding). Their "
                                 "output must be 0 and their lse -inf, as torch and FlashAttention give; yours "
                                 f"has out {empty.flatten()[:3].tolist()}..., lse {lse[~seen][:3].tolist()}... "
                                 "For those rows l = 0: divide by l only where l > 0 (torch.where).")
    lse_ok = torch.isclose(lse, lse_want, rtol=1e-5, atol=1e-4) | (torch.isneginf(lse) & torch.isneginf(lse_want))
    if not lse_ok.all():
        raise AssertionError(f"{call}: the output is right but lse is not: it must be the log-sum-exp of each "
                             "query's scaled, masked scores, m + log(l) after the last tile (expected "
                             f"{lse_want[~lse_ok][:3].tolist()}, got {lse[~lse_ok][:3].tolist()}).")
    if structure:
        tiles = [shape for name, shape in ops if name in _MATMULS and len(shape) >= 2 and shape[-1] <= bk]
        wide = [shape for shape in tiles if shape[-2] > bq]
        if wide:
            raise AssertionError(f"{call}: a score tile has shape {list(wide[0])}, more than block_q = {bq} query "
                                 "rows: take the queries block_q rows at a time in the outer loop.")
        needed = int((causal_tile_grid(t_q, t_k, bq, bk, causal) > 0).sum())
        if causal and len(tiles) > needed:
            raise AssertionError(f"{call}: the output is right, but your loop computed {len(tiles)} score tiles "
                                 f"where {needed} are needed: a tile entirely above the diagonal (its first key j0 > "
                                 "the last query i1 - 1 + Tk - Tq) has every score masked. Skip it, and every later "
                                 "tile of that query block (the mask only moves right).")


def _qkv(g, lead, t_q, t_k, d, gain=1.0):
    q = gain * torch.randn(*lead, t_q, d, generator=g)
    return q, torch.randn(*lead, t_k, d, generator=g), torch.randn(*lead, t_k, d, generator=g)


def check_flash_forward(fn: Callable) -> None:
    """fn(q, k, v, causal=..., block_q=..., block_k=...) -> (out, lse), a tiled loop over [block_q, block_k] tiles with the
    online softmax, must equal torch's attention (causal: query i sees key j <= i + Tk - Tq) for lengths that
    are not multiples of the blocks, a KV-cache shape, a single decode query, blocks larger than the sequence,
    scores of a few hundred in either sign; must never build the [Tq, Tk] score matrix, and must skip the
    causal tiles the mask hides entirely (counted with the torch calls it makes)."""
    g = torch.Generator().manual_seed(7)
    u = torch.ones(16) / 4  # a unit vector: keys along u, queries against it, give scores near -300
    away_k = 4 * u + 0.1 * torch.randn(1, 1, 24, 16, generator=g)
    away_q = -300 * u + torch.randn(1, 1, 24, 16, generator=g)
    cases = [
        ("q, k, v [2, 3, 50, 16], blocks 16 x 16 (50 is not a multiple of 16)", _qkv(g, (2, 3), 50, 50, 16),
         False, 16, 16, False),
        ("causal, q, k, v [1, 2, 37, 16], blocks 8 x 5", _qkv(g, (1, 2), 37, 37, 16), True, 8, 5, True),
        ("causal, 10 queries after 30 keys (as with a KV cache), blocks 4 x 8", _qkv(g, (1, 1), 10, 30, 8),
         True, 4, 8, False),
        ("causal, one query after 23 keys (a decode step), blocks 4 x 4", _qkv(g, (2, 1), 1, 23, 8), True, 4, 4,
         False),
        ("causal, q, k, v [1, 1, 20, 8] with blocks 64 x 64 (larger than the sequence)",
         _qkv(g, (1, 1), 20, 20, 8), True, 64, 64, False),
        ("scores up to a few hundred (q multiplied by 40), blocks 8 x 8", _qkv(g, (1, 1), 32, 32, 16, gain=40.0),
         False, 8, 8, False),
        ("scores near -300 (every key points away from every query), blocks 8 x 8",
         (away_q, away_k, torch.randn(1, 1, 24, 16, generator=g)), False, 8, 8, False),
    ]
    for what, (q, k, v), causal, bq, bk, structure in cases:
        _run_loop(fn, what, q, k, v, causal, bq, bk, structure=structure)
    _passed("flash_forward", len(cases))


def check_flash_padding(fn: Callable) -> None:
    """fn(q, k, v, causal=..., block_q=..., block_k=..., key_mask=...) with key_mask [B, Tk] bool (False = a padding key that
    no query may see). Rows that may see no key at all (a padding query of a left-padded batch, under the causal
    mask) must give out = 0 and lse = -inf, as torch and FlashAttention do; other rows must be exact even when
    their first tiles are entirely padding."""
    g = torch.Generator().manual_seed(8)
    left = torch.arange(29)[None] >= torch.tensor([0, 5, 13])[:, None]   # 0, 5 and 13 padding keys first
    right = torch.arange(16)[None] < torch.tensor([7, 16, 1])[:, None]   # 7, 16 and 1 real keys, then padding
    cases = [("a left-padded batch (0, 5 and 13 padding keys of 29), causal, blocks 8 x 6",
              _qkv(g, (3, 2), 29, 29, 8), True, 8, 6, left),
             ("a right-padded batch (7, 16 and 1 real keys of 16), not causal, blocks 4 x 4",
              _qkv(g, (3, 1), 16, 16, 8), False, 4, 4, right),
             ("a batch with no padding at all (key_mask all True), causal, blocks 8 x 8",
              _qkv(g, (1, 2), 19, 19, 8), True, 8, 8, torch.ones(1, 19, dtype=torch.bool))]
    for what, (q, k, v), causal, bq, bk, key_mask in cases:
        _run_loop(fn, what, q, k, v, causal, bq, bk, key_mask=key_mask)
    _passed("flash_forward with padding", len(cases))
