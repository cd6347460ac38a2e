"""labkit.checks.compress: the lab's checks pass correct answers and fail plausible mistakes, naming them.

The wrong implementations here are written independently of tests/mutants/09-compress-finetune.py (different
code for several of the same bugs, and bugs the mutants do not have), so the checks are tested on classes of
mistakes, not on the instances the lab's test swaps in.
"""
import copy
import math

import pytest
import torch
import torch.nn.functional as F

from labkit.checks.compress import (check_dequantize_int4, check_dpo_loss, check_lora_forward, check_merge_lora,
                                    check_quantize_int4)
from labkit.compress.quantize import quantize
from labkit.finetune import dpo
from labkit.finetune.lora import LoRALinear

pytestmark = pytest.mark.usefixtures("torch_one_thread")


# ------------------------------------------------------------------ correct answers

def quantize_int4(w, group_size, *, stat="max", levels=7, rounding="even", strided=False, zero_scale=1.0,
                  out_dtype=torch.float32, signed_max=False, clamp=(-7, 7), in_place=False):
    """A correct group-wise absmax int4 quantizer; each keyword turns one mistake on."""
    out, d_in = w.shape
    if in_place:
        w.data.div_(1.0)  # a no-op on the values, but writes into the caller's tensor
        w.data[0, 0] += 0.0
        w.data.mul_(1.0000001)
    x = w.detach().to(out_dtype)
    groups = x.reshape(out, group_size, d_in // group_size).transpose(1, 2) if strided \
        else x.reshape(out, d_in // group_size, group_size)
    if stat == "max":
        s = (groups.amax(-1) if signed_max else groups.abs().amax(-1)) / levels
    else:
        s = groups.abs().mean(-1) / levels
    if zero_scale is not None:
        s = torch.where(s > 0, s, torch.full_like(s, zero_scale))
    ratio = x / s.repeat_interleave(group_size, dim=1)
    if rounding == "even":
        q = torch.round(ratio)
    elif rounding == "up":
        q = torch.floor(ratio + 0.5)
    elif rounding == "away":
        q = torch.sign(ratio) * torch.floor(ratio.abs() + 0.5)
    else:
        q = ratio.trunc()
    return q.clamp(*clamp).to(torch.int8), s


def dequantize_int4(codes, scale, group_size, *, tile=False):
    s = scale.repeat(1, group_size) if tile else scale.repeat_interleave(group_size, dim=1)
    return codes.float() * s


def lora_forward(x, base, A, B, alpha, *, scale=None, detach=False):
    s = alpha / A.shape[0] if scale is None else scale
    low = (x @ A.T) @ B.T
    return base(x) + (low.detach() if detach else low) * s


def merge_lora(base, A, B, alpha, *, in_place=False, transpose=False, scale=None):
    s = alpha / A.shape[0] if scale is None else scale
    merged = base if in_place else copy.deepcopy(base)
    update = (B @ A).T if transpose else B @ A
    with torch.no_grad():
        merged.weight += update * s
    return merged


def dpo_loss(pc, pr, rc, rr, beta=0.1, *, naive=False, reduce="mean", use_ref=True, flip=False, item=False):
    chosen, rejected = (pc - rc, pr - rr) if use_ref else (pc, pr)
    z = beta * (chosen - rejected) * (-1 if flip else 1)
    per_pair = -torch.log(torch.sigmoid(z)) if naive else -F.logsigmoid(z)
    loss = per_pair.mean() if reduce == "mean" else per_pair.sum()
    if item:
        loss = torch.tensor(loss.item(), dtype=pc.dtype)
    return loss, beta * (pc - rc).detach(), beta * (pr - rr).detach()


def test_correct_answers_pass(capsys):
    check_quantize_int4(quantize_int4)
    check_dequantize_int4(dequantize_int4)
    check_lora_forward(lora_forward)
    check_merge_lora(merge_lora)
    check_dpo_loss(dpo_loss)
    out = capsys.readouterr().out
    for name in ("quantize_int4", "dequantize_int4", "lora_forward", "merge_lora", "dpo_loss"):
        assert f"✓ {name} passes" in out


def test_labkit_itself_passes():
    """labkit's own functions, wrapped in the lab's signatures, pass: the checks agree with their references."""
    def lk_quantize(w, g):
        q = quantize(w, 4, "group", g, symmetric=True)
        return q.codes, q.scale

    def lk_lora(x, base, A, B, alpha):
        layer = LoRALinear(copy.deepcopy(base), A.shape[0], alpha)
        as_param = (lambda t: t if isinstance(t, torch.nn.Parameter) else torch.nn.Parameter(t))
        layer.lora_A, layer.lora_B = as_param(A), as_param(B)  # the check's own Parameters: gradients reach them
        return layer(x)

    check_quantize_int4(lk_quantize)
    check_lora_forward(lk_lora)
    check_dpo_loss(dpo.dpo_loss)


def test_stubs_raise_not_implemented():
    def stub(*args, **kwargs):
        raise NotImplementedError("Exercise")
    for check in (check_quantize_int4, check_dequantize_int4, check_lora_forward, check_merge_lora, check_dpo_loss):
        with pytest.raises(NotImplementedError):
            check(stub)


# ------------------------------------------------------------------ quantize / dequantize

def _wrong_shape(w, g):
    codes, s = quantize_int4(w, g)
    return codes, s.reshape(-1)


def _asymmetric(w, g):
    out, d_in = w.shape
    x = w.detach().float().reshape(out, d_in // g, g)
    s = (x.amax(-1) - x.amin(-1)) / 15
    s = torch.where(s > 0, s, torch.ones_like(s))
    q = torch.round(x / s[..., None]).clamp(-8, 7).to(torch.int8)
    return q.reshape(out, d_in), s


def _zero_divides(w, g):
    out, d_in = w.shape
    x = w.detach().float().reshape(out, d_in // g, g)
    s = x.abs().amax(-1) / 7
    return torch.round(x / s[..., None]).clamp(-7, 7).to(torch.int8).reshape(out, d_in), s


@pytest.mark.parametrize("fn, message", [
    (lambda w, g: quantize_int4(w, g, stat="mean"), "group mean of |w|"),
    (lambda w, g: quantize_int4(w, g, levels=8, clamp=(-8, 7)), r"max \|w\| / 8"),
    (lambda w, g: quantize_int4(w, g, levels=15, clamp=(-8, 7)), r"max \|w\| / 15"),
    (_asymmetric, "zero-point"),
    (lambda w, g: quantize_int4(w, g, rounding="away"), "ties away from zero"),
    (lambda w, g: quantize_int4(w, g, rounding="trunc"), "truncate"),
    (lambda w, g: quantize_int4(w, g, rounding="up"), "round ties up"),
    (lambda w, g: quantize_int4(w, g, strided=True), "strided"),
    (lambda w, g: quantize_int4(w, g, signed_max=True), "signed"),
    (lambda w, g: quantize_int4(w, g, zero_scale=None), "all zeros"),
    (_zero_divides, "0 / 0"),
    (lambda w, g: quantize_int4(w, g, zero_scale=0.0), "scale 1"),
    (lambda w, g: quantize_int4(w, g, out_dtype=w.dtype), "float32 whatever"),
    (lambda w, g: quantize_int4(w, g, in_place=True), "in place"),
    (_wrong_shape, "reshape them"),
    (lambda w, g: (quantize_int4(w, g)[0].float(), quantize_int4(w, g)[1]), "int8"),
    (lambda w, g: quantize_int4(w, g)[0], r"tuple \(codes, scale\)"),
    (lambda w, g: (quantize_int4(w, g)[0] + 8, quantize_int4(w, g)[1]), "stored unsigned"),
    (lambda w, g: (quantize_int4(w, g)[0] * 2, quantize_int4(w, g)[1]), "span -14..14"),
])
def test_quantize_check_catches(fn, message, capsys):
    with pytest.raises(AssertionError, match=message):
        check_quantize_int4(fn)
    assert "✓" not in capsys.readouterr().out


@pytest.mark.parametrize("fn, message", [
    (lambda c, s, g: dequantize_int4(c, s, g, tile=True), "tiled the scales"),
    (lambda c, s, g: c.float() / s.repeat_interleave(g, dim=1), "divided"),
    (lambda c, s, g: c * s.repeat_interleave(g, dim=1).to(torch.int8), "float32"),
    (lambda c, s, g: c.float() * s[:, :1], "differ"),
    (lambda c, s, g: (c.float() * s.repeat_interleave(g, dim=1)).T, "expected shape"),
])
def test_dequantize_check_catches(fn, message):
    with pytest.raises(AssertionError, match=message):
        check_dequantize_int4(fn)


# ------------------------------------------------------------------ LoRA

def _in_place_forward(x, base, A, B, alpha):
    with torch.no_grad():
        base.weight += B @ A * (alpha / A.shape[0])
    return base(x)


def _bias_twice(x, base, A, B, alpha):
    out = lora_forward(x, base, A, B, alpha)
    return out + base.bias if base.bias is not None else out


def _two_d_only(x, base, A, B, alpha):
    return base(x) + torch.mm(torch.mm(x, A.T), B.T) * (alpha / A.shape[0])


@pytest.mark.parametrize("fn, message", [
    (lambda x, base, A, B, alpha: lora_forward(x, base, A, B, alpha, scale=1.0), "without the α/r scale"),
    (lambda x, base, A, B, alpha: lora_forward(x, base, A, B, alpha, scale=alpha), "by α instead of α/r"),
    (lambda x, base, A, B, alpha: lora_forward(x, base, A, B, alpha, scale=A.shape[0] / alpha), "by r/α"),
    (lambda x, base, A, B, alpha: base(x), "base\\(x\\) alone"),
    (lambda x, base, A, B, alpha: base(x) + x @ (B @ A) * (alpha / A.shape[0]) if A.shape[1] == B.shape[0]
     else lora_forward(x, base, A, B, alpha), "untransposed"),
    (_bias_twice, "bias twice"),
    (_in_place_forward, "changed base.weight in place"),
    (_two_d_only, "raised RuntimeError"),
    (lambda x, base, A, B, alpha: lora_forward(x, base, A, B, alpha, detach=True), "does not depend on A and B"),
    (lambda x, base, A, B, alpha: base(x) + x @ A.detach().T @ B.T * (alpha / A.shape[0]), "gradient reaching A"),
    (lambda x, base, A, B, alpha: lora_forward(x.float(), copy.deepcopy(base).float(), A.float(), B.float(),
                                               alpha), "dtype"),
])
def test_lora_forward_check_catches(fn, message):
    with pytest.raises(AssertionError, match=message):
        check_lora_forward(fn)


def _lora_forward_no_grad(x, base, A, B, alpha):
    with torch.no_grad():
        return lora_forward(x, base, A, B, alpha)


def test_lora_forward_without_autograd_is_caught():  # no_grad: nothing reaches A or B
    with pytest.raises(AssertionError, match="does not depend on A and B"):
        check_lora_forward(_lora_forward_no_grad)


def _merge_new_linear_without_bias(base, A, B, alpha):
    merged = torch.nn.Linear(base.in_features, base.out_features, bias=False, dtype=base.weight.dtype)
    with torch.no_grad():
        merged.weight.copy_(base.weight + B @ A * (alpha / A.shape[0]))
    return merged


_calls = []


def _merge_accumulates(base, A, B, alpha):
    """Keeps the merged weight between calls and adds the update again: the merge applied twice."""
    _calls.append(1)
    merged = copy.deepcopy(base)
    with torch.no_grad():
        merged.weight += len(_calls) * B @ A * (alpha / A.shape[0])
    return merged


@pytest.mark.parametrize("fn, message", [
    (lambda base, A, B, alpha: merge_lora(base, A, B, alpha, in_place=True), "changed base.weight in place"),
    (lambda base, A, B, alpha: merge_lora(base, A, B, alpha, scale=1.0), "without the α/r scale"),
    (lambda base, A, B, alpha: merge_lora(base, A, B, alpha, scale=alpha), "W \\+ α B A"),
    (lambda base, A, B, alpha: merge_lora(base, A, B, alpha, transpose=A.shape[1] == B.shape[0]), "already"),
    (lambda base, A, B, alpha: copy.deepcopy(base), "W itself"),
    (lambda base, A, B, alpha: merge_lora(base, A, B, alpha).weight, "should return an nn.Linear"),
    (_merge_new_linear_without_bias, "bias"),
    (lambda base, A, B, alpha: merge_lora(copy.deepcopy(base).float(), A.float(), B.float(), alpha),
     "keep the dtype"),
])
def test_merge_check_catches(fn, message):
    with pytest.raises(AssertionError, match=message):
        check_merge_lora(fn)


def test_merge_applied_twice_is_caught():
    _calls.clear()
    with pytest.raises(AssertionError, match="second call"):
        check_merge_lora(_merge_accumulates)


# ------------------------------------------------------------------ DPO

def _softplus_overflow(pc, pr, rc, rr, beta=0.1):
    z = beta * ((pc - rc) - (pr - rr))
    return torch.log1p(torch.exp(-z)).mean(), beta * (pc - rc).detach(), beta * (pr - rr).detach()


def _rewards_without_beta(pc, pr, rc, rr, beta=0.1):
    loss = dpo_loss(pc, pr, rc, rr, beta)[0]
    return loss, (pc - rc).detach(), (pr - rr).detach()


def _in_place(pc, pr, rc, rr, beta=0.1):
    rc -= 0.0
    rc.add_(1e-3)
    return dpo_loss(pc, pr, rc - 1e-3, rr, beta)


@pytest.mark.parametrize("fn, message", [
    (lambda *a, beta=0.1: dpo_loss(*a, beta=beta, naive=True), "not finite"),
    (_softplus_overflow, "not finite"),
    (lambda *a, beta=0.1: dpo_loss(*a, beta=beta, reduce="sum"), "sum over pairs"),
    (lambda *a, beta=0.1: dpo_loss(*a, beta=beta, use_ref=False), "without the reference"),
    (lambda *a, beta=0.1: dpo_loss(*a, beta=beta, flip=True), "sign of the margin is flipped"),
    (lambda *a, beta=0.1: dpo_loss(*a, beta=beta, item=True), "does not depend on the policy"),
    (lambda pc, pr, rc, rr, beta=0.1: (-beta * F.logsigmoid((pc - rc) - (pr - rr)).mean(),
                                       *dpo_loss(pc, pr, rc, rr, beta)[1:]), "inside the sigmoid"),
    (lambda pc, pr, rc, rr, beta=0.1: dpo_loss(pc, pr, rc, rr, 0.1), "expected loss"),
    (lambda pc, pr, rc, rr, beta=0.1: (dpo_loss(pc, pr, rc, rr, beta)[0].float(),
                                       *dpo_loss(pc, pr, rc, rr, beta)[1:]), "keep the dtype"),
    (lambda pc, pr, rc, rr, beta=0.1: (-F.logsigmoid(beta * ((pc - rc) - (pr - rr))),
                                       *dpo_loss(pc, pr, rc, rr, beta)[1:]), "one number"),
    (_rewards_without_beta, "without β"),
    (_in_place, "in place"),
    (lambda pc, pr, rc, rr, beta=0.1: dpo_loss(pc, pr, rc, rr, beta)[0], "should return"),
    (lambda pc, pr, rc, rr, beta: dpo_loss(pc, pr, rc, rr, beta), "raised TypeError"),
])
def test_dpo_check_catches(fn, message, capsys):
    with pytest.raises(AssertionError, match=message):
        check_dpo_loss(fn)
    assert "✓" not in capsys.readouterr().out


def test_large_margins_are_in_the_checked_inputs():
    """The stability case really breaks log(sigmoid(x)) in float32 (and -logsigmoid does not)."""
    x = torch.tensor([-880.0])
    assert torch.isinf(-torch.log(torch.sigmoid(x))).all()
    assert math.isclose(float(-F.logsigmoid(x)), 880.0)
