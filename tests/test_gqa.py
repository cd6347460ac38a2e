"""labkit.gqa: the query -> kv head map, mean-pooling kv heads, converting a Llama, and the cache table."""
import math
import statistics

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from labkit.attention import grouped_query_attention, repeat_kv, scaled_dot_product_attention
from labkit.gqa import (cache_table, convert_kv_heads, kv_head_of_query, loss_spread, perplexity, pool_kv_heads,
                        window_losses)
from labkit.kvcache import cache_bytes
from labkit.llama import Llama, LlamaConfig
from labkit.rope import apply_rope, rope_cos_sin, rope_inv_freq
from tiny_llama import random_llama

pytestmark = pytest.mark.usefixtures("torch_one_thread")
TINY = LlamaConfig(vocab_size=61, dim=48, n_layers=2, n_heads=6, n_kv_heads=3, hidden_dim=40, max_seq_len=64,
                   rope_theta=500.0)


def tiny_llama(cfg=TINY, seed=0) -> Llama:
    return random_llama(cfg, seed, std=0.3)


IDS = torch.randint(0, TINY.vocab_size, (2, 11), generator=torch.Generator().manual_seed(1))


def test_kv_head_of_query():
    assert kv_head_of_query(9, 3) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert kv_head_of_query(9, 9) == list(range(9))   # MHA: its own
    assert kv_head_of_query(9, 1) == [0] * 9          # MQA: one for all
    with pytest.raises(ValueError, match=r"multiple of n_kv_heads \(2\)"):
        kv_head_of_query(9, 2)
    with pytest.raises(ValueError, match="n_kv_heads must be an int >= 1"):
        kv_head_of_query(9, 0)


def test_kv_head_of_query_matches_repeat_kv():
    k = torch.randn(1, 3, 4, 2)
    rep = repeat_kv(k, 3)
    for h, g in enumerate(kv_head_of_query(9, 3)):
        assert torch.equal(rep[:, h], k[:, g])


def test_gqa_with_as_many_groups_as_heads_is_mha():
    q, k, v = (torch.randn(2, 4, 5, 8, generator=torch.Generator().manual_seed(i)) for i in range(3))
    expected = scaled_dot_product_attention(q, k, v, causal=True)  # every head with its own k, v
    torch.testing.assert_close(grouped_query_attention(q, k, v), expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(F.scaled_dot_product_attention(q, k, v, is_causal=True), expected, atol=1e-5, rtol=0)


def test_mqa_is_gqa_with_one_group():
    q = torch.randn(2, 6, 5, 8)
    k, v = torch.randn(2, 1, 5, 8), torch.randn(2, 1, 5, 8)
    mqa = grouped_query_attention(q, k, v)
    per_head = torch.stack([scaled_dot_product_attention(q[:, h], k[:, 0], v[:, 0], causal=True) for h in range(6)], 1)
    torch.testing.assert_close(mqa, per_head, atol=1e-6, rtol=0)


def test_pool_kv_heads_values():
    w = torch.arange(4 * 2 * 3, dtype=torch.float32).reshape(8, 3)  # 4 heads of 2 rows
    pooled = pool_kv_heads(w, 4, 2)
    expected = torch.cat([(w[0:2] + w[2:4]) / 2, (w[4:6] + w[6:8]) / 2])  # heads (0, 1) and (2, 3)
    assert torch.equal(pooled, expected)
    assert torch.equal(pool_kv_heads(w, 4, 4), w)
    torch.testing.assert_close(pool_kv_heads(w, 4, 1), w.reshape(4, 2, 3).mean(0))


def test_pool_kv_heads_errors():
    w = torch.zeros(6, 4)
    with pytest.raises(ValueError, match="multiple of n_groups"):
        pool_kv_heads(w, 3, 2)
    with pytest.raises(ValueError, match="not a multiple of n_kv_heads = 4"):
        pool_kv_heads(w, 4, 2)
    with pytest.raises(ValueError, match="2-D tensor"):
        pool_kv_heads(torch.zeros(6), 3, 1)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 20), st.integers(0, 10_000))
def test_rope_commutes_with_mean_pooling(position, seed):
    """RoPE is linear, so rotating the mean of a group's keys = the mean of the rotated keys: pooling the
    projections (before RoPE) pools the keys attention uses."""
    k = torch.randn(1, 3, position + 1, 8, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    cos, sin = (t.double() for t in rope_cos_sin(torch.arange(position + 1), rope_inv_freq(8, 500.0)))
    pooled_first = apply_rope(k.mean(1, keepdim=True), cos, sin)
    rotated_first = apply_rope(k, cos, sin).mean(1, keepdim=True)
    torch.testing.assert_close(pooled_first, rotated_first, atol=1e-12, rtol=0)


@torch.no_grad()
def test_more_kv_heads_by_copying_changes_nothing():
    model = tiny_llama()
    mha = convert_kv_heads(model, 6)
    assert mha.cfg.n_kv_heads == 6 and mha.layers[0].self_attn.k_proj.weight.shape == (6 * 8, 48)
    torch.testing.assert_close(mha(IDS), model(IDS), atol=1e-5, rtol=0)
    torch.testing.assert_close(convert_kv_heads(model, 3)(IDS), model(IDS), atol=0, rtol=0)


@torch.no_grad()
def test_pooling_heads_that_are_already_equal_changes_nothing():
    model = tiny_llama()
    for layer in model.layers:  # make the 3 kv heads identical: MQA then loses nothing
        for proj in (layer.self_attn.k_proj, layer.self_attn.v_proj):
            w = proj.weight.view(3, 8, 48)
            w[1:] = w[0]
    mqa = convert_kv_heads(model, 1)
    assert mqa.cfg.n_kv_heads == 1 and mqa.layers[1].self_attn.v_proj.weight.shape == (8, 48)
    torch.testing.assert_close(mqa(IDS), model(IDS), atol=1e-5, rtol=0)


@torch.no_grad()
def test_mqa_conversion_shares_and_pools():
    model = tiny_llama()
    mqa = convert_kv_heads(model, 1)
    attn, old = mqa.layers[0].self_attn, model.layers[0].self_attn
    assert attn.q_proj is old.q_proj and mqa.layers[0].mlp is model.layers[0].mlp  # shared, not copied
    torch.testing.assert_close(attn.k_proj.weight, old.k_proj.weight.view(3, 8, 48).mean(0))
    assert not torch.allclose(mqa(IDS), model(IDS), atol=1e-3)  # distinct heads: pooling does change the model
    assert model.cfg.n_kv_heads == 3  # the original is untouched


def test_convert_errors():
    model = tiny_llama()
    with pytest.raises(ValueError, match="must divide the 6 query heads, got 4"):
        convert_kv_heads(model, 4)
    with pytest.raises(ValueError, match="divide the model's 3 kv heads .* got 2"):
        convert_kv_heads(model, 2)
    with pytest.raises(TypeError, match="labkit's Llama"):
        convert_kv_heads(torch.nn.Linear(2, 2), 1)
    with pytest.raises(ValueError, match=r"should give a \[8, 48\] weight"):
        convert_kv_heads(model, 1, pool=lambda w, n, g: w)


def test_cache_table_smollm2():
    rows = cache_table(LlamaConfig(), latent_ranks=(256, 128), tokens=8192, bytes_per_value=2)
    assert [r["per_layer"] for r in rows] == [1152, 384, 128, 256, 128]
    assert [r["kv_heads"] for r in rows[:3]] == [9, 3, 1]
    for row in rows[:3]:
        assert row["bytes_at_tokens"] == cache_bytes(30, row["kv_heads"], 64, 8192, 2)
    assert rows[1]["bytes_per_token"] == 2 * 30 * 3 * 64 * 2 == 23040
    assert rows[3]["bytes_per_token"] == 30 * 256 * 2
    assert rows[1]["share"] == pytest.approx(1 / 3)
    assert cache_table(LlamaConfig(), (128,), rope_dim=64)[-1]["per_layer"] == 192


def test_cache_table_errors():
    with pytest.raises(ValueError, match="above 2 \\* n_kv_heads \\* head_dim = 384"):
        cache_table(LlamaConfig(), latent_ranks=(385,))
    with pytest.raises(ValueError, match="tokens must be an int >= 1"):
        cache_table(LlamaConfig(), tokens=0)


def test_perplexity_of_uniform_model_is_vocab_size():
    class Uniform(torch.nn.Module):
        def forward(self, ids):
            return torch.zeros(*ids.shape, 50)
    assert perplexity(Uniform(), torch.randint(0, 50, (3, 9))) == pytest.approx(50)
    with pytest.raises(ValueError, match=r"\[batch, T\] with T >= 2"):
        perplexity(Uniform(), torch.zeros(3, 1, dtype=torch.long))


def test_window_losses_are_perplexitys_ingredients():
    model = tiny_llama()
    windows = torch.randint(0, TINY.vocab_size, (5, 12), generator=torch.Generator().manual_seed(3))
    losses = window_losses(model, windows)
    assert losses.shape == (5,) and losses.dtype == torch.float64
    assert math.exp(float(losses.mean())) == pytest.approx(perplexity(model, windows), rel=1e-9)
    with torch.no_grad():
        logits = model(windows[1:2, :-1])[0].double()
    by_hand = -logits.log_softmax(-1).gather(1, windows[1, 1:, None]).mean()
    assert float(losses[1]) == pytest.approx(float(by_hand), rel=1e-9)  # row 1 is window 1's own loss
    with pytest.raises(ValueError, match=r"\[batch, T\] with T >= 2"):
        window_losses(model, windows[:, :1])


def test_loss_spread_mean_and_standard_error():
    losses = [2.0, 2.5, 3.5, 4.0]
    mean, se = loss_spread(losses)
    assert mean == pytest.approx(statistics.mean(losses))
    assert se == pytest.approx(statistics.stdev(losses) / 2)  # sample std / sqrt(4)
    # paired: a constant shift has no spread at all, though each model's own losses spread widely
    mean, se = loss_spread([x + 0.1 for x in losses], baseline=losses)
    assert mean == pytest.approx(0.1) and se == pytest.approx(0, abs=1e-12)
    with pytest.raises(ValueError, match="at least 2 per-window losses"):
        loss_spread([1.0])
    with pytest.raises(ValueError, match="same windows"):
        loss_spread(losses, baseline=losses[:3])


@pytest.mark.slow  # loads SmolLM2
def test_smollm2_as_mha_equals_smollm2():
    from labkit.gqa import heldout_windows
    from labkit.models import load_smollm2

    tokenizer, _ = load_smollm2()
    model = Llama.from_pretrained()
    windows = heldout_windows(tokenizer, 1, 33)
    assert windows.shape == (1, 33)
    with torch.no_grad():
        torch.testing.assert_close(convert_kv_heads(model, 9)(windows), model(windows), atol=1e-4, rtol=0)


def test_head_sharing_figure_and_explorer():
    import ipywidgets as widgets
    import matplotlib
    matplotlib.use("Agg")
    from labkit.gqa import kv_heads_explorer, plot_head_sharing

    fig = plot_head_sharing(9, (9, 3, 1), latent_rank=64)
    assert len(fig.axes) == 4
    rows = [dict(row, rank=None if row["kv_heads"] else row["per_layer"], tokens=8192, perplexity=None)
            for row in cache_table(LlamaConfig(), latent_ranks=(64,))]
    box = kv_heads_explorer(rows)
    pick, stack = box.children
    assert isinstance(stack, widgets.Stack) and len(stack.children) == len(rows) == 4
    assert "q8" in stack.children[0].value and "not measured" in stack.children[3].value
    with pytest.raises(ValueError, match="at least one variant"):
        kv_heads_explorer([])
