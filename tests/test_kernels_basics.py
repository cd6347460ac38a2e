"""labkit.kernels.basics: vector add, fused softmax and tiled matmul against torch, with NaN guard bands.

Inputs sit inside NaN-filled buffers and outputs inside sentinel-filled ones (labkit.checks.kernels.guarded),
because the interpreter does not catch out-of-bounds loads: a missing mask shows up as NaN or a changed band.
Shapes are small (the interpreter runs every program in Python) and chosen not to be multiples of the blocks.
"""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from labkit.checks.kernels import SENTINEL, band_changed, guarded, guarded_input
from labkit.kernels import basics
from labkit.kernels.basics import (add_kernel, matmul, matmul_kernel, matmul_program_tiles, softmax,
                                   softmax_bytes, softmax_kernel, tiles_loaded, vector_add)

pytestmark = pytest.mark.usefixtures("torch_one_thread")
FEW = settings(max_examples=6, deadline=None)


@FEW
@given(n=st.integers(1, 300), block=st.sampled_from([16, 64]), seed=st.integers(0, 2**16))
def test_vector_add_matches_torch_inside_guard_bands(n, block, seed):
    g = torch.Generator().manual_seed(seed)
    _, x = guarded_input(torch.randn(n, generator=g))
    _, y = guarded_input(torch.randn(n, generator=g))
    out_buf, out = guarded((n,), fill=SENTINEL)
    add_kernel[(-(-n // block),)](x, y, out, n, BLOCK=block)
    assert band_changed(out_buf, (n,), SENTINEL) == 0
    assert torch.equal(out, x + y)
    assert torch.equal(vector_add(x.contiguous(), y.contiguous(), block=block), x + y)


def test_vector_add_errors():
    with pytest.raises(ValueError, match="same shape and dtype"):
        vector_add(torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError, match="1 dimension"):
        vector_add(torch.zeros(2, 2), torch.zeros(2, 2))
    with pytest.raises(TypeError, match="torch.Tensor"):
        vector_add([1.0], torch.zeros(1))
    with pytest.raises(ValueError, match="power of two"):
        vector_add(torch.zeros(3), torch.zeros(3), block=10)


@FEW
@given(rows=st.integers(1, 9), cols=st.integers(1, 130), scale=st.sampled_from([1.0, 50.0]),
       dtype=st.sampled_from([torch.float32, torch.float16]), seed=st.integers(0, 2**16))
def test_softmax_matches_torch_inside_guard_bands(rows, cols, scale, dtype, seed):
    x = (scale * torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))).to(dtype)
    _, xv = guarded_input(x)
    out_buf, out = guarded((rows, cols), dtype, fill=SENTINEL)
    block = max(16, 1 << (cols - 1).bit_length())
    softmax_kernel[(rows,)](xv, out, cols, xv.stride(0), out.stride(0), BLOCK=block)
    assert band_changed(out_buf, (rows, cols), SENTINEL) == 0
    tol = 2e-3 if dtype == torch.float16 else 1e-6  # fp16: the output's own rounding
    torch.testing.assert_close(out.float(), torch.softmax(x.float(), -1), atol=tol, rtol=tol)
    torch.testing.assert_close(softmax(xv).float(), out.float(), atol=0, rtol=0)  # strided input, same answer


def test_softmax_errors():
    with pytest.raises(TypeError, match="floating-point"):
        softmax(torch.zeros(2, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="at least one column"):
        softmax(torch.zeros(2, 0))


def test_fused_softmax_moves_fewer_bytes():
    b = softmax_bytes(1000, 1000)
    assert b["fused"] == 2 * 1000 * 1000 * 4
    assert b["unfused"] / b["fused"] == pytest.approx(4.0, rel=0.01)  # 8 passes over MN vs 2
    with pytest.raises(ValueError, match="positive"):
        softmax_bytes(0, 3)


@FEW
@given(m=st.integers(1, 70), n=st.integers(1, 70), k=st.integers(1, 70),
       dtype=st.sampled_from([torch.float32, torch.float16]), group=st.sampled_from([1, 2, 3]),
       seed=st.integers(0, 2**16))
def test_matmul_matches_torch_inside_guard_bands(m, n, k, dtype, group, seed):
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(m, k, generator=g).to(dtype), torch.randn(k, n, generator=g).to(dtype)
    _, av = guarded_input(a)
    _, bv = guarded_input(b)
    c_buf, c = guarded((m, n), dtype, fill=SENTINEL)
    n_tiles = -(-m // 16) * -(-n // 16)
    matmul_kernel[(n_tiles,)](av, bv, c, m, n, k, *av.stride(), *bv.stride(), *c.stride(),
                              BLOCK_M=16, BLOCK_N=16, BLOCK_K=16, GROUP_M=group)
    assert band_changed(c_buf, (m, n), SENTINEL) == 0
    tol = 2e-2 if dtype == torch.float16 else 1e-4  # fp16: output rounding; fp32: summation order
    torch.testing.assert_close(c.float(), a.float() @ b.float(), atol=tol, rtol=tol)


def test_matmul_wrapper_and_non_contiguous_inputs():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(33, 40, generator=g), torch.randn(50, 40, generator=g).T  # b: a transposed view
    torch.testing.assert_close(matmul(a, b.T.contiguous().T), a @ b, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(matmul(a, b, block_m=32, group_m=1), a @ b, atol=1e-4, rtol=1e-4)


def test_matmul_errors():
    with pytest.raises(ValueError, match="inner dimensions"):
        matmul(torch.zeros(2, 3), torch.zeros(4, 2))
    with pytest.raises(TypeError, match="same dtype"):
        matmul(torch.zeros(2, 3), torch.zeros(3, 2, dtype=torch.float16))
    with pytest.raises(ValueError, match="power of two"):
        matmul(torch.zeros(2, 3), torch.zeros(3, 2), block_k=8)
    with pytest.raises(ValueError, match="group_m"):
        matmul(torch.zeros(2, 3), torch.zeros(3, 2), group_m=0)
    if basics.backend.INTERPRETER:
        with pytest.raises(TypeError, match="bfloat16"):
            matmul(torch.zeros(2, 3, dtype=torch.bfloat16), torch.zeros(3, 2, dtype=torch.bfloat16))


@pytest.mark.parametrize("m, n, group", [(64, 64, 1), (64, 64, 2), (80, 48, 3), (16, 160, 4)])
def test_program_order_covers_every_tile_once(m, n, group):
    tiles = matmul_program_tiles(m, n, 16, 16, group)
    n_m, n_n = -(-m // 16), -(-n // 16)
    assert sorted(tiles) == [(i, j) for i in range(n_m) for j in range(n_n)]
    if group == 1:
        assert tiles == [(i, j) for i in range(n_m) for j in range(n_n)]  # plain row-major order


def test_grouped_order_needs_fewer_input_tiles_per_wave():
    # 32 x 32 tiles, 64 programs in flight: row-major touches 2 tile-rows + 32 tile-columns per wave,
    # groups of 8 rows touch 8 + 8
    plain = tiles_loaded(matmul_program_tiles(512, 512, 16, 16, 1), 64)
    grouped = tiles_loaded(matmul_program_tiles(512, 512, 16, 16, 8), 64)
    assert set(plain) == {34} and set(grouped) == {16}


def test_matmul_frames_show_one_written_tile_per_program():
    frames = basics.matmul_frames(48, 32, 40, 16, 16, 16, 2)
    assert len(frames) == 3 * 2
    for pid, (title, grids) in enumerate(frames):
        c_tiles = grids[2][2]
        assert list(c_tiles.values()).count(basics.WRITE) == 1 and len(c_tiles) == pid + 1
        assert len(grids[0][2]) == 3  # A: a full tile-row of cdiv(40, 16) tiles


def test_tile_explorer_has_one_precomputed_frame_per_program():
    import ipywidgets as widgets

    frames = basics.matmul_frames(32, 32, 16, 16, 16, 16, 1)
    box = basics.tile_explorer(frames, caption="c")
    slider, stack = box.children[0], box.children[1]
    assert isinstance(stack, widgets.Stack) and len(stack.children) == len(frames) == 4
    assert slider.max == 3 and all(img.value[:4] == b"\x89PNG" for img in stack.children)
    with pytest.raises(ValueError, match="at least one frame"):
        basics.tile_explorer([])
