"""labkit.compress.sparse_training: the sparse feed-forward layer against the plain one (keep 1 changes nothing,
top-k keeps exactly k units per token, channel omission equals the dense layer restricted to its channels),
the training loop against chapter 3's train_gpt, the ladder schedule, and the errors at the edge."""
import pytest
import torch
from torch import nn

from labkit import transformer
from labkit.compress import sparse_training as st

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def swiglu(dim=16, hidden=32, seed=0) -> transformer.SwiGLU:
    torch.manual_seed(seed)
    return transformer.SwiGLU(dim, hidden)


def tiny_gpt(seed=0) -> transformer.TinyGPT:
    torch.manual_seed(seed)
    return transformer.TinyGPT(transformer.GPTConfig(vocab_size=11, context=8, d_model=16, n_layers=2, n_heads=2))


@pytest.mark.parametrize("mode", st.MODES)
def test_keeping_everything_is_the_plain_layer(mode):
    mlp = swiglu()
    x = torch.randn(3, 5, 16)
    for training in (True, False):
        layer = st.SparseSwiGLU(mlp, mode, keep=1.0).train(training)
        assert torch.equal(layer(x), mlp(x))


def test_topk_keeps_exactly_k_units_per_token_the_largest():
    h = torch.randn(4, 7, 32)
    mask = st.topk_mask(h, 5)
    assert (mask.sum(-1) == 5).all()
    kept_min = torch.where(mask, h.abs(), torch.inf).amin(-1)
    dropped_max = torch.where(mask, -torch.inf, h.abs()).amax(-1)
    assert (kept_min > dropped_max).all()


def test_topk_layer_is_the_masked_dense_product():
    mlp = swiglu()
    x = torch.randn(2, 6, 16)
    layer = st.SparseSwiGLU(mlp, "topk", keep=0.25)
    h = nn.functional.silu(mlp.gate_proj(x)) * mlp.up_proj(x)
    expected = mlp.down_proj(h * st.topk_mask(h, 8))
    torch.testing.assert_close(layer(x), expected)


def test_channel_omission_is_the_dense_layer_restricted_to_its_channels():
    mlp = swiglu()
    x = torch.randn(2, 6, 16)
    layer = st.SparseSwiGLU(mlp, "channels", keep=0.25).train()
    layer.importance.copy_(torch.arange(32.0))  # channels 24..31 are the most important
    out = layer(x)
    # the same layer with the other channels' weights zeroed, computed whole
    zeroed = swiglu()
    with torch.no_grad():
        zeroed.load_state_dict(mlp.state_dict())
        zeroed.gate_proj.weight[:24] = 0
        zeroed.up_proj.weight[:24] = 0
        zeroed.down_proj.weight[:, :24] = 0
    torch.testing.assert_close(out, zeroed(x))
    h = nn.functional.silu(mlp.gate_proj(x)) * mlp.up_proj(x)
    torch.testing.assert_close(layer.importance[24:], h[..., 24:].abs().reshape(-1, 8).mean(0))
    out.sum().backward()  # omitted channels get no gradient: their rows and columns took no part
    assert (mlp.gate_proj.weight.grad[:24] == 0).all() and (mlp.down_proj.weight.grad[:, :24] == 0).all()
    assert (mlp.gate_proj.weight.grad[24:] != 0).any()
    layer.eval()  # the trained layer is used whole
    assert torch.equal(layer(x), mlp(x))


def test_untried_channels_are_tried_first():
    layer = st.SparseSwiGLU(swiglu(), "channels", keep=0.25).train()
    x = torch.randn(5, 16)
    seen = set()
    for _ in range(4):  # 8 channels a step: after 4 steps all 32 have run once
        seen |= set(torch.nonzero(torch.isinf(layer.importance)).flatten().tolist())
        layer(x)
    assert torch.isfinite(layer.importance).all() and len(seen) == 32


def test_dense_training_equals_chapter3s_train_gpt():
    ids = torch.randint(0, 11, (400,), generator=torch.Generator().manual_seed(0)).numpy()
    cfg = transformer.TrainConfig(steps=6, batch_size=4, warmup=2, seed=3)
    ref = transformer.train_gpt(tiny_gpt(), ids, cfg)
    ours = st.train_sparse(st.sparsify_ffn(tiny_gpt(), "channels", 1.0), ids, cfg)
    assert ours["loss"] == ref["loss"]
    sparse = st.train_sparse(st.sparsify_ffn(tiny_gpt(), "channels", 0.25), ids, cfg,
                             schedule=lambda s: st.keep_schedule(s, 6, 0.25))
    assert sparse["loss"][0] != ref["loss"][0] and sparse["keep"] == [0.25, 0.25, 0.25, 0.5, 0.75, 1.0]
    assert len(sparse["seconds"]) == 6


def test_sparsify_shares_weights_and_can_change_mode():
    gpt = tiny_gpt()
    w = gpt.layers[0].mlp.up_proj.weight
    st.sparsify_ffn(gpt, "topk", 0.5)
    assert gpt.layers[0].mlp.up_proj.weight is w
    st.sparsify_ffn(gpt, "channels", 0.25)
    assert gpt.layers[0].mlp.up_proj.weight is w and gpt.layers[0].mlp.mode == "channels"
    assert set(gpt.state_dict()) == set(tiny_gpt().state_dict())  # same names: saved weights load either way


def test_keep_schedule_is_a_ladder_to_dense():
    keeps = [st.keep_schedule(s, 12, 0.25) for s in range(12)]
    assert keeps == [0.25] * 6 + [0.5] * 2 + [0.75] * 2 + [1.0] * 2


def test_timing_helpers_time_every_mode():  # what they return, not how fast: timings are never tested
    batch = torch.randint(0, 11, (2, 9), generator=torch.Generator().manual_seed(0))
    for seconds in (st.train_step_seconds(tiny_gpt, batch, 0.5, repeats=2), st.ffn_step_seconds(8, 16, 4, 0.5, 2)):
        assert set(seconds) == set(st.MODES) and all(s > 0 for s in seconds.values())


def test_clear_errors():
    with pytest.raises(ValueError, match=r"keep must be a number in \(0, 1\]"):
        st.SparseSwiGLU(swiglu(), "topk", keep=0.0)
    with pytest.raises(ValueError, match="mode must be one of"):
        st.SparseSwiGLU(swiglu(), "random", keep=0.5)
    with pytest.raises(TypeError, match="mlp must be labkit.transformer.SwiGLU"):
        st.SparseSwiGLU(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="k must be an int in 1..32"):
        st.topk_mask(torch.randn(2, 32), 33)
    with pytest.raises(TypeError, match="model must be a TinyGPT"):
        st.sparsify_ffn(nn.Linear(2, 2), "topk", 0.5)
    with pytest.raises(ValueError, match="train_ids must be a 1-D array"):
        st.train_sparse(tiny_gpt(), [1, 2, 3])
    with pytest.raises(ValueError, match="sparse_share"):
        st.keep_schedule(0, 10, 0.5, sparse_share=1.5)


def test_saved_run_first_steps_reproduce():
    """The saved run's record (results/09-sparse-training.json) against its first steps, re-run (the notebook's
    live slice, shorter)."""
    from labkit import corpus
    from labkit.course import saved

    rec = saved.load("09-sparse-training").record
    text = corpus.load_corpus()
    vocab = corpus.Vocab.build(corpus.char_tokens(text.train))
    train_ids = vocab.encode(corpus.char_tokens(text.train))
    cfg = transformer.TrainConfig(**rec["train_config"])
    schedules = {"dense": None, "topk": lambda s: rec["keep"],
                 "channels": lambda s: st.keep_schedule(s, cfg.steps, rec["keep"])}
    for mode, schedule in schedules.items():
        torch.manual_seed(rec["seed"])
        gpt = transformer.TinyGPT(transformer.GPTConfig(vocab_size=len(vocab), **rec["gpt_config"]))
        live = st.train_sparse(st.sparsify_ffn(gpt, mode, rec["keep"]), train_ids, cfg, schedule, stop_after=4)
        assert max(abs(a - b) for a, b in zip(live["loss"], rec["runs"][mode]["loss"])) < 1e-3, mode
