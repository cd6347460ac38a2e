"""labkit.compress.moe: the batched dispatch equals the token-by-token formula, the balancing loss is E sum f_i P_i
(1 when uniform, E when collapsed), gates renormalise, capacity drops the overflow in priority order, a one-expert
MoE is the dense model, and the MoE training loop is chapter 3's (a dense model trains exactly as train_gpt)."""
import pytest
import torch

from labkit.compress.moe import MoEFeedForward, MoEGPT, load_balancing_loss, moe_reference, routing_fractions, train_moe
from labkit.transformer import GPTConfig, TinyGPT, TrainConfig, train_gpt

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def layer(n_experts=4, k=2, seed=0, **kw):
    torch.manual_seed(seed)
    moe = MoEFeedForward(8, 12, n_experts, k, **kw)
    with torch.no_grad():  # a router with real preferences (the default init is near uniform)
        moe.router.weight.mul_(20)
    return moe


@pytest.mark.parametrize("n_experts,k,renormalize", [(4, 1, True), (4, 2, True), (5, 3, False), (3, 3, True)])
def test_batched_dispatch_equals_the_token_by_token_formula(n_experts, k, renormalize):
    moe = layer(n_experts, k, renormalize=renormalize)
    x = rand(3, 7, 8, seed=1)
    with torch.no_grad():
        torch.testing.assert_close(moe(x), moe_reference(moe, x), rtol=1e-5, atol=1e-6)
    assert int(moe.counts.sum()) == 21 * k and moe.dropped == 0


def test_gates_renormalise_over_the_chosen_experts():
    moe = layer(6, 2)
    probs, gates, chosen = moe.route(rand(10, 8, seed=2))
    torch.testing.assert_close(gates.sum(-1), torch.ones(10))
    torch.testing.assert_close(gates, probs.gather(-1, chosen) / probs.gather(-1, chosen).sum(-1, keepdim=True))
    assert (probs.gather(-1, chosen[:, :1]) >= probs.max(-1, keepdim=True).values).all()  # first choice = argmax
    switch = layer(6, 1, renormalize=False)  # Switch Transformer: one expert, scaled by its own probability
    probs, gates, _ = switch.route(rand(10, 8, seed=2))
    torch.testing.assert_close(gates[:, 0], probs.max(-1).values)


def naive_balance(probs, chosen):
    n_tokens, n_experts = probs.shape
    f = [sum(int(e == i) for row in chosen.tolist() for e in row) / chosen.numel() for i in range(n_experts)]
    p = [sum(float(probs[t, i]) for t in range(n_tokens)) / n_tokens for i in range(n_experts)]
    return n_experts * sum(fi * pi for fi, pi in zip(f, p))


def test_balancing_loss_is_n_sum_f_p_one_when_uniform_e_when_collapsed():
    probs = torch.softmax(rand(12, 5, seed=3) * 2, -1)
    chosen = probs.topk(2, -1).indices
    assert float(load_balancing_loss(probs, chosen)) == pytest.approx(naive_balance(probs, chosen), rel=1e-6)
    uniform = torch.full((12, 4), 0.25)
    assert float(load_balancing_loss(uniform, torch.arange(24).reshape(12, 2) % 4)) == pytest.approx(1.0)
    collapsed = torch.zeros(12, 4).index_fill_(1, torch.tensor([0]), 1.0)
    assert float(load_balancing_loss(collapsed, torch.zeros(12, 1, dtype=torch.long))) == pytest.approx(4.0)
    # the gradient reaches the router probabilities only (f is a count), and pushes the overloaded expert down
    logits = rand(12, 4, seed=4).requires_grad_()
    p = torch.softmax(logits, -1)
    load_balancing_loss(p, torch.zeros(12, 1, dtype=torch.long)).backward()
    assert (logits.grad[:, 0] > 0).all() and (logits.grad[:, 1:] < 0).all()


def test_capacity_drops_the_overflow_first_choices_first():
    moe = layer(4, 2, capacity_factor=1.0)
    assert moe.capacity(6) == 3  # ceil(1.0 * 6 tokens * 2 / 4 experts)
    chosen = torch.tensor([[0, 1], [0, 1], [0, 2], [0, 1], [3, 0], [2, 3]])
    keep = moe.keep_mask(chosen)
    # expert 0 gets first choices of tokens 0, 1, 2 (its 3 slots); token 3's first choice and token 4's second drop
    assert keep.tolist() == [[True, True], [True, True], [True, True], [False, True], [True, False], [True, True]]
    x = rand(40, 8, seed=5)
    tight = layer(4, 2, capacity_factor=0.5)
    with torch.no_grad():
        out = tight(x)
    counts, cap = tight.counts, tight.capacity(40)
    assert tight.dropped == int((counts - cap).clamp(min=0).sum()) > 0
    loose = layer(4, 2, capacity_factor=100.0)
    with torch.no_grad():
        torch.testing.assert_close(loose(x), layer(4, 2)(x))
        dropped_rows = (~tight.keep_mask(tight.route(x)[2])).any(-1)
        kept_rows = ~dropped_rows
        torch.testing.assert_close(out[kept_rows], moe_reference(tight, x)[kept_rows], rtol=1e-5, atol=1e-6)


def test_one_expert_moe_is_the_dense_model():
    cfg = GPTConfig(vocab_size=11, context=8, d_model=16, n_layers=2, n_heads=2, ffn_hidden=24)
    torch.manual_seed(0)
    dense = TinyGPT(cfg)
    moe = MoEGPT(cfg, n_experts=1, k=1)
    state = {k.replace("mlp.", "mlp.experts.0."): v for k, v in dense.state_dict().items()}
    missing = moe.load_state_dict(state, strict=False).missing_keys
    assert sorted(missing) == ["layers.0.mlp.router.weight", "layers.1.mlp.router.weight"]
    ids = torch.randint(0, 11, (2, 8), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(moe(ids), dense(ids))
    assert moe.num_parameters() == dense.num_parameters() + 2 * 16 and moe.active_parameters() == moe.num_parameters()
    wide = MoEGPT(cfg, n_experts=4, k=2, expert_hidden=12)
    expert = 3 * 16 * 12
    assert wide.active_parameters() == wide.num_parameters() - 2 * 2 * expert
    assert wide.active_parameters() == dense.num_parameters() + 2 * 16 * 4  # same active FFN; routers added


def test_train_moe_is_chapter_3s_loop_and_collects_routing():
    ids = torch.randint(0, 11, (300,), generator=torch.Generator().manual_seed(2)).numpy()
    cfg = GPTConfig(vocab_size=11, context=8, d_model=16, n_layers=1, n_heads=2)
    train = TrainConfig(steps=5, batch_size=4, lr=1e-2, warmup=2)
    torch.manual_seed(0)
    a = train_gpt(TinyGPT(cfg), ids, train)
    torch.manual_seed(0)
    b = train_moe(TinyGPT(cfg), ids, train, aux_weight=0.01)
    assert a["loss"] == b["loss"] and b["aux"] == [0.0] * 5
    torch.manual_seed(0)
    moe = MoEGPT(cfg, n_experts=4, k=2)
    h = train_moe(moe, ids, train, aux_weight=0.01)
    assert len(h["loss"]) == len(h["aux"]) == 5 and h["aux"][-1] == moe.aux_loss().item()  # the last step's batch
    assert sum(h["counts"][0]) == 5 * 4 * 8 * 2  # steps x batch x positions x k
    frac = routing_fractions(moe, ids)
    torch.testing.assert_close(frac.sum(-1), torch.ones(1, dtype=torch.float64))


def test_clear_errors():
    with pytest.raises(ValueError, match=r"k \(experts per token\) must be an int in 1..n_experts = 4, got 5"):
        MoEFeedForward(8, 12, 4, k=5)
    with pytest.raises(ValueError, match=r"k \(experts per token\) must be an int in 1..n_experts = 4, got 0"):
        MoEFeedForward(8, 12, 4, k=0)
    with pytest.raises(ValueError, match="capacity_factor must be > 0"):
        MoEFeedForward(8, 12, 4, capacity_factor=0.0)
    with pytest.raises(ValueError, match="n_experts must be an int >= 1, got 0"):
        MoEFeedForward(8, 12, 0, k=1)
    with pytest.raises(ValueError, match=r"MoEFeedForward\(8\) expects \[..., 8\], got \(3, 5\)"):
        MoEFeedForward(8, 12, 4)(torch.zeros(3, 5))
    with pytest.raises(ValueError, match=r"chosen must be integer expert ids \[tokens = 3, k\]"):
        load_balancing_loss(torch.zeros(3, 4), torch.zeros(2, 1, dtype=torch.long))
    moe = MoEGPT(GPTConfig(vocab_size=5, context=4, d_model=8, n_layers=1, n_heads=2), n_experts=2, k=1)
    with pytest.raises(RuntimeError, match="run a forward pass first"):
        moe.aux_loss()
    with pytest.raises(ValueError, match="aux_weight must be >= 0"):
        train_moe(moe, list(range(5)) * 4, TrainConfig(steps=1, batch_size=2), aux_weight=-1.0)


def test_saved_run_live_slice_reproduces_the_record():
    from labkit.compress.moe import moe_data, moe_models
    from labkit.course import saved

    run = saved.load("09-moe")
    vocab, train_ids, _ = moe_data()
    cfg = TrainConfig(**run.record["train_config"])
    for name, model in moe_models(len(vocab), cfg.seed).items():
        aux = run.record["aux_weight"] if name == "moe-aux" else 0.0
        live = train_moe(model, train_ids, cfg, aux, stop_after=3)
        assert max(abs(a - b) for a, b in zip(live["loss"], run.record["loss"][name])) < 1e-3, name
        model.load_state_dict(run.state_dict(name))  # the saved weights fit the models the record describes
