"""labkit.compress.int8_decode: the int8 kernel equals the dequantized product (and torch's own weight-only int8
product), the int8 decode step equals the float32 model with dequantized weights to float32 summation error, and
differs from the original model by the quantization error only (bounds stated in each test)."""
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from labkit.compress.int8_decode import (Int8DecodeStep, Int8Matrix, dequantized_model, generate, matvec_int8,
                                         token_times)
from labkit.compress.quantize import quantize
from labkit.kvcache import KVCache
from labkit.kvcache import generate as generate_fp32
from labkit.llama import Llama, LlamaConfig
from labkit.models import load_smollm2

pytestmark = pytest.mark.usefixtures("torch_one_thread")

TINY = LlamaConfig(vocab_size=97, dim=48, n_layers=3, n_heads=6, n_kv_heads=2, hidden_dim=64, max_seq_len=64)


def tiny_model(cfg: LlamaConfig = TINY, seed: int = 0) -> Llama:
    torch.manual_seed(seed)
    model = Llama(cfg).eval()
    with torch.no_grad():  # scaled up as in test_kvcache: logits of size ~10-100, far from ties
        for p in model.parameters():
            p.mul_(3.0) if p.ndim == 2 else p.add_(0.1 * torch.randn_like(p))
    return model


# ------------------------------------------------------------------------------------------------ the kernel

@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 3), n_out=st.integers(1, 40), n_in=st.integers(1, 70), seed=st.integers(0, 99))
def test_matvec_int8_equals_the_dequantized_linear(rows, n_out, n_in, seed):
    """Only the order of the float32 sum differs from F.linear with the dequantized matrix: equal to 1e-5."""
    g = torch.Generator().manual_seed(seed)
    x, w = torch.randn(rows, n_in, generator=g), torch.randn(n_out, n_in, generator=g)
    q = quantize(w, 8, "channel")
    torch.testing.assert_close(matvec_int8(x, q.codes, q.scale), F.linear(x, q.dequantize()), atol=1e-5, rtol=1e-5)
    # scale given per row as [out] (torch's convention) or [out, 1] (quantize's): the same product
    torch.testing.assert_close(matvec_int8(x, q.codes, q.scale[:, 0]), matvec_int8(x, q.codes, q.scale))


def test_matvec_int8_equals_torch_weight_int8pack_mm():
    """torch's CPU weight-only int8 product (the oracle) takes the same codes and per-row scales."""
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(3, 576, generator=g), torch.randn(1536, 576, generator=g)
    q = quantize(w, 8, "channel")
    expected = torch._weight_int8pack_mm(x, q.codes, q.scale[:, 0])
    torch.testing.assert_close(matvec_int8(x, q.codes, q.scale), expected, atol=1e-4, rtol=1e-5)


def test_matvec_int8_error_against_float32_is_the_rounding():
    """Against the unrounded weights the error is the quantization's: each weight moves by at most half a step
    (scale / 2), so |y - y_int8| <= sum_j |x_j| * scale / 2 per row, a bound the product must respect and,
    for random signs, stay far below; and it is not zero (the test would pass vacuously on float32 weights)."""
    g = torch.Generator().manual_seed(1)
    x, w = torch.randn(1, 576, generator=g), torch.randn(300, 576, generator=g)
    q = quantize(w, 8, "channel")
    err = (matvec_int8(x, q.codes, q.scale) - F.linear(x, w)).abs()[0]
    bound = x.abs().sum() * q.scale[:, 0] / 2
    assert (err <= bound + 1e-5).all() and err.max() > 1e-4
    assert (err / bound).max() < 0.25


def test_matvec_int8_errors():
    codes, scale, x = torch.zeros(4, 3, dtype=torch.int8), torch.ones(4), torch.zeros(2, 3)
    with pytest.raises(TypeError, match=r"codes must be an int8 matrix \[out, in\], got torch.float32"):
        matvec_int8(x, codes.float(), scale)
    with pytest.raises(TypeError, match="codes must be an int8 matrix"):
        matvec_int8(x, torch.zeros(4, 3, 1, dtype=torch.int8), scale)
    with pytest.raises(TypeError, match="must be torch tensors"):
        matvec_int8(x, codes.numpy(), scale)
    with pytest.raises(ValueError, match=r"scale must be float32, one per row of codes: \[4\] or \[4, 1\]"):
        matvec_int8(x, codes, torch.ones(3))
    with pytest.raises(ValueError, match="scale must be float32"):
        matvec_int8(x, codes, torch.ones(4, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"x must be float32 \[B, 3\].*got torch.float32 \(2, 5\)"):
        matvec_int8(torch.zeros(2, 5), codes, scale)
    with pytest.raises(ValueError, match=r"x must be float32 \[B, 3\].*got torch.float64"):
        matvec_int8(torch.zeros(2, 3, dtype=torch.float64), codes, scale)
    with pytest.raises(ValueError, match="x must be float32"):
        matvec_int8(torch.zeros(3), codes, scale)


def test_int8_matrix_accepts_only_symmetric_per_channel_8_bit():
    w = torch.randn(8, 16, generator=torch.Generator().manual_seed(2))
    m = Int8Matrix.from_quantized(quantize(w, 8, "channel"))
    assert m.codes.dtype.name == "int8" and m.scale.shape == (8,) and m.nbytes == 8 * 16 + 4 * 8
    for q in (quantize(w, 8, "tensor"), quantize(w, 8, "group", group_size=4), quantize(w, 8, symmetric=False),
              quantize(w, 4, "channel")):
        with pytest.raises(ValueError, match=r"needs quantize\(w, 8, 'channel'\)"):
            Int8Matrix.from_quantized(q)
    with pytest.raises(TypeError, match="expected a labkit.compress.quantize.Quantized, got Tensor"):
        Int8Matrix.from_quantized(w)


# ------------------------------------------------------------------------------------------------ the decode step

@torch.no_grad()
@pytest.mark.parametrize("tied", [True, False])
def test_int8_step_equals_the_dequantized_model(tied):
    """Step by step from an empty cache, the int8 step's logits equal Llama.forward of the model with the
    dequantized weights to 1e-4 (logits of size ~5-100; float32 sums grouped differently), and so do the keys
    and values it caches; against the original model they differ by far more (the rounding itself)."""
    model = tiny_model(replace(TINY, tie_embeddings=tied))
    reference = dequantized_model(model)
    ids = torch.randint(0, 97, (2, 10), generator=torch.Generator().manual_seed(3))
    step, cache, ref_cache = Int8DecodeStep(model), KVCache(model.cfg, 2, 16), KVCache(model.cfg, 2, 16)
    got = torch.stack([step(ids[:, t], cache) for t in range(ids.shape[1])], dim=1)
    expected = reference(ids)
    reference(ids, cache=ref_cache)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(cache.k, ref_cache.k, atol=1e-5, rtol=0)
    torch.testing.assert_close(cache.v, ref_cache.v, atol=1e-5, rtol=0)
    assert expected.abs().max() > 5 and (got - model(ids)).abs().max() > 1e-2


@torch.no_grad()
def test_generate_and_prefill_equal_the_dequantized_model():
    model = tiny_model()
    ids = torch.randint(0, 97, (3, 5), generator=torch.Generator().manual_seed(4))
    step = Int8DecodeStep(model)
    expected = generate_fp32(dequantized_model(model), ids, 12)
    assert torch.equal(generate(step, ids, 12), expected)
    out, seconds = token_times(step, ids, 12)
    assert torch.equal(out, expected) and len(seconds) == 12 and seconds == sorted(seconds)
    cache = KVCache(TINY, 3, 8)
    torch.testing.assert_close(step.prefill(ids, cache), dequantized_model(model)(ids)[:, -1], atol=1e-4, rtol=0)
    assert cache.seen == 5


def test_dequantized_model_leaves_the_original_alone():
    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    copy = dequantized_model(model)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    w = model.layers[1].mlp.down_proj.weight
    assert torch.equal(copy.layers[1].mlp.down_proj.weight, quantize(w, 8, "channel").dequantize())
    assert torch.equal(copy.norm.weight, model.norm.weight)  # norms are not quantized
    assert not torch.equal(copy.embed_tokens.weight, model.embed_tokens.weight)


def test_nbytes_is_a_byte_per_weight_plus_scales_and_norms():
    """Counted from the config: one byte per matrix weight, 4 bytes per row's scale, norms in float32; the tied
    head is read once per step and counted once (the embedding lookup reads one row, ignored)."""
    for tied in (True, False):
        cfg = replace(TINY, tie_embeddings=tied)
        d, h, kv = cfg.dim, cfg.hidden_dim, cfg.n_kv_heads * cfg.head_dim
        rows_in = [(d, d), (kv, d), (kv, d), (d, d), (h, d), (h, d), (d, h)]  # q k v o gate up down: [out, in]
        per_block = sum(o * i + 4 * o for o, i in rows_in) + 2 * 4 * d
        head = cfg.vocab_size * d + 4 * cfg.vocab_size
        assert Int8DecodeStep(tiny_model(cfg)).nbytes == cfg.n_layers * per_block + head + 4 * d


def test_int8_step_errors():
    model, ids = tiny_model(), torch.zeros(1, 3, dtype=torch.long)
    step = Int8DecodeStep(model)
    with pytest.raises(TypeError, match="labkit's Llama, got Linear"):
        Int8DecodeStep(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="labkit's Llama, got Linear"):
        dequantized_model(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match=r"tokens must be an integer tensor \[batch\]"):
        step(ids, KVCache(TINY, 1, 10))
    with pytest.raises(ValueError, match=r"tokens must be an integer tensor \[batch\]"):
        step(torch.zeros(1), KVCache(TINY, 1, 10))
    with pytest.raises(ValueError, match="float32 KVCache for this model's config and a batch of 2"):
        step(torch.zeros(2, dtype=torch.long), KVCache(TINY, 1, 10))
    with pytest.raises(ValueError, match="for this model's config"):
        step(torch.zeros(1, dtype=torch.long), KVCache(replace(TINY, n_layers=2), 1, 10))
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 97\), got values in \[97, 97\]"):
        step(torch.tensor([97]), KVCache(TINY, 1, 10))
    full = KVCache(TINY, 1, 3)
    full.advance(3)
    with pytest.raises(ValueError, match="holds 3 tokens and is full"):
        step(torch.zeros(1, dtype=torch.long), full)
    with pytest.raises(ValueError, match=r"ids must be an integer tensor \[batch, time\] with time >= 1"):
        generate(step, torch.zeros(3, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="max_new_tokens must be an int >= 1, got 0"):
        generate(step, ids, 0)
    with pytest.raises(TypeError, match="step must be an Int8DecodeStep, got Llama"):
        token_times(model, ids, 2)


# ------------------------------------------------------------------------------------------------ SmolLM2

@torch.no_grad()
def test_smollm2_int8_step_against_fp32():
    """On SmolLM2-135M: against the model with dequantized weights, the int8 step's logits (size ~30) agree to
    1e-3 (measured ~1e-4) and it generates the same 16 greedy tokens; against the original fp32 model the
    logits move by the rounding, measured ~1.5 at most on this prompt (bound 4), a small fraction of the
    logits' spread, and the top token is the same at most positions of the prompt."""
    tokenizer, _ = load_smollm2()
    model = Llama.from_pretrained()
    reference = dequantized_model(model)
    ids = tokenizer("Once upon a time, in a small village by the sea,", return_tensors="pt").input_ids
    step, cache = Int8DecodeStep(model), KVCache(model.cfg, 1, ids.shape[1])
    got = torch.stack([step(ids[:, t], cache) for t in range(ids.shape[1])], dim=1)
    fp32, expected = model(ids), reference(ids)
    assert (got - expected).abs().max() < 1e-3
    assert 1e-2 < (got - fp32).abs().max() < 4.0 and fp32.std() > 2.0
    assert (got.argmax(-1) == fp32.argmax(-1)).float().mean() >= 0.75
    assert torch.equal(generate(step, ids, 16), generate_fp32(reference, ids, 16, fast=True))
    assert step.nbytes < 0.26 * sum(p.nbytes for p in model.parameters())
