"""labkit.rope: sinusoidal encodings, RoPE (transformers' rotate-half layout), position interpolation, YaRN."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from labkit import rope
from labkit.rope import (apply_rope, interpolate_positions, rope_cos_sin, rope_inv_freq, rope_tables, rotate_half,
                         sinusoidal_encoding, yarn_attention_factor, yarn_inv_freq)


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def rand(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def llama_config(head_dim=16, theta=10000.0, **rope):
    from transformers import LlamaConfig
    return LlamaConfig(hidden_size=4 * head_dim, num_attention_heads=4, head_dim=head_dim,
                       max_position_embeddings=256, rope_theta=theta,
                       **({"rope_parameters": {"rope_theta": theta, **rope}} if rope else {}))


# ------------------------------------------------------------------------------------------------ sinusoidal

def test_sinusoidal_values():
    pe = sinusoidal_encoding(50, 8)
    assert pe.shape == (50, 8) and pe.dtype == torch.float32
    assert pe[0].tolist() == [0.0, 1.0] * 4  # position 0: sin 0, cos 0
    p, i = 7, 1
    w = 10000 ** (-2 * i / 8)
    assert pe[p, 2 * i].item() == pytest.approx(math.sin(p * w), abs=1e-7)
    assert pe[p, 2 * i + 1].item() == pytest.approx(math.cos(p * w), abs=1e-7)
    assert pe.abs().max() <= 1


def test_sinusoidal_shift_is_a_fixed_rotation():
    # PE[p + s] is PE[p] rotated pairwise by angles s * w_i, the same for every p: a linear map of PE[p]
    pe = sinusoidal_encoding(40, 16).double()
    s = 5
    w = 10000 ** (-torch.arange(0, 16, 2, dtype=torch.float64) / 16)
    sin_p, cos_p = pe[:-s, 0::2], pe[:-s, 1::2]
    torch.testing.assert_close(pe[s:, 0::2], sin_p * torch.cos(s * w) + cos_p * torch.sin(s * w), atol=1e-6, rtol=0)
    torch.testing.assert_close(pe[s:, 1::2], cos_p * torch.cos(s * w) - sin_p * torch.sin(s * w), atol=1e-6, rtol=0)


@pytest.mark.parametrize("args, message", [((10, 7), "even"), ((-1, 8), "seq_len"), ((4, 8, 0.0), "base")])
def test_sinusoidal_errors(args, message):
    with pytest.raises(ValueError, match=message):
        sinusoidal_encoding(*args)


# ------------------------------------------------------------------------------------------------ RoPE

@pytest.mark.parametrize("head_dim, theta", [(16, 10000.0), (64, 100000.0), (8, 500.0)])
def test_cos_sin_equal_transformers_exactly(head_dim, theta):
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding
    rotary = LlamaRotaryEmbedding(llama_config(head_dim, theta))
    inv = rope_inv_freq(head_dim, theta)
    assert torch.equal(inv, rotary.inv_freq)
    positions = torch.arange(300)[None]
    cos_hf, sin_hf = rotary(torch.zeros(1, dtype=torch.float32), positions)
    cos, sin = rope_cos_sin(torch.arange(300), inv)
    assert cos.shape == (300, head_dim)
    assert torch.equal(cos, cos_hf[0]) and torch.equal(sin, sin_hf[0])


def test_apply_rope_equals_transformers():
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb
    from transformers.models.llama.modeling_llama import rotate_half as hf_rotate_half
    q, k = rand(2, 3, 10, 16, seed=1), rand(2, 1, 10, 16, seed=2)
    cos, sin = (t.double() for t in rope_cos_sin(torch.arange(10), rope_inv_freq(16)))
    q_hf, k_hf = apply_rotary_pos_emb(q, k, cos[None], sin[None])  # transformers wants [B, T, D]
    torch.testing.assert_close(apply_rope(q, cos, sin), q_hf, rtol=0, atol=0)
    torch.testing.assert_close(apply_rope(k, cos, sin), k_hf, rtol=0, atol=0)
    assert torch.equal(rotate_half(q), hf_rotate_half(q))


def test_rotate_half_is_a_quarter_turn():
    x = rand(5, 8)
    assert torch.equal(rotate_half(torch.arange(4.0)), torch.tensor([-2.0, -3.0, 0.0, 1.0]))
    assert torch.equal(rotate_half(rotate_half(x)), -x)
    assert torch.allclose((x * rotate_half(x)).sum(-1), torch.zeros(5, dtype=torch.float64))  # orthogonal


def test_apply_rope_rotates_pairs_i_and_i_plus_half():
    head_dim, p = 8, 3
    x = rand(1, head_dim)
    inv = rope_inv_freq(head_dim).double()
    cos, sin = (t.double() for t in rope_cos_sin(torch.tensor([p]), inv))
    out = apply_rope(x, cos, sin)[0]
    for i in range(head_dim // 2):
        a, b, angle = x[0, i], x[0, i + head_dim // 2], p * inv[i]
        assert out[i].item() == pytest.approx((a * math.cos(angle) - b * math.sin(angle)).item(), abs=1e-6)
        assert out[i + head_dim // 2].item() == pytest.approx((b * math.cos(angle) + a * math.sin(angle)).item(),
                                                                abs=1e-6)


def test_rope_keeps_norms_and_position_zero_is_identity():
    x = rand(2, 12, 32)
    cos, sin = (t.double() for t in rope_tables(12, 32))
    y = apply_rope(x, cos, sin)
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1))
    torch.testing.assert_close(y[:, 0], x[:, 0])


@settings(max_examples=60, deadline=None)
@given(m=st.integers(0, 500), n=st.integers(0, 500), shift=st.integers(0, 2000),
       head_dim=st.sampled_from([2, 8, 16, 64]), seed=st.integers(0, 10_000))
def test_rope_score_depends_only_on_the_offset(m, n, shift, head_dim, seed):
    q, k = rand(head_dim, seed=seed), rand(head_dim, seed=seed + 1)
    inv = rope_inv_freq(head_dim).double()

    def score(pq, pk):
        cq, sq = rope_cos_sin(torch.tensor([pq], dtype=torch.float64), inv)
        ck, sk = rope_cos_sin(torch.tensor([pk], dtype=torch.float64), inv)
        qr = apply_rope(q[None], cq.double(), sq.double())
        kr = apply_rope(k[None], ck.double(), sk.double())
        return float((qr * kr).sum())

    # the angles are computed in float32 (as transformers does), so allow float32-sized error
    assert score(m + shift, n + shift) == pytest.approx(score(m, n), abs=1e-3 * head_dim)


def test_rope_errors():
    with pytest.raises(ValueError, match="even int"):
        rope_inv_freq(7)
    with pytest.raises(ValueError, match="theta"):
        rope_inv_freq(8, theta=-1.0)
    with pytest.raises(ValueError, match="inv_freq must be 1-D"):
        rope_cos_sin(torch.arange(3), torch.zeros(2, 2))
    with pytest.raises(TypeError, match="torch.Tensors"):
        rope_cos_sin([0, 1], rope_inv_freq(8))
    with pytest.raises(ValueError, match="last dim is even"):
        rotate_half(torch.zeros(3, 5))
    cos, sin = rope_tables(4, 8)
    with pytest.raises(ValueError, match=r"cos/sin must be \[T, head_dim\]"):
        apply_rope(torch.zeros(2, 5, 8), cos, sin)
    with pytest.raises(ValueError, match="same shape"):
        apply_rope(torch.zeros(2, 4, 8), cos, sin[:2])
    with pytest.raises(ValueError, match=r"\[\.\.\., T, head_dim\]"):
        apply_rope(torch.zeros(8), cos, sin)
    with pytest.raises(TypeError, match="torch.Tensors"):
        apply_rope(torch.zeros(4, 8), cos.tolist(), sin)


# ------------------------------------------------------------------------------------------------ extension

def test_position_interpolation():
    pos = interpolate_positions(torch.arange(256), train_len=64, target_len=256)
    assert pos.dtype == torch.float32 and pos[-1].item() == pytest.approx(63.75) and pos[4].item() == 1.0
    cos, sin = rope_tables(256, 16, scaling="pi", train_len=64)
    ref = rope_cos_sin(torch.arange(256) / 4, rope_inv_freq(16))
    torch.testing.assert_close(cos, ref[0]) and torch.testing.assert_close(sin, ref[1])
    with pytest.raises(ValueError, match="only compresses"):
        interpolate_positions(torch.arange(4), 64, 32)


def test_scaling_changes_nothing_within_the_training_length():
    plain = rope_tables(64, 16)
    for scaling in ("pi", "yarn"):
        scaled = rope_tables(64, 16, scaling=scaling, train_len=64)
        assert torch.equal(scaled[0], plain[0]) and torch.equal(scaled[1], plain[1])


def test_yarn_keeps_fast_dims_and_interpolates_slow_ones():
    head_dim, theta, length, scale = 64, 10000.0, 2048, 4.0
    inv = rope_inv_freq(head_dim, theta).double()
    new = yarn_inv_freq(head_dim, theta, scale, length).double()
    turns = length * inv / (2 * math.pi)
    fast, slow = turns > 32, turns < 1
    assert fast.any() and slow.any() and (~fast & ~slow).any()
    torch.testing.assert_close(new[fast], inv[fast], rtol=1e-6, atol=0)
    torch.testing.assert_close(new[slow], inv[slow] / scale, rtol=1e-6, atol=0)
    middle = ~fast & ~slow
    assert ((new[middle] < inv[middle]) & (new[middle] > inv[middle] / scale)).all()
    assert (new[1:] < new[:-1]).all()  # still ordered fast to slow
    torch.testing.assert_close(yarn_inv_freq(head_dim, theta, 1.0, length), rope_inv_freq(head_dim, theta))


@pytest.mark.parametrize("head_dim, theta, length, scale", [(64, 10000.0, 2048, 4.0), (128, 500000.0, 8192, 8.0),
                                                             (32, 10000.0, 64, 4.0)])
def test_yarn_agrees_with_transformers_outside_the_ramp(head_dim, theta, length, scale):
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    config = llama_config(head_dim, theta, rope_type="yarn", factor=scale,
                          original_max_position_embeddings=length)
    hf_inv, hf_factor = ROPE_INIT_FUNCTIONS["yarn"](config)
    ours = yarn_inv_freq(head_dim, theta, scale, length)
    assert yarn_attention_factor(scale) == pytest.approx(hf_factor)
    # transformers ramps linearly in the dimension index between floor/ceil of the boundaries; ours ramps in r.
    low = math.floor(head_dim * math.log(length / (32 * 2 * math.pi)) / (2 * math.log(theta)))
    high = math.ceil(head_dim * math.log(length / (1 * 2 * math.pi)) / (2 * math.log(theta)))
    idx = torch.arange(head_dim // 2)
    outside = (idx <= low) | (idx >= high)
    assert outside.any()
    torch.testing.assert_close(ours[outside], hf_inv[outside].float(), rtol=1e-6, atol=0)


def test_yarn_tables_use_the_attention_factor():
    cos, sin = rope_tables(256, 16, scaling="yarn", train_len=64)
    factor = yarn_attention_factor(4.0)
    assert factor == pytest.approx(0.1 * math.log(4) + 1)
    ref = rope_cos_sin(torch.arange(256), yarn_inv_freq(16, 10000.0, 4.0, 64), attention_factor=factor)
    assert torch.equal(cos, ref[0]) and torch.equal(sin, ref[1])
    torch.testing.assert_close(cos[0], torch.full((16,), factor))
    assert yarn_attention_factor(0.5) == 1.0


def test_rope_tables_start_offset():
    full = rope_tables(20, 8)
    part = rope_tables(5, 8, start=15)
    assert torch.equal(part[0], full[0][15:]) and torch.equal(part[1], full[1][15:])


def test_extension_errors():
    with pytest.raises(ValueError, match="scaling must be one of"):
        rope_tables(8, 8, scaling="ntk")
    with pytest.raises(ValueError, match="needs train_len"):
        rope_tables(8, 8, scaling="yarn")
    with pytest.raises(ValueError, match="seq_len"):
        rope_tables(-1, 8)
    with pytest.raises(ValueError, match="start"):
        rope_tables(4, 8, start=-2)
    with pytest.raises(ValueError, match="beta_slow"):
        yarn_inv_freq(16, 10000.0, 2.0, 64, beta_fast=1.0, beta_slow=2.0)
    with pytest.raises(ValueError, match="scale"):
        yarn_inv_freq(16, 10000.0, 0.0, 64)
    with pytest.raises(ValueError, match="attention_factor"):
        rope_cos_sin(torch.arange(3), rope_inv_freq(8), attention_factor=0)


def test_interleaved_layout_equals_halves_up_to_the_permutation():
    """Meta's layout (pairs 2i, 2i+1) and Hugging Face's (pairs i, i + D/2) are the same rotation of permuted
    coordinates, so permuted W_q/W_k rows give identical attention scores."""
    d, t = 16, 11
    cos, sin = (u.double() for u in rope.rope_tables(t, d))
    perm = rope.halves_to_interleaved(d)
    assert perm.tolist()[:6] == [0, 8, 1, 9, 2, 10] and sorted(perm.tolist()) == list(range(d))
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 3, t, d, generator=g, dtype=torch.float64)
    halves_q, halves_k = rope.apply_rope(q, cos, sin), rope.apply_rope(k, cos, sin)
    inter_q, inter_k = rope.apply_rope_interleaved(q[..., perm], cos, sin), rope.apply_rope_interleaved(k[..., perm], cos, sin)
    torch.testing.assert_close(inter_q, halves_q[..., perm], rtol=0, atol=1e-12)
    torch.testing.assert_close(inter_q @ inter_k.transpose(-1, -2), halves_q @ halves_k.transpose(-1, -2),
                               rtol=0, atol=1e-12)
    assert not torch.allclose(rope.apply_rope_interleaved(q, cos, sin), halves_q)  # unpermuted: different


@pytest.mark.parametrize("bad", [0, 3, True, 2.0])
def test_halves_to_interleaved_refuses_odd_or_non_int(bad):
    with pytest.raises(ValueError, match="head_dim must be an even int"):
        rope.halves_to_interleaved(bad)
