"""labkit.attention: scaled dot-product attention, masks, multi-head and grouped-query attention."""
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from labkit.attention import (MultiHeadAttention, attention_explorer, causal_mask, grouped_query_attention,
                              head_summary, repeat_kv, scaled_dot_product_attention)
from labkit.rope import rope_tables


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def rand(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def loop_reference(q, k, v, causal):
    """Attention one query at a time, straight from the definition (q, k, v: [T, D])."""
    t_q, t_k = q.shape[0], k.shape[0]
    rows = []
    for i in range(t_q):
        visible = i + (t_k - t_q) + 1 if causal else t_k  # keys 0 .. i + offset
        scores = torch.stack([q[i] @ k[j] for j in range(visible)]) / math.sqrt(q.shape[1])
        weights = torch.exp(scores - scores.max())
        weights = weights / weights.sum()
        rows.append(sum(w * v[j] for j, w in enumerate(weights)))
    return torch.stack(rows)


# ------------------------------------------------------------------------------------------------ sdpa

@pytest.mark.parametrize("t_q, t_k", [(1, 1), (5, 5), (3, 7), (1, 6)])
@pytest.mark.parametrize("causal", [True, False])
def test_sdpa_equals_loop_over_positions(t_q, t_k, causal):
    q, k, v = rand(t_q, 4, seed=1), rand(t_k, 4, seed=2), rand(t_k, 3, seed=3)
    out = scaled_dot_product_attention(q, k, v, causal=causal)
    torch.testing.assert_close(out, loop_reference(q, k, v, causal), rtol=1e-12, atol=1e-12)


def test_causal_query_block_is_the_tail_of_full_causal_attention():
    # queries for the last 3 positions against all 8 keys (what a KV cache does) = last 3 rows of the full run
    q, k, v = rand(2, 8, 4, seed=1), rand(2, 8, 4, seed=2), rand(2, 8, 4, seed=3)
    full = scaled_dot_product_attention(q, k, v, causal=True)
    tail = scaled_dot_product_attention(q[:, -3:], k, v, causal=True)
    torch.testing.assert_close(tail, full[:, -3:], rtol=1e-12, atol=1e-12)


def test_weights_are_distributions_and_causal_zeros():
    q, k, v = rand(2, 3, 6, 8, seed=1), rand(2, 3, 6, 8, seed=2), rand(2, 3, 6, 8, seed=3)
    out, w = scaled_dot_product_attention(q, k, v, causal=True, return_weights=True)
    assert w.shape == (2, 3, 6, 6) and out.shape == (2, 3, 6, 8)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 3, 6, dtype=torch.float64))
    below = torch.ones(6, 6, dtype=torch.bool).tril()
    assert (w[..., ~below] == 0).all() and (w[..., below] > 0).all()
    torch.testing.assert_close(out, w @ v)


def test_causal_mask():
    assert causal_mask(3, 3).tolist() == [[True, False, False], [True, True, False], [True, True, True]]
    assert causal_mask(2, 4).tolist() == [[True, True, True, False], [True, True, True, True]]
    with pytest.raises(ValueError, match="Tq=4 > Tk=2"):
        causal_mask(4, 2)


def test_bool_and_additive_masks_agree():
    q, k, v = rand(4, 5, 8, seed=1), rand(4, 5, 8, seed=2), rand(4, 5, 8, seed=3)
    keep = rand(4, 5, 5, seed=4) > -0.5
    keep[..., 0] = True  # every query keeps at least one key
    additive = torch.zeros(4, 5, 5, dtype=torch.float64).masked_fill(~keep, float("-inf"))
    a = scaled_dot_product_attention(q, k, v, mask=keep)
    torch.testing.assert_close(a, scaled_dot_product_attention(q, k, v, mask=additive))
    # a causal mask passed by hand equals causal=True
    torch.testing.assert_close(scaled_dot_product_attention(q, k, v, mask=causal_mask(5, 5)),
                               scaled_dot_product_attention(q, k, v, causal=True))


@settings(max_examples=40, deadline=None)
@given(batch=st.integers(1, 3), heads=st.integers(1, 3), t_q=st.integers(1, 9), extra=st.integers(0, 4),
       d=st.sampled_from([1, 4, 8, 16]), dv=st.sampled_from([2, 8]), causal=st.booleans(),
       use_mask=st.booleans(), seed=st.integers(0, 10_000))
def test_sdpa_matches_torch(batch, heads, t_q, extra, d, dv, causal, use_mask, seed):
    t_k = t_q + extra
    q, k = rand(batch, heads, t_q, d, seed=seed), rand(batch, heads, t_k, d, seed=seed + 1)
    v = rand(batch, heads, t_k, dv, seed=seed + 2)
    if use_mask:
        mask = rand(1, heads, t_q, t_k, seed=seed + 3) > 0
        mask[..., -1] = True  # the last key is visible to every query, so no row is empty
        if causal:
            mask = mask & causal_mask(t_q, t_k)
            mask[..., 0] = True
        ours = scaled_dot_product_attention(q, k, v, mask=mask)
        theirs = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    else:
        ours = scaled_dot_product_attention(q, k, v, causal=causal)
        ref_mask = causal_mask(t_q, t_k) if causal else None  # torch's is_causal aligns top-left; ours bottom-right
        theirs = F.scaled_dot_product_attention(q, k, v, attn_mask=ref_mask)
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10)


def test_sdpa_matches_torch_float32_and_is_causal():
    q, k, v = (rand(2, 4, 16, 32, seed=s, dtype=torch.float32) for s in (1, 2, 3))
    torch.testing.assert_close(scaled_dot_product_attention(q, k, v, causal=True),
                               F.scaled_dot_product_attention(q, k, v, is_causal=True), rtol=1e-5, atol=1e-5)


def test_fully_masked_row_is_nan_like_torch():
    q, k, v = rand(2, 4, seed=1), rand(3, 4, seed=2), rand(3, 4, seed=3)
    mask = torch.tensor([[True, True, False], [False, False, False]])
    out = scaled_dot_product_attention(q, k, v, mask=mask)
    assert torch.isnan(out[1]).all() and not torch.isnan(out[0]).any()


def test_permuting_keys_and_values_changes_nothing_without_position():
    # attention is a set operation: the reason position encodings exist
    q, k, v = rand(4, 8, seed=1), rand(6, 8, seed=2), rand(6, 8, seed=3)
    perm = torch.randperm(6, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(scaled_dot_product_attention(q, k[perm], v[perm]),
                               scaled_dot_product_attention(q, k, v))


def test_scaling_keeps_score_variance_near_one():
    q, k = rand(4000, 256, seed=1), rand(4000, 256, seed=2)
    scores = (q * k).sum(-1) / math.sqrt(256)
    assert abs(float(scores.var()) - 1) < 0.1


@pytest.mark.parametrize("args, error, message", [
    ((torch.zeros(3, 4), torch.zeros(3, 5), torch.zeros(3, 4)), ValueError, "same head size"),
    ((torch.zeros(3, 4), torch.zeros(3, 4), torch.zeros(2, 4)), ValueError, "same number of positions"),
    ((torch.zeros(4), torch.zeros(3, 4), torch.zeros(3, 4)), ValueError, "rank >= 2"),
    ((torch.zeros(3, 4, dtype=torch.long), torch.zeros(3, 4), torch.zeros(3, 4)), TypeError, "floating-point"),
    (([[0.0]], torch.zeros(1, 1), torch.zeros(1, 1)), TypeError, "torch.Tensor"),
])
def test_sdpa_errors(args, error, message):
    with pytest.raises(error, match=message):
        scaled_dot_product_attention(*args)


def test_sdpa_mask_errors():
    q = torch.zeros(3, 4)
    with pytest.raises(ValueError, match="does not broadcast"):
        scaled_dot_product_attention(q, q, q, mask=torch.ones(2, 2, dtype=torch.bool))
    with pytest.raises(TypeError, match="mask must be"):
        scaled_dot_product_attention(q, q, q, mask=[[True]])
    with pytest.raises(ValueError, match="at most as many queries"):
        scaled_dot_product_attention(torch.zeros(5, 4), q, q, causal=True)


# ------------------------------------------------------------------------------------------------ GQA

def test_repeat_kv_matches_transformers_order():
    from transformers.models.llama.modeling_llama import repeat_kv as hf_repeat_kv
    x = rand(2, 3, 5, 4)
    for n_rep in (1, 2, 3):
        got = repeat_kv(x, n_rep)
        assert got.shape == (2, 3 * n_rep, 5, 4)
        torch.testing.assert_close(got, hf_repeat_kv(x, n_rep), rtol=0, atol=0)
        for h in range(3 * n_rep):  # query head h reads kv head h // n_rep
            assert torch.equal(got[:, h], x[:, h // n_rep])


def test_repeat_kv_errors():
    with pytest.raises(ValueError, match=r"\[B, H_kv, T, D\]"):
        repeat_kv(torch.zeros(3, 5, 4), 2)
    with pytest.raises(ValueError, match="n_rep"):
        repeat_kv(torch.zeros(1, 3, 5, 4), 0)


def test_gqa_with_as_many_kv_heads_is_multi_head_attention():
    q, k, v = rand(2, 4, 6, 8, seed=1), rand(2, 4, 6, 8, seed=2), rand(2, 4, 6, 8, seed=3)
    torch.testing.assert_close(grouped_query_attention(q, k, v), scaled_dot_product_attention(q, k, v, causal=True),
                               rtol=0, atol=0)


@pytest.mark.parametrize("n_heads, n_kv", [(6, 3), (6, 2), (6, 1), (4, 4)])
def test_gqa_equals_per_head_loop(n_heads, n_kv):
    q, k, v = rand(2, n_heads, 5, 8, seed=1), rand(2, n_kv, 5, 8, seed=2), rand(2, n_kv, 5, 8, seed=3)
    out, w = grouped_query_attention(q, k, v, causal=True, return_weights=True)
    group = n_heads // n_kv
    for h in range(n_heads):
        ref = scaled_dot_product_attention(q[:, h], k[:, h // group], v[:, h // group], causal=True)
        torch.testing.assert_close(out[:, h], ref, rtol=1e-12, atol=1e-12)
    assert w.shape == (2, n_heads, 5, 5)


@pytest.mark.parametrize("shapes, message", [
    (((2, 6, 5, 8), (2, 4, 5, 8), (2, 4, 5, 8)), r"query heads \(6\) must be a multiple of .* \(4\)"),
    (((2, 6, 5, 8), (2, 3, 5, 8), (2, 2, 5, 8)), "same batch and head count"),
    (((2, 6, 5, 8), (1, 3, 5, 8), (1, 3, 5, 8)), "same batch size"),
    (((6, 5, 8), (3, 5, 8), (3, 5, 8)), r"rank 4"),
    (((2, 6, 5, 8), (2, 3, 5, 4), (2, 3, 5, 8)), "same head size"),
])
def test_gqa_errors(shapes, message):
    q, k, v = (torch.zeros(s) for s in shapes)
    with pytest.raises(ValueError, match=message):
        grouped_query_attention(q, k, v)


# ------------------------------------------------------------------------------------------------ module

def test_one_head_mha_is_single_head_attention():
    torch.manual_seed(0)
    mha = MultiHeadAttention(16, 1).double()
    x = rand(2, 7, 16)
    expected = mha.o_proj(scaled_dot_product_attention(mha.q_proj(x), mha.k_proj(x), mha.v_proj(x), causal=True))
    torch.testing.assert_close(mha(x), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("n_heads, n_kv, rope", [(4, None, False), (4, 2, True), (6, 1, True)])
def test_mha_equals_torch_sdpa(n_heads, n_kv, rope):
    torch.manual_seed(0)
    d_model = 24
    mha = MultiHeadAttention(d_model, n_heads, n_kv, bias=True).double()
    x = rand(3, 9, d_model)
    hd, kv = d_model // n_heads, n_kv or n_heads
    q = mha.q_proj(x).view(3, 9, n_heads, hd).transpose(1, 2)
    k = mha.k_proj(x).view(3, 9, kv, hd).transpose(1, 2)
    v = mha.v_proj(x).view(3, 9, kv, hd).transpose(1, 2)
    cos = sin = None
    if rope:
        cos, sin = (t.double() for t in rope_tables(9, hd))
        q, k = q * cos + torch.cat((-q[..., hd // 2:], q[..., :hd // 2]), -1) * sin, \
            k * cos + torch.cat((-k[..., hd // 2:], k[..., :hd // 2]), -1) * sin
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    ref = mha.o_proj(ref.transpose(1, 2).reshape(3, 9, d_model))
    out, w = mha(x, cos, sin, return_weights=True)
    torch.testing.assert_close(mha(x, cos, sin), ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    assert w.shape == (3, n_heads, 9, 9)


def test_mha_matches_transformers_llama_attention():
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaAttention, LlamaRotaryEmbedding

    config = LlamaConfig(hidden_size=48, num_attention_heads=6, num_key_value_heads=2, head_dim=8,
                         max_position_embeddings=64, rope_theta=10000.0)
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    hf = LlamaAttention(config, layer_idx=0).eval()
    ours = MultiHeadAttention(48, 6, 2)
    ours.load_state_dict(hf.state_dict())  # same parameter names
    x = rand(2, 10, 48, dtype=torch.float32)
    positions = torch.arange(10)[None].expand(2, 10)
    cos_hf, sin_hf = LlamaRotaryEmbedding(config)(x, positions)
    additive = torch.zeros(10, 10).masked_fill(~causal_mask(10, 10), float("-inf"))[None, None]
    expected, _ = hf(x, position_embeddings=(cos_hf, sin_hf), attention_mask=additive)
    cos, sin = rope_tables(10, 8, 10000.0)
    torch.testing.assert_close(ours(x, cos, sin), expected, rtol=1e-5, atol=1e-6)


def test_mha_errors():
    with pytest.raises(ValueError, match="divisible by n_heads"):
        MultiHeadAttention(10, 3)
    with pytest.raises(ValueError, match=r"n_heads \(6\) must be a multiple of n_kv_heads \(4\)"):
        MultiHeadAttention(24, 6, 4)
    with pytest.raises(ValueError, match="n_heads must be an int"):
        MultiHeadAttention(24, 0)
    mha = MultiHeadAttention(16, 2)
    with pytest.raises(ValueError, match=r"x \[B, T, d_model=16\]"):
        mha(torch.zeros(2, 5, 8))
    with pytest.raises(ValueError, match=r"x \[B, T, d_model=16\]"):
        mha(torch.zeros(5, 16))
    with pytest.raises(ValueError, match="both cos and sin"):
        mha(torch.zeros(1, 5, 16), cos=torch.zeros(5, 8))
    assert MultiHeadAttention(16, 2, head_dim=4).q_proj.out_features == 8


# ------------------------------------------------------------------------------------------------ widget

def test_head_summary():
    t = 5
    prev = torch.zeros(t, t)
    prev[0, 0] = 1
    prev[torch.arange(1, t), torch.arange(t - 1)] = 1
    assert head_summary(prev) == pytest.approx({"self": 0.2, "previous": 0.8, "first": 0.0, "other": 0.0})
    assert head_summary(torch.eye(t)) == pytest.approx({"self": 1.0, "previous": 0.0, "first": 0.0, "other": 0.0})
    sink = torch.zeros(t, t)
    sink[:, 0] = 1
    assert head_summary(sink) == pytest.approx({"self": 0.2, "previous": 0.2, "first": 0.6, "other": 0.0})
    uniform = torch.ones(t, t).tril() / torch.arange(1, t + 1)[:, None]
    s = head_summary(uniform)
    assert sum(s.values()) == pytest.approx(1.0) and s["other"] > 0
    with pytest.raises(ValueError, match="square"):
        head_summary(torch.zeros(2, 3))


def test_attention_explorer_structure_and_determinism():
    import ipywidgets as widgets
    from ipywidgets.widgets.widget import _instances as registry
    from ipywidgets.widgets.widget_link import Link

    gen = torch.Generator().manual_seed(0)
    attention = [torch.softmax(torch.randn(2, 6, 6, generator=gen).masked_fill(~causal_mask(6, 6), -1e9), -1)
                 for _ in range(3)]
    tokens = list("ab c\nd")
    w = attention_explorer(attention, tokens)
    controls, caption, heatmaps = w.children
    layer_box, head_box = controls.children
    assert isinstance(heatmaps, widgets.Stack) and len(heatmaps.children) == 3
    assert all(len(s.children) == 2 for s in heatmaps.children)
    leaf = heatmaps.children[2].children[1]
    image, summary = leaf.children
    assert image.value[:8] == b"\x89PNG\r\n\x1a\n" and "layer 2, head 1" in summary.value
    assert "␣" in caption.value and "⏎" in caption.value
    links = {(id(l.source[0]), id(l.target[0])) for l in list(registry.values()) if isinstance(l, Link)}
    assert (id(layer_box), id(heatmaps)) in links
    assert all((id(head_box), id(s)) in links for s in heatmaps.children)
    again = attention_explorer(attention, tokens)
    assert again.children[2].children[2].children[1].children[0].value == image.value  # same PNG bytes


def test_attention_explorer_errors():
    with pytest.raises(ValueError, match="non-empty list"):
        attention_explorer([], [])
    with pytest.raises(ValueError, match="every layer"):
        attention_explorer([torch.zeros(2, 3, 3), torch.zeros(1, 3, 3)], list("abc"))
    with pytest.raises(ValueError, match="one token per position"):
        attention_explorer([torch.zeros(2, 3, 3)], list("ab"))
