"""labkit.checks.attention: the graded checks pass on the references and fail on plausible wrong answers."""
import math

import pytest
import torch
import torch.nn.functional as F

from labkit.attention import scaled_dot_product_attention
from labkit.checks.attention import check_apply_rope, check_causal_attention, check_rotate_half
from labkit.rope import apply_rope, rotate_half


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def causal_reference(q, k, v):
    return scaled_dot_product_attention(q, k, v, causal=True)


# ------------------------------------------------------------------ plausible wrong implementations (mutants)

def _scores(q, k):
    return q @ k.transpose(-2, -1)


def attention_no_mask(q, k, v):
    return torch.softmax(_scores(q, k) / math.sqrt(q.shape[-1]), dim=-1) @ v


def attention_hides_diagonal(q, k, v):  # triu(0) instead of triu(1): a position cannot see itself
    t = q.shape[-2]
    hide = torch.ones(t, t, dtype=torch.bool).triu(0)
    return torch.softmax((_scores(q, k) / math.sqrt(q.shape[-1])).masked_fill(hide, float("-inf")), dim=-1) @ v


def attention_unscaled(q, k, v):
    t = q.shape[-2]
    hide = torch.ones(t, t, dtype=torch.bool).triu(1)
    return torch.softmax(_scores(q, k).masked_fill(hide, float("-inf")), dim=-1) @ v


def attention_wrong_axis(q, k, v):
    t = q.shape[-2]
    hide = torch.ones(t, t, dtype=torch.bool).triu(1)
    return torch.softmax((_scores(q, k) / math.sqrt(q.shape[-1])).masked_fill(hide, float("-inf")), dim=-2) @ v


def attention_scaled_by_d(q, k, v):  # divides by d, not sqrt(d)
    t = q.shape[-2]
    hide = torch.ones(t, t, dtype=torch.bool).triu(1)
    return torch.softmax((_scores(q, k) / q.shape[-1]).masked_fill(hide, float("-inf")), dim=-1) @ v


def attention_zero_mask(q, k, v):  # sets masked *weights* to 0 after the softmax: rows no longer sum to 1
    t = q.shape[-2]
    w = torch.softmax(_scores(q, k) / math.sqrt(q.shape[-1]), dim=-1)
    return w.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), 0.0) @ v


def attention_softmax_by_hand(q, k, v):  # exp(s) / sum exp(s): no max subtracted, overflows float32
    t = q.shape[-2]
    s = (_scores(q, k) / math.sqrt(q.shape[-1])).masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
    w = torch.exp(s)
    return w / w.sum(-1, keepdim=True) @ v


def attention_in_float64(q, k, v):  # right values, returned as float64: the float32 layer after it refuses them
    return causal_reference(q.double(), k.double(), v.double())


def attention_with_view(q, k, v):  # .view assumes contiguous heads: fails on the layer's transposed q, k, v
    t, d = q.shape[-2], q.shape[-1]
    flat = lambda x: x.view(-1, t, x.shape[-1])
    return causal_reference(flat(q), flat(k), flat(v)).view(*q.shape[:-1], v.shape[-1])


def attention_numpy(q, k, v):
    return causal_reference(q, k, v).numpy()


def rotate_interleaved(x):  # GPT-J's layout: pairs (2i, 2i+1)
    return torch.stack((-x[..., 1::2], x[..., 0::2]), dim=-1).flatten(-2)


def rotate_wrong_sign(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x2, -x1), dim=-1)


def rotate_not_swapped(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x1, x2), dim=-1)


def rotate_drops_a_half(x):
    return -x[..., x.shape[-1] // 2:]


def rope_wrong_sign(x, cos, sin):
    return x * cos - rotate_half(x) * sin


def rope_swapped(x, cos, sin):
    return x * sin + rotate_half(x) * cos


def rope_with_interleaved_rotation(x, cos, sin):
    return x * cos + rotate_interleaved(x) * sin


def rope_scaled(x, cos, sin):  # not a rotation: lengths change
    return x * cos + x * sin


def stub(*args):
    raise NotImplementedError("your code here")


# ------------------------------------------------------------------ tests

@pytest.mark.parametrize("check, reference, name, checks", [
    (check_causal_attention, causal_reference, "causal_attention", 8),
    (check_rotate_half, rotate_half, "rotate_half", 6),
    (check_apply_rope, apply_rope, "apply_rope", 6),
])
def test_checks_pass_on_the_references(check, reference, name, checks, capsys):
    check(reference)
    assert capsys.readouterr().out == f"✓ {name} passes {checks} checks\n"


def test_checks_accept_other_correct_answers(capsys):
    check_causal_attention(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True))
    check_causal_attention(lambda q, k, v: F.scaled_dot_product_attention(q.float(), k.float(), v.float(),
                                                                          is_causal=True))  # float32 is fine
    check_rotate_half(lambda x: torch.cat((-x[..., x.shape[-1] // 2:], x[..., :x.shape[-1] // 2]), dim=-1))
    check_apply_rope(lambda x, cos, sin: x * cos + rotate_half(x) * sin)
    assert capsys.readouterr().out.count("✓") == 4


def rope_in_place(x, cos, sin):
    """The right value, and the caller's x corrupted (it is used again afterwards, e.g. as the key)."""
    rotated = rotate_half(x) * sin
    x *= cos
    return x + rotated


def attention_scales_q_in_place(q, k, v):
    q /= math.sqrt(q.shape[-1])  # the right scores, and the caller's q divided by sqrt(d)
    mask = torch.triu(torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool), 1)
    return torch.softmax((q @ k.transpose(-1, -2)).masked_fill(mask, float("-inf")), -1) @ v


@pytest.mark.parametrize("check, mutant, message", [
    (check_causal_attention, attention_no_mask, "no causal mask"),
    (check_causal_attention, attention_hides_diagonal, "output contains NaN or inf. Position 0 has no key"),
    (check_causal_attention, attention_unscaled, r"not divided by sqrt\(d\)"),
    (check_causal_attention, attention_wrong_axis, "softmax over the wrong axis"),
    (check_causal_attention, attention_scaled_by_d, "wrong output; first difference"),
    (check_causal_attention, attention_zero_mask, "wrong output"),
    (check_causal_attention, attention_numpy, "should return a torch.Tensor"),
    (check_causal_attention, attention_softmax_by_hand, "Subtract each row's max score before exp"),
    (check_causal_attention, attention_in_float64, "should return float32 for float32 inputs"),
    (check_causal_attention, attention_with_view, r"not contiguous.*raised RuntimeError: view size"),
    (check_rotate_half, lambda x: rotate_half(x.double()), "should return float32 for float32 inputs"),
    (check_apply_rope, lambda x, cos, sin: x.double() * cos.double() + rotate_half(x.double()) * sin.double(),
     "should return float32 for float32 inputs"),
    (check_rotate_half, rotate_interleaved, "the interleaved layout"),
    (check_rotate_half, rotate_wrong_sign, "the wrong sign"),
    (check_rotate_half, rotate_not_swapped, "not swapped"),
    (check_rotate_half, rotate_drops_a_half, r"should return shape \(4,\)"),
    (check_apply_rope, rope_wrong_sign, "turns the wrong way"),
    (check_apply_rope, rope_swapped, "cos and sin are swapped"),
    (check_apply_rope, rope_with_interleaved_rotation, "Did rotate_half pass its check"),
    (check_apply_rope, rope_scaled, "keeps every vector's length"),
    (check_apply_rope, rope_in_place, r"changed its argument 1 \(Tensor\) in place"),
    (check_causal_attention, attention_scales_q_in_place, r"changed its argument 1 \(Tensor\) in place"),
])
def test_checks_fail_on_plausible_wrong_answers(check, mutant, message, capsys):
    with pytest.raises(AssertionError, match=message):
        check(mutant)
    assert "✓" not in capsys.readouterr().out


@pytest.mark.parametrize("check", [check_causal_attention, check_rotate_half, check_apply_rope])
def test_blank_lab_raises_not_implemented(check):
    with pytest.raises(NotImplementedError):
        check(stub)


def test_other_errors_name_the_input():
    with pytest.raises(AssertionError, match=r"causal_attention\(q, k, v\)  \[.*\] raised RuntimeError"):
        check_causal_attention(lambda q, k, v: q @ k @ v)
    with pytest.raises(AssertionError, match=r"raised"):
        check_rotate_half(lambda x: x.view(3, -1))


def test_causality_property_is_checked():
    # right on every fixed case, but peeks at the last position when T = 6 and d = 8
    def peeks(q, k, v):
        out = causal_reference(q, k, v)
        if q.shape == (6, 8):
            out = out + 0.001 * v[-1]
        return out

    with pytest.raises(AssertionError, match="can see position 5"):
        check_causal_attention(peeks)


def test_relative_offset_property_is_checked():
    # right on the fixed cases, but adds a position-dependent tilt when x is a single [1, 16] vector
    def tilted(x, cos, sin):
        out = apply_rope(x, cos, sin)
        return out * (1 + cos[..., :1]) / 2 if x.shape == (1, 16) else out

    with pytest.raises(AssertionError, match="two positions apart should score the same"):
        check_apply_rope(tilted)
