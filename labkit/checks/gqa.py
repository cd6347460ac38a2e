"""Graded checks for lab 6 (GQA head grouping: which kv head a query reads, and mean-pooling kv heads).

    from labkit.checks.gqa import check_kv_head_of_query, check_pool_kv_heads, check_pool_in_model
    check_kv_head_of_query(kv_head_of_query)      # your functions, defined in the lab
    check_pool_kv_heads(pool_kv_heads)
    check_pool_in_model(pool_kv_heads, model)     # model = labkit.llama.Llama.from_pretrained()

The references are `labkit.gqa.kv_head_of_query`, `labkit.gqa.pool_kv_heads` and `labkit.gqa.convert_kv_heads`.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch.overrides import TorchFunctionMode

from labkit import gqa
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
