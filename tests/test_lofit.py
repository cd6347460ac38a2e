"""labkit.finetune.lofit: per-head scalings and offsets, checked against what they mean for o_proj's weights."""
import copy

import pytest
import torch
from torch import nn

from labkit.finetune.lofit import HeadEdit, add_offsets, add_scalings, l1_penalty, remove_edits, select_heads
from labkit.finetune.lora import trainable_parameters
from tiny_llama import SMALL, random_llama

pytestmark = pytest.mark.usefixtures("torch_one_thread")
IDS = torch.randint(0, SMALL.vocab_size, (2, 9), generator=torch.Generator().manual_seed(1))
HD = SMALL.head_dim


def test_edits_start_as_the_plain_model():
    model = random_llama(SMALL, std=0.2)
    with torch.no_grad():
        plain = model(IDS)
        add_scalings(model)
        torch.testing.assert_close(model(IDS), plain, atol=0, rtol=0)
        assert trainable_parameters(model) == SMALL.n_layers * SMALL.n_heads * HD
        remove_edits(model)
        add_offsets(model, [(0, 1), (1, 3), (1, 0)])
        torch.testing.assert_close(model(IDS), plain, atol=0, rtol=0)
        assert trainable_parameters(model) == 3 * HD


def test_scaling_minus_one_ablates_the_head():
    """z_h <- (1 + a) z_h with a = -1 removes head h: the same as zeroing its columns of o_proj."""
    model = random_llama(SMALL, std=0.2)
    ablated = copy.deepcopy(model)
    with torch.no_grad():
        ablated.layers[1].self_attn.o_proj.weight[:, 2 * HD:3 * HD] = 0
        add_scalings(model)
        model.layers[1].self_attn.o_proj.scale[2] = -1
        torch.testing.assert_close(model(IDS), ablated(IDS), atol=1e-5, rtol=0)


def test_offset_is_a_bias_through_o_proj():
    """z_h <- z_h + v adds W_o[:, head h] @ v to the layer's output, at every position."""
    model = random_llama(SMALL, std=0.2)
    reference = copy.deepcopy(model)
    v = torch.randn(HD, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        o = reference.layers[0].self_attn.o_proj
        biased = nn.Linear(o.in_features, o.out_features, bias=True)
        biased.weight.copy_(o.weight)
        biased.bias.copy_(o.weight[:, 3 * HD:4 * HD] @ v)
        reference.layers[0].self_attn.o_proj = biased
        add_offsets(model, [(0, 3)])
        model.layers[0].self_attn.o_proj.offset[0] = v
        torch.testing.assert_close(model(IDS), reference(IDS), atol=1e-5, rtol=0)


def test_select_heads_takes_the_largest_norms_and_l1():
    model = random_llama(SMALL)
    add_scalings(model)
    with torch.no_grad():
        model.layers[0].self_attn.o_proj.scale[3] = 0.5
        model.layers[1].self_attn.o_proj.scale[0] = -0.9
        model.layers[1].self_attn.o_proj.scale[2, 0] = 0.1
    assert select_heads(model, 2) == [(0, 3), (1, 0)]
    assert select_heads(model, 3) == [(0, 3), (1, 0), (1, 2)]
    assert l1_penalty(model).item() == pytest.approx(HD * (0.5 + 0.9) + 0.1, rel=1e-6)


def test_training_offsets_moves_only_them():
    model = random_llama(SMALL, std=0.2)
    frozen = {n: p.clone() for n, p in model.named_parameters()}
    add_offsets(model, [(1, 1)])
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.1)
    loss = nn.functional.cross_entropy(model(IDS)[:, -1], torch.tensor([1, 2]))
    loss.backward()
    opt.step()
    assert model.layers[1].self_attn.o_proj.offset.abs().sum() > 0
    remove_edits(model)
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters())


def test_bad_input():
    model = random_llama(SMALL)
    with pytest.raises(ValueError, match="no LoFiT scalings; call add_scalings"):
        select_heads(model, 1)
    with pytest.raises(ValueError, match="no LoFiT scalings"):
        l1_penalty(model)
    with pytest.raises(ValueError, match=r"\(layer, head\) pairs with layer in \[0, 2\), got \(2, 0\)"):
        add_offsets(model, [(2, 0)])
    with pytest.raises(ValueError, match=r"head indices in \[0, 4\), got \[4\]"):
        add_offsets(model, [(0, 4)])
    with pytest.raises(ValueError, match="heads is empty"):
        add_offsets(model, [])
    with pytest.raises(TypeError, match="model must be a labkit.llama.Llama"):
        add_scalings(nn.Linear(3, 3))
    add_scalings(model)
    with pytest.raises(ValueError, match=r"k must be an int in \[1, 8\]"):
        select_heads(model, 9)
    with pytest.raises(ValueError, match="already has LoFiT edits"):
        add_offsets(model, [(0, 0)])
    with pytest.raises(TypeError, match="HeadEdit wraps an nn.Linear"):
        HeadEdit(nn.Linear(10, 4), 4, [0], scale=True, offset=False)
