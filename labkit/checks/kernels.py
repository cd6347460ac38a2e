"""Graded checks for lab 8 (Triton kernels): each launches YOUR kernel in Triton's interpreter (or on a GPU)
and compares with torch.

    from labkit.checks.kernels import check_add_kernel, check_softmax_kernel, check_matmul_kernel, \\
        check_attention_kernel
    check_add_kernel(add_kernel)          # add_kernel(x_ptr, y_ptr, out_ptr, n, BLOCK)
    check_softmax_kernel(softmax_kernel)  # softmax_kernel(x_ptr, out_ptr, n_cols, row_stride, BLOCK)
    check_matmul_kernel(matmul_kernel)    # matmul_kernel(a_ptr, b_ptr, c_ptr, M, N, K, 6 strides, BM, BN, BK)
    check_attention_kernel(attention_kernel)  # one head: (q, k, v, o, N, row_stride, D, scale, BM, BN, BD)

Every input lives in the middle of a bigger buffer filled with NaN (a guard band), so a load past the end of
a tensor — which the interpreter does NOT catch — brings NaN into the result; every output lives in a
buffer filled with a sentinel value, so a store past the end shows up as a changed band.
Sizes are deliberately not multiples of the block size: the last block is partial.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch

from labkit import kernels  # noqa: F401  (first: switches on the interpreter when there is no GPU)
from labkit.checks import _passed
from labkit.kernels import backend

SENTINEL = -7.25  # what the output buffers hold before your kernel runs


def guarded(shape: tuple[int, ...], dtype: torch.dtype = torch.float32, fill: float = float("nan"),
            pad: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """(buffer, view): a buffer `pad` larger on each side of every dim, filled with `fill`, and the view of
    its middle with shape `shape` (strided: its rows are further apart than their length)."""
    buffer = torch.full(tuple(s + 2 * pad for s in shape), fill, dtype=dtype, device=backend.device())
    view = buffer[tuple(slice(pad, pad + s) for s in shape)]
    return buffer, view


def guarded_input(x: torch.Tensor, pad: int = 64, transposed: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """x copied into the middle of a NaN-filled buffer: (buffer, view equal to x). With `transposed` (2-D x),
    the buffer holds x.T and the view is its transpose: column-major, so the view's *last* dim has the large
    stride and its first dim stride 1 (a kernel that assumes an inner stride of 1 reads the wrong elements)."""
    if not transposed:
        buffer, view = guarded(tuple(x.shape), x.dtype, float("nan"), pad)
        view.copy_(x)
        return buffer, view
    if x.ndim != 2:
        raise ValueError(f"transposed needs a 2-D tensor, got {x.ndim}-D")
    buffer, view_t = guarded(tuple(x.shape[::-1]), x.dtype, float("nan"), pad)
    view_t.copy_(x.T)
    return buffer, view_t.T


def band_changed(buffer: torch.Tensor, view_shape: tuple[int, ...], fill: float, pad: int = 64) -> int:
    """How many elements of the guard band around the middle view no longer hold `fill`."""
    outside = torch.ones(buffer.shape, dtype=torch.bool, device=buffer.device)
    outside[tuple(slice(pad, pad + s) for s in view_shape)] = False
    band = buffer[outside]
    same = torch.isnan(band) if math.isnan(fill) else band == fill
    return int((~same).sum())


def _launch(kernel: Callable, grid: tuple[int, ...], call: str, *args, **meta) -> None:
    """kernel[grid](*args, **meta); a stub's NotImplementedError propagates (the interpreter wraps it)."""
    if not hasattr(kernel, "__getitem__"):
        raise AssertionError(f"{call}: pass the @triton.jit kernel itself, got {type(kernel).__name__}")
    try:
        kernel[grid](*args, **meta)
    except NotImplementedError:
        raise
    except Exception as e:
        cause = e.__cause__ or e.__context__
        if isinstance(cause, NotImplementedError):
            raise cause from None
        raise AssertionError(f"{call} failed: {type(e).__name__}: {e}") from e


def _compare(got: torch.Tensor, expected: torch.Tensor, call: str, atol: float, rtol: float,
             what: str = "output") -> None:
    if torch.isnan(got).any():
        where = torch.nonzero(torch.isnan(got).reshape(got.shape[0], -1).any(-1)).flatten().tolist()
        raise AssertionError(f"{call}: NaN in your {what} (rows/elements {where[:8]}...). The inputs are surrounded "
                             f"by NaN: you loaded past the end of a tensor. Mask the loads of the last, partial "
                             f"block (mask=..., other=...).")
    if (got == SENTINEL).any() and not (expected == SENTINEL).any():
        missing = int((got == SENTINEL).sum())
        raise AssertionError(f"{call}: {missing} {what} values were never written (still the sentinel {SENTINEL}). "
                             f"Does every program handle its own block (offsets from tl.program_id), and does the "
                             f"grid cover everything?")
    if not torch.allclose(got.float(), expected.float(), atol=atol, rtol=rtol):
        diff = (got.float() - expected.float()).abs()
        idx = tuple(int(i) for i in torch.nonzero(diff == diff.max())[0])
        raise AssertionError(f"{call}: {what} differs from torch by up to {float(diff.max()):.3g} "
                             f"(at index {list(idx)}: expected {float(expected[idx]):.5g}, got {float(got[idx]):.5g}; "
                             f"tolerance atol={atol:g}, rtol={rtol:g})")


def _fp32_dot_tol(tol: float) -> float:
    """fp32 tl.dot is exact fp32 in the interpreter, TF32 on a GPU."""
    return tol if backend.INTERPRETER else max(tol, backend.TF32_TOL)


def _bands_intact(buffer: torch.Tensor, shape: tuple[int, ...], call: str, what: str) -> None:
    changed = band_changed(buffer, shape, SENTINEL)
    if changed:
        raise AssertionError(f"{call}: you wrote {changed} values outside the {what} tensor (into the memory "
                             f"around it). Mask the store of the last, partial block.")


# ----------------------------------------------------------------------------------------------- vector add

def check_add_kernel(kernel: Callable) -> None:
    """add_kernel(x_ptr, y_ptr, out_ptr, n, BLOCK) on grid (cdiv(n, BLOCK),): out[i] = x[i] + y[i]."""
    gen = torch.Generator().manual_seed(0)
    cases = [(64, 64), (100, 64), (1, 64), (1000, 128), (17, 16)]
    for n, block in cases:
        x, y = torch.randn(n, generator=gen), torch.randn(n, generator=gen)
        _, xv = guarded_input(x.to(backend.device()))
        _, yv = guarded_input(y.to(backend.device()))
        out_buf, out = guarded((n,), fill=SENTINEL)
        grid = (-(-n // block),)
        call = f"add_kernel[{grid}](x, y, out, n={n}, BLOCK={block})"
        _launch(kernel, grid, call, xv, yv, out, n, BLOCK=block)
        _bands_intact(out_buf, (n,), call, "out")
        if grid[0] > 1 and torch.equal(out[:block].cpu(), (x + y)[:block]) and (out[block:] == SENTINEL).all():
            raise AssertionError(f"{call}: only the first block is right. Each program must start at "
                                 f"tl.program_id(0) * BLOCK.")
        _compare(out.cpu(), x + y, call, atol=1e-6, rtol=1e-6)
    _passed("add_kernel", len(cases))


# ----------------------------------------------------------------------------------------------- softmax

def check_softmax_kernel(kernel: Callable) -> None:
    """softmax_kernel(x_ptr, out_ptr, n_cols, row_stride, BLOCK) on grid (n_rows,): softmax of each row,
    BLOCK = the next power of two >= n_cols. x and out share the row stride."""
    gen = torch.Generator().manual_seed(1)
    cases = [("3 rows of 16", (3, 16), 1.0), ("5 rows of 20 (BLOCK 32: 12 padding lanes)", (5, 20), 1.0),
             ("2 rows of 1", (2, 1), 1.0), ("4 rows of 50, large values (scores up to ~300)", (4, 50), 100.0),
             ("3 rows of 40 in float16", (3, 40), 3.0)]
    for what, (rows, cols), scale in cases:
        dtype = torch.float16 if "float16" in what else torch.float32
        x = (scale * torch.randn(rows, cols, generator=gen)).to(dtype)
        block = max(16, 1 << (cols - 1).bit_length())
        x_buf, xv = guarded_input(x.to(backend.device()))
        out_buf, out = guarded((rows, cols), dtype, fill=SENTINEL)
        call = f"softmax_kernel[({rows},)](x, out, n_cols={cols}, row_stride={xv.stride(0)}, BLOCK={block}) on {what}"
        _launch(kernel, (rows,), call, xv, out, cols, xv.stride(0), BLOCK=block)
        _bands_intact(out_buf, (rows, cols), call, "out")
        got, expected = out.cpu().float(), torch.softmax(x.float(), dim=-1)
        if torch.isinf(got).any() or (torch.isnan(got).any() and scale > 10):
            raise AssertionError(f"{call}: inf/NaN in the output: exp overflowed. Subtract the row max before exp.")
        if not torch.isnan(got).any() and (got.sum(-1) - 1).abs().max() > 1e-2:
            hint = (" The padding lanes (BLOCK > n_cols) must load -inf (other=-float('inf')): exp(-inf) = 0 "
                    "adds nothing to the sum, while other=0 adds exp(0 - max) per padding lane."
                    if block > cols else "")
            raise AssertionError(f"{call}: rows must sum to 1, yours sum to "
                                 f"{[round(float(s), 4) for s in got.sum(-1)]}.{hint}")
        tol = 2e-3 if dtype == torch.float16 else 1e-5
        _compare(got, expected, call, atol=tol, rtol=tol)
    _passed("softmax_kernel", len(cases))


# ----------------------------------------------------------------------------------------------- matmul

def check_matmul_kernel(kernel: Callable) -> None:
    """matmul_kernel(a, b, c, M, N, K, stride_am, stride_ak, stride_bk, stride_bn, stride_cm, stride_cn,
    BLOCK_M, BLOCK_N, BLOCK_K) on grid (cdiv(M, BLOCK_M), cdiv(N, BLOCK_N)): c = a @ b.

    Every stride matters: a and b come row-major (inner stride 1) and column-major (a transposed view, inner
    stride > 1), so a kernel that ignores stride_ak or stride_bn fails here."""
    gen = torch.Generator().manual_seed(2)
    # (m, n, k), dtype, a column-major?, b column-major?
    cases = [((16, 16, 16), torch.float32, False, False), ((32, 48, 64), torch.float32, False, False),
             ((20, 30, 40), torch.float32, False, False), ((33, 17, 50), torch.float16, False, False),
             ((5, 40, 7), torch.float32, False, False), ((24, 20, 40), torch.float32, True, False),
             ((18, 36, 33), torch.float32, False, True), ((40, 24, 48), torch.float32, True, True)]
    bm = bn = bk = 16
    for (m, n, k), dtype, a_t, b_t in cases:
        a = torch.randn(m, k, generator=gen).to(dtype)
        b = torch.randn(k, n, generator=gen).to(dtype)
        _, av = guarded_input(a.to(backend.device()), transposed=a_t)
        _, bv = guarded_input(b.to(backend.device()), transposed=b_t)
        c_buf, c = guarded((m, n), dtype, fill=SENTINEL)
        grid = (-(-m // bm), -(-n // bn))
        layout = "".join(f", {name} column-major (strides {tuple(t.stride())})"
                         for name, t, flag in (("a", av, a_t), ("b", bv, b_t)) if flag)
        call = (f"matmul_kernel[{grid}]({m}x{k} @ {k}x{n}, {str(dtype).replace('torch.', '')}{layout}, "
                f"BLOCK_M={bm}, BLOCK_N={bn}, BLOCK_K={bk})")
        _launch(kernel, grid, call, av, bv, c, m, n, k, av.stride(0), av.stride(1), bv.stride(0), bv.stride(1),
                c.stride(0), c.stride(1), BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk)
        try:
            _bands_intact(c_buf, (m, n), call, "c")
            expected = a.float() @ b.float()
            got = c.cpu().float()
            if k > bk and not torch.isnan(got).any():
                first = a.float()[:, :bk] @ b.float()[:bk]
                if torch.allclose(got, first, atol=1e-2, rtol=1e-2):
                    raise AssertionError(f"{call}: your c is the product of the first {bk} columns of a only. "
                                         f"Loop over K in steps of BLOCK_K and accumulate.")
            tol = 2e-2 if dtype == torch.float16 else _fp32_dot_tol(1e-4)
            _compare(got, expected, call, atol=tol, rtol=tol, what="c")
        except AssertionError as wrong:
            if not (a_t or b_t):
                raise
            # the row-major cases before this one passed, so the layout is what changed
            raise AssertionError(f"{call}: wrong c once an input is column-major (its inner stride is not 1). "
                                 f"Address a[m, k] as a_ptr + m * stride_am + k * stride_ak and b[k, n] as "
                                 f"b_ptr + k * stride_bk + n * stride_bn: use all four strides. ({wrong})") from None
    _passed("matmul_kernel", len(cases))


# ----------------------------------------------------------------------------------------------- attention

def _unmasked_padding(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, bn: int) -> torch.Tensor:
    """The output of a tile loop that gives the padding keys (loaded as 0) a score of 0 instead of -inf."""
    s = q.float() @ k.float().T * scale
    s = torch.cat([s, torch.zeros(s.shape[0], (-s.shape[1]) % bn)], dim=1)
    return torch.softmax(s, dim=-1)[:, :k.shape[0]] @ v.float()


def check_attention_kernel(kernel: Callable) -> None:
    """attention_kernel(q, k, v, o, N, row_stride, HEAD_DIM, scale, BLOCK_M, BLOCK_N, BLOCK_D) on grid
    (cdiv(N, BLOCK_M),): one head, no mask, q/k/v/o [N, HEAD_DIM] sharing a row stride; o = softmax(q k^T scale) v."""
    gen = torch.Generator().manual_seed(3)
    cases = [((16, 16), 1.0, torch.float32), ((40, 16), 1.0, torch.float32), ((50, 32), 3.0, torch.float32),
             ((37, 24), 1.0, torch.float32), ((33, 16), 1.0, torch.float16)]
    bm = bn = 16
    for (n, d), spread, dtype in cases:
        block_d = max(16, 1 << (d - 1).bit_length())
        q, k, v = (torch.randn(n, d, generator=gen) * s for s in (spread, spread, 1.0))
        # later keys score higher, so the running max grows tile after tile: the rescale matters
        k = k + torch.linspace(0, 2 * spread, n)[:, None] * q.mean(0)[None, :].sign()
        q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
        buffers = [guarded_input(t.to(backend.device()), pad=64) for t in (q, k, v)]
        (_, qv), (_, kv), (_, vv) = buffers
        o_buf, o = guarded((n, d), dtype, fill=SENTINEL)
        scale = 1 / math.sqrt(d)
        grid = (-(-n // bm),)
        call = (f"attention_kernel[{grid}](N={n}, HEAD_DIM={d}, {str(dtype).replace('torch.', '')}, "
                f"BLOCK_M={bm}, BLOCK_N={bn}, BLOCK_D={block_d})")
        _launch(kernel, grid, call, qv, kv, vv, o, n, qv.stride(0), d, scale, BLOCK_M=bm, BLOCK_N=bn,
                BLOCK_D=block_d)
        _bands_intact(o_buf, (n, d), call, "o")
        expected = torch.softmax(q.float() @ k.float().T * scale, dim=-1) @ v.float()
        got = o.cpu().float()
        if not torch.isnan(got).any() and n % bn and torch.allclose(got, _unmasked_padding(q, k, v, scale, bn),
                                                                     atol=1e-3, rtol=1e-3):
            raise AssertionError(f"{call}: your output is what you get when the {(-n) % bn} padding keys of the "
                                 f"last tile score 0 instead of -inf. Set the scores of keys >= N to -inf "
                                 f"(tl.where) before the max and the exp.")
        if not torch.isnan(got).any() and n > bn and not torch.allclose(got, expected, atol=1e-2, rtol=1e-2):
            raise AssertionError(f"{call}: wrong output with {-(-n // bn)} key tiles (max |diff| "
                                 f"{float((got - expected).abs().max()):.3g}). When a tile raises the running max "
                                 f"m, rescale both the running sum l and the accumulator acc by exp(m_old - m_new) "
                                 f"before adding the new tile.")
        tol = 3e-3 if dtype == torch.float16 else _fp32_dot_tol(1e-4)
        _compare(got, expected, call, atol=tol, rtol=tol, what="o")
    _passed("attention_kernel", len(cases))
