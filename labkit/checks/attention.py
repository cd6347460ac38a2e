"""Graded checks for lab 3 (attention and RoPE).

    from labkit.checks.attention import check_causal_attention, check_rotate_half, check_apply_rope
    check_causal_attention(causal_attention)      # your functions, defined in the lab

The references are `labkit.attention.scaled_dot_product_attention(..., causal=True)`, `labkit.rope.rotate_half`
and `labkit.rope.apply_rope`. When an answer is wrong in a common way (no mask, a mask that hides the diagonal,
no 1/sqrt(d), softmax over the wrong axis, the wrong halves, the wrong sign) the message says which.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from labkit.attention import causal_mask, scaled_dot_product_attention
from labkit.rope import apply_rope, rope_cos_sin, rope_inv_freq, rotate_half
from labkit.checks import _call, _passed


def _rand(*shape: int, seed: int) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _tensor(got: object, call: str, shape: tuple[int, ...], like: Tensor | None = None) -> Tensor:
    """got as float64, after checking its type and shape; with `like` a float32 tensor, got must be float32
    too: the multi-head layer the lab builds from these functions runs in float32 (its projections would
    refuse a float64 tensor)."""
    if not isinstance(got, Tensor):
        raise AssertionError(f"{call} should return a torch.Tensor, got {type(got).__name__}")
    if tuple(got.shape) != shape:
        raise AssertionError(f"{call} should return shape {shape}, got {tuple(got.shape)}")
    if like is not None and like.dtype == torch.float32 and got.dtype != torch.float32:
        raise AssertionError(f"{call} should return float32 for float32 inputs (the attention layer after it "
                             f"runs in float32), got {got.dtype}. Compute in the inputs' dtype.")
    return got.double()


def _heads(b: int, t: int, h: int, d: int, seed: int, scale: float = 1.0) -> Tensor:
    """A float32 [b, h, t, d] tensor made the way a multi-head layer makes it: [b, t, h, d] with the heads
    moved forward by a transpose, so it is not contiguous (`.view` on it fails; use reshape or broadcasting)."""
    return (scale * _rand(b, t, h, d, seed=seed)).float().transpose(1, 2)


def _close(a: Tensor, b: Tensor, tol: float = 1e-6) -> bool:
    return a.shape == b.shape and bool(torch.allclose(a.double(), b.double(), rtol=tol, atol=tol, equal_nan=False))


def _where(got: Tensor, expected: Tensor, tol: float = 1e-6) -> str:
    """Where the first difference is, and the values there."""
    got, expected = got.double(), expected.double()
    bad = ~torch.isclose(got, expected, rtol=tol, atol=tol)
    if not bad.any():
        return ""
    idx = tuple(int(i) for i in bad.nonzero()[0])
    return f"; first difference at index {idx}: expected {float(expected[idx]):.6g}, got {float(got[idx]):.6g}"


# ----------------------------------------------------------------------------------------------------------

def _attention_variants(q: Tensor, k: Tensor, v: Tensor) -> dict[str, Tensor]:
    """Outputs of the usual wrong answers, to name the mistake."""
    t, d = q.shape[-2], q.shape[-1]
    scores = q @ k.transpose(-2, -1)
    keep, strict = causal_mask(t, t), torch.ones(t, t, dtype=torch.bool).tril(-1)
    return {
        "no causal mask: every position also attends to later positions (mask keys j > i with -inf before the "
        "softmax)": torch.softmax(scores / math.sqrt(d), -1) @ v,
        "the mask also hides the diagonal: a position must be allowed to attend to itself (keep j <= i)":
            torch.softmax((scores / math.sqrt(d)).masked_fill(~strict, float("-inf")), -1) @ v,
        "scores are not divided by sqrt(d) (d = the last dim of q)":
            torch.softmax(scores.masked_fill(~keep, float("-inf")), -1) @ v,
        "softmax over the wrong axis: normalise over the keys (the last dim of the scores), so each query's "
        "weights sum to 1":
            torch.softmax((scores / math.sqrt(d)).masked_fill(~keep, float("-inf")), -2) @ v,
    }


def _nan_hint(got: Tensor, q: Tensor, k: Tensor) -> str:
    """Why the output holds NaN or inf, judged from the scores of the rows where it does."""
    t, d = q.shape[-2], q.shape[-1]
    scores = (q.double() @ k.double().transpose(-2, -1) / math.sqrt(d)).masked_fill(~causal_mask(t, t), float("-inf"))
    bad = ~torch.isfinite(got).all(-1)
    row_max = scores.amax(-1)[bad]
    if row_max.numel() and (row_max.abs() > 80).any():
        return (f" The scores of those rows reach {float(row_max.abs().max()):.0f} in size: exp of a score above "
                f"~88 overflows float32 to inf, and exp of scores all below ~-104 underflows to 0, so the "
                f"normalisation divides inf by inf or 0 by 0. Subtract each row's max score before exp (softmax "
                f"is unchanged by it), or use torch.softmax, which does.")
    if bad[..., 0].all() and not bad[..., 1:].any():
        return " Position 0 has no key left to attend to: the mask must keep the diagonal (j <= i)."
    return ""


def check_causal_attention(fn: Callable) -> None:
    """causal_attention(q, k, v) = softmax(q k^T / sqrt(d) with keys j > i masked) v, for q, k, v [..., T, d].

    Besides the float64 cases: float32 heads laid out as the multi-head layer lays them out (a transposed,
    non-contiguous view; the output must be float32), and float32 scores of realistic size (hundreds, and
    rows whose scores are all very negative), where an exp without the max subtracted overflows."""
    cases = [
        ("one position", (1, 4), (1, 4), 1),
        ("T=5, d=4", (5, 4), (5, 4), 2),
        ("T=6, d=16, values of another width (d_v=3)", (6, 16), (6, 3), 3),
        ("a batch of heads [2, 3, 7, 8]", (2, 3, 7, 8), (2, 3, 7, 8), 4),
        ("large scores (d=64)", (4, 64), (4, 64), 5),
    ]
    inputs = [(what, _rand(*qk, seed=seed), _rand(*qk, seed=seed + 100), _rand(*vs, seed=seed + 200), 1e-6)
              for what, qk, vs, seed in cases]
    inputs.append(("float32 heads [2, 3, 7, 8] from a transpose (not contiguous), as the layer makes them",
                   _heads(2, 7, 3, 8, seed=6), _heads(2, 7, 3, 8, seed=106), _heads(2, 7, 3, 8, seed=206), 1e-5))
    inputs.append(("float32, scores in the hundreds, some rows all very negative (T=8, d=16)",
                   (12 * _rand(8, 16, seed=7)).float(), (12 * _rand(8, 16, seed=107)).float(),
                   _rand(8, 16, seed=207).float(), 1e-4))
    for what, q, k, v, tol in inputs:
        call = f"causal_attention(q, k, v)  [{what}: q, k {tuple(q.shape)}, v {tuple(v.shape)}]"
        expected = scaled_dot_product_attention(q.double(), k.double(), v.double(), causal=True)
        got = _tensor(_call(fn, call, q, k, v), call, tuple(expected.shape), like=q)
        if not torch.isfinite(got).all():
            raise AssertionError(f"{call}: the output contains NaN or inf.{_nan_hint(got, q, k)}")
        if not _close(got, expected, tol):
            for mistake, wrong in _attention_variants(q.double(), k.double(), v.double()).items():
                if q.shape[-2] > 1 and _close(got, wrong, tol):
                    raise AssertionError(f"{call}: {mistake}.")
            raise AssertionError(f"{call}: wrong output{_where(got, expected, tol)}")
    # Property: the past never sees the future. Changing the last key and value leaves earlier outputs alone.
    q, k, v = _rand(6, 8, seed=7), _rand(6, 8, seed=8), _rand(6, 8, seed=9)
    k2, v2 = k.clone(), v.clone()
    k2[-1] += 5
    v2[-1] -= 5
    call = "causal_attention(q, k, v) with only the last key and value changed"
    a = _tensor(_call(fn, call, q, k, v), call, (6, 8))
    b = _tensor(_call(fn, call, q, k2, v2), call, (6, 8))
    if not _close(a[:-1], b[:-1]):
        raise AssertionError(f"{call}: the outputs at positions 0..4 changed, so they can see position 5. "
                             "Mask the keys j > i.")
    _passed("causal_attention", len(inputs) + 1)


# ----------------------------------------------------------------------------------------------------------

def _rotate_variants(x: Tensor) -> dict[str, Tensor]:
    h = x.shape[-1] // 2
    x1, x2 = x[..., :h], x[..., h:]
    interleaved = torch.stack((-x[..., 1::2], x[..., 0::2]), -1).flatten(-2)
    return {
        "the wrong sign: rotate_half(x1, x2) = (-x2, x1), you return (x2, -x1)": torch.cat((x2, -x1), -1),
        "the halves are swapped but neither is negated: rotate_half(x1, x2) = (-x2, x1)": torch.cat((x2, x1), -1),
        "the interleaved layout: you pair neighbours (2i, 2i+1), as the RoPE paper and Meta's original Llama "
        "code do. That layout is right for weights stored to match it; the weights here (Hugging Face's Llama, "
        "SmolLM2) pair coordinate i with i + d/2, the two halves, so rotate_half must split x into halves": interleaved,
        "the halves are not swapped: rotate_half(x1, x2) = (-x2, x1)": torch.cat((-x1, x2), -1),
    }


def check_rotate_half(fn: Callable) -> None:
    """rotate_half(x) splits the last dim into halves (x1, x2) and returns (-x2, x1), in x's dtype."""
    cases = [
        ("x = [0, 1, 2, 3]", torch.arange(4, dtype=torch.float64)),
        ("x = [1, 2, 3, 4, 5, 6, 7, 8]", torch.arange(1, 9, dtype=torch.float64)),
        ("random [2, 3, 8]", _rand(2, 3, 8, seed=1)),
        ("random [5, 64]", _rand(5, 64, seed=2)),
        ("d = 2", _rand(3, 2, seed=3)),
        ("float32 heads [2, 3, 7, 8] from a transpose (not contiguous)", _heads(2, 7, 3, 8, seed=4)),
    ]
    for what, x in cases:
        call = f"rotate_half(x)  [{what}]"
        expected = rotate_half(x)
        got = _tensor(_call(fn, call, x), call, tuple(x.shape), like=x)
        if not _close(got, expected):
            for mistake, wrong in _rotate_variants(x).items():
                if _close(got, wrong):
                    raise AssertionError(f"{call}: {mistake}. Expected {expected.flatten()[:8].tolist()}, "
                                         f"got {got.flatten()[:8].tolist()}")
            raise AssertionError(f"{call}: expected {expected.flatten()[:8].tolist()}, "
                                 f"got {got.flatten()[:8].tolist()}{_where(got, expected)}")
    _passed("rotate_half", len(cases))


# ----------------------------------------------------------------------------------------------------------

def _tables(t: int, d: int, start: int = 0, theta: float = 10000.0) -> tuple[Tensor, Tensor]:
    cos, sin = rope_cos_sin(torch.arange(start, start + t), rope_inv_freq(d, theta))
    return cos.double(), sin.double()


def check_apply_rope(fn: Callable) -> None:
    """apply_rope(x, cos, sin) = x * cos + rotate_half(x) * sin, for x [..., T, d] and cos, sin [T, d], in x's
    dtype."""
    cases = [
        ("position 0 only: no rotation", _rand(1, 8, seed=1), *_tables(1, 8)),
        ("T=6, d=8", _rand(6, 8, seed=2), *_tables(6, 8)),
        ("heads [2, 4, 10, 16]", _rand(2, 4, 10, 16, seed=3), *_tables(10, 16)),
        ("positions 100..104, d=64, theta=1e5", _rand(5, 64, seed=4), *_tables(5, 64, 100, 1e5)),
        ("float32 heads [2, 4, 10, 16] from a transpose (not contiguous), float32 tables",
         _heads(2, 10, 4, 16, seed=7), *(t.float() for t in _tables(10, 16))),
    ]
    for what, x, cos, sin in cases:
        call = f"apply_rope(x, cos, sin)  [{what}: x {tuple(x.shape)}]"
        expected = apply_rope(x, cos, sin)
        got = _tensor(_call(fn, call, x, cos, sin), call, tuple(x.shape), like=x)
        if not _close(got, expected):
            if _close(got, x * cos - rotate_half(x) * sin):
                raise AssertionError(f"{call}: your rotation turns the wrong way: x * cos + rotate_half(x) * sin, "
                                     "not minus")
            if _close(got, x * sin + rotate_half(x) * cos):
                raise AssertionError(f"{call}: cos and sin are swapped: x * cos + rotate_half(x) * sin")
            if not _close(got.norm(dim=-1), x.norm(dim=-1)):
                raise AssertionError(f"{call}: a rotation keeps every vector's length, yours changes it "
                                     f"(expected norms {x.norm(dim=-1).flatten()[:3].tolist()}, got "
                                     f"{got.norm(dim=-1).flatten()[:3].tolist()}). Did rotate_half pass its check?")
            raise AssertionError(f"{call}: wrong output{_where(got, expected)}")
    # Property: the score between a rotated query and key depends only on their offset.
    q, k = _rand(1, 16, seed=5), _rand(1, 16, seed=6)
    scores = []
    for m, n in ((3, 1), (10, 8), (40, 38)):
        cq, sq = _tables(1, 16, m)
        ck, sk = _tables(1, 16, n)
        call = f"apply_rope on a query at position {m} and a key at position {n}"
        scores.append(float((_call(fn, call, q, cq, sq) * _call(fn, call, k, ck, sk)).sum()))
    if max(scores) - min(scores) > 1e-4:
        raise AssertionError(f"a query and key two positions apart should score the same wherever they are; "
                             f"yours give {[round(s, 5) for s in scores]} at positions (3,1), (10,8), (40,38)")
    _passed("apply_rope", len(cases) + 1)
