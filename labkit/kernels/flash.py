"""FlashAttention-2 forward pass as one Triton kernel: the tile loop of chapter 7, on the GPU's terms.

One program owns BLOCK_M query rows of one (batch, head). It loads its Q tile once, then streams K and V
in tiles of BLOCK_N keys through on-chip memory, keeping for each query row a running max m, a running
sum l of exp(score - m) and an unnormalised output acc (the online softmax). When a new tile raises the
max, the old l and acc are rescaled by exp(m_old - m_new) — forget that and the result is wrong. After the
last tile it writes O = acc / l and the log-sum-exp m + log l (what a backward pass needs to recompute the
softmax without storing it). The [N, N] score matrix never exists in global memory.

- causal: query i (absolute position i + N_k - N_q) sees keys j <= that; the loop stops at the diagonal,
  so tiles entirely above it are never loaded (about half the work for a square causal mask).
- grouped-query attention: H query heads share H_kv key/value heads; query head h reads kv head
  h // (H // H_kv) — just a different pointer offset, no copy of K and V.
- head dims 16..128 (a power of two or not: the head dim is padded to a power-of-two block and masked).

The backward pass (`flash_attention_backward`, and `FlashAttentionFunction` for autograd) recomputes the
softmax tile by tile from the saved lse instead of storing it: one kernel accumulates dK, dV per key block,
another dQ per query block.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from . import backend
from .backend import block_sizes, check_dot_dtype, check_tile

MIN_HEAD_DIM, MAX_HEAD_DIM = 16, 128  # below 16 tl.dot's K is too small; above 128 tiles overflow on-chip memory


@triton.jit
def flash_fwd_kernel(q_ptr, k_ptr, v_ptr, o_ptr, lse_ptr,
                     sq_b, sq_h, sq_n, sq_d, sk_b, sk_h, sk_n, sk_d, sv_b, sv_h, sv_n, sv_d,
                     so_b, so_h, so_n, so_d,
                     H, GROUP, N_Q, N_K, HEAD_DIM, qk_scale,
                     CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    start_m = tl.program_id(0)                    # which block of query rows
    bh = tl.program_id(1)                         # which (batch, query head)
    b, h = bh // H, bh % H
    h_kv = h // GROUP                             # grouped-query attention: the kv head of this query head
    rows = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_N)
    dims = tl.arange(0, BLOCK_D)
    dmask = dims < HEAD_DIM

    q = tl.load(q_ptr + b * sq_b + h * sq_h + rows[:, None] * sq_n + dims[None, :] * sq_d,
                mask=(rows[:, None] < N_Q) & dmask[None, :], other=0.0)
    k_base = k_ptr + b * sk_b + h_kv * sk_h
    v_base = v_ptr + b * sv_b + h_kv * sv_h

    m_i = tl.full((BLOCK_M,), -float("inf"), dtype=tl.float32)  # running max (base-2 units)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)                 # running sum of exp2(s - m)
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)         # running unnormalised output

    offset = N_K - N_Q                            # causal: query row r sits at absolute position r + offset
    if CAUSAL:
        hi = tl.minimum(N_K, (start_m + 1) * BLOCK_M + offset)  # no tile right of the diagonal is touched
    else:
        hi = N_K
    for start_n in range(0, hi, BLOCK_N):
        keys = start_n + cols
        kmask = keys < N_K
        k = tl.load(k_base + keys[:, None] * sk_n + dims[None, :] * sk_d,
                    mask=kmask[:, None] & dmask[None, :], other=0.0)
        s = tl.dot(q, tl.trans(k)) * qk_scale     # [BM, BN] scores, times log2(e) so we can use exp2
        allowed = kmask[None, :]
        if CAUSAL:
            allowed = allowed & (keys[None, :] <= rows[:, None] + offset)
        s = tl.where(allowed, s, -float("inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp2(m_i - m_new)              # rescale what was accumulated under the old max
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(v_base + keys[:, None] * sv_n + dims[None, :] * sv_d,
                    mask=kmask[:, None] & dmask[None, :], other=0.0)  # masked: 0 * NaN would still be NaN
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new

    o = acc / l_i[:, None]
    tl.store(o_ptr + b * so_b + h * so_h + rows[:, None] * so_n + dims[None, :] * so_d,
             o.to(o_ptr.dtype.element_ty), mask=(rows[:, None] < N_Q) & dmask[None, :])
    lse = (m_i + tl.log2(l_i)) * 0.6931471805599453   # back to natural log: log sum_j exp(score_j)
    tl.store(lse_ptr + bh * N_Q + rows, lse, mask=rows < N_Q)


def _check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> None:
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.ndim != 4:
            raise ValueError(f"{name} must be [B, heads, N, D] (rank 4), got shape {tuple(x.shape)}")
        if x.device != backend.device():
            raise ValueError(f"{name} must be on {backend.device()} for this backend, got {x.device}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    check_dot_dtype(q)
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    if q.shape[0] != k.shape[0] or q.shape[3] != k.shape[3]:
        raise ValueError(f"q and k must share batch size and head dim, got {tuple(q.shape)} and {tuple(k.shape)}")
    d = q.shape[3]
    if not MIN_HEAD_DIM <= d <= MAX_HEAD_DIM:
        raise ValueError(f"head dim must be in [{MIN_HEAD_DIM}, {MAX_HEAD_DIM}] for this kernel, got {d}")
    if q.shape[1] % k.shape[1]:
        raise ValueError(f"the number of query heads ({q.shape[1]}) must be a multiple of the number of "
                         f"key/value heads ({k.shape[1]})")
    if causal and q.shape[2] > k.shape[2]:
        raise ValueError(f"causal attention needs N_q <= N_k (queries are the last positions), got "
                         f"N_q={q.shape[2]} > N_k={k.shape[2]}")
    if min(q.shape[2], k.shape[2]) < 1:
        raise ValueError("need at least one query and one key")


def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
                    scale: float | None = None, block_m: int | None = None,
                    block_n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q k^T * scale) v for q [B, H, N_q, D], k/v [B, H_kv, N_k, D] -> (o [B, H, N_q, D], lse).

    lse [B, H, N_q] (fp32) is log sum_j exp(score_ij), the softmax normaliser of each query row. scale
    defaults to 1/sqrt(D). fp32 or fp16 (bf16 too, on a GPU); accumulates in fp32.
    """
    _check_inputs(q, k, v, causal)
    b, h, n_q, d = q.shape
    h_kv, n_k = k.shape[1], k.shape[2]
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    default = block_sizes("attention")
    given = {key: val for key, val in (("BLOCK_M", block_m), ("BLOCK_N", block_n)) if val is not None}
    check_tile(**given)
    o = torch.empty_like(q)
    lse = torch.empty(b, h, n_q, dtype=torch.float32, device=q.device)
    block_d = max(16, triton.next_power_of_2(d))

    def run(cfg: dict) -> None:
        grid = (triton.cdiv(n_q, cfg["BLOCK_M"]), b * h)
        flash_fwd_kernel[grid](q, k, v, o, lse, *q.stride(), *k.stride(), *v.stride(), *o.stride(),
                               h, h // h_kv, n_q, n_k, d, scale * 1.4426950408889634,  # log2(e)
                               CAUSAL=bool(causal), BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"],
                               BLOCK_D=block_d, num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])

    candidates = [{**default, **given}]
    if not given and not backend.INTERPRETER:
        candidates += [{**default, "BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4},
                       {**default, "BLOCK_M": 128, "BLOCK_N": 32, "num_warps": 4, "num_stages": 4}]
    run(backend.tune("flash_fwd", (b, h, h_kv, n_q, n_k, d, bool(causal), q.dtype), candidates, run))
    return o, lse


def attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
                        scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The plain computation in fp32 (scores materialised): (o, lse), to test the kernel against."""
    from labkit.attention import causal_mask, repeat_kv

    _check_inputs(q, k, v, causal)
    rep = q.shape[1] // k.shape[1]
    qf, kf, vf = q.float(), repeat_kv(k.float(), rep), repeat_kv(v.float(), rep)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    s = qf @ kf.transpose(-2, -1) * scale
    if causal:
        s = s.masked_fill(~causal_mask(q.shape[2], k.shape[2], s.device), float("-inf"))
    return torch.softmax(s, dim=-1) @ vf, torch.logsumexp(s, dim=-1)


def attention_flops(b: int, h: int, n_q: int, n_k: int, d: int, causal: bool) -> float:
    """4 B H N_q N_k D (two matmuls of 2 N_q N_k D each), halved for causal (the usual convention)."""
    return 4.0 * b * h * n_q * n_k * d * (0.5 if causal else 1.0)


def attention_program_tiles(n_q: int, n_k: int, block_m: int, block_n: int, causal: bool) -> list[dict]:
    """For each query block (one program per (batch, head)): which key tiles the kernel loads and which of
    them need the causal mask (those the diagonal crosses). Same bounds as `flash_fwd_kernel`."""
    if min(n_q, n_k, block_m, block_n) < 1:
        raise ValueError("sizes must be >= 1")
    if causal and n_q > n_k:
        raise ValueError(f"causal attention needs n_q <= n_k, got {n_q} > {n_k}")
    offset = n_k - n_q
    out = []
    for start_m in range(-(-n_q // block_m)):
        hi = min(n_k, (start_m + 1) * block_m + offset) if causal else n_k
        loaded = list(range(-(-hi // block_n)))
        first_row = start_m * block_m
        masked = [t for t in loaded if causal and (t + 1) * block_n - 1 > first_row + offset]
        out.append({"q_block": start_m, "kv_tiles": loaded, "masked": masked})
    return out


def attention_frames(n_q: int, n_k: int, block_m: int, block_n: int, causal: bool) -> list[tuple[str, list]]:
    """Frames for `basics.tile_explorer`: per program, the score tiles it computes (blue, diagonal ones
    darker), the K/V tiles it loads and the O tile it writes."""
    from .basics import DONE, READ, WRITE

    plan = attention_program_tiles(n_q, n_k, block_m, block_n, causal)
    n_m, n_n = len(plan), -(-n_k // block_n)
    frames = []
    for p in plan:
        r = p["q_block"]
        scores = {(r, t): ("#1f5fa8" if t in p["masked"] else READ) for t in p["kv_tiles"]}
        done = {(i, 0): DONE for i in range(r)}
        grids = [("scores QK^T (never stored)", (n_m, n_n), scores),
                 ("K, V loaded", (n_n, 1), {(t, 0): READ for t in p["kv_tiles"]}),
                 ("O (writes)", (n_m, 1), {**done, (r, 0): WRITE})]
        skipped = n_n - len(p["kv_tiles"])
        frames.append((f"program {r}: {len(p['kv_tiles'])} K/V tiles loaded, {len(p['masked'])} masked, "
                       f"{skipped} skipped", grids))
    return frames


# ------------------------------------------------------------------------------ backward (the stretch goal)
# With P = softmax(S) recomputed from the saved lse (P = exp(S - lse)), and Delta_i = sum_d dO_id O_id:
#   dV = P^T dO,  dP = dO V^T,  dS = P * (dP - Delta),  dQ = dS K * scale,  dK = dS^T Q * scale.
# Two kernels, so no program ever writes another's output (no atomics): one per K/V block accumulates dK, dV
# over the query blocks; one per query block accumulates dQ over the key blocks. Causal skips the same tiles.

@triton.jit
def flash_bwd_dkdv_kernel(q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr,
                          H, GROUP, N_Q, N_K, HEAD_DIM, scale,
                          CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                          BLOCK_D: tl.constexpr):
    # all tensors contiguous: q, do [B, H, N_Q, D]; k, v [B, H_kv, N_K, D]; dk, dv [B, H, N_K, D] (per query head)
    start_n = tl.program_id(0)
    bh = tl.program_id(1)
    b, h = bh // H, bh % H
    kv_off = (b * (H // GROUP) + h // GROUP) * N_K * HEAD_DIM
    keys = start_n * BLOCK_N + tl.arange(0, BLOCK_N)
    dims = tl.arange(0, BLOCK_D)
    kv_mask = (keys[:, None] < N_K) & (dims[None, :] < HEAD_DIM)
    k = tl.load(k_ptr + kv_off + keys[:, None] * HEAD_DIM + dims[None, :], mask=kv_mask, other=0.0)
    v = tl.load(v_ptr + kv_off + keys[:, None] * HEAD_DIM + dims[None, :], mask=kv_mask, other=0.0)
    dk = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    dv = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    offset = N_K - N_Q
    if CAUSAL:
        lo = tl.maximum(start_n * BLOCK_N - offset, 0) // BLOCK_M * BLOCK_M  # earlier query blocks see none of us
    else:
        lo = 0
    for start_m in range(lo, N_Q, BLOCK_M):
        rows = start_m + tl.arange(0, BLOCK_M)
        q_mask = (rows[:, None] < N_Q) & (dims[None, :] < HEAD_DIM)
        q_off = bh * N_Q * HEAD_DIM
        q = tl.load(q_ptr + q_off + rows[:, None] * HEAD_DIM + dims[None, :], mask=q_mask, other=0.0)
        do = tl.load(do_ptr + q_off + rows[:, None] * HEAD_DIM + dims[None, :], mask=q_mask, other=0.0)
        lse = tl.load(lse_ptr + bh * N_Q + rows, mask=rows < N_Q, other=0.0)
        delta = tl.load(delta_ptr + bh * N_Q + rows, mask=rows < N_Q, other=0.0)
        s = tl.dot(q, tl.trans(k)) * scale                       # [BM, BN]
        allowed = (rows[:, None] < N_Q) & (keys[None, :] < N_K)
        if CAUSAL:
            allowed = allowed & (keys[None, :] <= rows[:, None] + offset)
        p = tl.where(allowed, tl.exp(s - lse[:, None]), 0.0)     # the softmax, recomputed
        dv += tl.dot(tl.trans(p).to(do.dtype), do)
        dp = tl.dot(do, tl.trans(v))
        ds = p * (dp - delta[:, None])
        dk += tl.dot(tl.trans(ds).to(q.dtype), q) * scale
    out_off = bh * N_K * HEAD_DIM
    tl.store(dk_ptr + out_off + keys[:, None] * HEAD_DIM + dims[None, :], dk.to(dk_ptr.dtype.element_ty), mask=kv_mask)
    tl.store(dv_ptr + out_off + keys[:, None] * HEAD_DIM + dims[None, :], dv.to(dv_ptr.dtype.element_ty), mask=kv_mask)


@triton.jit
def flash_bwd_dq_kernel(q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dq_ptr,
                        H, GROUP, N_Q, N_K, HEAD_DIM, scale,
                        CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    start_m = tl.program_id(0)
    bh = tl.program_id(1)
    b, h = bh // H, bh % H
    kv_off = (b * (H // GROUP) + h // GROUP) * N_K * HEAD_DIM
    q_off = bh * N_Q * HEAD_DIM
    rows = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    q_mask = (rows[:, None] < N_Q) & (dims[None, :] < HEAD_DIM)
    q = tl.load(q_ptr + q_off + rows[:, None] * HEAD_DIM + dims[None, :], mask=q_mask, other=0.0)
    do = tl.load(do_ptr + q_off + rows[:, None] * HEAD_DIM + dims[None, :], mask=q_mask, other=0.0)
    lse = tl.load(lse_ptr + bh * N_Q + rows, mask=rows < N_Q, other=0.0)
    delta = tl.load(delta_ptr + bh * N_Q + rows, mask=rows < N_Q, other=0.0)
    dq = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    offset = N_K - N_Q
    if CAUSAL:
        hi = tl.minimum(N_K, (start_m + 1) * BLOCK_M + offset)
    else:
        hi = N_K
    for start_n in range(0, hi, BLOCK_N):
        keys = start_n + tl.arange(0, BLOCK_N)
        kv_mask = (keys[:, None] < N_K) & (dims[None, :] < HEAD_DIM)
        k = tl.load(k_ptr + kv_off + keys[:, None] * HEAD_DIM + dims[None, :], mask=kv_mask, other=0.0)
        v = tl.load(v_ptr + kv_off + keys[:, None] * HEAD_DIM + dims[None, :], mask=kv_mask, other=0.0)
        s = tl.dot(q, tl.trans(k)) * scale
        allowed = (rows[:, None] < N_Q) & (keys[None, :] < N_K)
        if CAUSAL:
            allowed = allowed & (keys[None, :] <= rows[:, None] + offset)
        p = tl.where(allowed, tl.exp(s - lse[:, None]), 0.0)
        dp = tl.dot(do, tl.trans(v))
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k) * scale
    tl.store(dq_ptr + q_off + rows[:, None] * HEAD_DIM + dims[None, :], dq.to(dq_ptr.dtype.element_ty), mask=q_mask)


def flash_attention_backward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor,
                             lse: torch.Tensor, do: torch.Tensor, causal: bool = False,
                             scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv) of flash_attention's output o for the upstream gradient do, from the saved lse.

    dk and dv of a kv head are the sums over the query heads that share it (computed per query head by the
    kernel, summed here)."""
    _check_inputs(q, k, v, causal)
    if o.shape != q.shape or do.shape != q.shape or lse.shape != q.shape[:3]:
        raise ValueError(f"o and do must have q's shape {tuple(q.shape)} and lse {tuple(q.shape[:3])}, got "
                         f"{tuple(o.shape)}, {tuple(do.shape)}, {tuple(lse.shape)}")
    b, h, n_q, d = q.shape
    h_kv, n_k = k.shape[1], k.shape[2]
    group = h // h_kv
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    q, k, v, do = (t.contiguous() for t in (q, k, v, do))
    lse = lse.contiguous().float()
    delta = (do.float() * o.float()).sum(-1).contiguous()       # Delta_i = dO_i . O_i
    dq = torch.empty_like(q)
    dk_h = torch.empty(b, h, n_k, d, dtype=q.dtype, device=q.device)
    dv_h = torch.empty_like(dk_h)
    cfg = block_sizes("attention")
    bm, bn = min(cfg["BLOCK_M"], 64), min(cfg["BLOCK_N"], 64)  # backward holds more tiles: smaller blocks
    block_d = max(16, triton.next_power_of_2(d))
    common = dict(CAUSAL=bool(causal), BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=block_d, num_warps=cfg["num_warps"],
                  num_stages=1 if backend.INTERPRETER else 2)
    flash_bwd_dkdv_kernel[(triton.cdiv(n_k, bn), b * h)](q, k, v, do, lse, delta, dk_h, dv_h, h, group, n_q, n_k,
                                                         d, scale, **common)
    flash_bwd_dq_kernel[(triton.cdiv(n_q, bm), b * h)](q, k, v, do, lse, delta, dq, h, group, n_q, n_k, d, scale,
                                                       **common)
    dk = dk_h.view(b, h_kv, group, n_k, d).sum(2)
    dv = dv_h.view(b, h_kv, group, n_k, d).sum(2)
    return dq, dk.to(k.dtype), dv.to(v.dtype)


class FlashAttentionFunction(torch.autograd.Function):
    """flash_attention with a backward pass: `FlashAttentionFunction.apply(q, k, v, causal)` -> o."""

    @staticmethod
    def forward(ctx, q, k, v, causal=False):
        o, lse = flash_attention(q, k, v, causal=causal)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.causal = causal
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse = ctx.saved_tensors
        dq, dk, dv = flash_attention_backward(q, k, v, o, lse, do, causal=ctx.causal)
        return dq, dk, dv, None
