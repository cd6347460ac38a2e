"""Weight-only int8 decoding: chapter 5's fast decode step reading one byte per weight instead of four.

A decode step multiplies every weight matrix by one vector, about 2 FLOPs per weight read, so its time is the
bytes it reads divided by the memory bandwidth (chapter 5's roofline). Storing each weight as an int8 code with
one float32 scale per output row (absmax per channel, `labkit.compress.quantize`) cuts those bytes by about 4x:

    w[i, j] ~ scale[i] * codes[i, j]     so     (W x)[i] ~ scale[i] * sum_j codes[i, j] * x[j]

"Weight-only": the activations x stay float32. The kernel widens each code to float32 as it streams past (no
float copy of W is ever made) and multiplies by the row's scale once, after the sum. What changes is only the
weights' rounding, so the int8 step's logits equal those of the float32 model whose weights are the dequantized
ones, to float32 summation error; against the original model they differ by the quantization error itself.

    matvec_int8       x [B, in] @ (scale * codes).T for int8 codes [out, in]: the kernel, from torch tensors
    Int8Matrix        one quantized matrix as the kernel reads it (int8 codes, float32 scales per row)
    Int8DecodeStep    DecodeStep (labkit.kvcache) with every matrix in int8, the tied embedding/LM head included
    dequantized_model a float32 copy of a Llama with the int8 step's (dequantized) weights: its reference
    generate, token_times   greedy decoding through the int8 step (prompt fed one token at a time)

The block (norms, RoPE, attention over the cache, SwiGLU) is chapter 5's: its compiled pieces are imported from
labkit.kvcache and only the matrix products change. Tests compare with torch's own weight-only int8 product,
`torch._weight_int8pack_mm`, which exists on CPU but (torch 2.13, float32 activations) runs far slower than this
loop: `benchmarks/decode.py` measures both.
"""
from __future__ import annotations

import copy
import time
from typing import NamedTuple

import numba
import numpy as np
import torch

from ..kvcache import KVCache, _attend, _cache_write, _rmsnorm, _rope
from ..llama import Llama
from ..rope import rope_cos_sin, rope_inv_freq
from .quantize import Quantized, quantize


@numba.njit(fastmath=True, cache=False)
def _matvec_int8_kernel(codes: np.ndarray, scale: np.ndarray, x: np.ndarray, out: np.ndarray) -> None:
    # One row at a time, front to back: the codes stream through memory once. Inside the row the compiler turns
    # the loop into SIMD: 16 codes widened int8 -> int32 -> float32, then one fused multiply-add with x. The
    # scale is applied once per row, after the sum (it is the same for the whole row).
    for i in range(codes.shape[0]):
        s = scale[i]
        for b in range(x.shape[0]):
            acc = np.float32(0.0)
            for j in range(codes.shape[1]):
                acc += np.float32(codes[i, j]) * x[b, j]
            out[b, i] = acc * s


class Int8Matrix(NamedTuple):
    """One weight matrix in int8, as the kernel reads it: codes [out, in] int8, scale [out] float32."""
    codes: np.ndarray
    scale: np.ndarray

    @property
    def nbytes(self) -> int:
        """Bytes one matrix-vector product reads: the codes and the scales."""
        return self.codes.nbytes + self.scale.nbytes

    @classmethod
    def from_quantized(cls, q: Quantized) -> Int8Matrix:
        """From `labkit.compress.quantize.quantize(w, 8, "channel")`: symmetric, 8 bits, one scale per row."""
        if not isinstance(q, Quantized):
            raise TypeError(f"expected a labkit.compress.quantize.Quantized, got {type(q).__name__}")
        if q.bits != 8 or q.zero is not None or q.group_size is not None or q.codes.ndim != 2 \
                or tuple(q.scale.shape) != (q.codes.shape[0], 1):
            raise ValueError(f"the int8 kernel needs quantize(w, 8, 'channel') (symmetric, one scale per row): got "
                             f"bits={q.bits}, zero={'None' if q.zero is None else 'set'}, group_size={q.group_size}, "
                             f"codes {tuple(q.codes.shape)}, scale {tuple(q.scale.shape)}")
        _check_codes_scale(q.codes, q.scale)
        return cls(q.codes.contiguous().numpy(), q.scale.reshape(-1).to(torch.float32).contiguous().numpy())


def _check_codes_scale(codes: object, scale: object) -> None:
    if not isinstance(codes, torch.Tensor) or not isinstance(scale, torch.Tensor):
        raise TypeError(f"codes and scale must be torch tensors, got {type(codes).__name__} and "
                        f"{type(scale).__name__}")
    if codes.dtype != torch.int8 or codes.ndim != 2:
        raise TypeError(f"codes must be an int8 matrix [out, in], got {codes.dtype} {tuple(codes.shape)}")
    if scale.dtype != torch.float32 or scale.numel() != codes.shape[0] or scale.ndim not in (1, 2) \
            or scale.shape[0] != codes.shape[0]:
        raise ValueError(f"scale must be float32, one per row of codes: [{codes.shape[0]}] or [{codes.shape[0]}, 1],"
                         f" got {scale.dtype} {tuple(scale.shape)}")


def matvec_int8(x: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x [B, in] float32 @ (scale * codes).T -> [B, out] float32, for int8 codes [out, in] and one float32 scale
    per row ([out] or [out, 1]): F.linear(x, dequantized W) without ever building the float32 W."""
    _check_codes_scale(codes, scale)
    if not isinstance(x, torch.Tensor) or x.dtype != torch.float32 or x.ndim != 2 or x.shape[1] != codes.shape[1]:
        got = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be float32 [B, {codes.shape[1]}] (codes are [out, in] = {tuple(codes.shape)}), "
                         f"got {got}")
    out = torch.empty(x.shape[0], codes.shape[0])
    _matvec_int8_kernel(codes.contiguous().numpy(), scale.reshape(-1).contiguous().numpy(), x.contiguous().numpy(),
                        out.numpy())
    return out


# ----------------------------------------------------------------------------------------------------------
# the decode step: chapter 5's block, with int8 matrices

@numba.njit(fastmath=True, cache=False)
def _linear8(x, w):  # x [B, in] @ (w.scale * w.codes).T -> [B, out]
    out = np.empty((x.shape[0], w.codes.shape[0]), np.float32)
    _matvec_int8_kernel(w.codes, w.scale, x, out)
    return out


class Int8BlockWeights(NamedTuple):
    """One Llama block as the int8 step reads it: norms in float32 (576 numbers each), matrices in int8."""
    attn_norm: np.ndarray
    q: Int8Matrix
    k: Int8Matrix
    v: Int8Matrix
    o: Int8Matrix
    mlp_norm: np.ndarray
    gate: Int8Matrix
    up: Int8Matrix
    down: Int8Matrix


@numba.njit(fastmath=True, cache=False)
def _block_int8(x, w, k_cache, v_cache, pos, cos, sin, head_dim, eps):
    """labkit.kvcache._block with `_linear8` for every matrix product (# NEW): everything else is chapter 5's."""
    h = _rmsnorm(x, w.attn_norm, eps)
    q = _rope(_linear8(h, w.q), cos, sin, head_dim)  # NEW: _linear8
    _cache_write(k_cache, pos, _rope(_linear8(h, w.k), cos, sin, head_dim), head_dim)
    _cache_write(v_cache, pos, _linear8(h, w.v), head_dim)
    x = x + _linear8(_attend(q, k_cache, v_cache, pos + 1, head_dim), w.o)
    h = _rmsnorm(x, w.mlp_norm, eps)
    gate, up = _linear8(h, w.gate), _linear8(h, w.up)
    return x + _linear8(gate / (np.float32(1.0) + np.exp(-gate)) * up, w.down)


_MATRICES = ("q", "k", "v", "o", "gate", "up", "down")


def _block_matrices(block) -> dict[str, torch.Tensor]:
    a, m = block.self_attn, block.mlp
    return dict(q=a.q_proj.weight, k=a.k_proj.weight, v=a.v_proj.weight, o=a.o_proj.weight,
                gate=m.gate_proj.weight, up=m.up_proj.weight, down=m.down_proj.weight)


class Int8DecodeStep:
    """One decode step of `model` with int8 weights: tokens [B] (one new token per sequence) + cache -> logits.

    Every weight matrix, the embedding and the LM head are quantized once with `quantize(w, 8, "channel")` and
    kept as int8 codes + float32 row scales; only the norms stay float32. The step holds no float32 copy of a
    matrix: the embedding row of a token is dequantized when it is looked up, and a tied head reads the
    embedding's codes. Otherwise it is `labkit.kvcache.DecodeStep` (each block one compiled function).
    """

    def __init__(self, model: Llama):
        if not isinstance(model, Llama):
            raise TypeError(f"model must be labkit's Llama, got {type(model).__name__}")
        self.cfg = model.cfg
        self.inv_freq = rope_inv_freq(model.cfg.head_dim, model.cfg.rope_theta)
        int8 = lambda w: Int8Matrix.from_quantized(quantize(w.detach(), 8, "channel"))
        norm = lambda module: module.weight.detach().numpy()
        self.blocks = [Int8BlockWeights(attn_norm=norm(b.input_layernorm), mlp_norm=norm(b.post_attention_layernorm),
                                        **{name: int8(w) for name, w in _block_matrices(b).items()})
                       for b in model.layers]
        self.embed = int8(model.embed_tokens.weight)
        self.head = self.embed if model.lm_head is None else int8(model.lm_head.weight)
        self.norm = norm(model.norm)
        self.eps = np.float32(model.cfg.norm_eps)

    @property
    def nbytes(self) -> int:
        """Bytes one decode step reads from its weights (the KV-cache aside): every matrix's codes and scales,
        the LM head (read whole: every token's logit), the norms. The embedding lookup reads one row."""
        matrices = sum(getattr(b, m).nbytes for b in self.blocks for m in _MATRICES)
        norms = sum(b.attn_norm.nbytes + b.mlp_norm.nbytes for b in self.blocks) + self.norm.nbytes
        return matrices + self.head.nbytes + norms

    @torch.no_grad()
    def __call__(self, tokens: torch.Tensor, cache: KVCache) -> torch.Tensor:
        if not isinstance(tokens, torch.Tensor) or tokens.ndim != 1 or tokens.is_floating_point():
            raise ValueError(f"tokens must be an integer tensor [batch] (one new token per sequence), got "
                             f"{tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__}")
        cfg = self.cfg
        if not isinstance(cache, KVCache) or cache.k.dtype != torch.float32 or cache.k.shape[1] != tokens.shape[0] \
                or (cache.k.shape[0], cache.k.shape[2], cache.k.shape[4]) != (cfg.n_layers, cfg.n_kv_heads, cfg.head_dim):
            raise ValueError(f"cache must be a float32 KVCache for this model's config and a batch of {tokens.shape[0]}")
        if cache.seen >= cache.max_len:
            raise ValueError(f"the cache holds {cache.max_len} tokens and is full")
        if tokens.numel() and (tokens.min() < 0 or tokens.max() >= cfg.vocab_size):
            raise ValueError(f"token ids must lie in [0, {cfg.vocab_size}), got values in "
                             f"[{int(tokens.min())}, {int(tokens.max())}]")
        pos, D = cache.seen, cfg.head_dim
        cos, sin = (t[0].numpy() for t in rope_cos_sin(torch.tensor([pos]), self.inv_freq))
        k_all, v_all = cache.k.numpy(), cache.v.numpy()
        rows = tokens.numpy()
        x = self.embed.codes[rows].astype(np.float32) * self.embed.scale[rows, None]  # dequantize B rows only
        for i, w in enumerate(self.blocks):
            x = _block_int8(x, w, k_all[i], v_all[i], pos, cos, sin, D, self.eps)
        cache.advance(1)
        return torch.from_numpy(_linear8(_rmsnorm(x, self.norm, self.eps), self.head))

    @torch.no_grad()
    def prefill(self, ids: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Feed a prompt ids [B, T] one position at a time (as many decode steps): the last position's logits.
        Slower than one batched forward for long prompts, but it needs no float32 weights."""
        _check_ids(ids)
        for t in range(ids.shape[1]):
            logits = self(ids[:, t], cache)
        return logits


def _check_ids(ids: object) -> None:
    if not isinstance(ids, torch.Tensor) or ids.ndim != 2 or ids.shape[1] == 0 or ids.is_floating_point():
        raise ValueError(f"ids must be an integer tensor [batch, time] with time >= 1, got "
                         f"{tuple(ids.shape) if isinstance(ids, torch.Tensor) else type(ids).__name__}")


@torch.no_grad()
def token_times(step: Int8DecodeStep, ids: torch.Tensor, max_new_tokens: int) -> tuple[torch.Tensor, list[float]]:
    """Greedy generation through the int8 step, the clock read after every token: (ids [B, T + new], seconds[m-1]
    = time from the start until token m is known), as labkit.kvcache.token_times does for the float32 model."""
    if not isinstance(step, Int8DecodeStep):
        raise TypeError(f"step must be an Int8DecodeStep, got {type(step).__name__}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    _check_ids(ids)
    cache = KVCache(step.cfg, batch=ids.shape[0], max_len=ids.shape[1] + max_new_tokens)
    seconds, start = [], time.perf_counter()
    logits = step.prefill(ids, cache)
    for m in range(max_new_tokens):
        if m:
            logits = step(ids[:, -1], cache)
        ids = torch.cat([ids, logits.argmax(-1, keepdim=True).to(ids.dtype)], dim=1)
        seconds.append(time.perf_counter() - start)
    return ids, seconds


def generate(step: Int8DecodeStep, ids: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
    """Greedy decoding with int8 weights: ids [B, T] -> [B, T + max_new_tokens]."""
    return token_times(step, ids, max_new_tokens)[0]


@torch.no_grad()
def dequantized_model(model: Llama) -> Llama:
    """A float32 copy of `model` whose matrices (embedding and LM head included) are dequantize(quantize(w, 8,
    "channel")): the weights the int8 step computes with, in the plain model. Its perplexity is the int8
    model's; its logits are what the int8 step must reproduce, to float32 summation error."""
    if not isinstance(model, Llama):
        raise TypeError(f"model must be labkit's Llama, got {type(model).__name__}")
    out = copy.deepcopy(model)
    weights = [w for b in out.layers for w in _block_matrices(b).values()] + [out.embed_tokens.weight]
    if out.lm_head is not None:
        weights.append(out.lm_head.weight)
    for w in weights:
        w.copy_(quantize(w, 8, "channel").dequantize())
    return out
