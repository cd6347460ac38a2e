"""labkit.flash: tiled attention equals naive attention (values, log-sum-exp, gradients), the causal tile map,
the IO formulas against the instrumented code, the peak-memory probe, and the errors at the edges."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from labkit.attention import scaled_dot_product_attention as naive
from labkit.flash import (IOCounter, blocks_for_sram, causal_tile_grid, flash_attention, flash_attention_forward,
                          flash_attention_io, naive_attention_io, online_softmax_explorer, online_softmax_update,
                          peak_memory)


def _qkv(shape_q, t_k, d_v=None, dtype=torch.float32, seed=0, grad=False):
    g = torch.Generator().manual_seed(seed)
    *lead, t_q, d = shape_q
    d_v = d if d_v is None else d_v
    xs = (torch.randn(*lead, t_q, d, generator=g, dtype=dtype), torch.randn(*lead, t_k, d, generator=g, dtype=dtype),
          torch.randn(*lead, t_k, d_v, generator=g, dtype=dtype))
    return tuple(x.requires_grad_(grad) for x in xs)


# ----------------------------------------------------------------------------------------------------------
# the tile update

def test_update_over_all_tiles_is_the_softmax():
    g = torch.Generator().manual_seed(1)
    scores, v = 3 * torch.randn(4, 30, generator=g, dtype=torch.float64), torch.randn(30, 5, generator=g, dtype=torch.float64)
    m, l, acc = torch.full((4,), -math.inf, dtype=torch.float64), torch.zeros(4, dtype=torch.float64), torch.zeros(4, 5, dtype=torch.float64)
    for j0 in range(0, 30, 7):  # 7 does not divide 30: the last tile is short
        m, l, acc = online_softmax_update(m, l, acc, scores[:, j0:j0 + 7], v[j0:j0 + 7])
    torch.testing.assert_close(acc / l[:, None], torch.softmax(scores, -1) @ v, rtol=0, atol=1e-12)
    torch.testing.assert_close(m, scores.amax(-1))
    torch.testing.assert_close(m + l.log(), torch.logsumexp(scores, -1), rtol=0, atol=1e-12)


def test_update_with_a_fully_masked_tile_changes_nothing_and_makes_no_nan():
    m, l, acc = torch.tensor([1.0, -math.inf]), torch.tensor([2.0, 0.0]), torch.tensor([[3.0], [0.0]])
    m2, l2, acc2 = online_softmax_update(m, l, acc, torch.full((2, 3), -math.inf), torch.ones(3, 1))
    assert torch.equal(m2, m) and torch.equal(l2, l) and torch.equal(acc2, acc)


def test_update_does_not_overflow_on_huge_scores():
    scores = torch.tensor([[1000.0, 999.0], [-1000.0, -1001.0]])
    m, l, acc = online_softmax_update(torch.full((2,), -math.inf), torch.zeros(2), torch.zeros(2, 1), scores,
                                      torch.tensor([[1.0], [0.0]]))
    out = acc / l[:, None]
    torch.testing.assert_close(out, torch.softmax(scores, -1) @ torch.tensor([[1.0], [0.0]]))


# ----------------------------------------------------------------------------------------------------------
# forward == naive attention

@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("t_q, t_k, block_q, block_k", [
    (64, 64, 16, 16),   # multiples of the blocks
    (37, 37, 8, 16),    # not multiples, unequal blocks
    (13, 50, 16, 7),    # fewer queries than keys (the last positions, as with a KV cache)
    (5, 5, 64, 64),     # one tile bigger than everything
    (1, 9, 1, 1),       # decoding one token, one-element tiles
])
def test_forward_equals_naive_attention(causal, t_q, t_k, block_q, block_k):
    q, k, v = _qkv((2, 3, t_q, 16), t_k, d_v=8)
    out, lse = flash_attention_forward(q, k, v, causal, block_q, block_k)
    expected = naive(q, k, v, causal=causal)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)  # fp32: summation order differs
    scores = q @ k.transpose(-2, -1) / 4.0
    if causal:
        scores = scores.masked_fill(torch.ones(t_q, t_k, dtype=torch.bool).tril(t_k - t_q).logical_not(), -math.inf)
    torch.testing.assert_close(lse, torch.logsumexp(scores, -1), rtol=1e-5, atol=1e-5)


@settings(max_examples=25, deadline=None)
@given(t_q=st.integers(1, 24), extra=st.integers(0, 10), d=st.integers(1, 9), block_q=st.integers(1, 30),
       block_k=st.integers(1, 30), causal=st.booleans(), lead=st.lists(st.integers(1, 2), max_size=2))
def test_forward_equals_naive_property(t_q, extra, d, block_q, block_k, causal, lead):
    q, k, v = _qkv((*lead, t_q, d), t_q + extra, dtype=torch.float64)
    torch.testing.assert_close(flash_attention(q, k, v, causal=causal, block_q=block_q, block_k=block_k),
                               naive(q, k, v, causal=causal), rtol=0, atol=1e-12)


def test_one_block_holding_everything_is_naive_attention_and_block_size_does_not_matter():
    q, k, v = _qkv((1, 2, 40, 8), 40, dtype=torch.float64)
    outs = [flash_attention(q, k, v, causal=True, block_q=b, block_k=b) for b in (1, 3, 16, 40, 100)]
    for out in outs:
        torch.testing.assert_close(out, naive(q, k, v, causal=True), rtol=0, atol=1e-12)


def test_huge_scores_do_not_overflow():
    q, k, v = _qkv((1, 10, 4), 10)
    q = q * 300  # scores of order 1000: exp would overflow fp32 without the running max
    out = flash_attention(q, k, v, block_q=4, block_k=3)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, naive(q, k, v), rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------------------------------------
# backward

@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("t_q, t_k", [(7, 7), (5, 11)])
def test_gradcheck_float64(causal, t_q, t_k):
    q, k, v = _qkv((2, t_q, 4), t_k, d_v=3, dtype=torch.float64, grad=True)
    assert torch.autograd.gradcheck(lambda a, b, c: flash_attention(a, b, c, causal=causal, block_q=3, block_k=4),
                                    (q, k, v))


@pytest.mark.parametrize("causal", [False, True])
def test_gradients_equal_autograd_through_naive_attention_fp32(causal):
    q, k, v = _qkv((2, 3, 45, 16), 45, grad=True)
    g = torch.randn(2, 3, 45, 16, generator=torch.Generator().manual_seed(5))
    got = torch.autograd.grad(flash_attention(q, k, v, causal=causal, block_q=16, block_k=8), (q, k, v), g)
    expected = torch.autograd.grad(naive(q, k, v, causal=causal), (q, k, v), g)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)  # fp32, different summation order


def test_lse_is_returned_and_not_differentiable():
    q, k, v = _qkv((6, 4), 6, grad=True)
    out, lse = flash_attention(q, k, v, return_lse=True)
    assert lse.shape == (6,) and not lse.requires_grad and out.requires_grad


# ----------------------------------------------------------------------------------------------------------
# causal tiles

@pytest.mark.parametrize("tiles", [1, 2, 5, 8])
def test_causal_square_tiles_skip_the_upper_triangle(tiles):
    grid = causal_tile_grid(16 * tiles, 16 * tiles, 16, 16)
    assert int((grid == 0).sum()) == tiles * (tiles - 1) // 2     # above the diagonal
    assert int((grid == 1).sum()) == tiles                        # on it: masked inside
    assert int((grid == 2).sum()) == tiles * (tiles - 1) // 2     # below it: computed in full
    assert torch.equal(grid == 0, torch.ones(tiles, tiles, dtype=torch.bool).triu(1))


def test_grid_agrees_with_the_mask_entry_by_entry():
    t_q, t_k, bq, bk = 11, 23, 4, 5
    mask = torch.ones(t_q, t_k, dtype=torch.bool).tril(t_k - t_q)
    grid = causal_tile_grid(t_q, t_k, bq, bk)
    for i, i0 in enumerate(range(0, t_q, bq)):
        for j, j0 in enumerate(range(0, t_k, bk)):
            tile = mask[i0:i0 + bq, j0:j0 + bk]
            assert int(grid[i, j]) == (0 if not tile.any() else 2 if tile.all() else 1)
    assert (causal_tile_grid(t_q, t_k, bq, bk, causal=False) == 2).all()


def test_counter_counts_the_skipped_tiles():
    q, k, v = _qkv((1, 64, 8), 64)
    counter = IOCounter()
    flash_attention_forward(q, k, v, True, 16, 16, counter=counter)
    assert (counter.tiles_computed, counter.tiles_skipped) == (10, 6)


# ----------------------------------------------------------------------------------------------------------
# IO accounting

@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("t_q, t_k, d, d_v, bq, bk", [(64, 64, 8, 8, 16, 16), (37, 50, 6, 3, 8, 5), (9, 9, 4, 4, 64, 64)])
def test_instrumented_traffic_equals_the_formula(causal, t_q, t_k, d, d_v, bq, bk):
    q, k, v = _qkv((2, 3, t_q, d), t_k, d_v=d_v)
    counter = IOCounter()
    flash_attention_forward(q, k, v, causal, bq, bk, counter=counter)
    assert counter.total == flash_attention_io(t_q, t_k, d, bq, bk, causal, d_v=d_v, batch=6)


def test_io_closed_forms():
    n, d = 1024, 64
    assert naive_attention_io(n, n, d) == 4 * n * d + 4 * n * n
    bq, bk = blocks_for_sram(16384, d)
    assert (bq, bk) == (64, 64)
    assert flash_attention_io(n, n, d, bq, bk) == 2 * n * d + n + 2 * n * n * d // bq
    # 2Nd + N + 8 N^2 d^2 / M: the Θ(N²d²/M) bound with constant 8
    assert flash_attention_io(n, n, d, bq, bk) == 2 * n * d + n + 8 * n * n * d * d // 16384


def test_more_sram_means_less_traffic_and_beats_naive():
    n, d = 4096, 64
    traffic = [flash_attention_io(n, n, d, *blocks_for_sram(m, d)) for m in (4096, 16384, 65536)]
    assert traffic[0] > traffic[1] > traffic[2]
    assert traffic[1] < naive_attention_io(n, n, d)


# ----------------------------------------------------------------------------------------------------------
# peak memory (one subprocess each: a few seconds)

def test_peak_memory_sees_a_known_allocation():
    n, d = 262144, 64  # a 64 MiB tensor
    got = peak_memory("alloc", n, d)
    assert got["result_bytes"] == n * d * 4
    assert abs(got["peak_bytes"] - n * d * 4) < 0.02 * n * d * 4


def test_tiled_peak_memory_is_a_small_fraction_of_naive():
    naive_peak = peak_memory("naive", 2048)["peak_bytes"]
    flash_peak = peak_memory("flash", 2048)["peak_bytes"]
    assert naive_peak > 2 * 2048 * 2048 * 4 * 0.9  # scores and probabilities, fp32
    assert flash_peak < 0.1 * naive_peak


# ----------------------------------------------------------------------------------------------------------
# errors

@pytest.mark.parametrize("args, kwargs, error, match", [
    ((torch.zeros(4), torch.zeros(4, 2), torch.zeros(4, 2)), {}, ValueError, "rank >= 2"),
    (([[1.0]], torch.zeros(1, 1), torch.zeros(1, 1)), {}, TypeError, "torch.Tensor"),
    ((torch.zeros(3, 2, dtype=torch.long), torch.zeros(3, 2), torch.zeros(3, 2)), {}, TypeError, "floating-point"),
    ((torch.zeros(3, 2), torch.zeros(3, 2, dtype=torch.float64), torch.zeros(3, 2)), {}, TypeError, "same dtype"),
    ((torch.zeros(3, 2), torch.zeros(3, 5), torch.zeros(3, 5)), {}, ValueError, "head size"),
    ((torch.zeros(3, 2), torch.zeros(4, 2), torch.zeros(3, 2)), {}, ValueError, "number of positions"),
    ((torch.zeros(1, 9, 3, 2), torch.zeros(1, 3, 3, 2), torch.zeros(1, 3, 3, 2)), {}, ValueError, "leading"),
    ((torch.zeros(5, 2), torch.zeros(3, 2), torch.zeros(3, 2)), {"causal": True}, ValueError, "Tq=5 > Tk=3"),
    ((torch.zeros(3, 2),) * 3, {"block_q": 0}, ValueError, "block_q must be an int >= 1, got 0"),
    ((torch.zeros(3, 2),) * 3, {"block_k": 2.5}, ValueError, "block_k must be an int >= 1"),
    ((torch.zeros(3, 2),) * 3, {"causal": 1}, TypeError, "causal must be a bool"),
])
def test_clear_errors(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        flash_attention(*args, **kwargs)


def test_other_errors():
    with pytest.raises(ValueError, match="m >= 4d"):
        blocks_for_sram(100, 64)
    with pytest.raises(ValueError, match="method must be one of"):
        peak_memory("fast", 16)
    with pytest.raises(ValueError, match="t_q <= t_k"):
        causal_tile_grid(5, 3, 2, 2)


def test_explorer_has_one_view_per_tile():
    g = torch.Generator().manual_seed(0)
    box = online_softmax_explorer(torch.randn(3, 20, generator=g), torch.randn(20, 2, generator=g), block_k=8)
    slider, stack = box.children
    assert len(stack.children) == 3 and list(slider.options) == ["1", "2", "3"]
    with pytest.raises(ValueError, match="scores"):
        online_softmax_explorer(torch.zeros(3), torch.zeros(3, 1))


def test_benchmark_table_formats_a_result():
    from labkit.flash import format_benchmark, machine
    info = machine()
    assert {"cpu", "logical_cores", "torch", "threads", "date"} <= set(info)
    row = {"n": 1024, "naive_peak_bytes": 8 * 2**20, "flash_peak_bytes": 2**19, "sdpa_peak_bytes": 2**20,
           "memory_ratio": 1 / 16, "naive_s": 0.02, "flash_s": 0.01, "flash_causal_s": 0.005, "sdpa_s": 0.004}
    text = format_benchmark({"machine": info, "config": {"d": 64, "heads": 1, "block": 128, "dtype": "float32"},
                             "rows": [row]})
    assert "0.0625" in text and "0.50x" in text and "2.50x" in text and info["torch"] in text
