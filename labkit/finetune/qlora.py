"""QLoRA in miniature (Dettmers et al. 2023): LoRA on a frozen base stored in 4 bits.

Fine-tuning memory is weights + gradients + optimizer state. Full fine-tuning with Adam keeps, per parameter,
the fp32 weight, its gradient and two moment estimates: 16 bytes. LoRA freezes the weights, so gradients and
Adam's two states exist only for the adapter's few parameters, but the frozen fp32 weights still cost 4 bytes
each. QLoRA stores those frozen weights in 4 bits (plus a 16-bit scale per group of 64), dequantises each
matrix on the fly in the forward pass, and trains the fp32 adapter on top: the gradient flows through the
dequantised weight to the adapter, never into the codes.

    Int4Linear      a frozen linear layer as packed 4-bit codes (two per byte) + fp16 group scales, from
                    `labkit.compress.quantize` (absmax, group-wise); forward = x @ dequantize().T
    QLoRALinear     LoRALinear over an Int4Linear
    add_qlora       every linear layer of the blocks to int4, then LoRA on the targets (all else frozen)
    merge_qlora     fold each adapter into an fp32 copy of its *dequantised int4* weight: the weight the
                    adapter was trained against (folding into the original fp32 weights would give a
                    different model: the quantization error would come back)
    memory_bytes    bytes of the actual tensors: weights (and buffers), gradients, Adam's two moments

The paper adds NF4 codes (levels at normal quantiles), double quantization of the scales and paged optimizer
states; this miniature keeps the part that sets the memory: 4-bit frozen weights under a 16-bit adapter.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from labkit.compress.quantize import Quantized, quantize
from labkit.finetune.lora import LoRALinear, wrap_modules

LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """Signed 4-bit codes in [-8, 7] (int8, [out, in], `in` even) -> uint8 [out, in / 2], two codes a byte."""
    if codes.dtype != torch.int8 or codes.ndim != 2 or codes.shape[1] % 2:
        raise ValueError(f"codes must be int8 [out, in] with an even in, got {codes.dtype} {tuple(codes.shape)}")
    if codes.min() < -8 or codes.max() > 7:
        raise ValueError(f"4-bit codes lie in [-8, 7], got values in [{int(codes.min())}, {int(codes.max())}]")
    u = (codes + 8).to(torch.uint8)            # [0, 15]: one nibble
    return u[:, 0::2] | (u[:, 1::2] << 4)      # even columns in the low nibble, odd ones in the high


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """The inverse of pack_int4: uint8 [out, in / 2] -> int8 codes [out, in]."""
    lo, hi = (packed & 0xF).to(torch.int8) - 8, (packed >> 4).to(torch.int8) - 8
    return torch.stack([lo, hi], dim=-1).flatten(1)


class Int4Linear(nn.Module):
    """A frozen, bias-free linear layer in 4 bits: packed codes (uint8) and one fp16 scale per group."""

    def __init__(self, linear: nn.Linear, group_size: int = 64) -> None:
        super().__init__()
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"Int4Linear quantizes an nn.Linear, got {type(linear).__name__}")
        if linear.bias is not None:
            raise ValueError("Int4Linear holds bias-free layers (Llama's have no biases)")
        q = quantize(linear.weight.detach(), bits=4, granularity="group", group_size=group_size, symmetric=True)
        self.in_features, self.out_features, self.group_size = linear.in_features, linear.out_features, group_size
        self.register_buffer("packed", pack_int4(q.codes))
        self.register_buffer("scale", q.scale.to(torch.float16))  # stored at 16 bits, as nbytes() counts them

    def quantized(self) -> Quantized:
        """The stored weight as `labkit.compress.quantize.Quantized` (codes unpacked, scales as float32)."""
        return Quantized(unpack_int4(self.packed), self.scale.float(), None, 4, self.group_size)

    def dequantize(self) -> torch.Tensor:
        """The float32 weight [out, in] this layer computes with."""
        return self.quantized().dequantize()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # dequantised anew at every call, so only the 4-bit copy stays in memory between calls
        return F.linear(x, self.dequantize())

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, bits=4, group_size={self.group_size}"


class QLoRALinear(LoRALinear):
    """LoRA over a frozen Int4Linear. It cannot merge in place (the sum is no longer a 4-bit matrix):
    `merge_qlora` folds it into an fp32 copy of the dequantised weight instead."""

    base_types = (Int4Linear,)

    def merge(self) -> None:
        raise RuntimeError("a QLoRA layer cannot merge into its 4-bit weight; use merge_qlora(model), which "
                           "adds the update to an fp32 copy of the dequantised weight")


def add_qlora(model: nn.Module, targets: Sequence[str] = ("q_proj", "v_proj"), r: int = 8, alpha: float = 16,
              dropout: float = 0.0, group_size: int = 64) -> list[str]:
    """Freeze `model`, store every linear layer of its blocks (LINEARS) in int4, and put a LoRA adapter on
    the targets. Returns the adapted modules' names. Embeddings and norms stay fp32 (as in the paper)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    for p in model.parameters():
        p.requires_grad_(False)
    wrap_modules(model, LINEARS, lambda m: Int4Linear(m, group_size), kind="int4")
    return wrap_modules(model, targets, lambda m: QLoRALinear(m, r, alpha, dropout), kind="QLoRA")


@torch.no_grad()
def merge_qlora(model: nn.Module) -> list[str]:
    """Replace each QLoRALinear by a plain fp32 nn.Linear with W = dequantize(int4) + (alpha / r) B A.
    Returns the merged modules' names. The other int4 layers stay as they are."""
    layers = {n: m for n, m in model.named_modules() if isinstance(m, QLoRALinear)}
    if not layers:
        raise ValueError("the model has no QLoRA layers; call add_qlora(model, ...) first")

    def fold(layer: QLoRALinear) -> nn.Linear:
        merged = nn.Linear(layer.in_features, layer.out_features, bias=False)
        merged.weight.copy_(layer.base.dequantize() + layer.delta_weight())
        merged.weight.requires_grad_(False)
        return merged

    return wrap_modules(model, list(layers), fold, kind="merged", rewrap=True)


def _unique(tensors) -> list[torch.Tensor]:
    """Each storage once (a tied weight is one tensor however many modules use it)."""
    seen, out = set(), []
    for t in tensors:
        if t is not None and id(t) not in seen:
            seen.add(id(t))
            out.append(t)
    return out


def memory_bytes(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict[str, int]:
    """Bytes of the tensors training holds: weights (parameters and buffers), gradients of the trainable
    parameters, and Adam's two moment estimates (exp_avg, exp_avg_sq) once the optimizer has taken a step."""
    weights = _unique(list(model.parameters()) + list(model.buffers()))
    grads = _unique(p.grad for p in model.parameters())
    states = [] if optimizer is None else [s[key] for s in optimizer.state.values()
                                           for key in ("exp_avg", "exp_avg_sq") if key in s]
    out = {"weights": sum(t.nbytes for t in weights), "gradients": sum(t.nbytes for t in grads),
           "optimizer": sum(t.nbytes for t in states)}
    out["total"] = sum(out.values())
    return out


__all__ = ["Int4Linear", "LINEARS", "QLoRALinear", "add_qlora", "memory_bytes", "merge_qlora", "pack_int4",
           "unpack_int4"]
