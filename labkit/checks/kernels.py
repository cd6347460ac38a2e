"""Graded checks for lab 8 (Triton kernels): each launches YOUR kernel in Triton's interpreter (or on a GPU)
and compares with torch.

    from labkit.checks.kernels import check_add_kernel, check_softmax_kernel, check_matmul_kernel, \\
        check_attention_kernel
    check_add_kernel(add_kernel)          # add_kernel(x_ptr, y_ptr, out_ptr, n, BLOCK)
    check_softmax_kernel(softmax_kernel)  # softmax_kernel(x_ptr, out_ptr, n_cols, row_stride, BLOCK)
    check_matmul_kernel(matmul_kernel)    # matmul_kernel(a_ptr, b_ptr, c_ptr, M, N, K, 6 strides, BM, BN, BK)
    check_attention_kernel(attention_kernel)  # one head: (q, k, v, o, N, row_stride, D, scale, BM, BN, BD)

How an out-of-bounds access is caught, twice over:

1. **In the interpreter, every access is checked where it happens.** While your kernel runs, `watch_memory`
   wraps the interpreter's masked load and store (the two operations every `tl.load` / `tl.store` becomes):
   each address a lane actually touches (its mask is true) must be an element of one of the tensors passed
   to the kernel, and a store must land in an output. The first access that is not fails the check with the
   index it corresponds to (e.g. `a[20, 3]` for an `a` of 20 rows). This catches a read whose value is
   thrown away later — a load without its row mask whose rows the masked store then drops, or padding keys a
   `tl.where` then sets to -inf — which no comparison of outputs can see: on a GPU such a read can fetch
   another tensor's memory or fault.
2. **Guard bands, on any backend.** Every input lives in the middle of a bigger buffer filled with NaN, so a
   load past the end of a tensor brings NaN into the result if its value is used; every output lives in a
   buffer filled with a sentinel value, so a store past the end shows up as a changed band. On a GPU (no
   interpreter to watch) this is the only protection, and it sees only reads whose values reach the output.

Sizes are deliberately not multiples of the block size (the last block is partial), and the kernels that take
strides get inputs whose rows are further apart than their length, transposed (column-major) inputs and
sliced ones (every other row or column of a bigger tensor), so a kernel must use every stride it is given.
Inputs span realistic magnitudes: scores in the hundreds, and rows whose scores are all very negative.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from labkit import kernels  # noqa: F401  (first: switches on the interpreter when there is no GPU)
from labkit.checks import _passed
from labkit.kernels import backend

SENTINEL = -7.25  # what the output buffers hold before your kernel runs


def _steps(step: int | tuple[int, ...], ndim: int) -> tuple[int, ...]:
    return (step,) * ndim if isinstance(step, int) else tuple(step)


def guarded(shape: tuple[int, ...], dtype: torch.dtype = torch.float32, fill: float = float("nan"),
            pad: int = 64, step: int | tuple[int, ...] = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """(buffer, view): a buffer `pad` larger on each side of every dim, filled with `fill`, and the view of
    its middle with shape `shape` (strided: its rows are further apart than their length). With `step` (one
    per dim, or one for all), the view takes every step-th element along each dim: a sliced tensor."""
    steps = _steps(step, len(shape))
    buffer = torch.full(tuple(s * st + 2 * pad for s, st in zip(shape, steps)), fill, dtype=dtype,
                        device=backend.device())
    view = buffer[tuple(slice(pad, pad + s * st, st) for s, st in zip(shape, steps))]
    return buffer, view


def guarded_input(x: torch.Tensor, pad: int = 64, transposed: bool = False,
                  step: int | tuple[int, ...] = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """x copied into the middle of a NaN-filled buffer: (buffer, view equal to x). With `transposed` (2-D x),
    the buffer holds x.T and the view is its transpose: column-major, so the view's *last* dim has the large
    stride and its first dim stride 1 (a kernel that assumes an inner stride of 1 reads the wrong elements).
    With `step`, the view is every step-th element of the buffer along each dim (see `guarded`)."""
    if not transposed:
        buffer, view = guarded(tuple(x.shape), x.dtype, float("nan"), pad, step)
        view.copy_(x)
        return buffer, view
    if x.ndim != 2:
        raise ValueError(f"transposed needs a 2-D tensor, got {x.ndim}-D")
    buffer, view_t = guarded(tuple(x.shape[::-1]), x.dtype, float("nan"), pad, _steps(step, 2)[::-1])
    view_t.copy_(x.T)
    return buffer, view_t.T


def band_changed(buffer: torch.Tensor, view_shape: tuple[int, ...], fill: float, pad: int = 64,
                 step: int | tuple[int, ...] = 1) -> int:
    """How many elements of the guard band around the middle view (with `step`: and between its elements)
    no longer hold `fill`."""
    outside = torch.ones(buffer.shape, dtype=torch.bool, device=buffer.device)
    outside[tuple(slice(pad, pad + s * st, st) for s, st in zip(view_shape, _steps(step, len(view_shape))))] = False
    band = buffer[outside]
    same = torch.isnan(band) if math.isnan(fill) else band == fill
    return int((~same).sum())


# ------------------------------------------------------------------------------------- watching every access

class OutOfBounds(AssertionError):
    """A lane of a tl.load or tl.store touched an address that is not an element of the tensors it may touch."""


@dataclass
class _Region:
    name: str
    view: torch.Tensor
    writable: bool

    def addresses(self) -> np.ndarray:
        """The byte address of every element of the view, sorted."""
        offsets = np.zeros((), dtype=np.int64)
        for d, (size, stride) in enumerate(zip(self.view.shape, self.view.stride())):
            shape = [1] * self.view.ndim
            shape[d] = size
            offsets = offsets + (np.arange(size, dtype=np.int64) * stride).reshape(shape)
        return np.sort(self.view.data_ptr() + offsets.ravel().astype(np.uint64) * self.view.element_size())

    def index_of(self, address: int) -> tuple[float, ...] | None:
        """The (possibly out-of-range) index into the view that `address` corresponds to, when it lies in the
        buffer the view was cut from (a view made by slicing and transposing a contiguous buffer); else None."""
        view = self.view
        base = view._base if view._base is not None else view
        size = view.element_size()
        flat = address - base.data_ptr()
        if not base.is_contiguous() or base.ndim != view.ndim or flat < 0 or flat >= base.numel() * size \
                or flat % size:
            return None
        at = np.unravel_index(flat // size, tuple(base.shape))
        start = np.unravel_index((view.data_ptr() - base.data_ptr()) // size, tuple(base.shape))
        index = []
        for stride in view.stride():
            # the buffer dim this view dim walks along: the largest buffer stride that divides its stride
            dim = max((e for e in range(base.ndim) if stride % base.stride(e) == 0), key=base.stride)
            step, diff = stride // base.stride(dim), int(at[dim] - start[dim])
            index.append(diff // step if diff % step == 0 else diff / step)
        return tuple(index)


def _describe(region: _Region, address: int, all_outside: bool) -> str:
    """Which index of which tensor an out-of-range address is, and what is out of range about it. When every
    lane of the access missed (`all_outside`), see whether the lanes would have hit if rows were packed."""
    index = region.index_of(address)
    shape = tuple(region.view.shape)
    if index is None:
        return "an address outside every tensor passed to the kernel"
    if any(isinstance(i, float) for i in index):
        return (f"an address between two elements of {region.name} (it is strided: the gap between its "
                f"elements is not part of it)")
    names = ("row", "column") if len(shape) == 2 else ("index",) * len(shape)
    bad = [f"{names[d]} {i} is outside 0..{s - 1}" for d, (i, s) in enumerate(zip(index, shape)) if not 0 <= i < s]
    size = " x ".join(map(str, shape))
    text = f"{region.name}[{', '.join(map(str, index))}] ({region.name} is {size}: {'; '.join(bad)})"
    offset = (address - region.view.data_ptr()) // region.view.element_size()
    if all_outside and len(shape) == 2 and region.view.stride(1) == 1 and 0 <= offset < shape[0] * shape[1]:
        r, c = divmod(offset, shape[1])
        text += (f". That address is where {region.name}[{r}, {c}] would be if its rows were packed "
                 f"{shape[1]} apart, but they are {region.view.stride(0)} apart here: step from row to row by "
                 f"the row stride you are given, not by the row length.")
    return text


class watch_memory:
    """Inside `with watch_memory({"out"}, x=x, out=out)`, kernels run by Triton's interpreter may
    load only elements of the named tensors and store only into the writable ones; the first lane that does
    otherwise raises OutOfBounds (before the access, so a wild address cannot crash the process). Lanes
    whose mask is false are not accesses and are fine. Outside the interpreter (a GPU) this does nothing."""

    def __init__(self, writable: set[str], **tensors: torch.Tensor):
        self.regions = [_Region(name, t, name in writable) for name, t in tensors.items()]

    def __enter__(self) -> watch_memory:
        if backend.INTERPRETER:
            from triton.runtime.interpreter import interpreter_builder as builder

            self.builder, self.saved = builder, vars(builder).copy()
            readable = np.sort(np.concatenate([r.addresses() for r in self.regions]))
            writable = np.sort(np.concatenate([r.addresses() for r in self.regions if r.writable]))
            load, store = builder.create_masked_load, builder.create_masked_store

            def checked_load(ptrs, mask, other, *args):
                self._check("tl.load read", ptrs.data, mask.data, readable)
                return load(ptrs, mask, other, *args)

            def checked_store(ptrs, value, mask, *args):
                self._check("tl.store wrote", ptrs.data, mask.data, writable)
                return store(ptrs, value, mask, *args)

            builder.create_masked_load, builder.create_masked_store = checked_load, checked_store
        return self

    def __exit__(self, *exc) -> None:
        if backend.INTERPRETER:
            for name in ("create_masked_load", "create_masked_store"):
                if name in self.saved:
                    setattr(self.builder, name, self.saved[name])
                else:
                    delattr(self.builder, name)

    def _check(self, op: str, ptrs: np.ndarray, mask: np.ndarray, allowed: np.ndarray) -> None:
        touched = np.asarray(ptrs, dtype=np.uint64)[np.broadcast_to(np.asarray(mask, dtype=bool), np.shape(ptrs))]
        outside = touched[~np.isin(touched, allowed)]
        if not outside.size:
            return
        address = int(outside[0])
        inside = [r for r in self.regions if np.isin(address, r.addresses())]
        near = [r for r in self.regions if r.index_of(address) is not None]
        if inside:  # an element of an input: only a store gets here
            index = ", ".join(map(str, inside[0].index_of(address) or ()))
            where = f"{inside[0].name}[{index}], an input (store into the output only)"
        else:
            where = (_describe(near[0], address, outside.size == touched.size) if near else
                     "an address outside every tensor passed to the kernel")
        if "rows were packed" in where:
            fix = ""
        elif "load" in op:
            fix = ("Mask every load (mask=..., other=...) so that no lane reads outside the tensor: masking the "
                   "store, or discarding the value later with tl.where, does not make the read safe (on a GPU it "
                   "reads other memory, or faults).")
        else:
            fix = "Mask the store so that no lane writes outside the output."
        raise OutOfBounds(f"{op} {outside.size} address(es) outside the tensors it may access; the first is "
                          f"{where.rstrip('.')}. {fix}".rstrip())


def _launch(kernel: Callable, grid: tuple[int, ...], call: str, *args, **meta) -> None:
    """kernel[grid](*args, **meta); a stub's NotImplementedError propagates (the interpreter wraps it), and an
    out-of-bounds access seen by `watch_memory` fails with its description."""
    if not hasattr(kernel, "__getitem__"):
        raise AssertionError(f"{call}: pass the @triton.jit kernel itself, got {type(kernel).__name__}")
    try:
        kernel[grid](*args, **meta)
    except NotImplementedError:
        raise
    except Exception as e:
        cause = e
        while cause is not None and not isinstance(cause, (NotImplementedError, OutOfBounds)):
            cause = cause.__cause__ or cause.__context__
        if isinstance(cause, NotImplementedError):
            raise cause from None
        if isinstance(cause, OutOfBounds):
            raise AssertionError(f"{call}: {cause}") from None
        raise AssertionError(f"{call} failed: {type(e).__name__}: {e}") from e


def _compare(got: torch.Tensor, expected: torch.Tensor, call: str, atol: float, rtol: float,
             what: str = "output", nan_hint: str = "") -> None:
    if torch.isnan(got).any():
        where = torch.nonzero(torch.isnan(got).reshape(got.shape[0], -1).any(-1)).flatten().tolist()
        if backend.INTERPRETER:  # watch_memory saw every load stay inside the tensors: the arithmetic made it
            cause = (f"Every load stayed inside the tensors, so your arithmetic made it: 0/0, inf - inf or "
                     f"0 * inf. {nan_hint}")
        else:
            cause = ("The inputs are surrounded by NaN: you may have loaded past the end of a tensor (mask the "
                     f"loads of the last, partial block: mask=..., other=...), or your arithmetic made it. {nan_hint}")
        raise AssertionError(f"{call}: NaN in your {what} (rows/elements {where[:8]}...). {cause}".rstrip())
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


def _bands_intact(buffer: torch.Tensor, shape: tuple[int, ...], call: str, what: str,
                  step: int | tuple[int, ...] = 1) -> None:
    changed = band_changed(buffer, shape, SENTINEL, step=step)
    if changed:
        raise AssertionError(f"{call}: you wrote {changed} values outside the {what} tensor (into the memory "
                             f"around it). Mask the store of the last, partial block, and address rows by the "
                             f"row stride you are given.")


def _dtype(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


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
        with watch_memory({"out"}, x=xv, y=yv, out=out):
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
    BLOCK = the next power of two >= n_cols. x and out share the row stride; within a row, elements are
    contiguous. Every load and store is watched (see the module docstring)."""
    gen = torch.Generator().manual_seed(1)
    # what, (rows, cols), spread, shift, dtype, row step (2: every other row of a bigger tensor)
    cases = [("3 rows of 16", (3, 16), 1.0, 0.0, torch.float32, 1),
             ("5 rows of 20 (BLOCK 32: 12 padding lanes)", (5, 20), 1.0, 0.0, torch.float32, 1),
             ("2 rows of 1", (2, 1), 1.0, 0.0, torch.float32, 1),
             ("4 rows of 50, large values (scores up to ~300)", (4, 50), 100.0, 0.0, torch.float32, 1),
             ("3 rows of 24, every value near -300 (very negative scores)", (3, 24), 1.0, -300.0, torch.float32, 1),
             ("3 rows of 40 in float16", (3, 40), 3.0, 0.0, torch.float16, 1),
             ("every other row of a bigger tensor (sliced: row_stride = 2 x its buffer's width)", (4, 30), 1.0,
              0.0, torch.float32, 2)]
    for what, (rows, cols), spread, shift, dtype, row_step in cases:
        x = (spread * torch.randn(rows, cols, generator=gen) + shift).to(dtype)
        block = max(16, 1 << (cols - 1).bit_length())
        x_buf, xv = guarded_input(x.to(backend.device()), step=(row_step, 1))
        out_buf, out = guarded((rows, cols), dtype, fill=SENTINEL, step=(row_step, 1))
        call = f"softmax_kernel[({rows},)](x, out, n_cols={cols}, row_stride={xv.stride(0)}, BLOCK={block}) on {what}"
        with watch_memory({"out"}, x=xv, out=out):
            _launch(kernel, (rows,), call, xv, out, cols, xv.stride(0), BLOCK=block)
        _bands_intact(out_buf, (rows, cols), call, "out", step=(row_step, 1))
        got, expected = out.cpu().float(), torch.softmax(x.float(), dim=-1)
        if (torch.isinf(got).any() or torch.isnan(got).any()) and (spread > 10 or shift < -10):
            raise AssertionError(f"{call}: inf/NaN in the output: without subtracting the row max, exp overflows "
                                 f"(scores above ~88 in float32) or underflows to 0 on every lane (scores below "
                                 f"~-104), and the division makes inf or 0/0. Subtract the row max before exp.")
        if not torch.isnan(got).any() and (got.sum(-1) - 1).abs().max() > 1e-2:
            padded = torch.cat([x.float(), torch.zeros(rows, block - cols)], dim=1)  # padding lanes loaded as 0
            hint = (" Yours equals a softmax over the row plus its padding lanes loaded as 0: they must load -inf "
                    "(other=-float('inf')), since exp(-inf) = 0 adds nothing to the sum while other=0 adds "
                    "exp(0 - max) per padding lane."
                    if block > cols and torch.allclose(got, torch.softmax(padded, -1)[:, :cols], atol=1e-4) else "")
            raise AssertionError(f"{call}: rows must sum to 1, yours sum to "
                                 f"{[round(float(s), 4) for s in got.sum(-1)]}.{hint}")
        tol = 2e-3 if dtype == torch.float16 else 1e-5
        _compare(got, expected, call, atol=tol, rtol=tol)
    _passed("softmax_kernel", len(cases))


# ----------------------------------------------------------------------------------------------- matmul

def _matmul_case(kernel: Callable, a: torch.Tensor, b: torch.Tensor, a_layout: str, b_layout: str,
                 blocks: tuple[int, int, int]) -> None:
    """One launch of the student's matmul on a and b laid out as asked; AssertionError saying what is wrong."""
    (m, k), n, dtype = a.shape, b.shape[1], a.dtype
    bm, bn, bk = blocks
    _, av = guarded_input(a.to(backend.device()), transposed=a_layout == "column-major",
                          step=2 if a_layout == "sliced" else 1)
    _, bv = guarded_input(b.to(backend.device()), transposed=b_layout == "column-major",
                          step=2 if b_layout == "sliced" else 1)
    c_buf, c = guarded((m, n), dtype, fill=SENTINEL)
    grid = (-(-m // bm), -(-n // bn))
    layout = "".join(f", {name} {how} (strides {tuple(t.stride())})"
                     for name, t, how in (("a", av, a_layout), ("b", bv, b_layout)) if how != "row-major")
    call = (f"matmul_kernel[{grid}]({m}x{k} @ {k}x{n}, {_dtype(dtype)}{layout}, BLOCK_M={bm}, BLOCK_N={bn}, "
            f"BLOCK_K={bk})")
    with watch_memory({"c"}, a=av, b=bv, c=c):
        _launch(kernel, grid, call, av, bv, c, m, n, k, av.stride(0), av.stride(1), bv.stride(0), bv.stride(1),
                c.stride(0), c.stride(1), BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk)
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


def check_matmul_kernel(kernel: Callable) -> None:
    """matmul_kernel(a, b, c, M, N, K, stride_am, stride_ak, stride_bk, stride_bn, stride_cm, stride_cn,
    BLOCK_M, BLOCK_N, BLOCK_K) on grid (cdiv(M, BLOCK_M), cdiv(N, BLOCK_N)): c = a @ b.

    Every stride matters: a and b come row-major (inner stride 1), column-major (a transposed view, inner
    stride > 1) and sliced (every other row and column of a bigger tensor: both strides > 1, and an offset),
    so a kernel that ignores stride_ak or stride_bn fails here. Every load and store is watched (see the
    module docstring): a tile load without its row, column or K mask fails even when the masked store throws
    the values away."""
    gen = torch.Generator().manual_seed(2)
    # (m, n, k), dtype, layout of a, layout of b
    cases = [((16, 16, 16), torch.float32, "row-major", "row-major"),
             ((32, 48, 64), torch.float32, "row-major", "row-major"),
             ((20, 30, 40), torch.float32, "row-major", "row-major"),
             ((33, 17, 50), torch.float16, "row-major", "row-major"),
             ((5, 40, 7), torch.float32, "row-major", "row-major"),
             ((24, 20, 40), torch.float32, "column-major", "row-major"),
             ((18, 36, 33), torch.float32, "row-major", "column-major"),
             ((40, 24, 48), torch.float32, "column-major", "column-major"),
             ((21, 19, 35), torch.float32, "sliced", "sliced"),
             ((17, 34, 20), torch.float32, "sliced", "column-major")]
    bm = bn = bk = 16
    for (m, n, k), dtype, a_layout, b_layout in cases:
        a = torch.randn(m, k, generator=gen).to(dtype)
        b = torch.randn(k, n, generator=gen).to(dtype)
        try:
            _matmul_case(kernel, a, b, a_layout, b_layout, (bm, bn, bk))
        except AssertionError as wrong:
            if a_layout == b_layout == "row-major":
                raise
            _matmul_case(kernel, a, b, "row-major", "row-major", (bm, bn, bk))  # raises if the layout is not it
            raise AssertionError(f"{wrong}\nThe same product with row-major inputs passes, so the layout is what "
                                 f"breaks it (a {a_layout}, b {b_layout}: an inner stride that is not 1). "
                                 f"Address a[m, k] as a_ptr + m * stride_am + k * stride_ak and b[k, n] as "
                                 f"b_ptr + k * stride_bk + n * stride_bn: use all four strides.") from None
    _passed("matmul_kernel", len(cases))


# ----------------------------------------------------------------------------------------------- attention

def _unmasked_padding(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, bn: int) -> torch.Tensor:
    """The output of a tile loop that gives the padding keys (loaded as 0) a score of 0 instead of -inf."""
    s = q.float() @ k.float().T * scale
    s = torch.cat([s, torch.zeros(s.shape[0], (-s.shape[1]) % bn)], dim=1)
    return torch.softmax(s, dim=-1)[:, :k.shape[0]] @ v.float()


def _tile_loop(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, bn: int, rescale_acc: bool,
               rescale_l: bool) -> torch.Tensor:
    """The online-softmax tile loop in float64, optionally without one of its two rescalings."""
    q, k, v = q.double(), k.double(), v.double()
    m = torch.full((q.shape[0],), -math.inf, dtype=torch.float64)
    l, acc = torch.zeros_like(m), torch.zeros(q.shape[0], v.shape[1], dtype=torch.float64)
    for start in range(0, k.shape[0], bn):
        s = q @ k[start:start + bn].T * scale
        m_new = torch.maximum(m, s.amax(1))
        alpha, p = torch.exp(m - m_new), torch.exp(s - m_new[:, None])
        l = (l * alpha if rescale_l else l) + p.sum(1)
        acc = (acc * alpha[:, None] if rescale_acc else acc) + p @ v[start:start + bn]
        m = m_new
    return (acc / l[:, None]).float()


def check_attention_kernel(kernel: Callable) -> None:
    """attention_kernel(q, k, v, o, N, row_stride, HEAD_DIM, scale, BLOCK_M, BLOCK_N, BLOCK_D) on grid
    (cdiv(N, BLOCK_M),): one head, no mask, q/k/v/o [N, HEAD_DIM] sharing a row stride; o = softmax(q k^T scale) v.

    Every load and store is watched (see the module docstring): loading the padding rows of the last query or
    key tile without a mask fails even when a masked store or a tl.where discards them. One case has scores
    that are all very negative (about -200): a running max started at 0 instead of -inf underflows there."""
    gen = torch.Generator().manual_seed(3)
    # (n, d), spread of q and k, dtype, what is special, row step (2: every other row of bigger tensors)
    cases = [((16, 16), 1.0, torch.float32, "", 1), ((40, 16), 1.0, torch.float32, "", 1),
             ((50, 32), 3.0, torch.float32, "", 1), ((37, 24), 1.0, torch.float32, "", 1),
             ((33, 16), 1.0, torch.float16, "", 1),
             ((40, 32), 1.0, torch.float32, "every score near -200", 1),
             ((35, 16), 1.0, torch.float32, "every other row of bigger tensors", 2)]
    bm = bn = 16
    for (n, d), spread, dtype, special, row_step in cases:
        block_d = max(16, 1 << (d - 1).bit_length())
        q, k, v = (torch.randn(n, d, generator=gen) * s for s in (spread, spread, 1.0))
        # later keys score higher, so the running max grows tile after tile: the rescale matters
        k = k + torch.linspace(0, 2 * spread, n)[:, None] * q.mean(0)[None, :].sign()
        if special.startswith("every score"):  # q points away from every key: q.k * scale ~ -200
            q, k = q * 0.1 - 200 / math.sqrt(d), k * 0.3 + 1.0
        q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
        (_, qv), (_, kv), (_, vv) = (guarded_input(t.to(backend.device()), step=(row_step, 1)) for t in (q, k, v))
        o_buf, o = guarded((n, d), dtype, fill=SENTINEL, step=(row_step, 1))
        assert qv.stride() == kv.stride() == vv.stride() == o.stride()
        scale = 1 / math.sqrt(d)
        grid = (-(-n // bm),)
        call = (f"attention_kernel[{grid}](N={n}, HEAD_DIM={d}, row_stride={qv.stride(0)}, {_dtype(dtype)}, "
                f"BLOCK_M={bm}, BLOCK_N={bn}, BLOCK_D={block_d}{', ' + special if special else ''})")
        with watch_memory({"o"}, q=qv, k=kv, v=vv, o=o):
            _launch(kernel, grid, call, qv, kv, vv, o, n, qv.stride(0), d, scale, BLOCK_M=bm, BLOCK_N=bn,
                    BLOCK_D=block_d)
        _bands_intact(o_buf, (n, d), call, "o", step=(row_step, 1))
        scores = q.float() @ k.float().T * scale
        expected = torch.softmax(scores, dim=-1) @ v.float()
        got = o.cpu().float()
        if not torch.isnan(got).any() and n % bn and torch.allclose(got, _unmasked_padding(q, k, v, scale, bn),
                                                                     atol=1e-3, rtol=1e-3):
            raise AssertionError(f"{call}: your output is what you get when the {(-n) % bn} padding keys of the "
                                 f"last tile score 0 instead of -inf. Set the scores of keys >= N to -inf "
                                 f"(tl.where) before the max and the exp.")
        nan_rows = torch.isnan(got).any(-1)
        nan_hint = ""
        if nan_rows.any() and float(scores[nan_rows].max()) < -80:
            nan_hint = (f"Those rows' scores are all below {float(scores[nan_rows].max()):.0f}: exp(s - m) "
                        f"underflows to 0 unless m is the real running max, so start m at -inf, not 0 "
                        f"(the sum l is then 0, and acc / l is 0/0).")
        if not nan_rows.any() and n > bn and not torch.allclose(got, expected, atol=1e-2, rtol=1e-2):
            variants = (("the accumulator acc", (False, True)), ("the running sum l", (True, False)),
                        ("neither l nor acc", (False, False)))
            named = [why for why, flags in variants
                     if torch.allclose(got, _tile_loop(q, k, v, scale, bn, *flags), atol=1e-3, rtol=1e-3)]
            seen = (f" Yours equals a tile loop that does not rescale {named[0]} when the running max grows."
                    if named else "")
            raise AssertionError(f"{call}: wrong output with {-(-n // bn)} key tiles (max |diff| "
                                 f"{float((got - expected).abs().max()):.3g}), right with one.{seen} When a tile "
                                 f"raises the running max m, rescale both the running sum l and the accumulator "
                                 f"acc by exp(m_old - m_new) before adding the new tile.")
        tol = 3e-3 if dtype == torch.float16 else _fp32_dot_tol(1e-4)
        _compare(got, expected, call, atol=tol, rtol=tol, what="o", nan_hint=nan_hint)
    _passed("attention_kernel", len(cases))
