"""GPTQ (Frantar et al. 2022): quantize a matrix column by column, and let the columns not yet quantized absorb
each column's rounding error.

Round-to-nearest quantizes every weight on its own. But what matters is the layer's output on real inputs:
minimise ||X W_q^T - X W^T||^2 over the codes, where X [tokens, in] are calibration activations. For one output
row w this is the quadratic (w_q - w)^T H (w_q - w) with H = X^T X, the same H for every row. Optimal Brain
Quantization (Frantar & Alistarh 2022) quantizes one weight at a time and moves the others to compensate:
after rounding weight j, the optimal change of the weights not yet quantized (the set F) is

    delta_F = -(w_j - q_j) / [H_F^-1]_jj * (H_F^-1)_{F, j}

GPTQ makes that fast: it quantizes the columns in a fixed order (the same for every row, so all rows go at once)
and reads every H_F^-1 it needs from one Cholesky factor of H^-1 (its row j, from the diagonal on, is
(H_F^-1)_{j, F} / sqrt([H_F^-1]_jj) at step j). It applies the updates lazily, block by block, so that most
of the work is one matrix product per block. A small damping lambda I (1% of the mean of diag H) keeps H
invertible when calibration has fewer tokens than the matrix has inputs, or dead inputs.

With group-wise codes, each group's scale and zero are chosen when the algorithm reaches the group's first
column, from the weights as updated so far. The paper quantizes the layers in sequence, feeding each the
outputs of the already quantized ones; this version records every input from the unquantized model (as AWQ does).

    gptq_quantize   one matrix: Quantized codes (the same format as `labkit.compress.quantize`)
    gptq_model      every block matrix of a model, calibrated on some windows
"""
from __future__ import annotations

import torch
from torch import nn

from .quantize import Quantized, block_linears, linear_inputs, quantize, round_to_codes

DAMP = 0.01   # lambda = DAMP * mean(diag H), the paper's default
BLOCK = 128   # columns per lazy update


def hessian(x: torch.Tensor) -> torch.Tensor:
    """H = X^T X (float64) of calibration activations x [tokens, in]."""
    if not isinstance(x, torch.Tensor) or x.ndim != 2 or not x.is_floating_point():
        raise ValueError(f"x must be float activations [tokens, in], got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    x = x.double()
    return x.T @ x


def _inverse_cholesky(h: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor U of (H + lambda I)^-1 = U^T U: row j from the diagonal on gives the inverse
    Hessians of the columns still to quantize at step j."""
    h = h.clone()
    dead = torch.diagonal(h) == 0                # inputs that were never non-zero: no information, no error
    h[dead, dead] = 1.0
    h += damp * torch.diagonal(h).mean() * torch.eye(h.shape[0], dtype=h.dtype)
    return torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)


def gptq_quantize(w: torch.Tensor, h: torch.Tensor, bits: int = 4, group_size: int | None = 128,
                  symmetric: bool = False, damp: float = DAMP, block: int = BLOCK) -> Quantized:
    """Quantize w [out, in] with GPTQ's error compensation, for the Hessian h = X^T X [in, in] (`hessian`).

    Returns codes in the format of `quantize(w, bits, "group" or "channel", group_size, symmetric)`, whose
    dequantized weights minimise the output error on the calibration inputs far better than rounding each."""
    if not isinstance(w, torch.Tensor) or w.ndim != 2 or not w.is_floating_point():
        raise ValueError(f"w must be a float matrix [out, in], got "
                         f"{tuple(w.shape) if isinstance(w, torch.Tensor) else type(w).__name__}")
    n = w.shape[1]
    if h.shape != (n, n):
        raise ValueError(f"h must be [in, in] = [{n}, {n}] for w of shape {tuple(w.shape)}, got {tuple(h.shape)}")
    if group_size is not None:
        quantize(w, bits, "group", group_size, symmetric)     # refuses a group size that does not divide `in`
        block = max(block // group_size, 1) * group_size    # groups never straddle two blocks
    else:
        quantize(w, bits, "channel", None, symmetric)
    u = _inverse_cholesky(h.double(), damp)
    dead = torch.diagonal(h) == 0
    work = w.detach().double().clone()
    work[:, dead] = 0
    codes = torch.zeros(w.shape, dtype=torch.int8)
    scales, zeros = [], []
    if group_size is None:                                    # one scale per row, chosen from the whole row
        params = quantize(work.float(), bits, "channel", None, symmetric)
        scales, zeros = [params.scale], [params.zero]
    for start in range(0, n, block):
        stop = min(start + block, n)
        cols = work[:, start:stop].clone()                   # updated in place, column by column
        errors = torch.zeros_like(cols)
        for j in range(stop - start):
            col = start + j
            if group_size is not None and col % group_size == 0:
                params = quantize(cols[:, j:j + group_size].float(), bits, "channel", None, symmetric)
                scales.append(params.scale)
                zeros.append(params.zero)
            scale = scales[-1].double()
            zero = None if zeros[-1] is None else zeros[-1].double()
            c = round_to_codes(cols[:, j:j + 1], scale, zero, bits)
            codes[:, col] = c[:, 0]
            q = (c.double() - (0 if zero is None else zero)) * scale
            err = (cols[:, j:j + 1] - q) / u[col, col]
            cols[:, j:] -= err * u[col, col:stop]             # compensate inside the block now
            errors[:, j:j + 1] = err
        work[:, stop:] -= errors @ u[start:stop, stop:]      # and the later blocks in one product
    scale = torch.cat(scales, dim=1)
    zero = None if symmetric else torch.cat(zeros, dim=1)
    return Quantized(codes, scale, zero, bits, group_size)


@torch.no_grad()
def gptq_model(model: nn.Module, calibration: torch.Tensor, bits: int = 4, group_size: int | None = 128,
               symmetric: bool = False, damp: float = DAMP) -> tuple[nn.Module, int]:
    """(a copy of model with every block matrix GPTQ-quantized, their bytes), calibrated on `calibration`
    windows [B, T] read by the unquantized model. Matrices reading the same input share one Hessian."""
    from .quantize import with_weights

    inputs = linear_inputs(model, calibration)
    hessians: dict[int, torch.Tensor] = {}
    weights, nbytes = {}, 0
    for name, linear in block_linears(model).items():
        x = inputs[name]
        if id(x) not in hessians:
            hessians[id(x)] = hessian(x)
        q = gptq_quantize(linear.weight, hessians[id(x)], bits, group_size, symmetric, damp)
        weights[name], nbytes = q.dequantize(), nbytes + q.nbytes()
    return with_weights(model, weights), nbytes
