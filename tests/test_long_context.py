"""labkit.long_context: context-extension schedules equal transformers' own (linear, dynamic, yarn, longrope),
degenerate settings equal plain RoPE, ExtendedGPT equals TinyGPT when nothing is stretched, CoPE's positions,
and the saved run's live slice."""
import math

import numpy as np
import pytest
import torch

from labkit import long_context as lc
from labkit import rope
from labkit.course import saved
from labkit.transformer import GPTConfig, TinyGPT, train_gpt

pytestmark = pytest.mark.usefixtures("torch_one_thread")

SHAPES = [(24, 10000.0, 64, 4.0), (64, 10000.0, 2048, 4.0), (128, 500000.0, 8192, 8.0), (64, 100000.0, 2048, 2.5)]


def hf(kind, head_dim, theta, seq_len=None, **params):
    import transformers
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    transformers.logging.set_verbosity_error()  # its factor-vs-max_position warning is about real configs
    config = LlamaConfig(hidden_size=4 * head_dim, num_attention_heads=4, head_dim=head_dim,
                         max_position_embeddings=params.pop("max_position_embeddings", 256), rope_theta=theta,
                         rope_parameters={"rope_theta": theta, "rope_type": kind, **params})
    return ROPE_INIT_FUNCTIONS[kind](config, seq_len=seq_len)


@pytest.mark.parametrize("head_dim, theta, length, scale", SHAPES)
def test_pi_equals_transformers_linear(head_dim, theta, length, scale):
    ref, ref_factor = hf("linear", head_dim, theta, factor=scale)
    ours, factor = lc.pi_parameters(head_dim, theta, scale)
    assert torch.equal(ours, ref) and factor == ref_factor == 1.0


@pytest.mark.parametrize("head_dim, theta, length, scale", SHAPES)
def test_ntk_equals_transformers_dynamic(head_dim, theta, length, scale):
    # 'dynamic' recomputes the base for the current length: s = factor * seq_len / max_len - (factor - 1)
    for factor, seq_len in ((1.0, int(length * scale)), (2.0, length + 300)):
        ref, _ = hf("dynamic", head_dim, theta, seq_len=seq_len, factor=factor, max_position_embeddings=length)
        ours, _ = lc.ntk_parameters(head_dim, theta, factor * seq_len / length - (factor - 1))
        assert torch.equal(ours, ref)


@pytest.mark.parametrize("head_dim, theta, length, scale", SHAPES)
@pytest.mark.parametrize("betas", [(32.0, 1.0), (4.0, 0.25)])
def test_yarn_equals_transformers(head_dim, theta, length, scale, betas):
    ref, ref_factor = hf("yarn", head_dim, theta, factor=scale, original_max_position_embeddings=length,
                         beta_fast=betas[0], beta_slow=betas[1])
    ours, factor = lc.yarn_parameters(head_dim, theta, scale, length, *betas)
    assert torch.equal(ours, ref)
    assert factor == ref_factor == pytest.approx(0.1 * math.log(scale) + 1)


@pytest.mark.parametrize("head_dim, theta, length, scale", SHAPES)
def test_longrope_equals_transformers(head_dim, theta, length, scale):
    rng = np.random.default_rng(head_dim)
    short = np.sort(rng.uniform(1.0, 1.5, head_dim // 2)).tolist()
    long = np.sort(rng.uniform(1.0, 2 * scale, head_dim // 2)).tolist()
    params = dict(factor=scale, original_max_position_embeddings=length, short_factor=short, long_factor=long)
    for seq_len, factors in ((length, short), (int(length * scale), long)):
        ref, ref_factor = hf("longrope", head_dim, theta, seq_len=seq_len, **params)
        ours, factor = lc.longrope_parameters(head_dim, theta, factors, scale, length)
        assert torch.equal(ours, ref) and factor == pytest.approx(ref_factor)


def test_ntk_keeps_the_fastest_pair_and_divides_the_slowest_by_s():
    plain = rope.rope_inv_freq(32, 10000.0).double()
    ntk = lc.ntk_parameters(32, 10000.0, 8.0)[0].double()
    assert ntk[0] == plain[0] == 1.0
    assert ntk[-1].item() == pytest.approx(plain[-1].item() / 8, rel=1e-6)
    ratio = plain / ntk
    assert bool((ratio[1:] > ratio[:-1]).all())  # more interpolation the slower the pair


def test_yarn_keeps_fast_pairs_interpolates_slow_ones_and_matches_the_papers_ends():
    head_dim, theta, length, scale = 64, 10000.0, 2048, 4.0
    low, high = lc.yarn_ramp_bounds(head_dim, theta, length)
    plain = rope.rope_inv_freq(head_dim, theta)
    ours = lc.yarn_parameters(head_dim, theta, scale, length)[0]
    assert 0 < low < high < head_dim // 2
    assert torch.equal(ours[:low + 1], plain[:low + 1])
    torch.testing.assert_close(ours[high:], plain[high:] / scale, rtol=1e-6, atol=0)
    paper = rope.yarn_inv_freq(head_dim, theta, scale, length)  # ramp in turns, not in index: ends agree
    torch.testing.assert_close(ours[:low + 1], paper[:low + 1]) and torch.testing.assert_close(ours[high:], paper[high:])


def test_scale_one_is_plain_rope():
    plain = rope.rope_inv_freq(24, 10000.0)
    for params in (lc.pi_parameters(24, 1e4, 1.0), lc.ntk_parameters(24, 1e4, 1.0), lc.yarn_parameters(24, 1e4, 1.0, 64),
                   lc.longrope_parameters(24, 1e4, [1.0] * 12, 1.0, 64)):
        assert torch.equal(params[0], plain) and params[1] == 1.0


def tiny(vocab=11, context=16, seed=0):
    torch.manual_seed(seed)
    return TinyGPT(GPTConfig(vocab_size=vocab, context=context, d_model=16, n_layers=2, n_heads=2)).eval()


def test_extended_gpt_equals_tinygpt_where_nothing_is_stretched():
    model = tiny()
    idx = torch.randint(0, 11, (2, 40), generator=torch.Generator().manual_seed(1))
    plain = lc.ExtendedGPT.from_model(model, lc.Extension("none", 16))
    assert torch.equal(plain(idx), model(idx))
    for method in ("pi", "ntk", "yarn"):  # s = max(1, T / 16) = 1 for 16 tokens
        assert torch.equal(lc.ExtendedGPT.from_model(model, lc.Extension(method, 16))(idx[:, :16]), model(idx[:, :16]))
    # PI as divided speeds equals TinyGPT's PI as divided positions up to rounding
    torch.testing.assert_close(lc.ExtendedGPT.from_model(model, lc.Extension("pi", 16))(idx),
                               model(idx, rope_scaling="pi"), rtol=1e-4, atol=1e-5)
    stretched = lc.ExtendedGPT.from_model(model, lc.Extension("yarn", 16))(idx)
    assert not torch.allclose(stretched, model(idx))


def test_fixed_scale_applies_at_every_length_and_training_uses_the_schedule():
    model = tiny()
    ext = lc.Extension("pi", 16, scale=4.0)
    assert ext.scale_for(8) == ext.scale_for(100) == 4.0 and lc.Extension("pi", 16).scale_for(8) == 1.0
    ft = lc.ExtendedGPT.from_model(model, ext, context=64)
    idx = torch.randint(0, 11, (1, 16), generator=torch.Generator().manual_seed(2))
    assert ft.config.context == 64 and not torch.allclose(ft(idx), model(idx))
    ids = np.random.default_rng(0).integers(0, 11, 400)
    from labkit.transformer import TrainConfig
    losses = train_gpt(ft, ids, TrainConfig(steps=3, batch_size=2, seed=0))["loss"]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)


def test_perplexity_scores_the_same_tokens_at_every_length():
    model = lc.ExtendedGPT.from_model(tiny(), lc.Extension("none", 16))
    ids = np.random.default_rng(0).integers(0, 11, 64 + 1)
    # a uniform model would score every token ln(11): check through a zeroed output layer
    with torch.no_grad():
        model.lm_head.weight.zero_()
    for n in (16, 32, 64):
        assert lc.perplexity(model, ids, n) == pytest.approx(11.0)


def test_search_keeps_factors_monotone_and_never_worsens():
    model = tiny(context=8)
    ids = np.random.default_rng(1).integers(0, 11, 4 * 32 + 1)
    start = (1.0, 2.0, 4.0, 4.0)
    factors, history = lc.search_factors(model, ids, 32, start, rounds=1)
    assert len(factors) == 4 and factors[0] >= 1 and all(a <= b for a, b in zip(factors, factors[1:]))
    ppls = [p for p, _ in history]
    assert ppls == sorted(ppls, reverse=True) and history[-1][1] == factors
    with pytest.raises(ValueError, match="start must hold 4 factors"):
        lc.search_factors(model, ids, 32, (1.0,))


def test_errors():
    with pytest.raises(ValueError, match="method must be one of"):
        lc.Extension("alibi")
    with pytest.raises(ValueError, match="factors go with method='longrope'"):
        lc.Extension("longrope")
    with pytest.raises(ValueError, match="scale must be >= 1"):
        lc.pi_parameters(16, 1e4, 0.5)
    with pytest.raises(ValueError, match="8 positive numbers"):
        lc.longrope_parameters(16, 1e4, [1.0] * 7, 2.0, 64)
    with pytest.raises(ValueError, match="beta_slow < beta_fast"):
        lc.yarn_parameters(16, 1e4, 2.0, 64, beta_fast=1.0, beta_slow=2.0)
    with pytest.raises(ValueError, match="token ids only"):
        lc.ExtendedGPT.from_model(tiny(), lc.Extension())(torch.zeros(1, 4, dtype=torch.long), rope_scaling="pi")


# ---------------------------------------------------------------------------------------------------------- CoPE

def test_cope_positions_count_open_gates():
    t = 6
    ones = lc.cope_positions(torch.ones(t, t))
    i, j = torch.meshgrid(torch.arange(t), torch.arange(t), indexing="ij")
    assert torch.equal(ones, torch.where(j <= i, (i - j + 1).float(), torch.zeros(())))  # all open: token distance
    boundary = torch.tensor([0.0, 0, 1, 0, 0, 1])  # gates open on "word ends" only, the same for every query
    counted = lc.cope_positions(boundary.expand(t, t).clone())
    assert counted[5].tolist() == [2, 2, 2, 1, 1, 1] and counted[4].tolist() == [1, 1, 1, 0, 0, 0]
    with pytest.raises(ValueError, match=r"\[\.\.\., T, T\]"):
        lc.cope_positions(torch.ones(3, 4))


def test_cope_logits_equal_a_plain_loop():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 5, 4, generator=g, dtype=torch.float64), torch.randn(2, 5, 4, generator=g, dtype=torch.float64)
    emb = torch.randn(4, 4, generator=g, dtype=torch.float64)  # positions beyond 3 clamp to 3
    out = lc.cope_logits(q, k, emb)
    for b in range(2):
        for i in range(5):
            for j in range(5):
                if j > i:
                    assert out[b, i, j] == float("-inf")
                    continue
                p = min(sum(torch.sigmoid(q[b, i] @ k[b, t]) for t in range(j, i + 1)).item(), 3.0)
                lo, hi = math.floor(p), math.ceil(p)
                e = (p - lo) * emb[hi] + (1 - (p - lo)) * emb[lo]
                assert out[b, i, j].item() == pytest.approx((q[b, i] @ (k[b, j] + e)).item(), rel=1e-12)


# ------------------------------------------------------------------------------------------------- saved run

def test_saved_run_live_slice_reproduces_the_record():
    run = saved.load("03-long-context")
    vocab, train_ids, heldout = lc.data()
    threads = torch.get_num_threads()
    torch.set_num_threads(run.record["torch_threads"])
    try:
        base = lc.base_model(len(vocab))
        live = train_gpt(base, train_ids, lc.BASE_TRAIN, stop_after=10)["loss"]
        assert max(abs(a - b) for a, b in zip(live, run.record["loss"])) < 1e-3
        base.load_state_dict(run.state_dict("gpt"))
        ft = lc.finetuned_model(base, "yarn")
        live = train_gpt(ft, train_ids, lc.FINETUNE, stop_after=5)["loss"]
        assert max(abs(a - b) for a, b in zip(live, run.record["finetune_loss"]["yarn"])) < 1e-3
        base.eval()
        assert lc.perplexity(lc.ExtendedGPT.from_model(base, lc.Extension("yarn", lc.TRAIN_LEN)), heldout, 256) == \
            pytest.approx(run.record["zero_shot_ppl"]["yarn"][2], abs=1e-3)
    finally:
        torch.set_num_threads(threads)
