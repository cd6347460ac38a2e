"""FlashAttention in PyTorch: tiled attention with an online softmax, its IO cost, and its memory.

Standard attention writes the [N, N] scores S = QK^T/sqrt(d) to memory, reads them back for the softmax, writes the
probabilities P, and reads them again for PV. On a GPU that memory is HBM (big, ~1.5-2 TB/s on an A100) while the
arithmetic happens next to the on-chip SRAM (small, ~19 TB/s): moving N^2 numbers, not the 4N^2d flops, is the
cost. FlashAttention (Dao et al. 2022, arXiv:2205.14135) never materialises S or P. It walks over tiles: a block
of queries stays on chip while blocks of keys and values stream past, and an *online softmax* keeps, per query
row, the running maximum m, the running denominator l and an unnormalised output accumulator acc:

    m' = max(m, rowmax(S_tile))                       the new running maximum
    l' = exp(m - m') * l + rowsum(exp(S_tile - m'))    old terms rescaled to the new maximum, new ones added
    acc' = exp(m - m') * acc + exp(S_tile - m') V_tile

After the last tile, out = acc / l and logsumexp = m + log l. Every exponent is <= 0, so nothing overflows, and
the result is exactly softmax(S) V (up to rounding). The backward pass (FlashAttention-2, Dao 2023,
arXiv:2307.08691) stores only out and logsumexp and recomputes P tile by tile: P_tile = exp(S_tile - lse).

This module has the tile update (`online_softmax_update`, the lab's exercise), the tiled forward and backward and
their `torch.autograd.Function` (`flash_attention`), the causal tile map (tiles entirely above the diagonal are
skipped), the HBM traffic of both algorithms (`naive_attention_io`, `flash_attention_io`, and an `IOCounter` the
tiled code fills as it runs), a peak-memory probe (`peak_memory`), and the notebook's step-through widget.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["online_softmax_update", "flash_attention_forward", "flash_attention_backward", "FlashAttention",
           "flash_attention", "causal_tile_grid", "IOCounter", "naive_attention_io", "flash_attention_io",
           "blocks_for_sram", "peak_memory", "machine", "benchmark", "format_benchmark",
           "online_softmax_explorer"]

Update = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor], tuple[Tensor, Tensor, Tensor]]


# ----------------------------------------------------------------------------------------------------------
# the tile update

def online_softmax_update(m: Tensor, l: Tensor, acc: Tensor, scores: Tensor,
                          v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """One step of the online softmax: fold one tile of scores [..., Bq, Bk] and values [..., Bk, Dv] into the
    running max m [..., Bq], denominator l [..., Bq] and unnormalised output acc [..., Bq, Dv].

    Start from m = -inf, l = 0, acc = 0; after the last tile, acc / l is softmax(scores) @ v over all tiles.
    Masked scores are -inf and contribute exp(-inf) = 0.
    """
    m_new = torch.maximum(m, scores.amax(dim=-1))
    # a row whose scores are all -inf so far has m_new = -inf; shift by 0 there so that exp(-inf - 0) = 0
    # instead of exp(-inf - (-inf)) = NaN
    shift = torch.where(torch.isneginf(m_new), torch.zeros_like(m_new), m_new)
    alpha = torch.exp(m - shift)              # <= 1: how much the old terms shrink under the new maximum
    p = torch.exp(scores - shift[..., None])  # <= 1: this tile's unnormalised probabilities
    return m_new, alpha * l + p.sum(dim=-1), alpha[..., None] * acc + p @ v


# ----------------------------------------------------------------------------------------------------------
# argument checks

def _check_block(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return value


def _check_qkv(q: object, k: object, v: object, causal: bool) -> None:
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.ndim < 2:
            raise ValueError(f"{name} must have rank >= 2 ([..., T, D]), got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k and v must have the same dtype, got {q.dtype}, {k.dtype} and {v.dtype}")
    if not (q.shape[:-2] == k.shape[:-2] == v.shape[:-2]):
        raise ValueError(f"q, k and v must have the same leading (batch, head) dims, got {tuple(q.shape)}, "
                         f"{tuple(k.shape)} and {tuple(v.shape)} (repeat grouped key/value heads first)")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k must have the same head size (last dim), got {q.shape[-1]} and {k.shape[-1]}")
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(f"k and v must have the same number of positions (dim -2), got {k.shape[-2]} "
                         f"and {v.shape[-2]}")
    if q.shape[-2] == 0 or k.shape[-2] == 0:
        raise ValueError(f"need at least one query and one key, got Tq={q.shape[-2]}, Tk={k.shape[-2]}")
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
    if causal and q.shape[-2] > k.shape[-2]:
        raise ValueError(f"causal attention needs at most as many queries as keys (the queries are the last "
                         f"positions of the key sequence), got Tq={q.shape[-2]} > Tk={k.shape[-2]}")


# ----------------------------------------------------------------------------------------------------------
# which tiles a causal mask lets through

SKIPPED, PARTIAL, FULL = 0, 1, 2


def _tile_kind(i0: int, i1: int, j0: int, j1: int, offset: int, causal: bool) -> int:
    """Query rows i0..i1-1, key columns j0..j1-1; query i may see key j when j <= i + offset."""
    if not causal or j1 - 1 <= i0 + offset:
        return FULL      # even the tile's first query sees its last key
    if j0 > i1 - 1 + offset:
        return SKIPPED   # even the tile's last query cannot see its first key: nothing to compute
    return PARTIAL       # the diagonal crosses the tile: compute, then mask inside it


def causal_tile_grid(t_q: int, t_k: int, block_q: int, block_k: int, causal: bool = True) -> Tensor:
    """[ceil(t_q/block_q), ceil(t_k/block_k)] int tensor: 0 = tile skipped (every entry masked), 1 = computed
    and masked inside (the diagonal crosses it), 2 = computed in full."""
    block_q, block_k = _check_block(block_q, "block_q"), _check_block(block_k, "block_k")
    if causal and t_q > t_k:
        raise ValueError(f"causal attention needs t_q <= t_k, got t_q={t_q} > t_k={t_k}")
    offset = t_k - t_q
    return torch.tensor([[_tile_kind(i0, min(i0 + block_q, t_q), j0, min(j0 + block_k, t_k), offset, causal)
                          for j0 in range(0, t_k, block_k)] for i0 in range(0, t_q, block_q)])


# ----------------------------------------------------------------------------------------------------------
# IO accounting: what moves between "HBM" (the tensors q, k, v, out) and "SRAM" (the tile being worked on)

@dataclass
class IOCounter:
    """Elements the tiled code moves between HBM and on-chip memory, and the tiles it computes or skips.

    Pass one to `flash_attention_forward(..., counter=...)`: each tile load (Q_i, K_j, V_j) adds to `reads`,
    each store (O_i, lse_i) to `writes`. Multiply by the element size for bytes.
    """
    reads: int = 0
    writes: int = 0
    tiles_computed: int = 0
    tiles_skipped: int = 0

    @property
    def total(self) -> int:
        return self.reads + self.writes


def naive_attention_io(t_q: int, t_k: int, d: int, d_v: int | None = None, batch: int = 1) -> int:
    """HBM elements read + written by standard attention (the paper's Algorithm 0), for `batch` heads:

    read Q, K, write S = QK^T; read S, write P = softmax(S); read P and V, write O = PV.
    That is Tq d + Tk d + 4 Tq Tk + Tk d_v + Tq d_v: Θ(Nd + N²) for Tq = Tk = N.
    """
    d_v = d if d_v is None else d_v
    return batch * (t_q * d + t_k * d + 4 * t_q * t_k + t_k * d_v + t_q * d_v)


def flash_attention_io(t_q: int, t_k: int, d: int, block_q: int, block_k: int, causal: bool = False,
                       d_v: int | None = None, batch: int = 1) -> int:
    """HBM elements read + written by `flash_attention_forward` with these blocks, counted tile by tile.

    Each query block Q_i is read once and its output O_i and logsumexp written once; every computed tile reads
    one key block and one value block. Without a mask that is 2Nd + N + 2N²d / block_q for Tq = Tk = N: the
    keys and values are streamed N / block_q times, which is why a bigger on-chip memory (a bigger block_q)
    means less traffic.
    """
    d_v = d if d_v is None else d_v
    grid = causal_tile_grid(t_q, t_k, block_q, block_k, causal)
    rows = [min(block_q, t_q - i0) for i0 in range(0, t_q, block_q)]
    cols = torch.tensor([min(block_k, t_k - j0) for j0 in range(0, t_k, block_k)])
    total = 0
    for bq, kinds in zip(rows, grid):
        total += bq * d + bq * d_v + bq                         # Q_i in, O_i and lse_i out
        total += int(cols[kinds != SKIPPED].sum()) * (d + d_v)  # K_j and V_j of each computed tile
    return batch * total


def blocks_for_sram(m: int, d: int) -> tuple[int, int]:
    """(block_q, block_k) for an on-chip memory of m elements, following the paper: the block of the *outer*
    loop is ceil(m / 4d), the inner one min(that, d). (The paper's outer loop runs over key/value blocks; ours,
    as in FlashAttention-2, over query blocks, so the roles swap.) The working set Q_i, acc, K_j, V_j, S_ij is
    then at most about 1.25 m, and the traffic 2Nd + N + 8N²d²/m = Θ(N²d²/m)."""
    if isinstance(m, bool) or not isinstance(m, int) or isinstance(d, bool) or not isinstance(d, int) or d < 1:
        raise ValueError(f"m and d must be ints, d >= 1, got m={m!r}, d={d!r}")
    if m < 4 * d:
        raise ValueError(f"the on-chip memory must hold at least one row of Q, K, V and the output: "
                         f"m >= 4d = {4 * d} elements, got m={m}")
    outer = math.ceil(m / (4 * d))
    return outer, min(outer, d)


# ----------------------------------------------------------------------------------------------------------
# forward and backward

def flash_attention_forward(q: Tensor, k: Tensor, v: Tensor, causal: bool = False, block_q: int = 64,
                            block_k: int = 64, update: Update = online_softmax_update,
                            counter: IOCounter | None = None) -> tuple[Tensor, Tensor]:
    """Tiled attention: q [..., Tq, D], k [..., Tk, D], v [..., Tk, Dv] -> (out [..., Tq, Dv], lse [..., Tq]).

    lse is the log-sum-exp of each query's scaled scores, what the backward pass needs to recompute the
    probabilities. Never holds more than one [block_q, block_k] tile of scores. `update` is the online-softmax
    tile update (swap in your own); `counter` records HBM traffic and tiles computed/skipped. With causal=True,
    query i sees key j <= i + Tk - Tq (as `labkit.attention.causal_mask`), and fully masked tiles are skipped.
    """
    _check_qkv(q, k, v, causal)
    block_q, block_k = _check_block(block_q, "block_q"), _check_block(block_k, "block_k")
    t_q, t_k, d = q.shape[-2], k.shape[-2], q.shape[-1]
    offset = t_k - t_q
    scale = 1.0 / math.sqrt(d)
    out = q.new_empty(*q.shape[:-1], v.shape[-1])
    lse = q.new_empty(q.shape[:-1])
    n_k_blocks = math.ceil(t_k / block_k)
    for i0 in range(0, t_q, block_q):
        i1 = min(i0 + block_q, t_q)
        q_i = q[..., i0:i1, :] * scale  # load the query block once; scaling here saves a pass over each tile
        m = q.new_full(q_i.shape[:-1], float("-inf"))
        l = q.new_zeros(q_i.shape[:-1])
        acc = q.new_zeros(*q_i.shape[:-1], v.shape[-1])
        if counter is not None:
            counter.reads += q_i.numel()
        for jb, j0 in enumerate(range(0, t_k, block_k)):
            j1 = min(j0 + block_k, t_k)
            kind = _tile_kind(i0, i1, j0, j1, offset, causal)
            if kind == SKIPPED:  # the mask only moves right as j grows: every later tile is skipped too
                if counter is not None:
                    counter.tiles_skipped += n_k_blocks - jb
                break
            k_j, v_j = k[..., j0:j1, :], v[..., j0:j1, :]
            s = q_i @ k_j.transpose(-2, -1)  # [..., Bq, Bk]: the only scores that ever exist
            if kind == PARTIAL:
                s = s.masked_fill(~_tile_mask(i0, i1, j0, j1, offset, s.device), float("-inf"))
            m, l, acc = update(m, l, acc, s, v_j)
            if counter is not None:
                counter.reads += k_j.numel() + v_j.numel()
                counter.tiles_computed += 1
        out[..., i0:i1, :] = acc / l[..., None]  # normalise once, at the end
        lse[..., i0:i1] = m + torch.log(l)
        if counter is not None:
            counter.writes += acc.numel() + l.numel()
    return out, lse


def _tile_mask(i0: int, i1: int, j0: int, j1: int, offset: int, device: torch.device) -> Tensor:
    """[i1 - i0, j1 - j0] bool, True where query i may see key j (j <= i + offset)."""
    rows = torch.arange(i0, i1, device=device)[:, None]
    cols = torch.arange(j0, j1, device=device)[None, :]
    return cols <= rows + offset


def flash_attention_backward(q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, grad_out: Tensor,
                             causal: bool = False, block_q: int = 64,
                             block_k: int = 64) -> tuple[Tensor, Tensor, Tensor]:
    """(dq, dk, dv) from q, k, v, the forward's out and lse, and dL/dout, recomputing P one tile at a time.

    With P = softmax(S), out = PV: dV = P^T dO, dP = dO V^T, dS = P * (dP - rowsum(dO * out)) (the softmax
    Jacobian, using rowsum(P * dP) = rowsum(dO * out)), dQ = dS K / sqrt(d), dK = dS^T Q / sqrt(d).
    The outer loop runs over key/value blocks so that dK_j, dV_j are accumulated on chip and written once.
    """
    _check_qkv(q, k, v, causal)
    block_q, block_k = _check_block(block_q, "block_q"), _check_block(block_k, "block_k")
    t_q, t_k, d = q.shape[-2], k.shape[-2], q.shape[-1]
    offset = t_k - t_q
    scale = 1.0 / math.sqrt(d)
    dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    delta = (grad_out * out).sum(dim=-1)  # [..., Tq]: rowsum(P * dP), one number per query
    for j0 in range(0, t_k, block_k):
        j1 = min(j0 + block_k, t_k)
        k_j, v_j = k[..., j0:j1, :], v[..., j0:j1, :]
        dk_j, dv_j = torch.zeros_like(k_j), torch.zeros_like(v_j)
        for i0 in range(0, t_q, block_q):
            i1 = min(i0 + block_q, t_q)
            kind = _tile_kind(i0, i1, j0, j1, offset, causal)
            if kind == SKIPPED:
                continue
            q_i, do_i = q[..., i0:i1, :], grad_out[..., i0:i1, :]
            s = (q_i @ k_j.transpose(-2, -1)) * scale
            if kind == PARTIAL:
                s = s.masked_fill(~_tile_mask(i0, i1, j0, j1, offset, s.device), float("-inf"))
            p = torch.exp(s - lse[..., i0:i1, None])  # the forward's probabilities, recomputed
            dv_j += p.transpose(-2, -1) @ do_i
            ds = p * (do_i @ v_j.transpose(-2, -1) - delta[..., i0:i1, None])
            dq[..., i0:i1, :] += (ds @ k_j) * scale
            dk_j += (ds.transpose(-2, -1) @ q_i) * scale
        dk[..., j0:j1, :], dv[..., j0:j1, :] = dk_j, dv_j
    return dq, dk, dv


class FlashAttention(torch.autograd.Function):
    """Autograd for tiled attention: forward returns (out, lse) and saves q, k, v, out, lse — O(N) memory,
    not the O(N²) probabilities that autograd through naive attention keeps; backward recomputes them."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, causal: bool = False, block_q: int = 64,
                block_k: int = 64) -> tuple[Tensor, Tensor]:
        out, lse = flash_attention_forward(q, k, v, causal, block_q, block_k)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.causal, ctx.block_q, ctx.block_k = causal, block_q, block_k
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, grad_out: Tensor, grad_lse: Tensor | None):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = flash_attention_backward(q, k, v, out, lse, grad_out.contiguous(), ctx.causal,
                                              ctx.block_q, ctx.block_k)
        return dq, dk, dv, None, None, None


def flash_attention(q: Tensor, k: Tensor, v: Tensor, causal: bool = False, block_q: int = 64, block_k: int = 64,
                    return_lse: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """softmax(q k^T / sqrt(D)) v, tiled, with gradients: the same result as
    `labkit.attention.scaled_dot_product_attention(q, k, v, causal=causal)` without its [Tq, Tk] matrices.

    q [..., Tq, D], k [..., Tk, D], v [..., Tk, Dv] with equal leading dims. Returns out [..., Tq, Dv] (and the
    log-sum-exp [..., Tq] with return_lse=True).
    """
    _check_qkv(q, k, v, causal)
    _check_block(block_q, "block_q"), _check_block(block_k, "block_k")
    out, lse = FlashAttention.apply(q, k, v, causal, block_q, block_k)
    return (out, lse) if return_lse else out


# ----------------------------------------------------------------------------------------------------------
# measured peak memory: one fresh process per measurement, reading the kernel's resident-set high-water mark

_METHODS = ("naive", "flash", "sdpa", "alloc")


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not found in /proc/self/status")


def _peak_child(method: str, n: int, d: int, heads: int, causal: bool, block: int) -> dict:
    """Runs inside the fresh process: allocate q, k, v, reset the high-water mark, run, report the rise."""
    from .attention import scaled_dot_product_attention

    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, heads, n, d, generator=gen) for _ in range(3))
    runs = {
        "naive": lambda: scaled_dot_product_attention(q, k, v, causal=causal),
        "flash": lambda: flash_attention_forward(q, k, v, causal, block, block)[0],
        "sdpa": lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal),
        "alloc": lambda: torch.ones(n, d),  # validation: a known-size tensor must show up as n * d * 4 bytes
    }
    with torch.no_grad():
        # warm-up on a tiny input: loads the kernels' code and torch's lazily created state, which would
        # otherwise count as "memory used by attention"
        small = [x[..., :min(n, 2 * block), :].clone() for x in (q, k, v)]
        _ = (scaled_dot_product_attention(*small, causal=causal), flash_attention_forward(*small, causal, block, block),
             torch.nn.functional.scaled_dot_product_attention(*small, is_causal=causal))
        del small, _
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM (peak resident set) to the current resident set
        before = _status_kib("VmRSS")
        result = runs[method]()
        peak = _status_kib("VmHWM")
    return {"method": method, "n": n, "d": d, "heads": heads, "causal": causal, "block": block,
            "peak_bytes": (peak - before) * 1024, "result_bytes": result.numel() * result.element_size()}


def peak_memory(method: str, n: int, d: int = 64, heads: int = 1, causal: bool = False, block: int = 128) -> dict:
    """Peak extra resident memory (bytes) of one attention forward pass on q, k, v [1, heads, n, d] fp32, CPU.

    method: "naive" (chapter 3's scaled_dot_product_attention), "flash" (flash_attention_forward with square
    blocks of `block`), "sdpa" (torch.nn.functional.scaled_dot_product_attention) or "alloc" (allocates an
    [n, d] tensor: a check of the method itself). Runs in a fresh Python process: Linux's VmHWM, the peak
    resident set, is reset by writing 5 to /proc/self/clear_refs after the inputs exist; the rise of VmHWM over
    the resident set at that moment is the memory the call needed at its peak (the output included). A fresh
    process, and glibc's mmap threshold fixed at 64 KiB, mean that memory freed earlier is not still resident
    and silently reused: allocations of 64 KiB or more are all seen (smaller ones can hide in the heap).
    """
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    for name, value in (("n", n), ("d", d), ("heads", heads), ("block", block)):
        _check_block(value, name)
    if not os.path.exists("/proc/self/clear_refs"):
        raise RuntimeError("peak_memory needs Linux's /proc/self/clear_refs and /proc/self/status")
    code = (f"import json; from labkit.flash import _peak_child; "
            f"print(json.dumps(_peak_child({method!r}, {n}, {d}, {heads}, {causal}, {block})))")
    # glibc serves blocks >= MALLOC_MMAP_THRESHOLD_ bytes with their own mmap and unmaps them when freed. Fixing
    # the threshold at 64 KiB (by default it grows after frees) means memory freed by the warm-up is not still
    # resident, ready to be reused unseen: every tile-sized or larger allocation shows up in VmHWM
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": str(64 * 1024)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the measuring process failed: {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def machine() -> dict:
    """What a measurement ran on: CPU model, logical cores, torch version, threads, date (UTC)."""
    import datetime
    import platform

    model = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    return {"cpu": model, "logical_cores": os.cpu_count(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "python": platform.python_version(),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def benchmark(ns: tuple[int, ...] = (1024, 2048, 4096, 8192), d: int = 64, heads: int = 1, block: int = 128,
              repeats: int = 3) -> dict:
    """Peak memory (fresh process each) and best-of-`repeats` time of naive attention (chapter 3), the tiled
    forward (square blocks), its causal variant and torch's SDPA, on q, k, v [1, heads, n, d] fp32, one thread.

    Returns {"machine": ..., "config": ..., "rows": [one dict per n]}; ratios are tiled ÷ naive from this run.
    """
    from .attention import scaled_dot_product_attention
    from .timing import best_of

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rows = []
    try:
        for n in ns:
            row: dict = {"n": n}
            for method in ("naive", "flash", "sdpa"):
                row[f"{method}_peak_bytes"] = peak_memory(method, n, d, heads, block=block)["peak_bytes"]
            gen = torch.Generator().manual_seed(0)
            q, k, v = (torch.randn(1, heads, n, d, generator=gen) for _ in range(3))
            with torch.no_grad():
                runs = {"naive": lambda: scaled_dot_product_attention(q, k, v),
                        "flash": lambda: flash_attention_forward(q, k, v, False, block, block),
                        "flash_causal": lambda: flash_attention_forward(q, k, v, True, block, block),
                        "sdpa": lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v)}
                # round-robin rather than one method after the other: on a shared machine a busy spell then
                # slows every method a little instead of one method a lot; the best of `repeats` is kept
                for name, fn in runs.items():
                    row[f"{name}_s"] = best_of(fn, 1, warmup=1)
                for _ in range(repeats - 1):
                    for name, fn in runs.items():
                        row[f"{name}_s"] = min(row[f"{name}_s"], best_of(fn, 1, warmup=0))
                row["max_abs_diff"] = float((flash_attention_forward(q, k, v, False, block, block)[0]
                                             - scaled_dot_product_attention(q, k, v)).abs().max())
            row["memory_ratio"] = row["flash_peak_bytes"] / row["naive_peak_bytes"]
            rows.append(row)
        info = machine()
        info["threads"] = 1
    finally:
        torch.set_num_threads(threads)
    return {"machine": info, "config": {"d": d, "heads": heads, "batch": 1, "block": block, "dtype": "float32",
                                        "repeats": repeats}, "rows": rows}


def format_benchmark(result: dict) -> str:
    """The benchmark as a fixed-width table (MiB and milliseconds), then the machine it ran on."""
    lines = [f"{'N':>5} {'naive MiB':>10} {'tiled MiB':>10} {'SDPA MiB':>9} {'tiled/naive':>12} "
             f"{'naive ms':>9} {'tiled ms':>9} {'causal ms':>10} {'SDPA ms':>8} {'tiled/naive':>12} {'tiled/SDPA':>11}"]
    mib = 2 ** 20
    for r in result["rows"]:
        lines.append(f"{r['n']:>5} {r['naive_peak_bytes'] / mib:>10.1f} {r['flash_peak_bytes'] / mib:>10.2f} "
                     f"{r['sdpa_peak_bytes'] / mib:>9.2f} {r['memory_ratio']:>12.4f} {r['naive_s'] * 1e3:>9.1f} "
                     f"{r['flash_s'] * 1e3:>9.1f} {r['flash_causal_s'] * 1e3:>10.1f} {r['sdpa_s'] * 1e3:>8.1f} "
                     f"{r['flash_s'] / r['naive_s']:>11.2f}x {r['flash_s'] / r['sdpa_s']:>10.2f}x")
    c, m = result["config"], result["machine"]
    lines.append(f"q, k, v [1, {c['heads']}, N, {c['d']}] {c['dtype']}, tiles {c['block']} x {c['block']}; "
                 f"{m['cpu']}, {m['logical_cores']} logical cores, {m['threads']} thread, torch {m['torch']}, "
                 f"{m['date']}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------
# the widget: one query block, its key/value tiles one at a time

def _trace(scores: Tensor, v: Tensor, block_k: int) -> list[dict]:
    """The online-softmax state after each tile of a [Bq, N] score block: m, l, acc / l and the weights so far."""
    m = torch.full(scores.shape[:-1], float("-inf"), dtype=scores.dtype)
    l = torch.zeros(scores.shape[:-1], dtype=scores.dtype)
    acc = torch.zeros(scores.shape[0], v.shape[-1], dtype=scores.dtype)
    steps = []
    for j0 in range(0, scores.shape[-1], block_k):
        j1 = min(j0 + block_k, scores.shape[-1])
        m, l, acc = online_softmax_update(m, l, acc, scores[:, j0:j1], v[j0:j1])
        weights = torch.zeros_like(scores)
        weights[:, :j1] = torch.exp(scores[:, :j1] - m[:, None]) / l[:, None]  # softmax over the keys seen so far
        steps.append({"seen": j1, "m": m.clone(), "l": l.clone(), "out": acc / l[:, None], "weights": weights})
    return steps


def online_softmax_explorer(scores: Tensor, v: Tensor, block_k: int = 8, row: int = 0):
    """A widget: step through the key/value tiles of one query block and watch the state converge.

    scores [Bq, N] (one query block's scaled scores), v [N, Dv]. For each step the view shows, for query `row`,
    the weights the online softmax implies so far (exp(s - m) / l over the keys seen) against the final
    softmax, and a table of m, l and the distance |acc / l - out| for every row of the block. All views are
    precomputed images in a `Stack` that a slider switches through `jslink`, so it works without a kernel.
    """
    import html
    import io

    import ipywidgets as widgets
    import matplotlib
    from matplotlib.figure import Figure

    if not isinstance(scores, Tensor) or scores.ndim != 2 or not isinstance(v, Tensor) or v.ndim != 2 \
            or v.shape[0] != scores.shape[1]:
        raise ValueError(f"need scores [Bq, N] and v [N, Dv], got {getattr(scores, 'shape', scores)} and "
                         f"{getattr(v, 'shape', v)}")
    _check_block(block_k, "block_k")
    if not 0 <= row < scores.shape[0]:
        raise ValueError(f"row must be in [0, {scores.shape[0]}), got {row}")
    scores, v = scores.double(), v.double()
    final_w = torch.softmax(scores, dim=-1)
    final_out = final_w @ v
    steps = _trace(scores, v, block_k)
    views = []
    with matplotlib.rc_context({"figure.dpi": 72}):
        for t, step in enumerate(steps):
            fig = Figure(figsize=(7.5, 2.6))
            ax = fig.add_subplot()
            keys = range(scores.shape[1])
            ax.bar(keys, final_w[row].numpy(), color="lightgray", label="final softmax")
            ax.bar(keys, step["weights"][row].numpy(), color="tab:blue", width=0.5,
                   label=f"online, after tile {t + 1}")
            ax.axvspan(-0.5, step["seen"] - 0.5, color="tab:blue", alpha=0.06)
            ax.set_xlabel("key")
            ax.set_ylabel("weight")
            ax.set_ylim(0, float(final_w[row].max()) * 1.6)
            ax.set_title(f"query row {row}: keys 0..{step['seen'] - 1} seen ({t + 1} of {len(steps)} tiles)",
                         fontsize=10)
            ax.legend(fontsize=8, loc="upper right")
            fig.tight_layout()
            buffer = io.BytesIO()
            fig.savefig(buffer, format="png")
            err = (step["out"] - final_out).abs().amax(dim=-1)
            rows = "".join(f"<tr><td>{r}</td><td>{float(step['m'][r]):.3f}</td><td>{float(step['l'][r]):.3f}</td>"
                           f"<td>{float(err[r]):.2e}</td></tr>" for r in range(scores.shape[0]))
            table = ("<table><tr><th>row</th><th>running max m</th><th>denominator l</th>"
                     f"<th>max |acc/l − out|</th></tr>{rows}</table>")
            views.append(widgets.VBox([widgets.Image(value=buffer.getvalue(), format="png"),
                                       widgets.HTML(html.unescape(table))]))
    stack = widgets.Stack(views, selected_index=0)
    slider = widgets.SelectionSlider(options=[str(t + 1) for t in range(len(steps))], index=0,
                                     description="tiles seen")
    widgets.jslink((slider, "index"), (stack, "selected_index"))
    return widgets.VBox([slider, stack])
