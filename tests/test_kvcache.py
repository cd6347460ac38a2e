"""labkit.kvcache: the preallocated cache, cached generation (same tokens as without a cache) and the fast
decode step (same logits as Llama.forward, to a stated tolerance)."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from labkit.attention import repeat_kv, scaled_dot_product_attention
from labkit.kvcache import DecodeStep, KVCache, _attend, cache_bytes, generate, matvec, token_times
from labkit.llama import Llama, LlamaConfig
from labkit.models import load_smollm2
from labkit.sampling import generate as generate_uncached

pytestmark = pytest.mark.usefixtures("torch_one_thread")

TINY = LlamaConfig(vocab_size=97, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=48, max_seq_len=64)


def tiny_model(cfg: LlamaConfig = TINY, seed: int = 0) -> Llama:
    torch.manual_seed(seed)
    model = Llama(cfg).eval()
    with torch.no_grad():  # nn.Linear's default init is small: scale up so the logits are far from ties
        for p in model.parameters():
            p.mul_(3.0) if p.ndim == 2 else p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def smollm2():
    tokenizer, _ = load_smollm2()
    return tokenizer, Llama.from_pretrained()


# ------------------------------------------------------------------------------------------------ the cache

def test_cache_shapes_views_and_reset():
    cache = KVCache(TINY, batch=3, max_len=10)
    assert cache.k.shape == cache.v.shape == (2, 3, 2, 10, 8) and cache.max_len == 10 and cache.seen == 0
    k, v = torch.randn(3, 2, 4, 8), torch.randn(3, 2, 4, 8)
    for layer in range(2):
        k_all, v_all = cache.update(layer, k, v)
        assert k_all.shape == (3, 2, 4, 8) and torch.equal(k_all, k) and torch.equal(v_all, v)
    cache.advance(4)
    k2, v2 = torch.randn(3, 2, 1, 8), torch.randn(3, 2, 1, 8)
    k_all, v_all = cache.update(0, k2, v2)
    assert k_all.shape == (3, 2, 5, 8)  # the old tokens first, then the new one
    assert torch.equal(k_all, torch.cat([k, k2], dim=2)) and torch.equal(v_all, torch.cat([v, v2], dim=2))
    assert k_all.data_ptr() == cache.k.data_ptr()  # a view of the preallocated storage, no copy
    cache.reset()
    assert cache.seen == 0 and torch.equal(cache.update(1, k2, v2)[0], k2)


def test_cache_nbytes_is_the_formula():
    cfg = LlamaConfig()  # SmolLM2's shape (no weights needed)
    cache = KVCache(cfg, batch=1, max_len=100)
    assert cache.nbytes == cache_bytes(30, 3, 64, 100) == 2 * 30 * 3 * 64 * 4 * 100
    assert KVCache(cfg, batch=2, max_len=100, dtype=torch.float16).nbytes == cache_bytes(30, 3, 64, 200, 2)


def test_cache_errors():
    cache = KVCache(TINY, batch=1, max_len=4)
    with pytest.raises(ValueError, match="layer must lie in"):
        cache.update(2, torch.zeros(1, 2, 1, 8), torch.zeros(1, 2, 1, 8))
    with pytest.raises(ValueError, match=r"\(batch, kv_heads, head_dim\) = \(1, 2, 8\)"):
        cache.update(0, torch.zeros(1, 4, 1, 8), torch.zeros(1, 4, 1, 8))
    with pytest.raises(ValueError, match="must both be"):
        cache.update(0, torch.zeros(1, 2, 1, 8), torch.zeros(1, 2, 2, 8))
    cache.update(0, torch.zeros(1, 2, 3, 8), torch.zeros(1, 2, 3, 8))
    cache.advance(3)
    with pytest.raises(ValueError, match="holds 4 tokens; storing 2 more after 3 would need 5"):
        cache.update(0, torch.zeros(1, 2, 2, 8), torch.zeros(1, 2, 2, 8))
    with pytest.raises(TypeError, match="LlamaConfig"):
        KVCache({"n_layers": 2})
    with pytest.raises(ValueError, match="max_len must be an int >= 1"):
        KVCache(TINY, max_len=0)
    with pytest.raises(ValueError, match="exceeds the model's trained context of 64"):
        KVCache(TINY, max_len=65)
    with pytest.raises(ValueError, match="tokens must be an int >= 0"):
        cache_bytes(30, 3, 64, -1)
    with pytest.raises(ValueError, match="n_kv_heads must be an int >= 1"):
        cache_bytes(30, 0, 64, 10)


@settings(max_examples=25, deadline=None)
@given(chunks=st.lists(st.integers(1, 5), min_size=1, max_size=6))
def test_cache_holds_everything_written_in_order(chunks):
    """Written in chunks of any sizes, the cache returns exactly the concatenation, for every layer."""
    cache = KVCache(TINY, batch=2, max_len=30)
    g = torch.Generator().manual_seed(len(chunks))
    written = [[], []]
    for n in chunks:
        for layer in range(2):
            k = torch.randn(2, 2, n, 8, generator=g)
            written[layer].append(k)
            k_all, v_all = cache.update(layer, k, -k)
        cache.advance(n)
        assert cache.seen == sum(written[0][i].shape[2] for i in range(len(written[0])))
    for layer in range(2):
        expected = torch.cat(written[layer], dim=2)
        k_all, v_all = cache.update(layer, torch.zeros(2, 2, 0, 8), torch.zeros(2, 2, 0, 8))
        assert torch.equal(k_all, expected) and torch.equal(v_all, -expected)


# ------------------------------------------------------------------------------------------------ cached = uncached

@torch.no_grad()
def test_cached_logits_equal_uncached_logits():
    """Prefill in chunks, then one token at a time: every position's logits equal one uncached forward pass
    over the whole sequence, to 1e-4 on logits of size ~10-30 (the same operations on fewer rows; float32
    sums may group differently), and the greedy choice is the same everywhere."""
    model = tiny_model()
    ids = torch.randint(0, TINY.vocab_size, (2, 12), generator=torch.Generator().manual_seed(1))
    full = model(ids)
    cache = KVCache(TINY, batch=2, max_len=12)
    pieces = [model(ids[:, :5], cache=cache)] + [model(ids[:, t:t + 1], cache=cache) for t in range(5, 12)]
    cached = torch.cat(pieces, dim=1)
    torch.testing.assert_close(cached, full, atol=1e-4, rtol=0)
    assert torch.equal(cached.argmax(-1), full.argmax(-1)) and cache.seen == 12
    assert full.abs().max() > 10


@torch.no_grad()
@pytest.mark.parametrize("fast", [False, True])
def test_generate_gives_the_uncached_tokens_on_a_tiny_model(fast):
    model = tiny_model()
    ids = torch.randint(0, TINY.vocab_size, (3, 4), generator=torch.Generator().manual_seed(2))
    assert torch.equal(generate(model, ids, 20, fast=fast), generate_uncached(model, ids, 20))
    # sampling too: the same seeded generator draws the same tokens from the same distributions
    kw = dict(temperature=1.0, top_k=20)
    cached = generate(model, ids, 12, generator=torch.Generator().manual_seed(3), fast=fast, **kw)
    assert torch.equal(cached, generate_uncached(model, ids, 12, generator=torch.Generator().manual_seed(3), **kw))


@torch.no_grad()
def test_decode_step_equals_llama_forward():
    """The fast path: same logits as Llama.forward with a cache, to 1e-4 (logits of size ~10-30); same cache."""
    model = tiny_model(LlamaConfig(vocab_size=97, dim=48, n_layers=3, n_heads=6, n_kv_heads=2, hidden_dim=64,
                                   max_seq_len=64, tie_embeddings=False))
    ids = torch.randint(0, 97, (2, 7), generator=torch.Generator().manual_seed(4))
    plain, fast = KVCache(model.cfg, 2, 16), KVCache(model.cfg, 2, 16)
    model(ids, cache=plain), model(ids, cache=fast)
    step = DecodeStep(model)
    for token in torch.randint(0, 97, (5, 2), generator=torch.Generator().manual_seed(5)):
        expected = model(token[:, None], cache=plain)[:, -1]
        torch.testing.assert_close(step(token, fast), expected, atol=1e-4, rtol=0)
    assert fast.seen == plain.seen == 12
    torch.testing.assert_close(fast.k, plain.k, atol=1e-5, rtol=0)
    torch.testing.assert_close(fast.v, plain.v, atol=1e-5, rtol=0)


@settings(max_examples=20, deadline=None)
@given(batch=st.integers(1, 3), length=st.integers(1, 12), n_rep=st.sampled_from([1, 3]), seed=st.integers(0, 99))
def test_attend_equals_grouped_query_attention(batch, length, n_rep, seed):
    """The fast step's attention loop: one query per head against the first `length` cached positions, query
    head h reading key/value head h // n_rep, equals repeat_kv + scaled_dot_product_attention."""
    g = torch.Generator().manual_seed(seed)
    H_kv, D = 2, 8
    q = torch.randn(batch, H_kv * n_rep, 1, D, generator=g)
    k, v = torch.randn(batch, H_kv, 16, D, generator=g), torch.randn(batch, H_kv, 16, D, generator=g)
    expected = scaled_dot_product_attention(q, repeat_kv(k[:, :, :length], n_rep), repeat_kv(v[:, :, :length], n_rep))
    got = _attend(q.reshape(batch, -1).numpy(), k.numpy(), v.numpy(), length, D)
    torch.testing.assert_close(torch.from_numpy(got), expected.reshape(batch, -1), atol=1e-5, rtol=1e-5)


@settings(max_examples=20, deadline=None)
@given(rows=st.integers(1, 4), n_out=st.integers(1, 40), n_in=st.integers(1, 40), seed=st.integers(0, 99))
def test_matvec_equals_linear(rows, n_out, n_in, seed):
    g = torch.Generator().manual_seed(seed)
    x, w = torch.randn(rows, n_in, generator=g), torch.randn(n_out, n_in, generator=g)
    torch.testing.assert_close(matvec(x, w.numpy()), torch.nn.functional.linear(x, w), atol=1e-5, rtol=1e-5)


def test_generate_and_fast_path_errors():
    model = tiny_model()
    ids = torch.zeros(1, 3, dtype=torch.long)
    with pytest.raises(TypeError, match="labkit's Llama"):
        generate(lambda x: x, ids, 2)
    with pytest.raises(ValueError, match=r"ids must be an integer tensor \[batch, time\]"):
        generate(model, torch.zeros(3, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="max_new_tokens must be an int >= 0"):
        generate(model, ids, -1)
    with pytest.raises(TypeError, match="seeded torch.Generator"):
        generate(model, ids, 2, temperature=1.0)
    used = KVCache(TINY, 1, 10)
    used.advance(2)
    with pytest.raises(ValueError, match="empty cache.*seen 2 tokens"):
        generate(model, ids, 2, cache=used)
    with pytest.raises(ValueError, match=r"tokens must be an integer tensor \[batch\]"):
        DecodeStep(model)(ids, KVCache(TINY, 1, 10))
    with pytest.raises(TypeError, match="labkit's Llama"):
        DecodeStep(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="float32 KVCache for a batch of 2"):
        DecodeStep(model)(torch.zeros(2, dtype=torch.long), KVCache(TINY, 1, 10))
    full = KVCache(TINY, 1, 3)
    full.advance(3)
    with pytest.raises(ValueError, match="holds 3 tokens and is full"):
        DecodeStep(model)(torch.zeros(1, dtype=torch.long), full)
    with pytest.raises(ValueError, match=r"matvec needs float32 x \[B, 3\]"):
        matvec(torch.zeros(1, 4), torch.zeros(2, 3).numpy())


@torch.no_grad()
def test_token_times_generates_the_greedy_tokens_in_every_mode():
    model = tiny_model()
    ids = torch.randint(0, TINY.vocab_size, (2, 3), generator=torch.Generator().manual_seed(7))
    expected = generate_uncached(model, ids, 6)
    for cache, fast in ((False, False), (True, False), (True, True)):
        out, seconds = token_times(model, ids, 6, cache=cache, fast=fast)
        assert torch.equal(out, expected) and len(seconds) == 6 and seconds == sorted(seconds)
    with pytest.raises(ValueError, match="max_new_tokens must be an int >= 1"):
        token_times(model, ids, 0)


def test_generate_stops_at_eos_like_the_uncached_loop():
    model = tiny_model()
    ids = torch.randint(0, TINY.vocab_size, (2, 3), generator=torch.Generator().manual_seed(6))
    free = generate_uncached(model, ids, 10)
    eos = int(free[0, 5])  # a token row 0 emits: make it the end-of-sequence token
    assert torch.equal(generate(model, ids, 10, eos_id=eos), generate_uncached(model, ids, 10, eos_id=eos))
    assert torch.equal(generate(model, ids, 0), ids)


# ------------------------------------------------------------------------------------------------ SmolLM2

@pytest.mark.slow  # loads SmolLM2
@torch.no_grad()
def test_smollm2_cached_greedy_generation_gives_the_uncached_tokens(smollm2):
    tokenizer, model = smollm2
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "Name three colours."}], tokenize=False,
                                         add_generation_prompt=True)
    ids = tokenizer(chat, return_tensors="pt").input_ids
    reference = generate_uncached(model, ids, 16)
    assert torch.equal(generate(model, ids, 16), reference)
    assert torch.equal(generate(model, ids, 16, fast=True), reference)
    # batch > 1: two prompts of the same length (no padding needed)
    batch = tokenizer(["The capital of France is", "The sky is blue and"], return_tensors="pt").input_ids
    assert batch.shape[1] == 5
    reference = generate_uncached(model, batch, 12)
    assert torch.equal(generate(model, batch, 12), reference)
    assert torch.equal(generate(model, batch, 12, fast=True), reference)


@pytest.mark.slow  # loads SmolLM2
@torch.no_grad()
def test_smollm2_fast_step_logits_equal_the_plain_step(smollm2):
    """On the real model the fast path's logits (largest ~30) agree with Llama.forward's to 1e-4."""
    tokenizer, model = smollm2
    ids = tokenizer("Once upon a time, there was a", return_tensors="pt").input_ids
    plain, fast = KVCache(model.cfg, 1, 32), KVCache(model.cfg, 1, 32)
    model(ids, cache=plain), model(ids, cache=fast)
    token = torch.tensor([tokenizer(" cat").input_ids[0]])
    torch.testing.assert_close(DecodeStep(model)(token, fast), model(token[:, None], cache=plain)[:, -1],
                               atol=1e-4, rtol=0)


@settings(max_examples=25, deadline=None)
@given(batch=st.integers(1, 11), n_out=st.integers(1, 150), n_in=st.integers(1, 40), seed=st.integers(0, 99))
def test_batched_linear_equals_linear(batch, n_out, n_in, seed):
    # _linear switches to the 4-rows x 4-sequences tiles at batch >= 4; every remainder (rows, sequences,
    # a band of 64 rows cut short) must land in the right place
    from labkit.kvcache import _linear
    g = torch.Generator().manual_seed(seed)
    x, w = torch.randn(batch, n_in, generator=g), torch.randn(n_out, n_in, generator=g)
    got = torch.from_numpy(_linear(x.numpy(), w.numpy()))
    torch.testing.assert_close(got, torch.nn.functional.linear(x, w), atol=1e-5, rtol=1e-5)
