"""Three Triton kernels that teach the program/block model: vector add, fused row softmax, tiled matmul.

A Triton kernel is written for ONE program (a CUDA thread block). The launch grid says how many programs
run; each finds its piece of the work from `tl.program_id`, and works on whole blocks (tiles) of values at
once: `tl.arange(0, BLOCK)` is a vector of offsets, `tl.load`/`tl.store` move a tile between global memory
and registers, and a boolean `mask` switches off the lanes that fall past the end of the data (the last
block is usually partial). The compiler decides how the block's values map onto threads.

- `vector_add`: one program per BLOCK elements, the masked last block.
- `softmax`: one program per row; the row is read once and written once (fused), where an unfused torch
  softmax reads and writes the whole matrix several times (`softmax_bytes`).
- `matmul`: one program per BLOCK_M x BLOCK_N output tile, looping over K in BLOCK_K steps with `tl.dot`;
  programs are numbered in groups of GROUP_M tile-rows so that programs running at the same time share
  input tiles in the cache (`matmul_program_tiles`, `tiles_loaded`).
`tile_explorer` draws which tiles each program reads and writes, one precomputed frame per program.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import backend
from .backend import block_sizes, check_dot_dtype, check_tile


def _check(x: object, name: str, ndim: int) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {tuple(x.shape)}")
    if x.device != backend.device():
        raise ValueError(f"{name} must be on {backend.device()} for this backend, got {x.device}")
    return x


# ---------------------------------------------------------------------------------------------- vector add

@triton.jit
def add_kernel(x_ptr, y_ptr, out_ptr, n, BLOCK: tl.constexpr):
    pid = tl.program_id(0)                        # which block of BLOCK elements is mine
    offs = pid * BLOCK + tl.arange(0, BLOCK)      # my elements' offsets: a vector, not a loop
    mask = offs < n                               # the last block runs past the end: switch those lanes off
    x = tl.load(x_ptr + offs, mask=mask)
    y = tl.load(y_ptr + offs, mask=mask)
    tl.store(out_ptr + offs, x + y, mask=mask)


def vector_add(x: torch.Tensor, y: torch.Tensor, block: int | None = None) -> torch.Tensor:
    """x + y for 1-D tensors of the same length and dtype, with cdiv(n, block) programs."""
    x, y = _check(x, "x", 1), _check(y, "y", 1)
    if x.shape != y.shape or x.dtype != y.dtype:
        raise ValueError(f"x and y must have the same shape and dtype, got {tuple(x.shape)} {x.dtype} and "
                         f"{tuple(y.shape)} {y.dtype}")
    cfg = block_sizes("vector")
    block = cfg["BLOCK"] if block is None else block
    check_tile(block=block)
    x, y = x.contiguous(), y.contiguous()
    out = torch.empty_like(x)
    n = x.numel()
    add_kernel[(triton.cdiv(n, block),)](x, y, out, n, BLOCK=block, num_warps=cfg["num_warps"])
    return out


# ------------------------------------------------------------------------------------------ fused softmax

@triton.jit
def softmax_kernel(x_ptr, out_ptr, n_cols, x_row_stride, out_row_stride, BLOCK: tl.constexpr):
    row = tl.program_id(0)                        # one program per row; BLOCK >= n_cols holds the whole row
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    # padding lanes read -inf: they never win the max and exp(-inf) = 0 adds nothing to the sum
    x = tl.load(x_ptr + row * x_row_stride + cols, mask=mask, other=-float("inf")).to(tl.float32)
    x = x - tl.max(x, axis=0)                     # subtract the max: exp never overflows
    e = tl.exp(x)
    y = e / tl.sum(e, axis=0)
    tl.store(out_ptr + row * out_row_stride + cols, y.to(out_ptr.dtype.element_ty), mask=mask)


def softmax(x: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dim of a 2-D tensor: one program per row, the row read once, written once.

    The whole row sits in one block (BLOCK = next power of two >= n_cols), so this suits rows up to a few
    thousand values; longer rows need the online softmax of FlashAttention (kernels.flash).
    """
    x = _check(x, "x", 2)
    if not x.dtype.is_floating_point:
        raise TypeError(f"x must be a floating-point tensor, got {x.dtype}")
    n_rows, n_cols = x.shape
    if n_cols == 0:
        raise ValueError("x must have at least one column")
    block = max(16, triton.next_power_of_2(n_cols))
    if x.stride(1) != 1:
        x = x.contiguous()
    out = torch.empty_like(x)
    softmax_kernel[(n_rows,)](x, out, n_cols, x.stride(0), out.stride(0), BLOCK=block,
                              num_warps=block_sizes("vector")["num_warps"])
    return out


def softmax_bytes(n_rows: int, n_cols: int, element_size: int = 4) -> dict[str, int]:
    """Global-memory bytes moved by a softmax over [n_rows, n_cols], fused (our kernel) vs unfused.

    Unfused = torch's five separate elementwise/reduction ops, each reading its input from and writing its
    output to memory: max (read MN, write M), subtract (read MN + M, write MN), exp (read MN, write MN),
    sum (read MN, write M), divide (read MN + M, write MN). Fused: read MN, write MN.
    """
    if n_rows < 1 or n_cols < 1 or element_size < 1:
        raise ValueError(f"need positive sizes, got n_rows={n_rows}, n_cols={n_cols}, element_size={element_size}")
    mn, m = n_rows * n_cols, n_rows
    unfused = (mn + m) + (mn + m + mn) + (mn + mn) + (mn + m) + (mn + m + mn)
    return {"fused": 2 * mn * element_size, "unfused": unfused * element_size}


# ------------------------------------------------------------------------------------------ tiled matmul

@triton.jit
def grouped_tile(pid, n_m, n_n, GROUP_M: tl.constexpr):
    """Program id -> (tile row, tile column), walking GROUP_M tile-rows at a time, column by column."""
    per_group = GROUP_M * n_n                     # programs in one group of GROUP_M tile-rows
    group = pid // per_group
    first_m = group * GROUP_M
    size_m = tl.minimum(n_m - first_m, GROUP_M)   # the last group may be shorter
    pid_m = first_m + (pid % per_group) % size_m
    pid_n = (pid % per_group) // size_m
    return pid_m, pid_n


@triton.jit
def matmul_kernel(a_ptr, b_ptr, c_ptr, M, N, K,
                  stride_am, stride_ak, stride_bk, stride_bn, stride_cm, stride_cn,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    pid_m, pid_n = grouped_tile(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N), GROUP_M)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # rows of C (and A) this program owns
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # columns of C (and B)
    rk = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)   # accumulate in fp32 whatever the inputs are
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + rk
        # 2-D tiles: a column vector of rows + a row vector of columns broadcast to a [BM, BK] grid of addresses
        a = tl.load(a_ptr + rm[:, None] * stride_am + kk[None, :] * stride_ak,
                    mask=(rm[:, None] < M) & (kk[None, :] < K), other=0.0)
        b = tl.load(b_ptr + kk[:, None] * stride_bk + rn[None, :] * stride_bn,
                    mask=(kk[:, None] < K) & (rn[None, :] < N), other=0.0)
        acc += tl.dot(a, b)                       # the tensor-core op: [BM, BK] @ [BK, BN]
    c = acc.to(c_ptr.dtype.element_ty)
    tl.store(c_ptr + rm[:, None] * stride_cm + rn[None, :] * stride_cn, c,
             mask=(rm[:, None] < M) & (rn[None, :] < N))


def matmul(a: torch.Tensor, b: torch.Tensor, block_m: int | None = None, block_n: int | None = None,
           block_k: int | None = None, group_m: int | None = None) -> torch.Tensor:
    """a @ b for [M, K] @ [K, N] (fp32 or fp16; fp16 accumulates in fp32), one program per output tile.

    Tile sizes default to `block_sizes("matmul")`; on a GPU, `backend.tune` picks among a few candidates.
    """
    a, b = _check(a, "a", 2), _check(b, "b", 2)
    if a.shape[1] != b.shape[0]:
        raise ValueError(f"inner dimensions must match: a is {tuple(a.shape)}, b is {tuple(b.shape)}")
    if a.dtype != b.dtype:
        raise TypeError(f"a and b must have the same dtype, got {a.dtype} and {b.dtype}")
    check_dot_dtype(a, b)
    (m, k), n = a.shape, b.shape[1]
    c = torch.empty(m, n, dtype=a.dtype, device=a.device)
    default = block_sizes("matmul")
    given = {name: v for name, v in (("BLOCK_M", block_m), ("BLOCK_N", block_n), ("BLOCK_K", block_k),
                                     ("GROUP_M", group_m)) if v is not None}
    check_tile(**{key: v for key, v in given.items() if key != "GROUP_M"})
    if group_m is not None and (isinstance(group_m, bool) or not isinstance(group_m, int) or group_m < 1):
        raise ValueError(f"group_m must be an int >= 1, got {group_m!r}")

    def run(cfg: dict) -> None:
        grid = (triton.cdiv(m, cfg["BLOCK_M"]) * triton.cdiv(n, cfg["BLOCK_N"]),)
        matmul_kernel[grid](a, b, c, m, n, k, a.stride(0), a.stride(1), b.stride(0), b.stride(1),
                            c.stride(0), c.stride(1), BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"],
                            BLOCK_K=cfg["BLOCK_K"], GROUP_M=cfg["GROUP_M"], num_warps=cfg["num_warps"],
                            num_stages=cfg["num_stages"])

    candidates = [{**default, **given}]
    if not given and not backend.INTERPRETER:  # a few shapes of tile that are often best on recent GPUs
        candidates += [{**default, "BLOCK_M": 64, "BLOCK_N": 128, "num_warps": 4},
                       {**default, "BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 64, "num_warps": 4}]
    run(backend.tune("matmul", (m, n, k, a.dtype), candidates, run))
    return c


def matmul_program_tiles(m: int, n: int, block_m: int, block_n: int, group_m: int) -> list[tuple[int, int]]:
    """(tile row, tile column) of C for each program id, in the order `matmul_kernel` numbers them
    (the same arithmetic as `grouped_tile`, in Python). group_m=1 is plain row-major order."""
    if min(m, n, block_m, block_n, group_m) < 1:
        raise ValueError(f"sizes must be >= 1, got m={m}, n={n}, block_m={block_m}, block_n={block_n}, "
                         f"group_m={group_m}")
    n_m, n_n = -(-m // block_m), -(-n // block_n)
    tiles = []
    for pid in range(n_m * n_n):
        per_group = group_m * n_n
        first_m = (pid // per_group) * group_m
        size_m = min(n_m - first_m, group_m)
        tiles.append((first_m + (pid % per_group) % size_m, (pid % per_group) // size_m))
    return tiles


def tiles_loaded(tiles: list[tuple[int, int]], wave: int) -> list[int]:
    """For programs running `wave` at a time (one wave fills the GPU), the number of distinct input tile-rows
    of A plus tile-columns of B each wave needs: fewer distinct = more reuse from the L2 cache."""
    if wave < 1:
        raise ValueError(f"wave must be >= 1, got {wave}")
    return [len({r for r, _ in tiles[i:i + wave]}) + len({c for _, c in tiles[i:i + wave]})
            for i in range(0, len(tiles), wave)]


# ------------------------------------------------------------------------------------ the tile picture

def _frame_png(grids: list[tuple[str, tuple[int, int], dict[tuple[int, int], str]]], title: str) -> bytes:
    """One PNG of several tile grids side by side; each grid colours some tiles (name, (rows, cols), {tile: colour})."""
    import io

    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2.6 * len(grids) + 0.4, 3.0), dpi=72)
    FigureCanvasAgg(fig)
    # narrow grids (one tile wide) get a narrow panel but enough room for their title
    axes = fig.subplots(1, len(grids), squeeze=False,
                        gridspec_kw={"width_ratios": [max(cols, 3) for _, (_, cols), _ in grids]})[0]
    for ax, (name, (rows, cols), colours) in zip(axes, grids):
        ax.set_xlim(0, cols)
        ax.set_ylim(rows, 0)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(name, fontsize=9)
        for (r, c), colour in colours.items():
            ax.add_patch(matplotlib.patches.Rectangle((c, r), 1, 1, color=colour))
        for r in range(rows + 1):
            ax.axhline(r, color="0.7", lw=0.5)
        for c in range(cols + 1):
            ax.axvline(c, color="0.7", lw=0.5)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.92))
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


READ, WRITE, DONE = "#4c9be8", "#e8774c", "#f3d3c4"


def matmul_frames(m: int, n: int, k: int, block_m: int, block_n: int, block_k: int,
                  group_m: int) -> list[tuple[str, list]]:
    """For each program: (title, grids) with the A tiles it reads (blue), the C tile it writes (orange) and
    the C tiles earlier programs wrote (pale)."""
    tiles = matmul_program_tiles(m, n, block_m, block_n, group_m)
    n_m, n_n, n_k = -(-m // block_m), -(-n // block_n), -(-k // block_k)
    frames = []
    for pid, (r, c) in enumerate(tiles):
        done = {t: DONE for t in tiles[:pid]}
        grids = [("A (reads a tile-row)", (n_m, n_k), {(r, j): READ for j in range(n_k)}),
                 ("B (reads a tile-column)", (n_k, n_n), {(j, c): READ for j in range(n_k)}),
                 ("C (writes one tile)", (n_m, n_n), {**done, (r, c): WRITE})]
        frames.append((f"program {pid}: C tile ({r}, {c}), loops over {n_k} K tiles", grids))
    return frames


def tile_explorer(frames: list[tuple[str, list]], caption: str = ""):
    """A slider over programs; each position shows a precomputed PNG (in a Stack switched by jslink, so the
    static book steps through programs without a kernel)."""
    import html

    import ipywidgets as widgets

    if not frames:
        raise ValueError("tile_explorer needs at least one frame")
    images = [widgets.Image(value=_frame_png(grids, title), format="png") for title, grids in frames]
    stack = widgets.Stack(images, selected_index=0)
    slider = widgets.IntSlider(min=0, max=len(frames) - 1, value=0, description="program")
    widgets.jslink((slider, "value"), (stack, "selected_index"))
    parts = [slider, stack]
    if caption:
        parts.append(widgets.HTML(f"<small>{html.escape(caption)}</small>"))
    return widgets.VBox(parts)
