"""Graded checks for lab 9 (compressing and adapting a model: group-wise int4, LoRA, the DPO loss).

    from labkit.checks.compress import (check_quantize_int4, check_dequantize_int4, check_lora_forward,
                                        check_merge_lora, check_dpo_loss)
    check_quantize_int4(quantize_int4)        # your functions, defined in the lab
    check_dequantize_int4(dequantize_int4)
    check_lora_forward(lora_forward)
    check_merge_lora(merge_lora)
    check_dpo_loss(dpo_loss)

The references are labkit's: `labkit.compress.quantize.quantize(w, 4, "group", group_size)` (absmax, codes in
-7..7, rounding ties to even as torch.round does, an all-zero group scaled by 1), `labkit.finetune.lora.LoRALinear`
(forward and merge) and `labkit.finetune.dpo.dpo_loss`. Every input is non-square and no dimension is a power of
two, so a group taken along the wrong axis, or a transposed product, cannot pass by accident.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
from torch import nn

from labkit.checks import _call, _passed, _short
from labkit.compress.quantize import Quantized, quantize
from labkit.finetune import dpo
from labkit.finetune.lora import LoRALinear

LEVELS = 7  # int4 absmax codes: -7..7


def _tensor(value: object, call: str, what: str = "a torch.Tensor") -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise AssertionError(f"{call} should return {what}, got {type(value).__name__}: {_short(value)}")
    return value


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-5, atol: float = 1e-6) -> bool:
    return a.shape == b.shape and bool(torch.allclose(a.double(), b.double(), rtol=rtol, atol=atol))


def _where(mask: torch.Tensor) -> tuple[int, ...]:
    """The index of the first True entry of a boolean tensor."""
    return tuple(int(i) for i in mask.nonzero()[0])


# ----------------------------------------------------------------------------------------------------------
# group-wise int4

def _quantize_cases() -> list[tuple[str, torch.Tensor, int]]:
    g = torch.Generator().manual_seed(9)
    outlier = torch.randn(12, 30, generator=g)
    outlier[4, 7] = 25.0
    # exact ties: group 0 has max |w| = 7 (scale 1), group 1 max |w| = 14 (scale 2), so w / scale hits x.5 exactly
    ties = torch.tensor([[7.0, 2.5, -2.5, 0.5, -1.5, 3.5, 6.5, -0.5, 1.0, 5.0, -14.0, 3.0, 9.0, -11.0, 7.0, 2.0],
                         [0.0] * 8 + (torch.randn(8, generator=g) * 0.1).tolist()])
    zeros = torch.randn(5, 96, generator=g)
    zeros[1] = 0.0            # an all-zero row
    zeros[3, 32:64] = 0.0     # an all-zero group inside a row
    negative = torch.randn(6, 40, generator=g) * 0.3
    negative[2, 11] = -4.0    # a group whose largest magnitude is negative
    layer = nn.Linear(40, 18)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(18, 40, generator=g) * 0.05)
    return [
        ("w [6, 40] drawn from N(0, 1), group_size 8", torch.randn(6, 40, generator=g), 8),
        ("w [12, 30] with one outlier w[4, 7] = 25, group_size 10", outlier, 10),
        ("w [2, 16] whose w / scale hits exact ties x.5 (group max |w| 7 and 14), group_size 8", ties, 8),
        ("w [5, 96] with an all-zero row and an all-zero group, group_size 32", zeros, 32),
        ("w [6, 40] whose largest |w| in one group is negative (w[2, 11] = -4), group_size 20", negative, 20),
        ("w [6, 48] in float64, group_size 16", torch.randn(6, 48, generator=g, dtype=torch.float64), 16),
        ("w [10, 24] with one group per row, group_size 24", torch.randn(10, 24, generator=g), 24),
        ("the weight of an nn.Linear(40, 18) (a Parameter that requires grad, as a model's layers hold), "
         "group_size 20", layer.weight, 20),
    ]


def _scale_hint(got: torch.Tensor, w: torch.Tensor, gs: int, live: torch.Tensor) -> str:
    """What the observed scales equal, among common mistakes (only groups that are not all zero compared)."""
    out, d_in = w.shape
    blocks = w.detach().double().reshape(out, d_in // gs, gs)
    strided = w.detach().double().reshape(out, gs, d_in // gs)
    amax = blocks.abs().amax(-1)
    candidates = {
        "Your scale equals the group mean of |w| / 7: the scale must come from the group's max |w|, so that "
        "the largest weight lands on code ±7 and nothing is clipped": blocks.abs().mean(-1) / LEVELS,
        "Your scale equals max |w| / 8: absmax int4 uses the symmetric codes -7..7 (scale = max |w| / 7); "
        "code -8 has no positive twin": amax / 8,
        "Your scale equals max |w| / 15 (16 levels, as if the codes were 0..15): absmax int4 uses the "
        "symmetric codes -7..7, scale = max |w| / 7": amax / 15,
        "Your scale equals (max w - min w) / 15, the zero-point (asymmetric) scale: this exercise is absmax, "
        "scale = max |w| / 7": (blocks.amax(-1) - blocks.amin(-1)) / 15,
        "Your scale equals max |w| itself: divide by 7, the largest code": amax,
        "Your scale equals 7 / max |w| (its inverse): scale = max |w| / 7, and codes = round(w / scale)":
            LEVELS / amax.clamp(min=1e-30),
        "Your scale equals max w / 7, the largest *signed* weight: a group whose largest magnitude is "
        "negative then gets a scale too small (or negative). Use max |w|": blocks.amax(-1) / LEVELS,
        f"Your scale equals the max |w| of *strided* groups (columns j, j + {d_in // gs}, j + "
        f"{2 * d_in // gs}, ...): reshape to [out, in // group_size, group_size], so that a group is "
        f"{gs} consecutive inputs of a row": strided.abs().amax(1) / LEVELS,
        "Your scale equals each row's max |w| / 7 repeated for every group of the row (per-channel, not "
        "per-group)": (amax.amax(-1, keepdim=True) / LEVELS).expand_as(amax),
    }
    for hint, value in candidates.items():
        if torch.allclose(got.double()[live], value[live], rtol=1e-5, atol=1e-12):
            return " " + hint + "."
    return ""


def _code_hint(got: torch.Tensor, ratio: torch.Tensor, ratio32: torch.Tensor) -> str:
    """What the observed codes equal, among common rounding and clamping mistakes (ratio = w / scale, in float64
    and as float32 computes it: a weight at the group's max may give 6.9999995 there)."""
    if got.min() >= 0 and got.max() > LEVELS:
        return (f" Your codes span {int(got.min())}..{int(got.max())}, as if stored unsigned (code + 8): absmax "
                "codes are signed, -7..7, so that w and -w get opposite codes; do not offset them.")
    if got.min() < -LEVELS or got.max() > LEVELS:
        return (f" Your codes span {int(got.min())}..{int(got.max())}: absmax int4 codes lie in -7..7 (clamp "
                f"round(w / scale) to that range).")
    candidates = {
        "Your codes round ties away from zero (2.5 -> 3): use torch.round, which rounds ties to even "
        "(2.5 -> 2, 3.5 -> 4), as labkit and numpy do": lambda r: torch.sign(r) * torch.floor(r.abs() + 0.5),
        "Your codes truncate w / scale toward zero (int() or .to(int8) without rounding): round first":
            torch.trunc,
        "Your codes are floor(w / scale): round to the nearest integer instead": torch.floor,
        "Your codes round ties up, floor(w / scale + 0.5) (-2.5 -> -2 but 2.5 -> 3): use torch.round, which "
        "rounds ties to even": lambda r: torch.floor(r + 0.5),
    }
    wrong = got.double() != torch.round(ratio).clamp(-LEVELS, LEVELS)
    for hint, how in candidates.items():
        same = (got.double() == how(ratio).clamp(-LEVELS, LEVELS)) | \
            (got.double() == how(ratio32).double().clamp(-LEVELS, LEVELS))
        # float rounding of w / scale may differ from this double-precision ratio at a few entries
        if same[wrong].double().mean() >= 0.9 and same.double().mean() >= 0.99:
            return " " + hint + "."
    return ""


def check_quantize_int4(fn: Callable) -> None:
    """quantize_int4(w, group_size) -> (codes, scale) for w [out, in]: scale [out, in // group_size] float32,
    max |w| of each run of group_size consecutive inputs divided by 7 (1 for an all-zero group); codes int8,
    torch.round(w / scale) clamped to -7..7 (ties to even). Compared with labkit's quantize on eight inputs."""
    cases = _quantize_cases()
    for what, w, gs in cases:
        call = f"quantize_int4({what})"
        got = _call(fn, call, w, gs)
        if not (isinstance(got, tuple) and len(got) == 2):
            raise AssertionError(f"{call} should return a tuple (codes, scale), got {_short(got)}")
        codes, scale = (_tensor(t, call, "(codes, scale) as two torch.Tensors") for t in got)
        ref = quantize(w.detach(), bits=4, granularity="group", group_size=gs, symmetric=True)
        out, d_in = w.shape
        if tuple(codes.shape) != tuple(w.shape):
            raise AssertionError(f"{call}: codes must have w's shape {list(w.shape)}, got {list(codes.shape)}")
        if tuple(scale.shape) != tuple(ref.scale.shape):
            hint = ""
            if scale.numel() == ref.scale.numel():
                hint = " You have the right number of scales: reshape them to [out, in // group_size]."
            elif scale.numel() in (out, 1):
                hint = " One scale per group, not per row or per tensor."
            raise AssertionError(f"{call}: scale must have shape [out, in // group_size] = {list(ref.scale.shape)}, "
                                 f"got {list(scale.shape)}.{hint}")
        if codes.dtype != torch.int8:
            raise AssertionError(f"{call}: codes must be int8 (4-bit values stored in bytes), got {codes.dtype}. "
                                 "Convert the rounded values with .to(torch.int8).")
        if scale.dtype != torch.float32:
            raise AssertionError(f"{call}: scale must be float32 whatever w's dtype, got {scale.dtype}. Compute "
                                 "in float32 (w.float()): a float64 scale doubles what the scales cost to store.")
        scale, codes = scale.detach(), codes.detach()
        dead = ref.scale == 1.0
        dead &= w.detach().reshape(out, d_in // gs, gs).abs().amax(-1) == 0  # all-zero groups
        if not torch.isfinite(scale).all() or not (scale[dead] > 0).all():
            i, j = _where(~torch.isfinite(scale) | (dead & ~(scale > 0)))
            raise AssertionError(f"{call}: scale[{i}, {j}] is {float(scale[i, j])}; that group is "
                                 f"{'all zeros' if dead[i, j] else 'not all zeros'}. A group of zeros has max |w| = 0, "
                                 "and 0 / 0 is NaN: give such a group scale 1 (any positive scale codes it as 0).")
        live = ~dead
        if not torch.allclose(scale[live], ref.scale[live], rtol=1e-6, atol=0):
            i, j = _where(live & ~torch.isclose(scale, ref.scale, rtol=1e-6, atol=0))
            raise AssertionError(f"{call}: scale[{i}, {j}] (row {i}, inputs {j * gs}..{(j + 1) * gs - 1}) should be "
                                 f"max |w| / 7 = {float(ref.scale[i, j]):.6g}, got {float(scale[i, j]):.6g}."
                                 f"{_scale_hint(scale, w, gs, live)}")
        if (codes[dead.repeat_interleave(gs, dim=1)] != 0).any():
            raise AssertionError(f"{call}: an all-zero group must get codes 0, got "
                                 f"{codes[dead.repeat_interleave(gs, dim=1)].unique().tolist()}")
        ratio = w.detach().double() / ref.scale.double().repeat_interleave(gs, dim=1)
        ratio32 = w.detach().float() / ref.scale.repeat_interleave(gs, dim=1)
        frac = (ratio - ratio.floor() - 0.5).abs()
        near_tie = (frac < 1e-4) & (frac > 0)  # float rounding may go either way there; exact ties may not
        wrong = (codes != ref.codes) & ~(near_tie & ((codes.int() - ref.codes.int()).abs() <= 1))
        if wrong.any():
            i, j = _where(wrong)
            raise AssertionError(f"{call}: {int(wrong.sum())} codes differ from labkit's, e.g. at [{i}, {j}]: "
                                 f"w = {float(w[i, j]):.6g}, scale = {float(ref.scale[i, j // gs]):.6g}, "
                                 f"w / scale = {float(ratio[i, j]):.6g}, expected code {int(ref.codes[i, j])}, got "
                                 f"{int(codes[i, j])}.{_code_hint(codes, ratio, ratio32)}")
    _passed("quantize_int4", len(cases))


def check_dequantize_int4(fn: Callable) -> None:
    """dequantize_int4(codes, scale, group_size) -> float32 [out, in]: each code times its group's scale.
    Inputs are labkit's codes and scales of weights with several groups per row and fewer rows than groups."""
    g = torch.Generator().manual_seed(10)
    cases = [("w [6, 40], group_size 8", torch.randn(6, 40, generator=g), 8),
             ("w [14, 30], group_size 10", torch.randn(14, 30, generator=g) * 3, 10),
             ("w [5, 96] with an all-zero group, group_size 32",
              torch.randn(5, 96, generator=g).index_fill(1, torch.arange(32, 64), 0.0), 32),
             ("w [9, 24], one group per row (group_size 24)", torch.randn(9, 24, generator=g), 24)]
    for what, w, gs in cases:
        ref = quantize(w, bits=4, granularity="group", group_size=gs, symmetric=True)
        call = f"dequantize_int4(codes and scale of {what}, {gs})"
        got = _tensor(_call(fn, call, ref.codes.clone(), ref.scale.clone(), gs), call)
        expected = ref.dequantize()
        if tuple(got.shape) != tuple(w.shape):
            raise AssertionError(f"{call}: expected shape {list(w.shape)} (the codes' shape), got {list(got.shape)}")
        if got.dtype != torch.float32:
            raise AssertionError(f"{call}: expected float32 weights, got {got.dtype}")
        if torch.equal(got, expected):
            continue
        codes, scale = ref.codes.float(), ref.scale
        hint = ""
        if _close(got, codes * scale.repeat(1, gs)):
            hint = (" You tiled the scales (scale.repeat), so input column j used scale j % n_groups; each scale "
                    "belongs to group_size *consecutive* columns: scale.repeat_interleave(group_size, dim=1).")
        elif _close(got, codes / scale.repeat_interleave(gs, dim=1)):
            hint = " You divided by the scale: w ≈ code × scale."
        bad = ~torch.isclose(got, expected, rtol=1e-6, atol=0)
        i, j = _where(bad)
        raise AssertionError(f"{call}: at [{i}, {j}] code {int(ref.codes[i, j])} × scale "
                             f"{float(scale[i, j // gs]):.6g} (group {j // gs}) = {float(expected[i, j]):.6g}, got "
                             f"{float(got[i, j]):.6g}; {int(bad.sum())} entries differ.{hint}")
    _passed("dequantize_int4", len(cases))


# ----------------------------------------------------------------------------------------------------------
# LoRA

def _lora_cases() -> list[tuple[str, nn.Linear, torch.Tensor, torch.Tensor, float, torch.Tensor]]:
    """(description, frozen base, A [r, in], B [out, r], alpha, x): B is non-zero, as after some training."""
    g = torch.Generator().manual_seed(11)

    def case(d_in, d_out, r, alpha, bias, x_shape, dtype=torch.float32, params=False):
        base = nn.Linear(d_in, d_out, bias=bias).to(dtype)
        with torch.no_grad():
            base.weight.copy_(torch.randn(d_out, d_in, generator=g, dtype=dtype) / math.sqrt(d_in))
            if bias:
                base.bias.copy_(torch.randn(d_out, generator=g, dtype=dtype))
        base.requires_grad_(False)
        a = torch.randn(r, d_in, generator=g, dtype=dtype) / math.sqrt(d_in)
        b = torch.randn(d_out, r, generator=g, dtype=dtype) * 0.5
        if params:
            a, b = nn.Parameter(a), nn.Parameter(b)
        x = torch.randn(*x_shape, d_in, generator=g, dtype=dtype)
        return base, a, b, alpha, x

    return [
        ("nn.Linear(20 -> 12) with bias, r = 4, alpha = 8, A and B trainable nn.Parameters, x [3, 20]",
         *case(20, 12, 4, 8.0, True, (3,), params=True)),
        ("nn.Linear(24 -> 40) without bias, r = 3, alpha = 12, x [2, 5, 24] (a batch of sequences)",
         *case(24, 40, 3, 12.0, False, (2, 5))),
        ("square nn.Linear(18 -> 18) with bias, r = 2, alpha = 1, x [4, 18]", *case(18, 18, 2, 1.0, True, (4,))),
        ("nn.Linear(10 -> 6) in float64 with bias, r = 5, alpha = 16, x [2, 10] float64",
         *case(10, 6, 5, 16.0, True, (2,), dtype=torch.float64)),
    ]


def _reference_lora(base: nn.Linear, a: torch.Tensor, b: torch.Tensor, alpha: float) -> LoRALinear:
    ref = LoRALinear(copy.deepcopy(base), a.shape[0], alpha)
    with torch.no_grad():
        ref.lora_A.copy_(a)
        ref.lora_B.copy_(b)
    return ref


def _lora_hint(got: torch.Tensor, base: nn.Linear, a, b, alpha, x) -> str:
    with torch.no_grad():
        r = a.shape[0]
        y0, low = base(x), x @ a.T @ b.T
        candidates = {
            "Your output is base(x) + (x Aᵀ) Bᵀ without the α/r scale: multiply the low-rank term by alpha / r":
                y0 + low,
            "Your output scales the low-rank term by α instead of α/r (divide by the rank r = A.shape[0])":
                y0 + low * alpha,
            "Your output scales the low-rank term by r/α: the scale is alpha / r": y0 + low * (r / alpha),
            "Your output is base(x) alone: the adapter's term (α/r)(x Aᵀ)Bᵀ is missing": y0,
        }
        if a.shape[1] == b.shape[0]:  # a square layer: B A untransposed has the right shape
            candidates["Your output uses (B A) untransposed, x (B A) instead of x (B A)ᵀ = (x Aᵀ) Bᵀ"] = \
                y0 + x @ (b @ a) * (alpha / r)
        if base.bias is not None:
            candidates["Your output adds the bias twice (base(x) already includes it)"] = \
                y0 + low * (alpha / r) + base.bias
    for hint, value in candidates.items():
        if value.shape == got.shape and _close(got.detach(), value):
            return " " + hint + "."
    return ""


def _frozen(base: nn.Linear) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in base.state_dict().items()}


def _base_unchanged(base: nn.Linear, before: dict[str, torch.Tensor], call: str) -> None:
    for name, value in base.state_dict().items():
        if not torch.equal(value, before[name]):
            diff = value - before[name]
            raise AssertionError(f"{call} changed base.{name} in place (by up to {float(diff.abs().max()):.3g}). "
                                 "The base layer is the frozen pretrained model: other layers, the reference "
                                 "model and the next merge still need it. Build a new tensor instead.")


def check_lora_forward(fn: Callable) -> None:
    """lora_forward(x, base, A, B, alpha) = base(x) + (alpha / r) (x Aᵀ) Bᵀ with r = A.shape[0], for x of any
    leading shape; compared with labkit's LoRALinear, including the gradients that reach A and B; float64 in,
    float64 out; base, A, B and x unchanged."""
    cases = _lora_cases()
    for what, base, a, b, alpha, x in cases:
        call = f"lora_forward(x, base, A, B, alpha) for {what}"
        before = _frozen(base)
        got = _tensor(_call(fn, call, x, base, a, b, alpha), call)
        _base_unchanged(base, before, call)
        ref = _reference_lora(base, a, b, alpha)
        expected = ref(x)
        if tuple(got.shape) != tuple(expected.shape):
            raise AssertionError(f"{call}: expected shape {list(expected.shape)} (x's leading dims, then out), got "
                                 f"{list(got.shape)}")
        if got.dtype != x.dtype:
            raise AssertionError(f"{call}: the inputs are {x.dtype}, the output is {got.dtype}: keep the input's "
                                 "dtype (no .float() in the middle)")
        if not _close(got.detach(), expected.detach()):
            diff = float((got.detach() - expected.detach()).abs().max())
            raise AssertionError(f"{call}: differs from labkit's LoRALinear by up to {diff:.3g}."
                                 f"{_lora_hint(got, base, a, b, alpha, x)}")
        if isinstance(a, nn.Parameter):  # the gradients LoRA trains with
            weights = torch.randn(expected.shape, generator=torch.Generator().manual_seed(12))
            if not got.requires_grad:
                raise AssertionError(f"{call}: the output does not depend on A and B for autograd (detach, no_grad "
                                     "or .data inside?): LoRA trains A and B through this forward")
            got_grads = torch.autograd.grad((got * weights).sum(), (a, b), allow_unused=True)
            ref_grads = torch.autograd.grad((expected * weights).sum(), (ref.lora_A, ref.lora_B))
            for name, gg, rg in zip("AB", got_grads, ref_grads):
                if gg is None or not _close(gg, rg):
                    raise AssertionError(f"{call}: the gradient reaching {name} differs from labkit's LoRALinear"
                                         f"{' (none reaches it)' if gg is None else ''}")
    _passed("lora_forward", len(cases))


def check_merge_lora(fn: Callable) -> None:
    """merge_lora(base, A, B, alpha) -> a new nn.Linear with weight W + (alpha / r) B A and base's bias (a copy),
    base left as it was; compared with labkit's LoRALinear.merge(); merging twice gives the same layer."""
    cases = _lora_cases()
    for what, base, a, b, alpha, x in cases:
        call = f"merge_lora(base, A, B, alpha) for {what}"
        before = _frozen(base)
        merged = _call(fn, call, base, a, b, alpha)
        _base_unchanged(base, before, call)
        if not isinstance(merged, nn.Linear):
            raise AssertionError(f"{call} should return an nn.Linear (it replaces the layer in a model), got "
                                 f"{type(merged).__name__}")
        ref = _reference_lora(base, a, b, alpha)
        ref.merge()
        w, expected = merged.weight.detach(), ref.base.weight.detach()
        if tuple(w.shape) != tuple(expected.shape):
            raise AssertionError(f"{call}: the merged weight must have base.weight's shape [out, in] = "
                                 f"{list(expected.shape)}, got {list(w.shape)}")
        if w.dtype != base.weight.dtype:
            raise AssertionError(f"{call}: base is {base.weight.dtype}, the merged weight {w.dtype}: keep the dtype")
        if not _close(w, expected):
            r, w0, ba = a.shape[0], base.weight.detach(), (b @ a).detach()
            candidates = {
                "Your merged weight is W + B A, without the α/r scale": w0 + ba,
                "Your merged weight is W + α B A: the scale is α / r": w0 + alpha * ba,
                "Your merged weight is W itself: the update was not added": w0,
            }
            if ba.shape[0] == ba.shape[1]:  # a square layer: the transposed update has the right shape
                candidates["Your merged weight is W + (α/r)(B A)ᵀ: the update B A is already [out, in], like W"] = \
                    w0 + ba.T * (alpha / r)
            hint = next((" " + h + "." for h, v in candidates.items() if _close(w, v)), "")
            raise AssertionError(f"{call}: the merged weight differs from W + (α/r) B A by up to "
                                 f"{float((w - expected).abs().max()):.3g}.{hint}")
        if (base.bias is None) != (merged.bias is None):
            raise AssertionError(f"{call}: base {'has' if base.bias is not None else 'has no'} bias, the merged layer "
                                 f"{'has' if merged.bias is not None else 'has none'}: keep base's bias as it is")
        if base.bias is not None and not torch.equal(merged.bias.detach(), base.bias.detach()):
            raise AssertionError(f"{call}: the merged layer's bias must be base's bias unchanged (LoRA adapts the "
                                 "weight only)")
        with torch.no_grad():
            y, y_ref = merged(x), _reference_lora(base, a, b, alpha)(x)
        if not _close(y, y_ref):
            raise AssertionError(f"{call}: merged(x) differs from the unmerged LoRA forward by up to "
                                 f"{float((y - y_ref).abs().max()):.3g}")
        again = _call(fn, call + " called a second time", base, a, b, alpha)
        if not isinstance(again, nn.Linear) or not torch.equal(again.weight.detach(), w):
            raise AssertionError(f"{call}: a second call gives a different layer (the update was added twice?); "
                                 "merging must leave base, A and B as they were")
    _passed("merge_lora", len(cases))


# ----------------------------------------------------------------------------------------------------------
# DPO

def _dpo_cases() -> list[tuple[str, tuple[torch.Tensor, ...], float | None]]:
    """(description, (policy chosen, policy rejected, ref chosen, ref rejected), beta or None for the default)."""
    g = torch.Generator().manual_seed(13)

    def logps(n, spread=4.0, dtype=torch.float32):
        return tuple(-30 + spread * torch.randn(n, generator=g, dtype=dtype) for _ in range(4))

    same = logps(6)
    same = (same[0], same[1], torch.cat([same[0][:3], same[2][3:]]), torch.cat([same[1][:3], same[3][3:]]))
    big = (torch.tensor([-20.0, -900.0, -15.0]), torch.tensor([-900.0, -20.0, -16.0]),
           torch.tensor([-20.0, -20.0, -15.0]), torch.tensor([-20.0, -20.0, -15.0]))
    return [
        ("5 pairs, beta = 0.1", logps(5), 0.1),
        ("6 pairs, 3 of them with the policy equal to the reference, beta = 0.5", same, 0.5),
        ("3 pairs with log-ratio margins of +880, -880 and -1, beta = 1", big, 1.0),
        ("4 pairs in float64, beta = 0.2", logps(4, dtype=torch.float64), 0.2),
        ("one pair, beta left at its default (0.1)", logps(1), None),
    ]


def _dpo_hint(loss: torch.Tensor, pc, pr, rc, rr, beta: float) -> str:
    if not torch.isfinite(loss):
        return (" Your loss is not finite: for a large negative margin sigmoid underflows to 0 and log(0) = -inf "
                "(exp overflows in log(1 + exp(-x)) the same way). Use torch.nn.functional.logsigmoid, which is "
                "exact there: -logsigmoid(x) ≈ -x for x << 0.")
    ls = torch.nn.functional.logsigmoid
    margin = (pc - rc) - (pr - rr)
    candidates = {
        "Your loss equals the mean of -log σ(β (log π(y_c) - log π(y_r))), without the reference: DPO's reward is "
        "the *log-ratio* to the reference, β (log π(y) - log π_ref(y))": -ls(beta * (pc - pr)).mean(),
        "Your loss equals the mean of -log σ(-β × margin): the sign of the margin is flipped, so the loss "
        "falls as the *rejected* answer pulls ahead": -ls(-beta * margin).mean(),
        "Your loss is the sum over pairs: take the mean": -ls(beta * margin).sum(),
        "Your loss is -β log σ(margin): β multiplies the margin inside the sigmoid": -beta * ls(margin).mean(),
        "Your loss is -log σ(margin) without β": -ls(margin).mean(),
        "Your loss is log σ(β × margin), without the minus: it must be -log σ(...) ≥ 0": ls(beta * margin).mean(),
    }
    for hint, value in candidates.items():
        if _close(loss.detach(), value):
            return " " + hint + "."
    return ""


def check_dpo_loss(fn: Callable) -> None:
    """dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=0.1) -> (loss, chosen_rewards,
    rejected_rewards): loss = mean over pairs of -log σ(β [(π_c - ref_c) - (π_r - ref_r)]), a scalar with the
    inputs' dtype; rewards β (π - ref) per pair. Compared with labkit's dpo_loss, the gradient too, on margins
    of ±880 (where log(sigmoid(x)) is -inf) and on float64."""
    cases = _dpo_cases()
    for what, inputs, beta in cases:
        call = f"dpo_loss({what})"
        pc, pr, rc, rr = (t.clone().requires_grad_(i < 2) for i, t in enumerate(inputs))  # policy ones need grad
        got = _call(fn, call, pc, pr, rc, rr) if beta is None else \
            _call(lambda *args: fn(*args, beta=beta), call, pc, pr, rc, rr)
        beta = 0.1 if beta is None else beta
        if not (isinstance(got, tuple) and len(got) == 3):
            raise AssertionError(f"{call} should return (loss, chosen_rewards, rejected_rewards), got {_short(got)}")
        loss, chosen, rejected = (_tensor(t, call, "three tensors") for t in got)
        ref_loss, ref_chosen, ref_rejected = dpo.dpo_loss(*inputs, beta=beta)
        if loss.shape != ():
            raise AssertionError(f"{call}: the loss must be one number (a 0-dim tensor: the mean over pairs), got "
                                 f"shape {list(loss.shape)}")
        if loss.dtype != pc.dtype:
            raise AssertionError(f"{call}: the log-probs are {pc.dtype}, the loss is {loss.dtype}: keep the dtype")
        if not _close(loss.detach(), ref_loss, rtol=1e-5, atol=1e-6):
            raise AssertionError(f"{call}: expected loss {float(ref_loss):.6g}, got {float(loss.detach()):.6g}."
                                 f"{_dpo_hint(loss, *inputs, beta)}")
        for name, value, expected, logp, ref in (("chosen", chosen, ref_chosen, inputs[0], inputs[2]),
                                                 ("rejected", rejected, ref_rejected, inputs[1], inputs[3])):
            if tuple(value.shape) != tuple(expected.shape) or not _close(value.detach(), expected):
                hint = ""
                if value.shape == expected.shape and _close(value.detach(), logp - ref):
                    hint = " Yours is the log-ratio without β."
                elif value.shape == expected.shape and _close(value.detach(), beta * logp):
                    hint = " Yours is β log π without the reference: subtract log π_ref."
                raise AssertionError(f"{call}: {name}_rewards must be β (log π - log π_ref) per pair = "
                                     f"{_short([round(v, 4) for v in expected.tolist()])}, got "
                                     f"{_short(value.detach().tolist())}.{hint}")
        if not loss.requires_grad:
            raise AssertionError(f"{call}: the loss does not depend on the policy's log-probs for autograd (.item(), "
                                 "detach or a Python float inside?): DPO trains the policy through it")
        got_grads = torch.autograd.grad(loss, (pc, pr), allow_unused=True)
        pc_ref, pr_ref = (t.clone().requires_grad_() for t in inputs[:2])
        ref_grads = torch.autograd.grad(dpo.dpo_loss(pc_ref, pr_ref, *inputs[2:], beta=beta)[0], (pc_ref, pr_ref))
        for name, gg, rg in zip(("policy_chosen", "policy_rejected"), got_grads, ref_grads):
            if gg is None or not _close(gg, rg, rtol=1e-5, atol=1e-7):
                raise AssertionError(f"{call}: the gradient of the loss with respect to {name}_logps should be "
                                     f"{_short(rg.tolist())}, got {_short(None if gg is None else gg.tolist())}")
    _passed("dpo_loss", len(cases))
