"""labkit.streaming: attention-sink eviction, the sink+window mask, and SinkCache decoding == one masked forward."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from labkit.streaming import SinkCache, binned_perplexity, kept_positions, sink_window_mask, token_nll
from tiny_llama import random_llama

pytestmark = pytest.mark.usefixtures("torch_one_thread")

TOL = dict(atol=1e-5, rtol=1e-5)  # float32 logits of a tiny model; the orders of summation differ


@pytest.fixture(scope="module")
def tiny():
    return random_llama()


def _decode(model, ids, cache, prefill=1):
    """Feed ids[:prefill] at once, then one token at a time; return the logits at every position."""
    with torch.no_grad():
        out = [model(ids[:, :prefill], cache=cache)]
        for t in range(prefill, ids.shape[1]):
            out.append(model(ids[:, t:t + 1], cache=cache))
    return torch.cat(out, dim=1)


def test_kept_positions_examples():
    assert kept_positions(0, 4, 16) == []
    assert kept_positions(3, 4, 16) == [0, 1, 2]
    assert kept_positions(10, 2, 4) == [0, 1, 7, 8, 9]   # 2 sinks + the last 3: with the next token, 4 recent
    assert kept_positions(10, 0, 4) == [7, 8, 9]
    assert kept_positions(10, 2, 1) == [0, 1]            # window 1: the next token sees only itself and sinks
    assert kept_positions(5, 2, 4) == [0, 1, 2, 3, 4]    # nothing to evict yet


@given(seen=st.integers(0, 200), n_sink=st.integers(0, 8), window=st.integers(1, 64))
def test_kept_positions_properties(seen, n_sink, window):
    kept = kept_positions(seen, n_sink, window)
    assert kept == sorted(set(kept)) and all(0 <= p < seen for p in kept)
    assert len(kept) == min(seen, n_sink + window - 1)
    assert kept[:min(n_sink, seen)] == list(range(min(n_sink, seen)))           # the sinks stay
    assert kept[len(kept) - min(seen, window - 1):] == list(range(seen - min(seen, window - 1), seen))
    # exactly the keys the next query may attend to in the sink+window mask, besides itself
    assert kept == sink_window_mask(seen + 1, n_sink, window)[seen, :seen].nonzero().flatten().tolist()


def test_mask_degenerate_cases():
    causal = torch.ones(12, 12, dtype=torch.bool).tril()
    assert torch.equal(sink_window_mask(12, 0, 12), causal)
    assert torch.equal(sink_window_mask(12, 3, 50), causal)
    band = sink_window_mask(12, 0, 3)
    assert band.sum(1).tolist() == [1, 2] + [3] * 10
    assert torch.equal(sink_window_mask(12, 12, 1), causal)  # everything is a sink


@pytest.mark.parametrize("n_sink, window", [(4, 16), (0, 16), (1, 5), (3, 1)])
def test_sink_cache_decoding_equals_masked_forward(tiny, n_sink, window):
    ids = torch.randint(0, 97, (1, 60), generator=torch.Generator().manual_seed(1))
    cache = SinkCache(tiny.cfg, n_sink, window)
    decoded = _decode(tiny, ids, cache)
    with torch.no_grad():
        masked = tiny(ids, mask=sink_window_mask(60, n_sink, window))
    torch.testing.assert_close(decoded, masked, **TOL)
    assert cache.seen == 60 and cache.positions == kept_positions(60, n_sink, window)
    assert all(k.shape[2] == min(60, n_sink + window - 1) for k in cache.k)


def test_window_only_differs_from_full_once_the_text_outgrows_it(tiny):
    ids = torch.randint(0, 97, (1, 40), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = tiny(ids)
        windowed = tiny(ids, mask=sink_window_mask(40, 0, 8))
    torch.testing.assert_close(windowed[:, :8], full[:, :8], **TOL)   # inside the window: the same
    assert (windowed[:, 8:] - full[:, 8:]).abs().max() > 1e-3


def test_big_window_cache_equals_full_attention_with_prefill_and_batch(tiny):
    ids = torch.randint(0, 97, (2, 30), generator=torch.Generator().manual_seed(3))
    decoded = _decode(tiny, ids, SinkCache(tiny.cfg, 2, 100, batch=2), prefill=10)
    with torch.no_grad():
        torch.testing.assert_close(decoded, tiny(ids), **TOL)


def test_prefill_up_to_the_window_then_decode_equals_masked_forward(tiny):
    ids = torch.randint(0, 97, (1, 50), generator=torch.Generator().manual_seed(4))
    decoded = _decode(tiny, ids, SinkCache(tiny.cfg, 4, 12), prefill=12)
    with torch.no_grad():
        torch.testing.assert_close(decoded, tiny(ids, mask=sink_window_mask(50, 4, 12)), **TOL)


def test_reset_and_nbytes(tiny):
    cache = SinkCache(tiny.cfg, 2, 4)
    _decode(tiny, torch.arange(10)[None], cache)
    per_token = 2 * tiny.cfg.n_layers * tiny.cfg.n_kv_heads * tiny.cfg.head_dim * 4
    assert cache.nbytes == 5 * per_token   # 2 sinks + 3 recent, held between calls
    cache.reset()
    assert cache.seen == 0 and cache.positions == [] and cache.nbytes == 0


def test_errors(tiny):
    with pytest.raises(ValueError, match="n_sink must be an int >= 0"):
        SinkCache(tiny.cfg, -1, 4)
    with pytest.raises(ValueError, match="window must be an int >= 1"):
        sink_window_mask(5, 0, 0)
    with pytest.raises(TypeError, match="cfg must be a LlamaConfig"):
        SinkCache({}, 1, 4)
    with pytest.raises(ValueError, match="seen must be an int >= 0"):
        kept_positions(-1, 1, 4)
    bad = SinkCache(tiny.cfg, 1, 4, keep=lambda seen, s, w: [seen])  # a position the cache never held
    with pytest.raises(ValueError, match="must return distinct positions the cache holds"):
        _decode(tiny, torch.arange(3)[None], bad)
    with pytest.raises(ValueError, match=r"k and v must both be \[batch, kv_heads, T, head_dim\]"):
        SinkCache(tiny.cfg, 1, 4).update(0, torch.zeros(1, 3, 1, 8), torch.zeros(1, 3, 1, 8))
    with pytest.raises(ValueError, match=r"mask must be \[T - 1, T - 1\]"):
        token_nll(tiny, torch.arange(5), mask=sink_window_mask(5, 0, 2))


def test_token_nll_and_binned_perplexity(tiny):
    ids = torch.randint(0, 97, (21,), generator=torch.Generator().manual_seed(5))
    nll = token_nll(tiny, ids)
    with torch.no_grad():
        logp = torch.log_softmax(tiny(ids[None, :-1])[0].double(), -1)
    torch.testing.assert_close(nll, -logp[torch.arange(20), ids[1:]])
    starts, ppl = binned_perplexity(nll, 6)
    assert starts.tolist() == [0, 6, 12] and len(ppl) == 3
    assert ppl[1] == pytest.approx(float(torch.exp(nll[6:12].mean())))
    with pytest.raises(ValueError, match="bin_size must be an int in"):
        binned_perplexity(nll, 0)


def test_sink_attention_measures_the_weights(tiny):
    from labkit.streaming import sink_attention

    ids = torch.randint(0, 97, (1, 16), generator=torch.Generator().manual_seed(6))
    shares, uniform = sink_attention(tiny, ids, n_first=1)
    assert shares.shape == (tiny.cfg.n_layers,) and ((shares > 0) & (shares < 1)).all()
    assert uniform == pytest.approx(sum(1 / (i + 1) for i in range(1, 16)) / 15)
    all_shares, _ = sink_attention(tiny, ids, n_first=15)   # all keys but the last query's own
    assert (all_shares > shares).all()
    from labkit import attention, llama
    assert llama.scaled_dot_product_attention is attention.scaled_dot_product_attention  # the patch is undone
    with pytest.raises(ValueError, match="T > n_first"):
        sink_attention(tiny, ids, n_first=16)
