"""LoRA (Hu et al. 2021): fine-tune a frozen linear layer through a trainable low-rank update.

A linear layer y = x W^T (W: [out, in]) is adapted by adding a product of two thin matrices,

    y = x W^T + (alpha / r) * (x A^T) B^T          A: [r, in], B: [out, r], r << min(in, out)

so the weight the layer effectively uses is W + (alpha / r) B A, a matrix of rank at most r. W stays frozen;
only A and B train: r * (in + out) numbers instead of in * out (for SmolLM2's 576 x 576 q_proj at r = 8, 9,216
instead of 331,776). B starts at zero, so the adapted model starts exactly at the pretrained one; A starts
random (kaiming-uniform, as `peft` and the paper's code do) so that B receives gradient from the first step.
`alpha / r` keeps the update's scale roughly fixed when r changes.

After training the update can be folded into the weight (`merge`: W <- W + (alpha / r) B A), so inference
costs nothing extra; `unmerge` subtracts it again (equal up to float rounding).

    LoRALinear          wraps a frozen nn.Linear: base(x) + dropout(x) A^T B^T * alpha / r; merge, unmerge
    add_lora            wraps the named nn.Linear modules of a model in place and freezes everything else
    lora_state_dict     the adapter's tensors only (a few hundred kB, not the model's 540 MB)
    load_lora_state_dict  puts saved adapter tensors back, checking names and shapes
    adapters_disabled   a context in which every adapter is off: the frozen base model (a reference model)
    trainable_parameters  how many numbers the optimizer updates

The names follow `peft`'s (lora_A, lora_B, scaling), and the tests check forward and gradients against it.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
from torch import nn


class LoRALinear(nn.Module):
    """A frozen linear layer plus a trainable rank-r update: y = base(x) + (dropout(x) @ A.T @ B.T) * (alpha / r)."""

    base_types: tuple[type, ...] = (nn.Linear,)  # what may be wrapped (QLoRA's subclass wraps an int4 layer)

    def __init__(self, base: nn.Module, r: int, alpha: float, dropout: float = 0.0) -> None:
        super().__init__()
        if not isinstance(base, self.base_types):
            expected = " or ".join(t.__name__ for t in self.base_types)
            raise TypeError(f"{type(self).__name__} wraps a layer of type {expected}, got {type(base).__name__}")
        d_in, d_out = base.in_features, base.out_features
        if isinstance(r, bool) or not isinstance(r, int) or not 1 <= r <= min(d_in, d_out):
            why = (" (B A cannot have a rank above min(in, out))" if isinstance(r, int) and r > 1
                   else " (the update needs at least one dimension)")
            raise ValueError(f"rank r must be an int in [1, min(in, out)] = [1, {min(d_in, d_out)}] for this "
                             f"{d_in} -> {d_out} layer, got {r!r}{why}")
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0:
            raise ValueError(f"alpha must be a number > 0, got {alpha!r}")
        if not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
            raise ValueError(f"dropout must be a probability in [0, 1), got {dropout!r}")
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.r, self.alpha, self.scaling = r, float(alpha), float(alpha) / r
        ref = next(base.parameters(), None)
        kw = {"dtype": torch.float32 if ref is None else ref.dtype,
              "device": None if ref is None else ref.device}
        self.lora_A = nn.Parameter(torch.empty(r, d_in, **kw))
        self.lora_B = nn.Parameter(torch.zeros(d_out, r, **kw))  # zero: training starts at the pretrained model
        # peft's (and nn.Linear's) default init for A: uniform in +-1/sqrt(in) (kaiming-uniform with a = sqrt(5))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False    # True while the update lives inside base.weight
        self.disabled = False  # True inside adapters_disabled(): the layer is its base alone

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def delta_weight(self) -> torch.Tensor:
        """The update the adapter adds to the weight: (alpha / r) B A, shape [out, in]."""
        return (self.lora_B @ self.lora_A) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self.merged or self.disabled:
            return y
        # x A^T first: two thin products (r columns) instead of building the [out, in] matrix B A
        return y + (self.dropout(x) @ self.lora_A.T @ self.lora_B.T) * self.scaling

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the update into the base weight: W <- W + (alpha / r) B A. Inference then costs a plain layer."""
        if self.merged:
            raise RuntimeError("this LoRA layer is already merged; unmerge() it first")
        self.base.weight += self.delta_weight().to(self.base.weight.dtype)
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Take the update out of the base weight again (equal to the original up to float rounding)."""
        if not self.merged:
            raise RuntimeError("this LoRA layer is not merged; there is nothing to unmerge")
        self.base.weight -= self.delta_weight().to(self.base.weight.dtype)
        self.merged = False

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, r={self.r}, alpha={self.alpha:g}, merged={self.merged}"


def _matches(name: str, target: str) -> bool:
    """peft's rule: a target names a module by its full dotted name or by its last parts ('q_proj')."""
    return name == target or name.endswith("." + target)


def wrap_modules(model: nn.Module, targets: Sequence[str], make: Callable[[nn.Module], nn.Module],
                 kind: str = "LoRA", rewrap: bool = False) -> list[str]:
    """Replace every module of `model` whose name matches a target by `make(module)`; return the names.

    Shared by `add_lora` and QLoRA. Refuses a target that matches nothing (a typo would otherwise train nothing),
    and one that already has an adapter unless `rewrap` (replacing adapters, e.g. by their merged weights)."""
    if isinstance(targets, str) or not isinstance(targets, Sequence) or not targets \
            or not all(isinstance(t, str) and t for t in targets):
        raise TypeError(f"targets must be a non-empty sequence of module names, e.g. ('q_proj', 'v_proj'), "
                        f"got {targets!r}")
    found = [(name, m) for name, m in model.named_modules() if name and any(_matches(name, t) for t in targets)]
    unmatched = [t for t in targets if not any(_matches(name, t) for name, _ in found)]
    if unmatched:
        linears = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
        raise ValueError(f"{kind} target(s) {unmatched} match no module of the model; its linear layers are "
                         f"named {linears}")
    for name, module in found:
        if isinstance(module, LoRALinear) and not rewrap:
            raise ValueError(f"{name} already has a LoRA adapter")
    # build every wrapper before installing any: a bad target (make raises) leaves the model untouched
    wrappers = [(name, make(module)) for name, module in found]
    for name, wrapper in wrappers:
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, wrapper)
    return [name for name, _ in wrappers]


def add_lora(model: nn.Module, targets: Sequence[str] = ("q_proj", "v_proj"), r: int = 8, alpha: float = 16,
             dropout: float = 0.0) -> list[str]:
    """Freeze every parameter of `model`, then wrap each nn.Linear whose name matches a target in a LoRALinear
    (in place). Returns the wrapped modules' names. The defaults are the paper's: queries and values, r = 8.

    Parameters are created under torch's current seed (call torch.manual_seed first for a reproducible A)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    for p in model.parameters():
        p.requires_grad_(False)
    return wrap_modules(model, targets, lambda m: LoRALinear(m, r, alpha, dropout))


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """Every LoRALinear of the model by name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def _require_lora(model: nn.Module) -> dict[str, LoRALinear]:
    layers = lora_layers(model)
    if not layers:
        raise ValueError("the model has no LoRA layers; call add_lora(model, ...) first")
    return layers


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's tensors (every lora_A and lora_B) by their names in the model, detached copies."""
    layers = _require_lora(model)
    return {f"{name}.{part}": getattr(layer, part).detach().clone()
            for name, layer in layers.items() for part in ("lora_A", "lora_B")}


@torch.no_grad()
def load_lora_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Copy saved adapter tensors into the model's LoRA layers. The names must be exactly those of
    `lora_state_dict(model)` and the shapes equal (same targets, same rank)."""
    layers = _require_lora(model)
    if not isinstance(state, Mapping):
        raise TypeError(f"state must be a mapping of names to tensors, got {type(state).__name__}")
    own = {f"{name}.{part}": getattr(layer, part) for name, layer in layers.items() for part in ("lora_A", "lora_B")}
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(f"adapter names differ: missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
                         f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''} "
                         "(were the same targets wrapped?)")
    for key, p in own.items():
        if tuple(state[key].shape) != tuple(p.shape):
            raise ValueError(f"{key}: saved shape {tuple(state[key].shape)}, model {tuple(p.shape)} "
                             "(was the same rank used?)")
    if any(layer.merged for layer in layers.values()):
        raise RuntimeError("unmerge the adapters before loading new ones (the merged update would stay in W)")
    for key, p in own.items():
        p.copy_(state[key])


@contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Inside the block the model computes its frozen base (every adapter off, merged ones taken out);
    on leaving, each adapter is back as it was. E.g. DPO's reference model, or scores before tuning."""
    layers = _require_lora(model)
    was = {name: (layer.merged, layer.disabled) for name, layer in layers.items()}
    try:
        for layer in layers.values():
            if layer.merged:
                layer.unmerge()
            layer.disabled = True
        yield model
    finally:
        for name, layer in layers.items():
            merged, disabled = was[name]
            layer.disabled = disabled
            if merged and not layer.merged:
                layer.merge()


def trainable_parameters(model: nn.Module) -> int:
    """Number of parameters the optimizer updates (requires_grad); a tied weight is counted once."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def total_parameters(model: nn.Module) -> int:
    """All parameters, trainable or frozen (the base's and the adapters'); a tied weight is counted once."""
    return sum(p.numel() for p in model.parameters())


__all__ = ["LoRALinear", "add_lora", "adapters_disabled", "load_lora_state_dict", "lora_layers", "lora_state_dict",
           "total_parameters", "trainable_parameters", "wrap_modules"]
