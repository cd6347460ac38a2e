"""labkit.transformer: RMSNorm, SwiGLU, the pre-norm block and TinyGPT agree with transformers' Llama; training
and scoring are seeded and score every token once."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from labkit.attention import causal_mask
from labkit.rope import rope_tables
from labkit.transformer import (Block, GPTConfig, RMSNorm, SwiGLU, TinyGPT, TrainConfig, generate, loss_by_position,
                                lr_at, swiglu_hidden, token_log_probs, train_gpt)


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def rand(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def llama_config(**kw):
    from transformers import LlamaConfig
    base = dict(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=64, rope_theta=10000.0, rms_norm_eps=1e-6,
                tie_word_embeddings=True)
    config = LlamaConfig(**{**base, **kw})
    config._attn_implementation = "eager"
    return config


def additive_causal(t):
    return torch.zeros(t, t).masked_fill(~causal_mask(t, t), float("-inf"))[None, None]


# ------------------------------------------------------------------------------------------------ layers

def test_rmsnorm_equals_llama():
    from transformers.models.llama.modeling_llama import LlamaRMSNorm
    hf, ours = LlamaRMSNorm(16, eps=1e-5), RMSNorm(16, eps=1e-5)
    with torch.no_grad():
        hf.weight.copy_(rand(16, seed=1))
    ours.load_state_dict(hf.state_dict())
    for dtype in (torch.float32, torch.bfloat16):
        x = (rand(3, 5, 16, seed=2) * 40).to(dtype)
        hf.to(dtype), ours.to(dtype)
        assert torch.equal(ours(x), hf(x)) and ours(x).dtype == dtype


def test_rmsnorm_normalises_in_float32():
    x = rand(4, 64, seed=3) * 1000
    out = RMSNorm(64)(x)
    torch.testing.assert_close(out.pow(2).mean(-1), torch.ones(4), rtol=1e-4, atol=0)
    # a half-precision input whose squares overflow float16 still normalises, because the maths runs in float32
    big = torch.full((1, 8), 300.0, dtype=torch.float16)
    assert torch.isfinite(RMSNorm(8).half()(big)).all()
    assert "16, eps=1e-06" in repr(RMSNorm(16))


def test_swiglu_equals_llama_mlp():
    from transformers.models.llama.modeling_llama import LlamaMLP
    torch.manual_seed(0)
    hf = LlamaMLP(llama_config())
    ours = SwiGLU(32, 64)
    ours.load_state_dict(hf.state_dict())  # gate_proj, up_proj, down_proj
    x = rand(2, 7, 32)
    assert torch.equal(ours(x), hf(x))


def test_swiglu_hidden_matches_llama_rule():
    assert swiglu_hidden(4096, multiple_of=256) == 11008  # Llama-7B's feed-forward width
    assert swiglu_hidden(128) == 352 and swiglu_hidden(96) == 256


def test_block_equals_llama_decoder_layer():
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding
    config = llama_config()
    torch.manual_seed(0)
    hf = LlamaDecoderLayer(config, layer_idx=0).eval()
    ours = Block(32, 4, 2, ffn_hidden=64)
    ours.load_state_dict(hf.state_dict())  # every parameter name matches
    x = rand(2, 9, 32)
    cos_sin = LlamaRotaryEmbedding(config)(x, torch.arange(9)[None].expand(2, 9))
    expected = hf(x, attention_mask=additive_causal(9), position_embeddings=cos_sin)
    cos, sin = rope_tables(9, 8)
    torch.testing.assert_close(ours(x, cos, sin), expected, rtol=1e-5, atol=1e-5)
    out, w = ours(x, cos, sin, return_weights=True)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    assert w.shape == (2, 4, 9, 9)


# ------------------------------------------------------------------------------------------------ TinyGPT

def small_gpt(seed=0, **kw):
    torch.manual_seed(seed)
    return TinyGPT(GPTConfig(**{**dict(vocab_size=40, context=16, d_model=32, n_layers=2, n_heads=4,
                                        n_kv_heads=2, ffn_hidden=64), **kw}))


def test_tiny_gpt_is_a_tiny_llama():
    from transformers import LlamaForCausalLM
    ours = small_gpt().eval()
    hf = LlamaForCausalLM(llama_config()).eval()
    missing, unexpected = hf.load_state_dict({"model." + k if not k.startswith("lm_head") else k: v
                                              for k, v in ours.state_dict().items()}, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}  # tied: shared with the embedding
    hf.tie_weights()
    idx = torch.randint(0, 40, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(ours(idx), hf(idx).logits, rtol=1e-4, atol=1e-5)


def test_tiny_gpt_is_causal_and_returns_attention():
    model = small_gpt().eval()
    idx = torch.randint(0, 40, (2, 12), generator=torch.Generator().manual_seed(1))
    changed = idx.clone()
    changed[:, 7:] = (changed[:, 7:] + 1) % 40
    with torch.no_grad():
        a, b = model(idx), model(changed)
        torch.testing.assert_close(a[:, :7], b[:, :7], rtol=0, atol=0)  # the future never leaks back
        assert not torch.allclose(a[:, 7:], b[:, 7:])
        logits, attention = model(idx, return_attention=True)
    torch.testing.assert_close(logits, a)
    assert len(attention) == 2 and attention[0].shape == (2, 4, 12, 12)
    torch.testing.assert_close(attention[1].sum(-1), torch.ones(2, 4, 12))


def test_tiny_gpt_parameters_and_tying():
    model = small_gpt()
    assert model.lm_head.weight is model.embed_tokens.weight
    per_layer = 2 * 32 + 32 * 32 + 2 * 32 * 16 + 32 * 32 + 3 * 32 * 64  # norms, q, k+v (2 kv heads), o, mlp
    assert model.num_parameters() == 40 * 32 + 2 * per_layer + 32
    untied = small_gpt(tie_embeddings=False)
    assert untied.num_parameters() == model.num_parameters() + 40 * 32


def test_rope_scaling_only_matters_beyond_the_training_length():
    model = small_gpt().eval()
    idx = torch.randint(0, 40, (1, 40), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        for scaling in ("pi", "yarn"):
            assert torch.equal(model(idx[:, :16], rope_scaling=scaling), model(idx[:, :16]))
            assert not torch.allclose(model(idx, rope_scaling=scaling), model(idx))


def test_tiny_gpt_errors():
    with pytest.raises(ValueError, match="heads of even size"):
        GPTConfig(vocab_size=10, d_model=30, n_heads=4)
    with pytest.raises(ValueError, match=r"multiple of n_kv_heads \(3\)"):
        GPTConfig(vocab_size=10, d_model=32, n_heads=4, n_kv_heads=3)
    with pytest.raises(ValueError, match="vocab_size must be an int"):
        GPTConfig(vocab_size=0)
    with pytest.raises(TypeError, match="GPTConfig"):
        TinyGPT({"vocab_size": 10})
    model = small_gpt()
    with pytest.raises(ValueError, match=r"integer token ids \[B, T\]"):
        model(torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"integer token ids \[B, T\]"):
        model(torch.zeros(1, 5))
    with pytest.raises(ValueError, match="rope_scaling must be one of"):
        model(torch.zeros(1, 5, dtype=torch.long), rope_scaling="ntk")


# ------------------------------------------------------------------------------------------------ training

def test_lr_schedule():
    cfg = TrainConfig(steps=100, lr=1e-2, warmup=10)
    assert lr_at(0, cfg) == pytest.approx(1e-3) and lr_at(9, cfg) == pytest.approx(1e-2)
    assert lr_at(10, cfg) == pytest.approx(1e-2) and lr_at(100, cfg) == pytest.approx(1e-3)
    assert all(lr_at(s, cfg) >= lr_at(s + 1, cfg) for s in range(10, 100))
    assert lr_at(100, TrainConfig(steps=100, lr=1e-2, warmup=10, min_lr_ratio=0.0)) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="min_lr_ratio"):
        TrainConfig(min_lr_ratio=2.0)
    with pytest.raises(ValueError, match="steps must be"):
        TrainConfig(steps=0)


def test_training_learns_a_pattern_and_is_seeded():
    ids = np.tile(np.arange(10), 60)  # 0 1 2 ... 9 0 1 2 ...: perfectly predictable after one token
    lines = []
    a = small_gpt()
    history = train_gpt(a, ids, TrainConfig(steps=60, batch_size=8, lr=1e-2, warmup=5), log_every=30,
                        log=lines.append)
    assert len(history["loss"]) == 60 and history["loss"][-1] < 0.2 < history["loss"][0]
    assert len(lines) == 2 and lines[0].startswith("step    30  train loss")
    b = small_gpt()
    assert train_gpt(b, ids, TrainConfig(steps=60, batch_size=8, lr=1e-2, warmup=5))["loss"] == history["loss"]
    assert not a.training
    assert generate(a, [3, 4], 8, temperature=0.5) == [5, 6, 7, 8, 9, 0, 1, 2]


def test_training_errors():
    with pytest.raises(TypeError, match="TinyGPT"):
        train_gpt(torch.nn.Linear(2, 2), np.arange(100))
    with pytest.raises(ValueError, match=r"must lie in \[0, 40\)"):
        train_gpt(small_gpt(), np.arange(100))
    with pytest.raises(ValueError, match="more than context"):
        train_gpt(small_gpt(), np.arange(10))
    with pytest.raises(ValueError, match="1-D array of integer"):
        train_gpt(small_gpt(), np.zeros(100))


# ------------------------------------------------------------------------------------------------ scoring

def test_token_log_probs_short_sequence_is_one_forward():
    model = small_gpt().eval()
    ids = np.random.default_rng(0).integers(0, 40, 12)
    lp = token_log_probs(model, ids)
    x = torch.from_numpy(ids)[None]
    with torch.no_grad():
        ref = torch.log_softmax(model(x[:, :-1]).double(), -1)[0].gather(-1, x[0, 1:, None])[:, 0]
    assert lp.shape == (11,) and lp.dtype == np.float64
    np.testing.assert_allclose(lp, ref.numpy(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("context, stride, n", [(8, 4, 40), (8, 1, 20), (8, 8, 30), (5, 3, 6), (16, 5, 45)])
def test_token_log_probs_every_token_once_with_enough_history(context, stride, n):
    model = small_gpt(context=16).eval()
    ids = np.random.default_rng(1).integers(0, 40, n)
    lp = token_log_probs(model, ids, context=context, stride=stride, batch_size=3)
    assert lp.shape == (n - 1,) and np.isfinite(lp).all()
    x = torch.from_numpy(ids)
    for target in range(1, n):
        # the log-prob equals a forward pass over some window ending just before the target, with at least
        # context - stride tokens of history (all of it for targets inside the first window)
        need = min(target, context - stride if target > context else target)
        candidates = []
        with torch.no_grad():
            for h in range(min(context, target), max(need, 1) - 1, -1):
                window = x[target - h:target][None]
                candidates.append(float(torch.log_softmax(model(window)[0, -1].double(), -1)[ids[target]]))
                if abs(candidates[-1] - lp[target - 1]) < 1e-5:
                    break
            else:
                raise AssertionError(f"target {target}: {lp[target - 1]} is none of {candidates}")


def test_token_log_probs_errors():
    model = small_gpt()
    with pytest.raises(ValueError, match="stride"):
        token_log_probs(model, np.arange(30), context=8, stride=9)
    with pytest.raises(ValueError, match="at least 2 tokens"):
        token_log_probs(model, np.array([1]))
    with pytest.raises(TypeError, match="TinyGPT"):
        token_log_probs(None, np.arange(5))


def test_loss_by_position():
    model = small_gpt().eval()
    ids = np.random.default_rng(2).integers(0, 40, 400)
    plain = loss_by_position(model, ids, seq_len=32, n_windows=5, batch_size=2)
    assert plain.shape == (32,) and np.isfinite(plain).all()
    # within the training length the scalings change nothing
    np.testing.assert_array_equal(loss_by_position(model, ids, 16, 5), loss_by_position(model, ids, 16, 5, "pi"))
    # an untrained model is near-uniform: about log(40) nats everywhere
    assert abs(plain.mean() - math.log(40)) < 0.5
    with pytest.raises(ValueError, match="seq_len"):
        loss_by_position(model, ids[:20], seq_len=32, n_windows=2)
    with pytest.raises(ValueError, match="start"):
        loss_by_position(model, ids, seq_len=8, start=-1)


def test_loss_by_position_consecutive_windows_score_each_token_once():
    model = small_gpt().eval()
    ids = np.random.default_rng(3).integers(0, 40, 75)
    got = loss_by_position(model, ids, seq_len=8, start=5, batch_size=4)  # windows at 5, 13, ..., 61
    x = torch.from_numpy(ids)
    rows = []
    with torch.no_grad():
        for s in range(5, 75 - 8, 8):
            logits = model(x[s:s + 8][None])[0].double()
            rows.append(F.cross_entropy(logits, x[s + 1:s + 9], reduction="none"))
    assert len(rows) == 8
    np.testing.assert_allclose(got, torch.stack(rows).mean(0).numpy(), rtol=1e-6)


def test_generate_is_seeded_and_in_range():
    model = small_gpt()
    a = generate(model, [1, 2, 3], 20, seed=5)
    assert a == generate(model, [1, 2, 3], 20, seed=5) and len(a) == 20 and all(0 <= t < 40 for t in a)
    assert a != generate(model, [1, 2, 3], 20, seed=6)
    with pytest.raises(ValueError, match="at least one token"):
        generate(model, [], 3)
    with pytest.raises(ValueError, match="temperature"):
        generate(model, [1], 3, temperature=0)
