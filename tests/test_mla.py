"""labkit.mla: SVD factors of the kv projections, the latent cache, and latent attention == its dense form."""
import warnings

import pytest
import torch

from labkit.llama import Llama, LlamaConfig
from labkit.mla import LatentAttention, LatentCache, input_covariances, low_rank_kv, model_kv_factors, to_latent_kv
from tiny_llama import random_llama

pytestmark = pytest.mark.usefixtures("torch_one_thread")
TINY = LlamaConfig(vocab_size=61, dim=48, n_layers=2, n_heads=6, n_kv_heads=3, hidden_dim=40, max_seq_len=64,
                   rope_theta=500.0)
FULL = min(2 * 3 * 8, 48)  # the stacked [w_k; w_v] is 48 x 48


def tiny_llama(cfg=TINY, seed=0) -> Llama:
    return random_llama(cfg, seed, std=0.3)


IDS = torch.randint(0, TINY.vocab_size, (2, 13), generator=torch.Generator().manual_seed(1))
CAL = torch.randint(0, TINY.vocab_size, (4, 64), generator=torch.Generator().manual_seed(2))  # 256 >= 5 x dim


def test_full_rank_reproduces_the_projections():
    g = torch.Generator().manual_seed(0)
    w_k, w_v = torch.randn(24, 40, generator=g), torch.randn(24, 40, generator=g)
    down, uk, uv = low_rank_kv(w_k, w_v, 40)
    assert down.shape == (40, 40) and uk.shape == uv.shape == (24, 40)
    torch.testing.assert_close(uk @ down, w_k, atol=1e-4, rtol=0)
    torch.testing.assert_close(uv @ down, w_v, atol=1e-4, rtol=0)
    x = torch.randn(500, 40, generator=g)
    down, uk, uv = low_rank_kv(w_k, w_v, 40, whitening=x.T @ x / 500)
    torch.testing.assert_close(uk @ down, w_k, atol=1e-3, rtol=0)


def test_error_shrinks_with_rank_and_whitening_helps_on_its_inputs():
    g = torch.Generator().manual_seed(0)
    w_k, w_v = torch.randn(16, 32, generator=g), torch.randn(16, 32, generator=g)
    x = torch.randn(400, 32, generator=g) * torch.logspace(0, -2, 32)  # very unequal input directions
    cov, w = x.T @ x / 400, torch.cat([w_k, w_v])
    errors, white_errors = [], []
    for r in (4, 8, 16, 24):
        down, uk, uv = low_rank_kv(w_k, w_v, r)
        errors.append(float((torch.cat([uk, uv]) @ down - w).norm()))
        down, uk, uv = low_rank_kv(w_k, w_v, r, whitening=cov)
        white = float(((torch.cat([uk, uv]) @ down - w) @ x.T).norm())
        plain = float(((torch.cat([uk, uv]) @ low_rank_kv(w_k, w_v, r)[0]) @ x.T - w @ x.T).norm())
        assert white <= plain + 1e-4  # best on the inputs it was fitted to
        white_errors.append(white)
    assert errors == sorted(errors, reverse=True) and white_errors == sorted(white_errors, reverse=True)


def test_low_rank_errors():
    w = torch.zeros(6, 10)
    with pytest.raises(ValueError, match=r"rank must be an int in \[1, 10\]"):
        low_rank_kv(w, w, 11)
    with pytest.raises(ValueError, match=r"rank must be an int in \[1, 10\]"):
        low_rank_kv(w, w, 0)
    with pytest.raises(ValueError, match="same shape"):
        low_rank_kv(w, torch.zeros(4, 10), 2)
    with pytest.raises(ValueError, match=r"\[10, 10\] covariance"):
        low_rank_kv(w, w, 2, whitening=torch.eye(9))


@torch.no_grad()
def test_full_rank_latent_model_reproduces_the_logits():
    model = tiny_llama()
    torch.testing.assert_close(to_latent_kv(model, FULL)(IDS), model(IDS), atol=1e-4, rtol=0)
    cov = input_covariances(model, CAL)
    torch.testing.assert_close(to_latent_kv(model, FULL, cov)(IDS), model(IDS), atol=1e-3, rtol=0)


@torch.no_grad()
def test_latent_attention_is_the_dense_low_rank_projection():
    """Attention through the latent equals ordinary attention with k_proj = W_uk W_down, v_proj = W_uv W_down."""
    model = tiny_llama()
    latent = to_latent_kv(model, 10)
    dense = tiny_llama()
    for a, b in zip(latent.layers, dense.layers):
        b.self_attn.k_proj.weight.copy_(a.self_attn.k_up.weight @ a.self_attn.kv_down.weight)
        b.self_attn.v_proj.weight.copy_(a.self_attn.v_up.weight @ a.self_attn.kv_down.weight)
    torch.testing.assert_close(latent(IDS), dense(IDS), atol=1e-5, rtol=0)
    assert not torch.allclose(latent(IDS), model(IDS), atol=1e-2)  # rank 10 of 48 does change the model


@torch.no_grad()
def test_cached_decoding_equals_the_uncached_forward():
    model = to_latent_kv(tiny_llama(), 12)
    full = model(IDS)
    cache = LatentCache(model.cfg, rank=12, batch=2, max_len=16)
    steps = [model(IDS[:, :5], cache=cache)]  # prefill
    for t in range(5, IDS.shape[1]):           # then one token at a time
        steps.append(model(IDS[:, t:t + 1], cache=cache))
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=0)
    assert cache.seen == IDS.shape[1] and cache.c.shape == (2, 2, 16, 12)  # the cache holds only latents
    assert cache.nbytes == 2 * 2 * 16 * 12 * 4


def test_latent_cache_errors():
    cache = LatentCache(TINY, rank=4, batch=1, max_len=3)
    with pytest.raises(ValueError, match="layer must lie in"):
        cache.update(2, torch.zeros(1, 1, 4))
    with pytest.raises(ValueError, match=r"\(batch, rank\) = \(1, 4\)"):
        cache.update(0, torch.zeros(1, 1, 5))
    with pytest.raises(ValueError, match="would need 4"):
        cache.update(0, torch.zeros(1, 4, 4))
    with pytest.raises(ValueError, match="rank must be an int >= 1"):
        LatentCache(TINY, rank=0)
    model = to_latent_kv(tiny_llama(), 4)
    from labkit.kvcache import KVCache
    with pytest.raises(TypeError, match="needs a LatentCache"):
        model(IDS, cache=KVCache(TINY, batch=2, max_len=20))


@torch.no_grad()
def test_input_covariances_first_layer():
    model = tiny_llama()
    x = model.layers[0].input_layernorm(model.embed_tokens(CAL)).reshape(-1, 48).double()
    cov = input_covariances(model, CAL)
    assert len(cov) == 2
    torch.testing.assert_close(cov[0], x.T @ x / x.shape[0], atol=1e-9, rtol=1e-6)
    with pytest.raises(ValueError, match="one matrix per layer"):
        to_latent_kv(model, 4, cov[:1])


@pytest.mark.slow  # loads SmolLM2
def test_smollm2_full_rank_latent_equals_smollm2():
    model = Llama.from_pretrained()
    ids = torch.tensor([[504, 3458, 282, 4649, 314, 253, 1345, 30]])
    with torch.no_grad():
        torch.testing.assert_close(to_latent_kv(model, 384)(ids), model(ids), atol=2e-3, rtol=0)


@torch.no_grad()
def test_factors_computed_once_give_the_same_latent_models():
    """A rank sweep reuses one SVD per layer (model_kv_factors): each rank equals computing it afresh."""
    from labkit.mla import model_kv_factors

    model = tiny_llama()
    cov = input_covariances(model, CAL)
    for covariances in (None, cov):
        factors = model_kv_factors(model, covariances)
        for r in (3, 10):
            torch.testing.assert_close(to_latent_kv(model, r, factors=factors)(IDS),
                                       to_latent_kv(model, r, covariances)(IDS), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="pass covariances or factors, not both"):
        to_latent_kv(model, 4, cov, factors=model_kv_factors(model, cov))
    with pytest.raises(ValueError, match="one KVFactors per layer"):
        to_latent_kv(model, 4, factors=model_kv_factors(model)[:1])


@torch.no_grad()
def test_calibration_with_fewer_positions_than_dimensions_is_refused():
    """26 positions cannot estimate a 48 x 48 covariance: its rank is at most 26."""
    model = tiny_llama()
    with pytest.raises(ValueError, match="fitted on 26 positions has rank at most 26: calibrate on at least 48"):
        input_covariances(model, IDS)
    with pytest.raises(ValueError, match=r"token-id tensor \[batch, T\]"):
        input_covariances(model, IDS[0])


@torch.no_grad()
def test_rank_deficient_whitening_warns_and_a_full_rank_one_does_not():
    g = torch.Generator().manual_seed(0)
    w_k, w_v = torch.randn(12, 40, generator=g), torch.randn(12, 40, generator=g)
    few = torch.randn(20, 40, generator=g)
    with pytest.warns(RuntimeWarning, match="numerical rank 20 < 40"):
        low_rank_kv(w_k, w_v, 8, whitening=few.T @ few / 20)
    many = torch.randn(400, 40, generator=g)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        low_rank_kv(w_k, w_v, 8, whitening=many.T @ many / 400)
    # enough positions, but one window repeated: every later layer sees only 13 distinct inputs
    model = tiny_llama()
    with pytest.warns(RuntimeWarning, match="numerical rank"):
        model_kv_factors(model, input_covariances(model, IDS[:1].repeat(8, 1)))


def test_a_rank_deficient_fit_is_worse_on_new_inputs():
    """Why the rule exists: whitening fitted on fewer inputs than dimensions ignores the unseen directions, so
    on fresh inputs from the same distribution it does worse than a fit on many inputs (and than plain SVD)."""
    g = torch.Generator().manual_seed(0)
    w_k, w_v = torch.randn(16, 32, generator=g), torch.randn(16, 32, generator=g)
    w = torch.cat([w_k, w_v])
    scale = torch.logspace(0, -1, 32)
    sample = lambda n: torch.randn(n, 32, generator=g) * scale  # noqa: E731
    few, many, fresh = sample(12), sample(640), sample(2000)

    def error_on_fresh(cov):
        down, uk, uv = low_rank_kv(w_k, w_v, 12, whitening=cov)
        return float(((torch.cat([uk, uv]) @ down - w) @ fresh.T).norm())

    with pytest.warns(RuntimeWarning, match="numerical rank 12 < 32"):
        bad = error_on_fresh(few.T @ few / 12)
    good = error_on_fresh(many.T @ many / 640)
    down, uk, uv = low_rank_kv(w_k, w_v, 12)
    plain = float(((torch.cat([uk, uv]) @ down - w) @ fresh.T).norm())
    assert good < plain < bad


@pytest.mark.slow  # loads SmolLM2
def test_kv_heads_saved_run_live_slice():
    """The first held-out window, re-scored now, gives chapter 6's saved losses (SmolLM2 and plain rank 64)."""
    from labkit.course import saved
    from labkit.gqa import heldout_windows, window_losses
    from labkit.models import load_smollm2

    run = saved.load("06-kv-heads")
    rec = run.record
    model = Llama.from_pretrained()
    tokenizer, _ = load_smollm2()
    window = heldout_windows(tokenizer, rec["eval_windows"], rec["length"])[:1]
    assert rec["calibration_positions"] >= 4 * rec["dim"]
    assert all(r == rec["dim"] for ranks in rec["numerical_rank"].values() for r in ranks)
    live = {"gqa": model, "plain/64": to_latent_kv(model, 64)}
    for key, m in live.items():
        assert abs(float(window_losses(m, window)[0]) - rec["losses"][key][0]) < 1e-3, key
