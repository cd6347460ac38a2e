"""Integer quantization of a weight matrix: absmax and zero-point, per tensor, per channel and per group.

A quantizer stores a float weight w as small integer codes q and a few floats per block of weights:

    absmax (symmetric)     s = max|w| / (2^(b-1) - 1)            q = round(w / s)          w ~ s * q
    zero-point (asym.)     s = (max w - min w) / (2^b - 1)       q = round(w / s) + z      w ~ s * (q - z)
                           z = -2^(b-1) - round(min w / s)   (an integer: the code that stands for 0.0)

Codes are signed, in [-2^(b-1), 2^(b-1) - 1], so every width up to 8 bits is stored in an int8 tensor.
Absmax uses the symmetric range [-(2^(b-1) - 1), 2^(b-1) - 1]: one code fewer, but 0.0 is code 0 and w and -w
get opposite codes. Zero-point spends every code on [min w, max w], which helps when a block is lopsided
(all positive, say); the range is first widened to include 0, so that 0.0 is represented exactly.

Granularity is how many weights share one scale (and zero):

    "tensor"   one scale for the whole tensor          scale shape []
    "channel"  one per output row (row of W in y = W x)  scale shape [out, 1]
    "group"    one per `group_size` consecutive inputs of a row   scale shape [out, in // group_size]

A single outlier stretches the scale of every weight that shares it, so smaller blocks mean smaller errors, at
the price of more scales to store: `Quantized.nbytes` counts the codes at `bits` bits and every scale and zero
at 16 bits (GGUF stores them in fp16; here they are kept in float32 for simplicity, and rounding them to fp16
would change a dequantized weight by at most 2^-11 of itself).

    quantize          a float tensor -> Quantized (codes, scale, zero, bits, group_size)
    round_to_codes    the codes of w for a scale and zero already chosen (what GPTQ needs column by column)
    Quantized         .dequantize() -> float32 weights, .nbytes() -> storage in bytes
    relative_error    ||w - w_hat|| / ||w||, the reconstruction error the chapter plots against group size

On a whole model (a `labkit.llama.Llama`, or any module whose matrices live under `layers.`):

    block_linears     the matrices of the transformer blocks, by name: what the chapter quantizes
    with_weights      a copy of the model with some of those matrices replaced (the rest shared, not copied)
    quantize_model    every block matrix quantized and dequantized back ("fake quantization"): the copy to score,
                      and the bytes the quantized matrices would take
    linear_inputs     what each block matrix reads on some tokens (calibration data for AWQ and GPTQ)
"""
from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

BITS = (2, 3, 4, 5, 6, 7, 8)
GRANULARITIES = ("tensor", "channel", "group")


@dataclass(frozen=True)
class Quantized:
    """A quantized tensor. Dequantized value: (codes - zero) * scale, with scale/zero broadcast over their block."""

    codes: torch.Tensor          # int8, the weight's shape
    scale: torch.Tensor          # float32: [] (tensor), [out, 1] (channel) or [out, in // group_size] (group)
    zero: torch.Tensor | None    # float32 holding integers, shaped like scale; None for absmax (symmetric)
    bits: int
    group_size: int | None       # None unless group-wise

    def _blocks(self, t: torch.Tensor) -> torch.Tensor:
        """Broadcast a per-block tensor (scale or zero) to the weight's shape."""
        if self.group_size is None:
            return t  # [] or [out, 1] broadcast by themselves
        return t.repeat_interleave(self.group_size, dim=1)

    def dequantize(self) -> torch.Tensor:
        q = self.codes.to(torch.float32)
        if self.zero is not None:
            q = q - self._blocks(self.zero)
        return q * self._blocks(self.scale)

    def nbytes(self) -> int:
        """Storage in bytes: codes packed at `bits` bits each, each scale and zero at 16 bits."""
        n_params = self.scale.numel() * (1 if self.zero is None else 2)
        return math.ceil(self.codes.numel() * self.bits / 8) + 2 * n_params


def code_range(bits: int, symmetric: bool) -> tuple[int, int]:
    """The smallest and largest code: [-(2^(b-1) - 1), 2^(b-1) - 1] for absmax, [-2^(b-1), 2^(b-1) - 1] else."""
    top = 2 ** (bits - 1) - 1
    return (-top if symmetric else -top - 1), top


def _check(w: torch.Tensor, bits: int, granularity: str, group_size: int | None) -> None:
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"w must be a torch.Tensor, got {type(w).__name__}")
    if not w.is_floating_point():
        raise TypeError(f"w must be a floating-point tensor (the weights to quantize), got dtype {w.dtype}")
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in BITS:
        raise ValueError(f"bits must be an int in {BITS[0]}..{BITS[-1]} (codes are stored as int8), got {bits!r}")
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    if w.numel() == 0:
        raise ValueError(f"w is empty (shape {tuple(w.shape)}): there is nothing to quantize")
    if not torch.isfinite(w).all():
        raise ValueError("w contains NaN or infinity: a scale computed from it would be meaningless")
    if granularity != "tensor" and w.dim() != 2:
        raise ValueError(f"{granularity!r} granularity needs a 2-D weight [out, in], got shape {tuple(w.shape)}")
    if granularity == "group":
        if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
            raise ValueError(f"group-wise quantization needs group_size, an int >= 1, got {group_size!r}")
        if w.shape[1] % group_size:
            raise ValueError(f"group_size {group_size} does not divide the input dimension {w.shape[1]} "
                             f"(weight shape {tuple(w.shape)}): every group must be full")
    elif group_size is not None:
        raise ValueError(f"group_size is only used with granularity='group', got group_size={group_size!r} "
                         f"with granularity={granularity!r}")


def _blocks_of(w: torch.Tensor, granularity: str, group_size: int | None) -> torch.Tensor:
    """w viewed as [n_blocks..., block]: the last axis holds the weights that share one scale."""
    if granularity == "tensor":
        return w.reshape(1, -1)
    if granularity == "channel":
        return w.unsqueeze(1)                                    # [out, 1, in]
    return w.reshape(w.shape[0], w.shape[1] // group_size, group_size)  # [out, in / g, g]


def quantize(w: torch.Tensor, bits: int = 8, granularity: str = "channel", group_size: int | None = None,
             symmetric: bool = True) -> Quantized:
    """Quantize w to `bits`-bit codes, one scale (and zero-point unless symmetric) per tensor, row or group.

    Rounding is to nearest, ties to even (torch.round). A block of zeros gets scale 1 (any scale represents it).
    """
    _check(w, bits, granularity, group_size)
    blocks = _blocks_of(w.detach().to(torch.float32), granularity, group_size)
    low, high = code_range(bits, symmetric)
    if symmetric:
        scale = blocks.abs().amax(dim=-1) / high
        zero = None
    else:
        # widen [min, max] to include 0 so that 0.0 has an exact code (padding, ReLU zeros, pruned weights)
        lo, hi = blocks.amin(dim=-1).clamp(max=0), blocks.amax(dim=-1).clamp(min=0)
        scale = (hi - lo) / (high - low)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    if not symmetric:
        zero = low - torch.round(lo / scale)                    # the code of 0.0, within [low, high]
    codes = round_to_codes(blocks, scale.unsqueeze(-1), None if zero is None else zero.unsqueeze(-1), bits)
    codes = codes.reshape(w.shape)
    if granularity == "tensor":
        scale, zero = scale.reshape(()), None if zero is None else zero.reshape(())
    return Quantized(codes, scale, zero, bits, group_size if granularity == "group" else None)


def round_to_codes(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, bits: int) -> torch.Tensor:
    """The int8 codes of w for a given scale (and zero, broadcast against w): clamp(round(w / scale) + zero).

    `quantize` chooses scale and zero from the weights and then calls this; GPTQ (`labkit.compress.gptq`)
    calls it column by column with the scales of a group chosen beforehand."""
    low, high = code_range(bits, zero is None)
    q = torch.round(w / scale)
    if zero is not None:
        q = q + zero
    return q.clamp(low, high).to(torch.int8)


def relative_error(w: torch.Tensor, w_hat: torch.Tensor) -> float:
    """||w - w_hat|| / ||w|| (Frobenius norms): the share of the weight that quantization lost."""
    if w.shape != w_hat.shape:
        raise ValueError(f"w and w_hat must have the same shape, got {tuple(w.shape)} and {tuple(w_hat.shape)}")
    w, w_hat = w.detach().double(), w_hat.detach().double()
    norm = w.norm()
    if norm == 0:
        raise ValueError("w is all zeros: a relative error is undefined")
    return float((w - w_hat).norm() / norm)


# ----------------------------------------------------------------------------------------------------------
# whole models

def block_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """The matrices of the transformer blocks (q, k, v, o, gate, up, down of every layer for a Llama) by module
    name, in order. The embedding (SmolLM2 ties it to the output head) and the norms are not among them."""
    out = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear) and name.startswith("layers.")}
    if not out:
        raise ValueError(f"{type(model).__name__} has no nn.Linear under 'layers.': expected a labkit Llama")
    return out


def with_weights(model: nn.Module, weights: dict[str, torch.Tensor]) -> nn.Module:
    """A copy of `model` whose matrices named in `weights` hold those tensors. Every other parameter is shared
    with `model` rather than copied (the embedding alone is 113 MB in SmolLM2): do not train the copy."""
    linears = block_linears(model)
    for name, w in weights.items():
        if name not in linears:
            raise KeyError(f"{name!r} is not a block matrix of the model (e.g. {next(iter(linears))!r})")
        if w.shape != linears[name].weight.shape:
            raise ValueError(f"{name}: weight shape {tuple(w.shape)}, expected {tuple(linears[name].weight.shape)}")
    memo = {id(p): p for p in model.parameters()}   # deepcopy then reuses each parameter instead of copying it
    new = copy.deepcopy(model, memo)
    for name, w in weights.items():
        new.get_submodule(name).weight = nn.Parameter(w.to(torch.float32), requires_grad=False)
    return new


def quantize_model(model: nn.Module, bits: int = 8, granularity: str = "channel", group_size: int | None = None,
                   symmetric: bool = True) -> tuple[nn.Module, int]:
    """(a copy of model with every block matrix replaced by its quantized-then-dequantized self, the bytes of
    those matrices quantized). Computing in float32 with rounded weights scores exactly what an integer kernel
    computes up to float rounding; only speed and memory differ."""
    weights, nbytes = {}, 0
    for name, linear in block_linears(model).items():
        q = quantize(linear.weight, bits, granularity, group_size, symmetric)
        weights[name], nbytes = q.dequantize(), nbytes + q.nbytes()
    return with_weights(model, weights), nbytes


@torch.no_grad()
def linear_inputs(model: nn.Module, windows: torch.Tensor, names: Sequence[str] | None = None
                  ) -> dict[str, torch.Tensor]:
    """The inputs [tokens, in] (float32) that each block matrix (or those in `names`) reads while the model
    reads `windows` [B, T]: every position of every window, flattened. Matrices reading the same input
    (q, k, v; gate, up) each get a reference to one tensor."""
    linears = block_linears(model)
    names = list(linears) if names is None else list(names)
    missing = [n for n in names if n not in linears]
    if missing:
        raise KeyError(f"not block matrices of the model: {missing[:3]}")
    # id of an input tensor -> (the tensor, kept alive so that its id is not reused; its flattened copy)
    seen: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    out: dict[str, list[torch.Tensor]] = {}

    def hook(name):
        def keep(_module, args):
            x = args[0]
            if id(x) not in seen:
                seen[id(x)] = (x, x.detach().reshape(-1, x.shape[-1]).float().clone())
            out.setdefault(name, []).append(seen[id(x)][1])
        return keep

    handles = [linears[n].register_forward_pre_hook(hook(n)) for n in names]
    try:
        for i in range(windows.shape[0]):        # one window at a time: the cost of the forward stays small
            seen.clear()
            model(windows[i:i + 1])
    finally:
        for h in handles:
            h.remove()
    # one tensor per shared input: matrices that read the same activations share the concatenation
    merged: dict[tuple[int, ...], torch.Tensor] = {}
    for xs in out.values():
        key = tuple(id(t) for t in xs)
        if key not in merged:
            merged[key] = torch.cat(xs)
    return {n: merged[tuple(id(t) for t in xs)] for n, xs in out.items()}
