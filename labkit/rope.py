"""Position information for attention: sinusoidal encodings, rotary embeddings (RoPE) and context extension.

Attention by itself is blind to order: permute the keys and values together and every output stays the same.
Two ways to tell it where tokens are:

* Sinusoidal encodings (Vaswani et al. 2017) *add* a fixed vector to each token embedding:
  PE[p, 2i] = sin(p w_i), PE[p, 2i+1] = cos(p w_i) with w_i = base^(-2i/d).
* RoPE (Su et al. 2021, "RoFormer") *rotates* each query and key: pairs of coordinates turn by the angle
  p * w_i at position p. A rotation by angle a followed by the transpose of one by angle b is a rotation by
  a - b, so the score q_m . k_n depends on the positions only through the offset m - n.

The layout here is Llama's ("rotate half", as in transformers): coordinate i is paired with i + D/2, not with
its neighbour, and cos/sin are [T, D] with the D/2 frequencies concatenated twice. Then
apply_rope(x) = x * cos + rotate_half(x) * sin, where rotate_half(x1, x2) = (-x2, x1).

Context extension, for a model trained on sequences of length L and run on longer ones (scale s = L' / L):
* Position interpolation (Chen et al. 2023, arXiv:2306.15595): use positions p * L / L', so every angle stays
  inside the range seen in training, at the price of squeezing neighbouring positions closer together.
* YaRN (Peng et al. 2023, arXiv:2309.00071, "NTK-by-parts" + attention temperature): leave the fast-rotating
  dimensions alone (they completed many turns within L, so they already saw every angle), interpolate the slow
  ones (which never completed a turn), ramp in between; and sharpen attention by (0.1 ln s + 1)^2.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

ROPE_SCALINGS: tuple[str | None, ...] = (None, "pi", "yarn")


def _check_head_dim(head_dim: object) -> int:
    if isinstance(head_dim, bool) or not isinstance(head_dim, int) or head_dim < 2 or head_dim % 2:
        raise ValueError(f"head_dim must be an even int >= 2 (RoPE rotates pairs of coordinates), got {head_dim!r}")
    return head_dim


def _check_positive(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def sinusoidal_encoding(seq_len: int, d_model: int, base: float = 10000.0) -> Tensor:
    """The fixed position encodings of Vaswani et al. 2017, [seq_len, d_model] float32.

    Even columns 2i hold sin(p w_i), odd columns 2i+1 hold cos(p w_i), with w_i = base^(-2i / d_model).
    """
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 0:
        raise ValueError(f"seq_len must be an int >= 0, got {seq_len!r}")
    d_model = _check_head_dim(d_model)
    base = _check_positive(base, "base")
    positions = torch.arange(seq_len, dtype=torch.float64)[:, None]
    freqs = base ** (-torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)
    pe = torch.empty(seq_len, d_model, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(positions * freqs)
    pe[:, 1::2] = torch.cos(positions * freqs)
    return pe.float()


def rope_inv_freq(head_dim: int, theta: float = 10000.0) -> Tensor:
    """The D/2 rotation speeds w_i = theta^(-2i/D), i = 0..D/2-1, float32 (fast first, slow last)."""
    head_dim = _check_head_dim(head_dim)
    theta = _check_positive(theta, "theta")
    # computed exactly as transformers computes it (float32), so chapter 4 matches it bit for bit
    return 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))


def rope_cos_sin(positions: Tensor, inv_freq: Tensor, attention_factor: float = 1.0) -> tuple[Tensor, Tensor]:
    """cos and sin of the angles p * w_i, each [*positions.shape, D] float32 (D = 2 * len(inv_freq)).

    positions may be fractional (position interpolation). The D/2 angles are concatenated twice, matching
    `rotate_half`'s pairing of coordinate i with i + D/2. `attention_factor` multiplies both (YaRN's
    temperature: q and k both scale, so the scores scale by its square).
    """
    if not isinstance(positions, Tensor) or not isinstance(inv_freq, Tensor):
        raise TypeError("positions and inv_freq must be torch.Tensors")
    if inv_freq.ndim != 1:
        raise ValueError(f"inv_freq must be 1-D [head_dim/2], got shape {tuple(inv_freq.shape)}")
    attention_factor = _check_positive(attention_factor, "attention_factor")
    angles = positions.float()[..., None] * inv_freq.float()  # [..., D/2]
    emb = torch.cat((angles, angles), dim=-1)  # [..., D]
    cos, sin = emb.cos(), emb.sin()
    if attention_factor != 1.0:
        cos, sin = cos * attention_factor, sin * attention_factor
    return cos, sin


def rotate_half(x: Tensor) -> Tensor:
    """(x1, x2) -> (-x2, x1) on the last dim split in halves: a 90-degree turn of each pair (x[i], x[i + D/2])."""
    if not isinstance(x, Tensor) or x.ndim < 1 or x.shape[-1] % 2:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"rotate_half needs a tensor whose last dim is even, got {shape}")
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate x [..., T, D] by its positions' angles: x * cos + rotate_half(x) * sin.

    cos and sin come from `rope_cos_sin`, [T, D] (or anything that broadcasts to x, e.g. [B, 1, T, D]).
    For each pair (a, b) = (x[i], x[i + D/2]) this is the 2-D rotation (a cos - b sin, b cos + a sin).
    """
    if not all(isinstance(t, Tensor) for t in (x, cos, sin)):
        raise TypeError("x, cos and sin must be torch.Tensors")
    if x.ndim < 2:
        raise ValueError(f"apply_rope expects x [..., T, head_dim], got shape {tuple(x.shape)}")
    if cos.shape != sin.shape:
        raise ValueError(f"cos and sin must have the same shape, got {tuple(cos.shape)} and {tuple(sin.shape)}")
    if cos.ndim < 2 or cos.shape[-2:] != x.shape[-2:]:
        raise ValueError(f"cos/sin must be [T, head_dim] = {tuple(x.shape[-2:])} to match x {tuple(x.shape)}, "
                         f"got {tuple(cos.shape)}")
    return x * cos + rotate_half(x) * sin


# The other layout. The RoPE paper (Su et al. 2021) and Meta's original Llama code pair neighbours (2i, 2i+1);
# Hugging Face's Llama, and so SmolLM2's weights, pair i with i + D/2. Both are right: converting a checkpoint
# permutes the rows of each head's W_q and W_k so that the same pairs meet, and dot products ignore the order.

def halves_to_interleaved(head_dim: int) -> Tensor:
    """The permutation `perm` with x_interleaved = x_halves[..., perm]: slot 2i holds coordinate i, slot 2i+1
    holds coordinate i + D/2. Indexing W_q's and W_k's rows of each head with it converts the weights."""
    if isinstance(head_dim, bool) or not isinstance(head_dim, int) or head_dim < 2 or head_dim % 2:
        raise ValueError(f"head_dim must be an even int >= 2, got {head_dim!r}")
    half = torch.arange(head_dim // 2)
    return torch.stack((half, half + head_dim // 2), dim=-1).flatten()


def apply_rope_interleaved(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """RoPE in the interleaved layout: each pair (x[2i], x[2i+1]) turned by its angle. Takes the same cos/sin
    tables as `apply_rope` (whose two halves are equal) and equals it up to that permutation:
    apply_rope_interleaved(x[..., perm], cos, sin) == apply_rope(x, cos, sin)[..., perm]."""
    if not all(isinstance(t, Tensor) for t in (x, cos, sin)):
        raise TypeError("x, cos and sin must be torch.Tensors")
    if x.ndim < 2 or x.shape[-1] % 2 or cos.shape != sin.shape or cos.shape[-2:] != x.shape[-2:]:
        raise ValueError(f"apply_rope_interleaved expects x [..., T, D] with D even and cos/sin [T, D], got "
                         f"{tuple(x.shape)}, {tuple(cos.shape)} and {tuple(sin.shape)}")
    c, s = cos[..., : x.shape[-1] // 2], sin[..., : x.shape[-1] // 2]
    a, b = x[..., 0::2], x[..., 1::2]
    return torch.stack((a * c - b * s, b * c + a * s), dim=-1).flatten(-2)


# ----------------------------------------------------------------------------------------------------------
# context extension

def interpolate_positions(positions: Tensor, train_len: int, target_len: int) -> Tensor:
    """Position interpolation: positions * train_len / target_len (float), so 0..target_len-1 maps into the
    range [0, train_len) the model was trained on."""
    train_len, target_len = int(_check_positive(train_len, "train_len")), int(_check_positive(target_len, "target_len"))
    if target_len < train_len:
        raise ValueError(f"target_len ({target_len}) must be >= train_len ({train_len}): interpolation only "
                         "compresses positions")
    return positions.float() * (train_len / target_len)


def yarn_inv_freq(head_dim: int, theta: float, scale: float, original_max_len: int,
                  beta_fast: float = 32.0, beta_slow: float = 1.0) -> Tensor:
    """YaRN's "NTK-by-parts" rotation speeds (Peng et al. 2023, eq. for h(theta_d)), float32 [head_dim/2].

    For each speed w_d, r = original_max_len / (2 pi / w_d) counts the turns it makes within the training
    length. gamma(r) ramps from 0 (r < beta_slow) to 1 (r > beta_fast); the new speed is
    (1 - gamma) * w_d / scale + gamma * w_d: slow dimensions are interpolated, fast ones kept.
    (The paper's reference code, and transformers, ramp linearly in the dimension index between the same two
    boundaries instead of in r; the end regions agree.)
    """
    scale = _check_positive(scale, "scale")
    original_max_len = _check_positive(original_max_len, "original_max_len")
    if not 0 < beta_slow < beta_fast:
        raise ValueError(f"need 0 < beta_slow < beta_fast, got beta_slow={beta_slow}, beta_fast={beta_fast}")
    inv_freq = rope_inv_freq(head_dim, theta).double()
    turns = original_max_len * inv_freq / (2 * math.pi)  # r(d) = L / wavelength
    gamma = ((turns - beta_slow) / (beta_fast - beta_slow)).clamp(0.0, 1.0)
    return ((1 - gamma) * inv_freq / scale + gamma * inv_freq).float()


def yarn_attention_factor(scale: float) -> float:
    """YaRN's sqrt(1/t) = 0.1 ln(scale) + 1 (1 for scale <= 1), applied to both q and k via cos and sin."""
    scale = _check_positive(scale, "scale")
    return 1.0 if scale <= 1 else 0.1 * math.log(scale) + 1.0


def rope_tables(seq_len: int, head_dim: int, theta: float = 10000.0, scaling: str | None = None,
                train_len: int | None = None, start: int = 0, beta_fast: float = 32.0,
                beta_slow: float = 1.0) -> tuple[Tensor, Tensor]:
    """(cos, sin), each [seq_len, head_dim], for positions start .. start+seq_len-1.

    scaling: None (plain RoPE), "pi" (position interpolation) or "yarn", both stretching a model trained on
    `train_len` positions to start + seq_len positions (scale = (start + seq_len) / train_len; no change
    when that is <= 1). beta_fast and beta_slow are YaRN's ramp boundaries, in turns within train_len.
    """
    if scaling not in ROPE_SCALINGS:
        raise ValueError(f"scaling must be one of {ROPE_SCALINGS}, got {scaling!r}")
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 0:
        raise ValueError(f"seq_len must be an int >= 0, got {seq_len!r}")
    if isinstance(start, bool) or not isinstance(start, int) or start < 0:
        raise ValueError(f"start must be an int >= 0, got {start!r}")
    positions = torch.arange(start, start + seq_len)
    if scaling is None:
        return rope_cos_sin(positions, rope_inv_freq(head_dim, theta))
    if train_len is None:
        raise ValueError(f"scaling={scaling!r} needs train_len, the context length the model was trained on")
    target = max(start + seq_len, int(train_len))
    if scaling == "pi":
        return rope_cos_sin(interpolate_positions(positions, train_len, target), rope_inv_freq(head_dim, theta))
    scale = target / train_len
    return rope_cos_sin(positions, yarn_inv_freq(head_dim, theta, scale, train_len, beta_fast, beta_slow),
                        attention_factor=yarn_attention_factor(scale))
