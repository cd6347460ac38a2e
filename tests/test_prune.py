"""labkit.compress.prune: magnitude masks equal torch.nn.utils.prune's (a test-time oracle), Wanda with uniform
activations is per-row magnitude, N:M keeps the N largest of every M, the sparsity asked is the one reached,
calibration norms are the activations' norms, and the errors at the edge."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils import prune as torch_prune

from labkit.compress import prune
from tiny_llama import random_llama

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def weight(out=24, inp=64, seed=0) -> torch.Tensor:
    return torch.randn(out, inp, generator=torch.Generator().manual_seed(seed))


def torch_mask(w: torch.Tensor, amount: float) -> torch.Tensor:
    """torch's own L1 unstructured pruning of the whole tensor: its weight_mask."""
    layer = nn.Linear(w.shape[1], w.shape[0], bias=False)
    with torch.no_grad():
        layer.weight.copy_(w)
    torch_prune.l1_unstructured(layer, "weight", amount=amount)
    return layer.weight_mask.bool()


@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.25, 0.5, 0.73, 0.9])
@pytest.mark.parametrize("seed", [0, 1])
def test_magnitude_mask_equals_torch_l1_unstructured(sparsity, seed):
    w = weight(seed=seed)
    ours = prune.unstructured_mask(prune.magnitude_scores(w), sparsity)
    assert torch.equal(ours, torch_mask(w, sparsity))


@pytest.mark.parametrize("sparsity", [0.2, 0.5, 0.6])
def test_per_row_magnitude_equals_torch_pruning_each_row(sparsity):
    w = weight(seed=3)
    ours = prune.unstructured_mask(prune.magnitude_scores(w), sparsity, per_row=True)
    rows = torch.stack([torch_mask(row[None], sparsity)[0] for row in w])
    assert torch.equal(ours, rows)
    assert not torch.equal(ours, torch_mask(w, sparsity))  # a different comparison group, a different mask


def test_wanda_with_uniform_norms_is_per_row_magnitude():
    w = weight(seed=4)
    wanda = prune.unstructured_mask(prune.wanda_scores(w, torch.full((w.shape[1],), 3.5)), 0.5, per_row=True)
    assert torch.equal(wanda, prune.unstructured_mask(prune.magnitude_scores(w), 0.5, per_row=True))


def test_wanda_keeps_a_small_weight_on_a_large_activation():
    w = torch.tensor([[0.1, 1.0, 0.9, 0.8]])
    norms = torch.tensor([100.0, 1.0, 1.0, 1.0])  # input 0 is an outlier feature
    assert prune.unstructured_mask(prune.magnitude_scores(w), 0.25).tolist() == [[False, True, True, True]]
    assert prune.unstructured_mask(prune.wanda_scores(w, norms), 0.25, per_row=True).tolist() == [[True, True, True,
                                                                                                     False]]


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 6), st.integers(1, 8), st.sampled_from([(1, 4), (2, 4), (4, 8), (3, 3), (1, 2)]),
       st.integers(0, 2**16))
def test_nm_keeps_the_n_largest_of_every_m(rows, groups, n_m, seed):
    n, m = n_m
    scores = torch.rand(rows, groups * m, generator=torch.Generator().manual_seed(seed))
    mask = prune.nm_mask(scores, n, m)
    blocks, kept = scores.reshape(-1, m), mask.reshape(-1, m)
    assert (kept.sum(1) == n).all()  # exactly n of every m consecutive weights
    for block, keep in zip(blocks, kept):  # and they are the n largest scores
        assert set(torch.nonzero(keep).flatten().tolist()) == set(block.topk(n).indices.tolist())


def test_two_four_on_ties_is_deterministic_and_exact():
    scores = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0, 2.0, 2.0, 0.0]])  # ties, as in quantised weights
    mask = prune.nm_mask(scores, 2, 4)
    assert mask.tolist() == [[False, False, True, True, False, True, True, False]]


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 5), st.integers(1, 12), st.floats(0, 0.99), st.booleans(), st.integers(0, 2**16))
def test_ties_go_in_index_order_as_a_stable_sort_would(rows, cols, sparsity, per_row, seed):
    scores = torch.randint(0, 4, (rows, cols), generator=torch.Generator().manual_seed(seed)).float()  # many ties
    groups = scores if per_row else scores.reshape(1, -1)
    k = round(sparsity * groups.shape[1])
    expected = torch.ones_like(groups, dtype=torch.bool)
    expected.scatter_(1, torch.sort(groups, dim=1, stable=True).indices[:, :k], False)
    assert torch.equal(prune.unstructured_mask(scores, sparsity, per_row), expected.reshape(scores.shape))


@pytest.mark.parametrize("sparsity", [0.1, 0.5, 0.7])
def test_sparsity_reached_is_the_sparsity_asked(sparsity):
    model = random_llama()
    norms = prune.input_norms(model, torch.randint(0, 97, (2, 16), generator=torch.Generator().manual_seed(0)))
    total = sum(layer.weight.numel() for layer in prune._linears(model).values())
    for method, kw in (("magnitude", {}), ("wanda", {"norms": norms})):
        pruned = prune.prune_llama(model, method, sparsity, **kw)
        expected = sum(layer.out_features * round(sparsity * layer.in_features) if method == "wanda"
                       else round(sparsity * layer.weight.numel()) for layer in prune._linears(model).values())
        assert prune.linear_sparsity(pruned) == expected / total
    two_four = prune.prune_llama(model, "wanda", None, n_m=(2, 4), norms=norms)
    assert prune.linear_sparsity(two_four) == 0.5
    assert prune.linear_sparsity(model) == 0.0  # the original is untouched


def test_prune_llama_touches_only_the_linear_layers():
    model = random_llama()
    pruned = prune.prune_llama(model, "magnitude", 0.5)
    for (name, before), after in zip(model.named_parameters(), pruned.parameters()):
        if any(name.endswith(f"{linear}.weight") for linear in prune.LINEARS):
            kept = after != 0
            assert torch.equal(after[kept], before[kept]) and not torch.equal(after, before)
        else:
            assert torch.equal(after, before), name


def test_input_norms_are_the_norms_of_each_layers_inputs():
    model = random_llama()
    ids = torch.randint(0, 97, (3, 10), generator=torch.Generator().manual_seed(1))
    norms = prune.input_norms(model, ids)
    with torch.no_grad():
        x = model.layers[0].input_layernorm(model.embed_tokens(ids)).reshape(-1, model.cfg.dim).double()
    for name in ("q_proj", "k_proj", "v_proj"):  # the three read the same normed input
        torch.testing.assert_close(norms[f"layers.0.self_attn.{name}"], x.norm(dim=0))
    assert norms["layers.1.mlp.down_proj"].shape == (model.cfg.hidden_dim,)
    assert len(norms) == len(prune.LINEARS) * model.cfg.n_layers


def test_clear_errors():
    w = weight()
    with pytest.raises(ValueError, match=r"sparsity must be a number in \[0, 1\)"):
        prune.unstructured_mask(w, 1.0)
    with pytest.raises(ValueError, match=r"sparsity must be a number in \[0, 1\)"):
        prune.unstructured_mask(w, -0.1)
    with pytest.raises(ValueError, match="n <= m; got n=5 > m=4"):
        prune.nm_mask(w, 5, 4)
    with pytest.raises(ValueError, match="m must divide the row length"):
        prune.nm_mask(weight(inp=66), 2, 4)
    with pytest.raises(ValueError, match=r"non-empty 2-D tensor \[out_features, in_features\], got shape \(64,\)"):
        prune.magnitude_scores(w[0])
    with pytest.raises(TypeError, match="floating-point"):
        prune.magnitude_scores(torch.ones(2, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"norms must be a tensor \[in_features\] = \[64\]"):
        prune.wanda_scores(w, torch.ones(24))
    with pytest.raises(ValueError, match="finite and >= 0"):
        prune.wanda_scores(w, -torch.ones(64))
    model = random_llama()
    with pytest.raises(TypeError, match="model must be labkit's Llama"):
        prune.prune_llama(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="Wanda needs norms"):
        prune.prune_llama(model, "wanda", 0.5)
    with pytest.raises(ValueError, match="give exactly one of sparsity"):
        prune.prune_llama(model, "magnitude", 0.5, n_m=(2, 4))
    with pytest.raises(ValueError, match="method must be one of"):
        prune.prune_llama(model, "random", 0.5)
    with pytest.raises(ValueError, match="calibration must be integer token ids"):
        prune.input_norms(model, torch.ones(2, 3))
