"""Activation-aware weight quantization (AWQ, Lin et al. 2023): protect the weights that meet large activations.

A weight's quantization error matters in proportion to the input it multiplies: y = W x, so an error dW in
column j costs dW[:, j] * x_j. Some input channels carry activations many times larger than the rest, and the
weights that read them ("salient" weights) matter most. AWQ scales those columns up before quantizing and the
input down by the same factor, which leaves the float product unchanged:

    y = W x = (W diag(s)) (diag(s)^-1 x)        quantize W diag(s), not W:   W_awq = Q(W diag(s)) diag(s)^-1

A column scaled up by s_j > 1 is rounded on a grid that is relatively finer for it (its group's scale grows by
less than s_j when it is not the group's largest weight), so its error shrinks by about s_j. The scale is a power of
the channel's mean activation magnitude, s = mean|x|^alpha (normalised so that max s * min s = 1), and alpha
in [0, 1) is searched on a grid to minimise the output error on calibration tokens, for every matrix that
reads the same input at once (q, k, v; gate and up): alpha = 0 is plain round-to-nearest.

In a deployed model diag(s)^-1 is folded into the operation before (the RMSNorm's weight for q, k, v and gate,
up; v_proj for o_proj; up_proj for down_proj), so it costs no bytes and no time. Here the quantized matrix is
applied as W_awq directly, which is what the fold computes when the folded operation stays in high precision.
The paper also searches a clipping range for each group and measures the error on whole blocks' outputs;
this small version does neither.

    awq_scales      the search: per-input-channel scale s and the alpha chosen, for matrices sharing an input
    awq_quantize    W_awq for each of them, as Quantized codes of W diag(s) plus s
    awq_model       every block matrix of a model, calibrated on some windows
"""
from __future__ import annotations

import torch
from torch import nn

from .quantize import Quantized, block_linears, linear_inputs, quantize, with_weights

GRID = 20   # alphas 0, 0.05, ..., 0.95, as in the paper's code


def _output_error(x: torch.Tensor, w: torch.Tensor, w_hat: torch.Tensor) -> float:
    """||x w_hat^T - x w^T||^2 summed over tokens and outputs."""
    return float((x @ (w_hat - w).T).pow(2).sum())


def _check(x: torch.Tensor, weights: list[torch.Tensor]) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 2 or not x.is_floating_point():
        raise ValueError(f"x must be float activations [tokens, in], got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    for w in weights:
        if w.ndim != 2 or w.shape[1] != x.shape[1]:
            raise ValueError(f"every weight must be [out, {x.shape[1]}] to read x [tokens, {x.shape[1]}], "
                             f"got {tuple(w.shape)}")


def awq_scales(weights: list[torch.Tensor], x: torch.Tensor, bits: int = 4, group_size: int | None = 128,
               symmetric: bool = False, grid: int = GRID) -> tuple[torch.Tensor, float]:
    """(s [in], alpha): the per-input-channel scale minimising the summed output error of `weights` (all reading
    the calibration activations x [tokens, in]) after quantizing W diag(s), among s = mean|x|^alpha."""
    _check(x, weights)
    x = x.float()
    magnitude = x.abs().mean(0)
    best = (float("inf"), None, 0.0)
    for i in range(grid):
        alpha = i / grid
        s = magnitude.pow(alpha).clamp(min=1e-4)
        s = s / (s.max() * s.min()).sqrt()     # centre the scales around 1 (the product of the extremes is 1)
        err = sum(_output_error(x, w, _apply(w, s, bits, group_size, symmetric)[1]) for w in weights)
        if err < best[0]:
            best = (err, s, alpha)
    return best[1], best[2]


def _apply(w: torch.Tensor, s: torch.Tensor, bits: int, group_size: int | None, symmetric: bool
           ) -> tuple[Quantized, torch.Tensor]:
    granularity = "group" if group_size else "channel"
    q = quantize(w.float() * s, bits, granularity, group_size, symmetric)
    return q, q.dequantize() / s


def awq_quantize(weights: list[torch.Tensor], x: torch.Tensor, bits: int = 4, group_size: int | None = 128,
                 symmetric: bool = False, grid: int = GRID) -> tuple[list[torch.Tensor], list[Quantized], float]:
    """Quantize the matrices that read x together: (the dequantized W_awq of each, their Quantized codes of
    W diag(s) (the stored form: s folds into the previous operation), alpha)."""
    s, alpha = awq_scales(weights, x, bits, group_size, symmetric, grid)
    pairs = [_apply(w, s, bits, group_size, symmetric) for w in weights]
    return [w_hat for _, w_hat in pairs], [q for q, _ in pairs], alpha


@torch.no_grad()
def awq_model(model: nn.Module, calibration: torch.Tensor, bits: int = 4, group_size: int | None = 128,
              symmetric: bool = False, grid: int = GRID) -> tuple[nn.Module, int, dict[str, float]]:
    """(a copy of model with every block matrix AWQ-quantized, their bytes, the alpha chosen per shared input).

    Inputs are recorded from the unquantized model on `calibration` windows [B, T]; matrices that read the same
    input (q, k, v; gate, up) share one scale, as they must for it to fold into the norm before them."""
    inputs = linear_inputs(model, calibration)
    linears = block_linears(model)
    readers: dict[int, list[str]] = {}
    for name in linears:
        readers.setdefault(id(inputs[name]), []).append(name)
    weights, nbytes, alphas = {}, 0, {}
    for names in readers.values():
        w_hats, qs, alpha = awq_quantize([linears[n].weight for n in names], inputs[names[0]], bits, group_size,
                                         symmetric, grid)
        for n, w_hat, q in zip(names, w_hats, qs):
            weights[n], nbytes = w_hat, nbytes + q.nbytes()
        alphas["+".join(n.rsplit(".", 1)[1] for n in names) + "@" + names[0].split(".")[1]] = alpha
    return with_weights(model, weights), nbytes, alphas
