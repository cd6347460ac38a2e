"""The GPU execution model — threads, blocks, grids, shared memory, barriers — run on the CPU by numba's
CUDA simulator.

A CUDA kernel is written for ONE thread. A launch `kernel[blocks, threads_per_block](...)` starts a grid of
blocks; every thread finds its element from `cuda.blockIdx`, `cuda.blockDim` and `cuda.threadIdx`, and
guards against running past the end (the grid is rounded up to whole blocks). Threads of one block share a
small, fast scratchpad (`cuda.shared.array`) and wait for each other at `cuda.syncthreads()`.

The kernels here go from a map to a tiled matrix multiply. The two matmuls count, per thread, how many
values each reads from global memory (slow, off-chip) and from shared memory (fast, on-chip): tiling trades
global reads for shared ones, which is why it wins on a real GPU.

The simulator runs each thread as a Python thread: correct and inspectable (you can print inside a kernel),
but slow, so sizes stay tiny. It must be switched on (NUMBA_ENABLE_CUDASIM=1) before `numba.cuda` is first
imported; this module does that at import and fails clearly if `numba.cuda` was already imported without it.
"""
from __future__ import annotations

import os
import sys

import numpy as np

if "numba.cuda" in sys.modules and os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":
    raise ImportError("labkit.gpu_sim needs numba's CUDA simulator, which must be switched on before numba.cuda is "
                      "first imported, but numba.cuda was already imported without it. Import labkit.gpu_sim "
                      "before anything that imports numba.cuda, or set NUMBA_ENABLE_CUDASIM=1 in the environment.")
os.environ["NUMBA_ENABLE_CUDASIM"] = "1"
if "numba" in sys.modules:  # numba's CPU JIT (chapter 1) may be loaded already: make it re-read the variable
    import numba

    numba.config.reload_config()
from numba import cuda  # noqa: E402

if not cuda.jit.__module__.startswith("numba.cuda.simulator"):
    raise ImportError("numba's CUDA simulator did not switch on (set NUMBA_ENABLE_CUDASIM=1 before importing numba)")

TPB = 8        # threads per block (1-D kernels); shared arrays need their size at compile time
TILE = 4       # tile width of the tiled matmul: blocks of TILE x TILE threads
GLOBAL, SHARED = 0, 1  # columns of the per-thread read counters


# ------------------------------------------------------------------------------------------------ kernels

@cuda.jit
def whoami_kernel(block_of, thread_of):
    """Each thread writes its block and thread index into the slot of the element it owns."""
    i = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    if i < block_of.shape[0]:
        block_of[i] = cuda.blockIdx.x
        thread_of[i] = cuda.threadIdx.x


@cuda.jit
def map_kernel(a, out):
    i = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x  # my element: block offset + my lane
    if i < a.shape[0]:                                          # guard: the last block may hang over the end
        out[i] = a[i] + 10


@cuda.jit
def zip_kernel(a, b, out):
    i = cuda.grid(1)  # the same index, as numba spells it
    if i < out.shape[0]:
        out[i] = a[i] + b[i]


@cuda.jit
def map2d_kernel(a, out):
    row, col = cuda.grid(2)  # 2-D blocks: (blockIdx.x * blockDim.x + threadIdx.x, ... .y)
    if row < a.shape[0] and col < a.shape[1]:
        out[row, col] = a[row, col] + 10


@cuda.jit
def block_sum_kernel(a, out):
    """out[b] = sum of block b's TPB elements: a tree reduction in shared memory, log2(TPB) rounds."""
    cache = cuda.shared.array(TPB, dtype=np.float32)
    i, t = cuda.grid(1), cuda.threadIdx.x
    cache[t] = a[i] if i < a.shape[0] else 0.0
    cuda.syncthreads()                  # every thread's value is in shared memory before anyone reads
    stride = TPB // 2
    while stride > 0:
        if t < stride:
            cache[t] += cache[t + stride]
        cuda.syncthreads()              # the round is finished before the next one reads its results
        stride //= 2
    if t == 0:
        out[cuda.blockIdx.x] = cache[0]


@cuda.jit
def block_prefix_sum_kernel(a, out):
    """Inclusive prefix sum within each block of TPB (Hillis-Steele: log2(TPB) rounds, two shared buffers)."""
    buf = cuda.shared.array((2, TPB), dtype=np.float32)
    i, t = cuda.grid(1), cuda.threadIdx.x
    buf[0, t] = a[i] if i < a.shape[0] else 0.0
    cuda.syncthreads()
    src, offset = 0, 1
    while offset < TPB:
        value = buf[src, t]
        if t >= offset:
            value += buf[src, t - offset]
        buf[1 - src, t] = value         # write the other buffer: nobody reads a value being overwritten
        cuda.syncthreads()
        src, offset = 1 - src, offset * 2
    if i < a.shape[0]:
        out[i] = buf[src, t]


@cuda.jit
def matmul_naive_kernel(a, b, c, reads):
    """c[i, j] = sum_k a[i, k] b[k, j]: each thread reads its whole row of a and column of b from global memory."""
    i, j = cuda.grid(2)
    if i < c.shape[0] and j < c.shape[1]:
        acc = 0.0
        for k in range(a.shape[1]):
            acc += a[i, k] * b[k, j]
            reads[i, j, GLOBAL] += 2
        c[i, j] = acc


@cuda.jit
def matmul_tiled_kernel(a, b, c, reads):
    """The same product with TILE x TILE blocks: the block loads one tile of a and one of b into shared memory
    (one global read per thread each), waits, and every thread then reads TILE values of each from there."""
    sa = cuda.shared.array((TILE, TILE), dtype=np.float32)
    sb = cuda.shared.array((TILE, TILE), dtype=np.float32)
    i, j = cuda.grid(2)
    ti, tj = cuda.threadIdx.x, cuda.threadIdx.y
    acc = 0.0
    for k0 in range(0, a.shape[1], TILE):
        # cooperative load: thread (ti, tj) fetches one element of each tile (0 past the edges)
        sa[ti, tj] = a[i, k0 + tj] if i < a.shape[0] and k0 + tj < a.shape[1] else 0.0
        sb[ti, tj] = b[k0 + ti, j] if k0 + ti < b.shape[0] and j < b.shape[1] else 0.0
        if i < c.shape[0] and j < c.shape[1]:
            reads[i, j, GLOBAL] += 2
        cuda.syncthreads()              # the tiles are complete before anyone uses them
        for k in range(TILE):
            acc += sa[ti, k] * sb[k, tj]
        if i < c.shape[0] and j < c.shape[1]:
            reads[i, j, SHARED] += 2 * TILE
        cuda.syncthreads()              # everyone is done with the tiles before they are overwritten
    if i < c.shape[0] and j < c.shape[1]:
        c[i, j] = acc


# ------------------------------------------------------------------------------------------------ launches

def _vector(x: object, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float32)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array, got shape {arr.shape}")
    return arr


def blocks_for(n: int, threads_per_block: int) -> int:
    """How many blocks cover n elements: ceil(n / threads_per_block) (the last block may be partial)."""
    if n < 1 or threads_per_block < 1:
        raise ValueError(f"need n >= 1 and threads_per_block >= 1, got {n}, {threads_per_block}")
    return -(-n // threads_per_block)


def whoami(n: int, threads_per_block: int) -> tuple[np.ndarray, np.ndarray]:
    """(block index, thread index) of the thread that owns each of n elements."""
    block_of, thread_of = np.full(n, -1, dtype=np.int64), np.full(n, -1, dtype=np.int64)
    whoami_kernel[blocks_for(n, threads_per_block), threads_per_block](block_of, thread_of)
    return block_of, thread_of


def map_add10(a: object, threads_per_block: int = TPB) -> np.ndarray:
    a = _vector(a, "a")
    out = np.zeros_like(a)
    map_kernel[blocks_for(a.size, threads_per_block), threads_per_block](a, out)
    return out


def zip_add(a: object, b: object, threads_per_block: int = TPB) -> np.ndarray:
    a, b = _vector(a, "a"), _vector(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same length, got {a.size} and {b.size}")
    out = np.zeros_like(a)
    zip_kernel[blocks_for(a.size, threads_per_block), threads_per_block](a, b, out)
    return out


def map2d_add10(a: object, block: tuple[int, int] = (4, 4)) -> np.ndarray:
    a = np.asarray(a, dtype=np.float32)
    if a.ndim != 2 or a.size == 0:
        raise ValueError(f"a must be a non-empty 2-D array, got shape {a.shape}")
    out = np.zeros_like(a)
    grid = (blocks_for(a.shape[0], block[0]), blocks_for(a.shape[1], block[1]))
    map2d_kernel[grid, block](a, out)
    return out


def block_sums(a: object) -> np.ndarray:
    """The sum of each block of TPB elements (the last block padded with zeros)."""
    a = _vector(a, "a")
    out = np.zeros(blocks_for(a.size, TPB), dtype=np.float32)
    block_sum_kernel[out.size, TPB](a, out)
    return out


def block_prefix_sums(a: object) -> np.ndarray:
    """The inclusive prefix sum restarted at every block of TPB elements."""
    a = _vector(a, "a")
    out = np.zeros_like(a)
    block_prefix_sum_kernel[blocks_for(a.size, TPB), TPB](a, out)
    return out


def prefix_sum(a: object) -> np.ndarray:
    """A whole-array inclusive prefix sum: scan each block on the "GPU", then add the earlier blocks' totals
    (one more tiny pass; a real implementation would scan the block totals on the GPU too)."""
    a = _vector(a, "a")
    scanned = block_prefix_sums(a)
    totals = block_sums(a)
    offsets = np.concatenate([[0.0], np.cumsum(totals[:-1])]).astype(np.float32)
    return scanned + np.repeat(offsets, TPB)[:a.size]


def matmul(a: object, b: object, tiled: bool) -> tuple[np.ndarray, np.ndarray]:
    """(c, reads) for c = a @ b with TILE x TILE blocks; reads[i, j] = (global reads, shared reads) of the thread
    computing c[i, j]."""
    a, b = np.asarray(a, dtype=np.float32), np.asarray(b, dtype=np.float32)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"need [M, K] @ [K, N], got {a.shape} and {b.shape}")
    c = np.zeros((a.shape[0], b.shape[1]), dtype=np.float32)
    reads = np.zeros((*c.shape, 2), dtype=np.int64)
    grid = (blocks_for(c.shape[0], TILE), blocks_for(c.shape[1], TILE))
    (matmul_tiled_kernel if tiled else matmul_naive_kernel)[grid, (TILE, TILE)](a, b, c, reads)
    return c, reads


def reads_per_thread(k: int, tile: int = TILE) -> dict[str, dict[str, int]]:
    """What the counters should show for one thread of an [M, K] @ [K, N] product: naive 2K global reads;
    tiled 2 ceil(K / tile) global + 2 tile ceil(K / tile) shared."""
    steps = -(-k // tile)
    return {"naive": {"global": 2 * k, "shared": 0}, "tiled": {"global": 2 * steps, "shared": 2 * tile * steps}}
