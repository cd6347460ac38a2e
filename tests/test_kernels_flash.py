"""labkit.kernels.flash: the FlashAttention-2 forward kernel against plain attention and torch's SDPA.

Random shapes (hypothesis, few examples: the interpreter is slow) with N not a multiple of the blocks,
grouped-query heads, causal and not, head dims 16..128 including non-powers of two, fp32 and fp16; inputs
inside NaN guard bands, outputs inside sentinel bands.
"""
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from labkit.checks.kernels import SENTINEL, band_changed, guarded, guarded_input
from labkit.kernels import backend
from labkit.kernels.flash import (attention_flops, attention_frames, attention_program_tiles, attention_reference,
                                  flash_attention, flash_fwd_kernel)

pytestmark = pytest.mark.usefixtures("torch_one_thread")
TOL = {torch.float32: 2e-5, torch.float16: 2e-3}  # fp16: rounding of the stored output and of p before p @ v


def _qkv(b, h, h_kv, n_q, n_k, d, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, h, n_q, d, generator=g).to(dtype), torch.randn(b, h_kv, n_k, d, generator=g).to(dtype),
            torch.randn(b, h_kv, n_k, d, generator=g).to(dtype))


@settings(max_examples=8, deadline=None)
@given(b=st.integers(1, 2), h_kv=st.integers(1, 2), rep=st.sampled_from([1, 3]), n_q=st.integers(1, 50),
       extra=st.integers(0, 20), d=st.sampled_from([16, 24, 64, 80, 128]), causal=st.booleans(),
       dtype=st.sampled_from([torch.float32, torch.float16]), seed=st.integers(0, 2**16))
def test_kernel_matches_reference_inside_guard_bands(b, h_kv, rep, n_q, extra, d, causal, dtype, seed):
    h, n_k = h_kv * rep, n_q + extra
    q, k, v = _qkv(b, h, h_kv, n_q, n_k, d, dtype, seed)
    (_, qv), (_, kv), (_, vv) = guarded_input(q, 16), guarded_input(k, 16), guarded_input(v, 16)
    o_buf, o = guarded(tuple(q.shape), dtype, SENTINEL, 16)
    lse_buf, lse_flat = guarded((b * h * n_q,), torch.float32, SENTINEL, 16)  # lse is a contiguous [B, H, N_q]
    lse = lse_flat.view(b, h, n_q)
    cfg = backend.block_sizes("attention")
    grid = (-(-n_q // cfg["BLOCK_M"]), b * h)
    flash_fwd_kernel[grid](qv, kv, vv, o, lse, *qv.stride(), *kv.stride(), *vv.stride(), *o.stride(),
                           h, rep, n_q, n_k, d, 1.4426950408889634 / math.sqrt(d), CAUSAL=causal,
                           BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], BLOCK_D=max(16, 1 << (d - 1).bit_length()))
    assert band_changed(o_buf, tuple(q.shape), SENTINEL, 16) == 0
    assert band_changed(lse_buf, (b * h * n_q,), SENTINEL, 16) == 0
    ro, rlse = attention_reference(q, k, v, causal)
    torch.testing.assert_close(o.float(), ro, atol=TOL[dtype], rtol=TOL[dtype])
    torch.testing.assert_close(lse, rlse, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("causal", [False, True])
def test_wrapper_matches_torch_sdpa_with_gqa(causal):
    q, k, v = _qkv(1, 6, 2, 40, 40, 32, torch.float32, 0)
    o, lse = flash_attention(q, k, v, causal=causal)
    expected = F.scaled_dot_product_attention(q, k.repeat_interleave(3, 1), v.repeat_interleave(3, 1),
                                              is_causal=causal)
    torch.testing.assert_close(o, expected, atol=2e-5, rtol=2e-5)
    assert lse.shape == (1, 6, 40) and lse.dtype == torch.float32


def test_causal_with_fewer_queries_than_keys_attends_to_the_last_positions():
    q, k, v = _qkv(1, 2, 2, 5, 37, 16, torch.float32, 1)
    o, lse = flash_attention(q, k, v, causal=True)
    ro, rlse = attention_reference(q, k, v, causal=True)
    torch.testing.assert_close(o, ro, atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(lse, rlse, atol=1e-5, rtol=1e-5)


def test_block_sizes_do_not_change_the_answer():
    q, k, v = _qkv(1, 2, 1, 70, 70, 16, torch.float32, 2)
    a, _ = flash_attention(q, k, v, causal=True, block_m=16, block_n=16)
    b, _ = flash_attention(q, k, v, causal=True, block_m=32, block_n=64)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_custom_scale():
    q, k, v = _qkv(1, 1, 1, 20, 20, 16, torch.float32, 3)
    o, _ = flash_attention(q, k, v, scale=0.5)
    torch.testing.assert_close(o, F.scaled_dot_product_attention(q, k, v, scale=0.5), atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("d", [8, 15, 129, 256])
def test_unsupported_head_dims_are_refused(d):
    q, k, v = _qkv(1, 1, 1, 4, 4, d, torch.float32, 0)
    with pytest.raises(ValueError, match=r"head dim must be in \[16, 128\]"):
        flash_attention(q, k, v)


def test_input_errors():
    q, k, v = _qkv(1, 3, 2, 4, 4, 16, torch.float32, 0)
    with pytest.raises(ValueError, match="multiple of the number of key/value heads"):
        flash_attention(q, k, v)
    q, k, v = _qkv(1, 2, 1, 8, 4, 16, torch.float32, 0)
    with pytest.raises(ValueError, match="N_q <= N_k"):
        flash_attention(q, k, v, causal=True)
    with pytest.raises(ValueError, match="rank 4"):
        flash_attention(q[0], k[0], v[0])
    with pytest.raises(TypeError, match="share a dtype"):
        flash_attention(q.half(), k, v)
    with pytest.raises(ValueError, match="power of two"):
        flash_attention(q, k, v, block_m=24)
    if backend.INTERPRETER:
        with pytest.raises(TypeError, match="bfloat16"):
            flash_attention(q.bfloat16(), k.bfloat16(), v.bfloat16())


def test_causal_plan_skips_the_tiles_above_the_diagonal():
    plan = attention_program_tiles(64, 64, 16, 16, causal=True)
    assert [p["kv_tiles"] for p in plan] == [[0], [0, 1], [0, 1, 2], [0, 1, 2, 3]]
    assert [p["masked"] for p in plan] == [[0], [1], [2], [3]]  # only the diagonal tile needs the mask
    full = attention_program_tiles(64, 64, 16, 16, causal=False)
    loaded = sum(len(p["kv_tiles"]) for p in plan)
    assert loaded == 10 and sum(len(p["kv_tiles"]) for p in full) == 16
    assert len(attention_frames(64, 64, 16, 16, True)) == 4


def test_flops_convention():
    assert attention_flops(2, 3, 5, 5, 8, causal=False) == 4 * 2 * 3 * 5 * 5 * 8
    assert attention_flops(2, 3, 5, 5, 8, causal=True) == 2 * 2 * 3 * 5 * 5 * 8


@settings(max_examples=4, deadline=None)
@given(h_kv=st.integers(1, 2), rep=st.sampled_from([1, 2]), n_q=st.integers(1, 40), extra=st.integers(0, 12),
       d=st.sampled_from([16, 24, 64]), causal=st.booleans(), seed=st.integers(0, 2**16))
def test_backward_matches_autograd_of_the_reference(h_kv, rep, n_q, extra, d, causal, seed):
    from labkit.kernels.flash import FlashAttentionFunction

    q, k, v = (t.requires_grad_() for t in _qkv(1, h_kv * rep, h_kv, n_q, n_q + extra, d, torch.float32, seed))
    do = torch.randn(q.shape, generator=torch.Generator().manual_seed(seed + 1))
    got = torch.autograd.grad(FlashAttentionFunction.apply(q, k, v, causal), (q, k, v), do)
    expected = torch.autograd.grad(attention_reference(q, k, v, causal)[0], (q, k, v), do)
    for name, g, e in zip("qkv", got, expected):
        torch.testing.assert_close(g, e, atol=1e-4, rtol=1e-4, msg=lambda m, name=name: f"d{name}: {m}")


def test_backward_in_fp16_and_its_errors():
    from labkit.kernels.flash import flash_attention_backward

    q, k, v = _qkv(1, 2, 1, 30, 30, 32, torch.float16, 5)
    o, lse = flash_attention(q, k, v, causal=True)
    do = torch.randn(q.shape).half()
    got = flash_attention_backward(q, k, v, o, lse, do, causal=True)
    qf, kf, vf = (t.float().requires_grad_() for t in (q, k, v))
    expected = torch.autograd.grad(attention_reference(qf, kf, vf, True)[0], (qf, kf, vf), do.float())
    for g, e in zip(got, expected):
        assert g.dtype == torch.float16
        torch.testing.assert_close(g.float(), e, atol=3e-2, rtol=3e-2)  # fp16 tiles into tl.dot, fp16 outputs
    with pytest.raises(ValueError, match="o and do must have q's shape"):
        flash_attention_backward(q, k, v, o[:, :, :5], lse, do)
