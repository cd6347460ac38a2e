"""Graded checks for lab 6 (GQA head grouping: which kv head a query reads, and mean-pooling kv heads).

    from labkit.checks.gqa import check_kv_head_of_query, check_pool_kv_heads, check_pool_in_model
    check_kv_head_of_query(kv_head_of_query)      # your functions, defined in the lab
    check_pool_kv_heads(pool_kv_heads)
    check_pool_in_model(pool_kv_heads, model)     # model = labkit.llama.Llama.from_pretrained()

The references are `labkit.gqa.kv_head_of_query`, `labkit.gqa.pool_kv_heads` and `labkit.gqa.convert_kv_heads`.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.overrides import TorchFunctionMode

from labkit import attention, gqa
from labkit.checks import _call, _passed, _short
from labkit.llama import Llama

# torch functions that multiply matrices: what the recorder below counts as "computing a product"
_MATMULS = {"matmul", "__matmul__", "__rmatmul__", "bmm", "mm", "einsum", "baddbmm", "tensordot", "linear"}


class _Ops(TorchFunctionMode):
    """Records, for every torch call made inside it, the function's name and the shape of each floating-point
    tensor it returns: how a check sees what a function *built* (a full score matrix, rebuilt keys), not only
    what it returned. Operators count too (`a @ b` is `__matmul__`)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, tuple[int, ...]]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for o in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(o, torch.Tensor) and o.is_floating_point():
                self.seen.append((getattr(func, "__name__", str(func)), tuple(o.shape)))
        return out


def _record_ops(fn, call: str, *args, **kwargs):
    """(fn(*args) through `_call`, the list of (function name, result shape) of every torch call it made)."""
    ops = _Ops()

    def recorded(*a):
        with ops:
            return fn(*a)

    return _call(recorded, call, *args, **kwargs), ops.seen


def check_kv_head_of_query(fn: Callable) -> None:
    """kv_head_of_query(n_heads, n_kv_heads) -> list: query head h reads kv head h // (n_heads // n_kv_heads)."""
    cases = [(9, 3), (9, 9), (9, 1), (8, 2), (8, 4), (6, 3)]
    for n_heads, n_kv in cases:
        call = f"kv_head_of_query({n_heads}, {n_kv})"
        got = _call(fn, call, n_heads, n_kv)
        expected = gqa.kv_head_of_query(n_heads, n_kv)
        try:
            got = [int(g) for g in got]
        except (TypeError, ValueError):
            raise AssertionError(f"{call} should return a list of {n_heads} ints, got {_short(got)}") from None
        if got != expected:
            hint = ""
            if got == [h % n_kv for h in range(n_heads)]:
                hint = (" Yours cycles through the kv heads (h % n_kv_heads); groups are consecutive query heads: "
                        "heads 0..g-1 read kv head 0, the next g read kv head 1, ... (g = n_heads // n_kv_heads).")
            elif len(got) != n_heads:
                hint = f" There must be one entry per query head ({n_heads})."
            raise AssertionError(f"{call}: expected {expected}, got {got}.{hint}")
    _passed("kv_head_of_query", len(cases))


def check_pool_kv_heads(fn: Callable) -> None:
    """pool_kv_heads(weight, n_kv_heads, n_groups): [n_kv_heads * D, dim] -> [n_groups * D, dim], new head g
    the mean of old heads g*s .. (g+1)*s - 1 (s = n_kv_heads // n_groups)."""
    cases = [(3, 1, 4, 5), (4, 2, 2, 3), (6, 3, 2, 4), (6, 2, 3, 2), (2, 2, 3, 3), (8, 4, 1, 2)]
    for n_kv, n_groups, head_dim, dim in cases:
        w = (torch.arange(n_kv * head_dim * dim, dtype=torch.float32).reshape(n_kv * head_dim, dim) ** 1.5) / 7
        call = f"pool_kv_heads(weight [{n_kv} heads x {head_dim} rows, {dim}], n_kv_heads={n_kv}, n_groups={n_groups})"
        got = _call(fn, call, w.clone(), n_kv, n_groups)
        if not isinstance(got, torch.Tensor):
            raise AssertionError(f"{call} should return a torch.Tensor, got {type(got).__name__}")
        expected = gqa.pool_kv_heads(w, n_kv, n_groups)
        if tuple(got.shape) != tuple(expected.shape):
            raise AssertionError(f"{call}: expected shape [n_groups * head_dim, dim] = {list(expected.shape)}, got "
                                 f"{list(got.shape)}. Pool whole heads (blocks of head_dim rows), keep every column.")
        if torch.allclose(got, expected, atol=1e-4, rtol=1e-5):
            continue
        s = n_kv // n_groups
        heads = w.reshape(n_kv, head_dim, dim)
        hint = ""
        if torch.allclose(got, expected * s, rtol=1e-5):
            hint = f" Yours is {s} times too large: average the heads of a group, don't sum them."
        elif torch.allclose(got, heads.reshape(s, n_groups, head_dim, dim).mean(0).reshape_as(got), rtol=1e-5):
            hint = (f" You grouped heads g, g + {n_groups}, g + {2 * n_groups}, ... (interleaved); a group is "
                    f"{s} consecutive heads, because consecutive query heads share a kv head.")
        raise AssertionError(f"{call}: new head g must be the mean of old heads g*{s} .. g*{s} + {s - 1}; "
                             f"max |difference| from that is {float((got - expected).abs().max()):.4g}.{hint}")
    _passed("pool_kv_heads", len(cases))


def check_pool_in_model(fn: Callable, model: Llama) -> None:
    """Plugged into `labkit.gqa.convert_kv_heads`, `fn` must (1) turn SmolLM2 copied out to 9 kv heads (MHA)
    back into SmolLM2 exactly (pooling 9 -> 3 averages 3 equal copies), and (2) give the reference MQA model."""
    if not isinstance(model, Llama):
        raise AssertionError(f"pass labkit's model (labkit.llama.Llama.from_pretrained()), got {type(model).__name__}")
    ids = torch.tensor([[504, 3458, 282, 4649, 314, 253, 1345, 30, 378, 3458]]) % model.cfg.vocab_size
    mha = gqa.convert_kv_heads(model, model.cfg.n_heads)

    def student(w, n_kv, n_groups):
        return _call(fn, f"pool_kv_heads(weight {list(w.shape)}, {n_kv}, {n_groups}) inside convert_kv_heads",
                     w, n_kv, n_groups)

    def convert(source: Llama, n_kv: int) -> Llama:
        try:
            return gqa.convert_kv_heads(source, n_kv, pool=student)
        except ValueError as e:
            raise AssertionError(f"convert_kv_heads with your pool_kv_heads fails: {e}") from e

    with torch.no_grad():
        back, expected = convert(mha, model.cfg.n_kv_heads)(ids), model(ids)
        diff = float((back - expected).abs().max())
        if diff > 1e-4:
            raise AssertionError(f"SmolLM2 as MHA (each of its 3 kv heads copied 3 times in a row) pooled back to 3 "
                                 f"groups must be SmolLM2 again; with your pool_kv_heads the logits differ by up to "
                                 f"{diff:.3g}. A group must hold consecutive heads, averaged.")
        got, ref = convert(model, 1)(ids), gqa.convert_kv_heads(model, 1)(ids)
        diff_mqa = float((got - ref).abs().max())
        if diff_mqa > 1e-4:
            raise AssertionError(f"SmolLM2 pooled to one kv head (MQA) with your pool_kv_heads: logits differ from "
                                 f"labkit's conversion by up to {diff_mqa:.3g}. Average the 3 heads' rows.")
    print(f"✓ your pool_kv_heads in SmolLM2: MHA -> GQA gives SmolLM2 back (max |Δ| = {diff:.1g}), "
          f"GQA -> MQA equals labkit's (max |Δ| = {diff_mqa:.1g})")


# ----------------------------------------------------------------------------------------------------------
# grouped-query attention, and MLA's absorbed form

def _bottom_right(t_q: int, t_k: int, strict: bool = False, offset: int | None = None) -> torch.Tensor:
    """[Tq, Tk] bool, True where query i (the last Tq positions of Tk) may see key j <= i + Tk - Tq."""
    shift = t_k - t_q if offset is None else offset
    return torch.ones(t_q, t_k, dtype=torch.bool).tril(shift - 1 if strict else shift)


def _grouped(q, k, v, causal=True, heads="consecutive", strict=False, offset=None, scale=None):
    """Attention where query head h reads kv head h // g, and with one setting changed, a common bug's answer."""
    g = q.shape[1] // k.shape[1]
    if heads == "consecutive":
        k, v = k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1)
    else:
        k, v = k.repeat(1, g, 1, 1), v.repeat(1, g, 1, 1)
    scores = (q @ k.transpose(-2, -1)) * (1 / math.sqrt(q.shape[-1]) if scale is None else scale)
    if causal:  # a row that sees no key gets NaN, as a hand-written softmax gives
        scores = scores.masked_fill(~_bottom_right(q.shape[-2], k.shape[-2], strict, offset), -math.inf)
    return torch.softmax(scores, dim=-1) @ v


def _same(got: torch.Tensor, other: torch.Tensor) -> bool:
    """Equal up to float rounding; NaN where the other has NaN (a bug's answer may have them)."""
    return got.shape == other.shape and bool(torch.allclose(got, other, rtol=1e-4, atol=1e-5, equal_nan=True))


def _attention_hint(got, q, k, v, causal, scale_names: dict) -> str:
    """Which common bug gives exactly this output (or "")."""
    t_q, t_k = q.shape[-2], k.shape[-2]
    bugs = [("query head h reads kv head h % n_kv_heads; groups are consecutive query heads: head h reads kv "
             "head h // g (g = n_heads // n_kv_heads)", dict(heads="cycle"))]
    if causal:
        bugs += [("no causal mask: query i may only see keys j <= i + Tk - Tq", dict(causal=False)),
                 ("the mask hides the diagonal: a query sees its own position (j <= i + Tk - Tq, not <)",
                  dict(strict=True))]
        if t_q < t_k:
            bugs.append(("the causal diagonal is at the top-left corner. The queries are the LAST Tq positions "
                         "(with a cache, Tk - Tq keys come before them): query i sees keys j <= i + Tk - Tq",
                         dict(offset=0)))
    bugs += [(name, dict(scale=value)) for name, value in scale_names.items()]
    for hint, change in bugs:
        if _same(got, _grouped(q, k, v, **{"causal": causal, **change})):
            return ": " + hint
    return ""


def check_gqa_attention(fn: Callable) -> None:
    """gqa_attention(q, k, v, causal) for q [B, H, Tq, D], k, v [B, H_kv, Tk, D] -> [B, H, Tq, D]: query head h
    reads kv head h // (H / H_kv); causal: query i (the last Tq of Tk positions) sees keys j <= i + Tk - Tq.
    Compared with torch's scaled_dot_product_attention given the repeated heads. With a cache-shaped input it
    must not build the repeated keys or values ([B, H, Tk, D]): a group reads its kv head once."""
    g = torch.Generator().manual_seed(6)

    def qkv(b, h, h_kv, t_q, t_k, d, gain=1.0):
        return (gain * torch.randn(b, h, t_q, d, generator=g), torch.randn(b, h_kv, t_k, d, generator=g),
                torch.randn(b, h_kv, t_k, d, generator=g))

    cases = [("GQA: 6 query heads, 2 kv heads, q [2, 6, 7, 8], causal", qkv(2, 6, 2, 7, 7, 8), True),
             ("MHA: 4 query heads, 4 kv heads, q [1, 4, 5, 8], not causal", qkv(1, 4, 4, 5, 5, 8), False),
             ("MQA: 6 query heads, 1 kv head, q [1, 6, 9, 4], causal", qkv(1, 6, 1, 9, 9, 4), True),
             ("3 new queries after 12 cached keys (a KV cache), 6 query heads, 3 kv heads, head_dim 8, causal",
              qkv(1, 6, 3, 3, 12, 8), True),
             ("SmolLM2's shape: 9 query heads, 3 kv heads, head_dim 64, q [1, 9, 4, 64], causal",
              qkv(1, 9, 3, 4, 4, 64), True),
             ("scores of a few hundred (q multiplied by 100), 4 query heads, 2 kv heads, head_dim 16, causal",
              qkv(1, 4, 2, 6, 6, 16, gain=100.0), True)]
    for what, (q, k, v), causal in cases:
        call = f"gqa_attention({what})"
        got, ops = _record_ops(lambda q, k, v: fn(q, k, v, causal=causal), call, q, k, v)
        if not isinstance(got, torch.Tensor):
            raise AssertionError(f"{call} should return a torch.Tensor, got {type(got).__name__}")
        g_ = q.shape[1] // k.shape[1]  # the oracle: torch's attention on the repeated heads
        expected = torch.nn.functional.scaled_dot_product_attention(
            q, k.repeat_interleave(g_, 1), v.repeat_interleave(g_, 1),
            attn_mask=_bottom_right(q.shape[-2], k.shape[-2]) if causal else None)
        if tuple(got.shape) != tuple(expected.shape):
            raise AssertionError(f"{call}: expected shape [B, H, Tq, D] = {list(expected.shape)}, got "
                                 f"{list(got.shape)}")
        if not _same(got, expected):
            d = q.shape[-1]
            hint = _attention_hint(got, q, k, v, causal, {
                "scores not scaled: divide q k^T by sqrt(head_dim)": 1.0,
                "scores scaled by 1/sqrt(n_heads * head_dim); the scale is 1/sqrt(head_dim)":
                    1 / math.sqrt(q.shape[1] * d)})
            if not hint and not torch.isfinite(got).all():
                hint = (": the output has inf or NaN. With scores of a few hundred, exp overflows float32 (exp(89) "
                        "is already inf): subtract each row's max before exp, as torch.softmax does")
            diff = float((got - expected).abs().nan_to_num(math.inf).max())
            raise AssertionError(f"{call}: differs from torch's attention by up to {diff:.3g}{hint}.")
        b, h, t_q, d = q.shape
        t_k = k.shape[-2]
        copies = {(b, h, t_k, d), (b, h, d, t_k), (b, k.shape[1], h // k.shape[1], t_k, d)}
        if h > k.shape[1] and t_q != t_k and any(shape in copies for _, shape in ops):
            raise AssertionError(f"{call}: the output is right, but your function built the keys or values "
                                 f"repeated for every query head ({[b, h, t_k, d]}): the copy GQA exists to avoid. "
                                 "Let each group of query heads read its kv head once: view q as [B, H_kv, g * Tq, "
                                 "D] or [B, H_kv, g, Tq, D], where matmul broadcasts k and v over the group.")
    _passed("gqa_attention", len(cases))


def check_absorbed_attention(fn: Callable) -> None:
    """absorbed_attention(q, c, w_uk, w_uv, causal) for q [B, H, Tq, D], cached latents c [B, Tk, r] and MLA's
    up-projections w_uk, w_uv [H_kv * D, r] -> [B, H, Tq, D]: the attention whose keys and values are
    k = c w_uk^T and v = c w_uv^T (H_kv heads, read by groups of query heads), computed WITHOUT rebuilding k or v:
    w_uk goes into the query (q w_uk_j, r numbers per query), w_uv after the weighted average of the latents.
    Compared with labkit's grouped-query attention on the rebuilt keys and values; the torch calls it makes must
    produce no [.., Tk, D] or [.., Tk, H_kv * D] tensor."""
    g = torch.Generator().manual_seed(9)

    def inputs(b, h, h_kv, t_q, t_k, d, r, gain=1.0):
        return (gain * torch.randn(b, h, t_q, d, generator=g), torch.randn(b, t_k, r, generator=g),
                torch.randn(h_kv * d, r, generator=g) / math.sqrt(r), torch.randn(h_kv * d, r, generator=g))

    cases = [("3 queries after 11 cached latents of rank 5; 6 query heads, 2 kv heads, head_dim 8; causal",
              inputs(2, 6, 2, 3, 11, 8, 5), True),
             ("7 positions, latents of rank 6; 4 query heads, 4 kv heads, head_dim 4; causal",
              inputs(1, 4, 4, 7, 7, 4, 6), True),
             ("one query after 13 latents of rank 12; 6 query heads, 3 kv heads, head_dim 8; not causal",
              inputs(1, 6, 3, 1, 13, 8, 12), False),
             ("scores of a few hundred (q multiplied by 100); 4 query heads, 1 kv head, head_dim 8, rank 6; causal",
              inputs(1, 4, 1, 5, 5, 8, 6, gain=100.0), True)]
    for what, (q, c, w_uk, w_uv), causal in cases:
        call = f"absorbed_attention({what})"
        # causal by keyword, as the lab's later cells call it
        got, ops = _record_ops(lambda q, c, w_uk, w_uv: fn(q, c, w_uk, w_uv, causal=causal), call, q, c, w_uk, w_uv)
        b, h, t_q, d = q.shape
        t_k, h_kv = c.shape[1], w_uk.shape[0] // d
        k = (c @ w_uk.T).view(b, t_k, h_kv, d).transpose(1, 2)  # the keys MLA never rebuilds
        v = (c @ w_uv.T).view(b, t_k, h_kv, d).transpose(1, 2)
        expected = attention.grouped_query_attention(q, k, v, causal=causal)
        if not isinstance(got, torch.Tensor) or tuple(got.shape) != tuple(expected.shape):
            shape = list(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
            raise AssertionError(f"{call}: expected a tensor of shape [B, H, Tq, D] = {list(expected.shape)}, got "
                                 f"{shape}")
        if not _same(got, expected):
            hint = _attention_hint(got, q, k, v, causal, {
                "scores scaled by 1/sqrt(r), the latent's size: the score is still q . k of one head, scale by "
                "1/sqrt(head_dim)": 1 / math.sqrt(c.shape[-1]),
                "scores not scaled: divide by sqrt(head_dim)": 1.0})
            if not hint and not torch.isfinite(got).all():
                hint = (": the output has inf or NaN: with scores of a few hundred exp overflows unless each row's "
                        "max is subtracted first (torch.softmax does)")
            if not hint and _same(got, attention.grouped_query_attention(q, k, (c @ w_uk.T).view(
                    b, t_k, h_kv, d).transpose(1, 2), causal=causal)):
                hint = ": you used w_uk for the values too; values come from w_uv"
            diff = float((got - expected).abs().nan_to_num(math.inf).max())
            raise AssertionError(f"{call}: differs from attention over the rebuilt keys and values by up to "
                                 f"{diff:.3g}{hint}.")
        rebuilt = [shape for _, shape in ops if len(shape) >= 2 and (
            (shape[-2] == t_k and shape[-1] in (d, h_kv * d)) or (shape[-1] == t_k and shape[-2] in (d, h_kv * d)))]
        if t_k not in (t_q, d, h_kv * d) and rebuilt:
            raise AssertionError(f"{call}: the output is right, but your function rebuilt the keys or values (a "
                                 f"{list(rebuilt[0])} tensor: {t_k} positions x head size): the work MLA's absorption "
                                 "avoids. Move w_uk to the query side, q_lat = q @ w_uk_j ([.., Tq, r]), score it "
                                 "against c, average the latents c with the weights, and apply w_uv_j last.")
    _passed("absorbed_attention", len(cases))
