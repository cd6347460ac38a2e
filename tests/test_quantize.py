"""labkit.compress.quantize: absmax and zero-point codes at every granularity, checked against torch.ao's
observers and fake-quantize kernels (a test-time oracle), plus the invariants and the errors at its edge."""
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.ao.quantization.observer import MinMaxObserver, PerChannelMinMaxObserver

from labkit.compress.quantize import Quantized, code_range, quantize, relative_error

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def weight(out=24, inp=96, seed=0) -> torch.Tensor:
    return torch.randn(out, inp, generator=torch.Generator().manual_seed(seed)) * 0.05


def as_rows(w, q: Quantized) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Every block as one row (group-wise: [out * in / g, g]) with its scale and zero as vectors."""
    rows = w.reshape(-1, q.group_size) if q.group_size else w.reshape(w.shape[0], -1)
    zero = None if q.zero is None else q.zero.reshape(-1)
    return rows, q.scale.reshape(-1), zero


@pytest.mark.parametrize("bits", [8, 4, 3])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("group_size", [None, 16, 32])
def test_matches_torch_ao_per_channel(bits, symmetric, group_size):
    """Scales and zeros equal torch.ao's min-max observer; the dequantized weight equals its fake-quantize."""
    w = weight()
    q = quantize(w, bits, "group" if group_size else "channel", group_size, symmetric)
    rows, scale, zero = as_rows(w, q)
    low, high = code_range(bits, symmetric)
    scheme = torch.per_channel_symmetric if symmetric else torch.per_channel_affine
    obs = PerChannelMinMaxObserver(ch_axis=0, dtype=torch.qint8, qscheme=scheme, quant_min=low, quant_max=high)
    obs(rows)
    ref_scale, ref_zero = obs.calculate_qparams()
    assert torch.equal(scale, ref_scale)
    assert torch.equal(zero if zero is not None else torch.zeros_like(scale), ref_zero.float())
    fake = torch.fake_quantize_per_channel_affine(rows, ref_scale, ref_zero.int(), 0, low, high)
    assert torch.equal(q.dequantize(), fake.reshape(w.shape))
    assert q.codes.dtype == torch.int8 and int(q.codes.min()) >= low and int(q.codes.max()) <= high


@pytest.mark.parametrize("symmetric", [True, False])
def test_matches_torch_ao_per_tensor(symmetric):
    w = weight()
    q = quantize(w, 8, "tensor", symmetric=symmetric)
    low, high = code_range(8, symmetric)
    scheme = torch.per_tensor_symmetric if symmetric else torch.per_tensor_affine
    obs = MinMaxObserver(dtype=torch.qint8, qscheme=scheme, quant_min=low, quant_max=high)
    obs(w)
    ref_scale, ref_zero = obs.calculate_qparams()
    assert q.scale.shape == () and torch.equal(q.scale.reshape(1), ref_scale)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's quantized dtypes are deprecated; used here as an oracle only
        codes = torch.quantize_per_tensor(w, float(ref_scale), int(ref_zero), torch.qint8).int_repr()
    assert torch.equal(q.codes, codes)


def test_shapes_and_nbytes():
    w = weight(8, 64)
    assert quantize(w, 8, "tensor").scale.shape == ()
    assert quantize(w, 8, "channel").scale.shape == (8, 1)
    g = quantize(w, 4, "group", 16, symmetric=False)
    assert g.scale.shape == g.zero.shape == (8, 4) and g.group_size == 16
    assert quantize(w, 8).nbytes() == 8 * 64 + 2 * 8                    # codes + one fp16 scale per row
    assert g.nbytes() == 8 * 64 // 2 + 2 * 2 * 8 * 4                    # 4-bit codes + scale and zero per group
    assert quantize(torch.ones(3), 3, "tensor").nbytes() == 2 + 2       # 9 bits round up to 2 bytes


def test_absmax_keeps_extremes_and_signs():
    w = weight()
    q = quantize(w, 8)
    assert torch.equal(q.codes.abs().amax(1), torch.full((w.shape[0],), 127, dtype=torch.int8))
    assert torch.equal(quantize(-w, 8).codes, -q.codes)                 # symmetric: -w gets the opposite codes
    # the largest weight of each row is exact (up to the float division and multiplication)
    idx = w.abs().argmax(1, keepdim=True)
    torch.testing.assert_close(q.dequantize().gather(1, idx), w.gather(1, idx), rtol=1e-6, atol=0)


def test_zero_point_represents_zero_exactly():
    w = weight().abs() + 0.01                 # all positive: the range is widened to include 0
    w[:, 5] = 0.0
    q = quantize(w, 4, "group", 32, symmetric=False)
    assert torch.equal(q.dequantize()[:, 5], torch.zeros(w.shape[0]))
    assert int(q.codes.min()) == -8           # 0.0 sits at the bottom code of an all-positive row


def test_zero_block_and_constant_tensor():
    w = torch.zeros(4, 8)
    w[0] = 3.0
    for sym in (True, False):
        q = quantize(w, 4, "group", 4, symmetric=sym)
        assert torch.equal(q.dequantize(), w)


@settings(max_examples=40, deadline=None)
@given(bits=st.sampled_from([2, 4, 8]), g=st.sampled_from([4, 8, 16]), sym=st.booleans(), seed=st.integers(0, 999))
def test_error_is_at_most_half_a_step(bits, g, sym, seed):
    """Round to nearest: every weight lands within half a step (scale / 2) of its code's value."""
    w = torch.randn(6, 32, generator=torch.Generator().manual_seed(seed)) * 3
    q = quantize(w, bits, "group", g, sym)
    step = q.scale.repeat_interleave(g, 1)
    assert bool(((q.dequantize() - w).abs() <= step / 2 * (1 + 1e-5)).all())


def test_smaller_groups_err_less():
    w = weight(32, 256)
    w[3, 17] = 1.0                            # one outlier stretches the scale of whoever shares it
    errors = [relative_error(w, quantize(w, 4, gr, gs).dequantize())
              for gr, gs in [("tensor", None), ("channel", None), ("group", 128), ("group", 32)]]
    assert errors == sorted(errors, reverse=True) and errors[0] > 2 * errors[-1]
    assert relative_error(w, quantize(w, 8).dequantize()) < relative_error(w, quantize(w, 4).dequantize()) / 8


def test_dtypes_in():
    w = weight()
    for dt in (torch.float16, torch.bfloat16, torch.float64):
        q = quantize(w.to(dt), 8)
        assert q.dequantize().dtype == torch.float32 and q.scale.dtype == torch.float32


def test_errors():
    w = weight(8, 96)
    with pytest.raises(TypeError, match="floating-point tensor.*torch.int64"):
        quantize(torch.ones(4, 4, dtype=torch.long))
    with pytest.raises(TypeError, match="must be a torch.Tensor, got list"):
        quantize([[1.0]])
    with pytest.raises(ValueError, match=r"bits must be an int in 2..8 .*got 16"):
        quantize(w, 16)
    with pytest.raises(ValueError, match="bits must be an int in 2..8"):
        quantize(w, 1)
    with pytest.raises(ValueError, match="group_size 64 does not divide the input dimension 96"):
        quantize(w, 4, "group", 64)
    with pytest.raises(ValueError, match="needs group_size, an int >= 1, got None"):
        quantize(w, 4, "group")
    with pytest.raises(ValueError, match="only used with granularity='group'"):
        quantize(w, 4, "channel", 32)
    with pytest.raises(ValueError, match="granularity must be one of"):
        quantize(w, 4, "row")
    with pytest.raises(ValueError, match=r"needs a 2-D weight \[out, in\], got shape \(96,\)"):
        quantize(w[0], 8, "channel")
    with pytest.raises(ValueError, match="NaN or infinity"):
        quantize(torch.tensor([[1.0, float("nan")]]))
    with pytest.raises(ValueError, match="empty"):
        quantize(torch.zeros(0, 4))
    with pytest.raises(ValueError, match="same shape"):
        relative_error(w, w[:4])
