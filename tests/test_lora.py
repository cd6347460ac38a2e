"""labkit.finetune.lora: the LoRA layer against its formula and against peft (the test-time oracle)."""
import copy
import math

import pytest
import torch
from torch import nn

from labkit.finetune.lora import (LoRALinear, add_lora, adapters_disabled, load_lora_state_dict, lora_layers,
                                  lora_state_dict, total_parameters, trainable_parameters)
from labkit.llama import Llama
from tiny_llama import SMALL, random_llama

pytestmark = pytest.mark.usefixtures("torch_one_thread")
ALL = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
IDS = torch.randint(0, SMALL.vocab_size, (2, 9), generator=torch.Generator().manual_seed(1))


def randomise_B(model: nn.Module, seed: int = 0, std: float = 0.1) -> None:
    """B starts at zero (the adapter does nothing); tests need an adapter that does something."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g) * std)


def test_layer_is_its_formula():
    torch.manual_seed(0)
    base = nn.Linear(12, 7, bias=True)
    layer = LoRALinear(base, r=3, alpha=6)
    assert layer.lora_A.shape == (3, 12) and layer.lora_B.shape == (7, 3) and layer.scaling == 2.0
    x = torch.randn(4, 5, 12)
    torch.testing.assert_close(layer(x), base(x), atol=0, rtol=0)  # B = 0: exactly the base layer
    with torch.no_grad():
        layer.lora_B.normal_()
    expected = x @ (base.weight + 2.0 * layer.lora_B @ layer.lora_A).T + base.bias
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)
    assert not base.weight.requires_grad and not base.bias.requires_grad
    assert trainable_parameters(layer) == 3 * (12 + 7)


def test_A_init_is_kaiming_uniform():
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(400, 30, bias=False), r=16, alpha=16)
    bound = 1 / math.sqrt(400)  # kaiming-uniform with a = sqrt(5): U(-1/sqrt(in), 1/sqrt(in))
    assert layer.lora_A.abs().max() <= bound and layer.lora_A.abs().max() > 0.95 * bound
    assert layer.lora_A.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)
    assert torch.count_nonzero(layer.lora_B) == 0


def test_add_lora_wraps_targets_and_freezes_the_rest():
    model = random_llama(SMALL)
    names = add_lora(model, ("q_proj", "v_proj"), r=4, alpha=8)
    assert names == [f"layers.{i}.self_attn.{p}" for i in range(2) for p in ("q_proj", "v_proj")]
    d, kv = SMALL.dim, SMALL.n_kv_heads * SMALL.head_dim
    # per layer: q is d -> d, v is d -> kv
    assert trainable_parameters(model) == SMALL.n_layers * 4 * ((d + d) + (d + kv))
    assert all(("lora_" in n) == p.requires_grad for n, p in model.named_parameters())
    assert total_parameters(model) == total_parameters(random_llama(SMALL)) + trainable_parameters(model)


def test_same_forward_and_gradients_as_peft():
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    ours = random_llama(SMALL, std=0.2)
    theirs = copy.deepcopy(ours)
    add_lora(ours, ALL, r=4, alpha=12)
    randomise_B(ours)
    theirs = peft.inject_adapter_in_model(peft.LoraConfig(r=4, lora_alpha=12, target_modules=list(ALL),
                                                          lora_dropout=0.0), theirs)
    mine = lora_layers(ours)
    with torch.no_grad():
        for name, module in theirs.named_modules():
            if name in mine:
                assert module.scaling["default"] == mine[name].scaling
                module.lora_A["default"].weight.copy_(mine[name].lora_A)
                module.lora_B["default"].weight.copy_(mine[name].lora_B)
    assert trainable_parameters(ours) == trainable_parameters(theirs)
    a, b = ours(IDS), theirs(IDS)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    target = torch.randint(0, SMALL.vocab_size, IDS.shape, generator=torch.Generator().manual_seed(2))
    for logits in (a, b):
        nn.functional.cross_entropy(logits.flatten(0, 1), target.flatten()).backward()
    n = 0
    for name, module in theirs.named_modules():
        if name in mine:
            for part in ("lora_A", "lora_B"):
                torch.testing.assert_close(getattr(mine[name], part).grad, getattr(module, part)["default"].weight.grad,
                                           atol=1e-6, rtol=1e-4)
            n += 1
    assert n == len(mine) == 14
    assert mine["layers.0.self_attn.q_proj"].lora_B.grad.abs().sum() > 0


def test_init_follows_peft():
    """peft draws its nn.Linear defaults before re-initialising, so the same seed gives other numbers; the
    distribution is what must agree: A uniform in +-1/sqrt(in), B zero."""
    peft = pytest.importorskip("peft")
    ours, theirs = random_llama(SMALL), random_llama(SMALL)
    torch.manual_seed(5)
    add_lora(ours, ("gate_proj",), r=4, alpha=8)
    theirs = peft.inject_adapter_in_model(peft.LoraConfig(r=4, lora_alpha=8, target_modules=["gate_proj"]), theirs)
    bound = 1 / math.sqrt(SMALL.dim)
    theirs_AB = [(m.lora_A["default"].weight, m.lora_B["default"].weight)
                 for n, m in theirs.named_modules() if n.endswith("gate_proj")]
    for layer, (A, B) in zip(lora_layers(ours).values(), theirs_AB, strict=True):
        for a in (layer.lora_A, A):
            assert 0.9 * bound < a.abs().max() <= bound
        assert torch.count_nonzero(B) == torch.count_nonzero(layer.lora_B) == 0
        assert A.shape == layer.lora_A.shape and B.shape == layer.lora_B.shape


def test_merge_unmerge_same_logits_small():
    model = random_llama(SMALL, std=0.2)
    add_lora(model, ALL, r=4, alpha=8)
    randomise_B(model)
    w0 = model.layers[0].self_attn.q_proj.base.weight.clone()
    with torch.no_grad():
        before = model(IDS)
        for layer in lora_layers(model).values():
            layer.merge()
        merged = model(IDS)
        assert all(layer.merged for layer in lora_layers(model).values())
        for layer in lora_layers(model).values():
            layer.unmerge()
        after = model(IDS)
    torch.testing.assert_close(merged, before, atol=1e-5, rtol=0)
    torch.testing.assert_close(after, before, atol=1e-5, rtol=0)
    torch.testing.assert_close(model.layers[0].self_attn.q_proj.base.weight, w0, atol=1e-6, rtol=0)
    layer = model.layers[0].self_attn.q_proj
    with pytest.raises(RuntimeError, match="not merged"):
        layer.unmerge()
    layer.merge()
    with pytest.raises(RuntimeError, match="already merged"):
        layer.merge()


def test_merge_changes_the_weight_by_BA():
    model = random_llama(SMALL)
    add_lora(model, ("o_proj",), r=2, alpha=4)
    randomise_B(model)
    layer = model.layers[1].self_attn.o_proj
    w0 = layer.base.weight.clone()
    layer.merge()
    torch.testing.assert_close(layer.base.weight - w0, 2.0 * layer.lora_B @ layer.lora_A, atol=1e-6, rtol=0)


def test_merge_unmerge_smollm2():
    model = Llama.from_pretrained()
    torch.manual_seed(0)
    add_lora(model, ("q_proj", "v_proj", "down_proj"), r=8, alpha=16)
    randomise_B(model, std=0.02)
    ids = torch.tensor([[1, 504, 3458, 314, 260, 2356, 28, 5320, 30]])
    with torch.no_grad():
        before = model(ids)
        base = None
        with adapters_disabled(model):
            base = model(ids)
        for layer in lora_layers(model).values():
            layer.merge()
        merged = model(ids)
        for layer in lora_layers(model).values():
            layer.unmerge()
        after = model(ids)
    assert (before - base).abs().max() > 1e-2       # the adapter does change the model
    assert (merged - before).abs().max() <= 1e-4
    assert (after - before).abs().max() <= 1e-4


def test_adapters_disabled_is_the_base_and_restores():
    base_model = random_llama(SMALL, std=0.2)
    model = copy.deepcopy(base_model)
    add_lora(model, ALL, r=4, alpha=8)
    randomise_B(model)
    with torch.no_grad():
        adapted = model(IDS)
        model.layers[0].self_attn.q_proj.merge()  # a merged layer must be taken out inside the block too
        with adapters_disabled(model) as m:
            assert m is model
            torch.testing.assert_close(model(IDS), base_model(IDS), atol=1e-5, rtol=0)
        assert model.layers[0].self_attn.q_proj.merged
        torch.testing.assert_close(model(IDS), adapted, atol=1e-5, rtol=0)


def test_state_dict_round_trip():
    model = random_llama(SMALL)
    add_lora(model, ("q_proj", "v_proj"), r=4, alpha=8)
    randomise_B(model)
    state = lora_state_dict(model)
    assert sorted(state) == sorted(f"layers.{i}.self_attn.{p}.lora_{ab}" for i in range(2)
                                   for p in ("q_proj", "v_proj") for ab in "AB")
    other = random_llama(SMALL)
    add_lora(other, ("q_proj", "v_proj"), r=4, alpha=8)
    with torch.no_grad():
        assert (other(IDS) - model(IDS)).abs().max() > 1e-4
    load_lora_state_dict(other, state)
    with torch.no_grad():
        torch.testing.assert_close(other(IDS), model(IDS), atol=0, rtol=0)
    state["layers.0.self_attn.q_proj.lora_A"] = torch.zeros(8, SMALL.dim)
    with pytest.raises(ValueError, match=r"saved shape \(8, 32\), model \(4, 32\)"):
        load_lora_state_dict(other, state)
    with pytest.raises(ValueError, match="missing .*unexpected"):
        load_lora_state_dict(other, {"x.lora_A": torch.zeros(1)})


def test_training_moves_only_the_adapter():
    model = random_llama(SMALL, std=0.2)
    frozen = {n: p.clone() for n, p in model.named_parameters()}
    torch.manual_seed(0)
    add_lora(model, ("q_proj", "v_proj"), r=4, alpha=8)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    for _ in range(3):
        loss = nn.functional.cross_entropy(model(IDS[:, :-1]).flatten(0, 1), IDS[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    moved = {n.replace(".base", "") for n, p in model.named_parameters() if "lora_" not in n
             and not torch.equal(p, frozen[n.replace(".base", "")])}
    assert moved == set()
    assert model.layers[0].self_attn.q_proj.lora_B.abs().sum() > 0


def test_bad_input():
    lin = nn.Linear(6, 4)
    with pytest.raises(ValueError, match=r"rank r must be an int in \[1, min\(in, out\)\] = \[1, 4\].*got 5"):
        LoRALinear(lin, r=5, alpha=8)
    with pytest.raises(ValueError, match=r"got 5 \(B A cannot have a rank above min\(in, out\)\)"):
        LoRALinear(lin, r=5, alpha=8)
    with pytest.raises(ValueError, match=r"got 0 \(the update needs at least one dimension\)"):
        LoRALinear(lin, r=0, alpha=8)
    with pytest.raises(ValueError, match="got -2"):
        LoRALinear(lin, r=-2, alpha=8)
    with pytest.raises(ValueError, match="alpha must be a number > 0"):
        LoRALinear(lin, r=2, alpha=0)
    with pytest.raises(ValueError, match=r"dropout must be a probability in \[0, 1\)"):
        LoRALinear(lin, r=2, alpha=2, dropout=1.0)
    with pytest.raises(TypeError, match="LoRALinear wraps a layer of type Linear, got Embedding"):
        LoRALinear(nn.Embedding(5, 4), r=2, alpha=2)
    model = random_llama(SMALL)
    with pytest.raises(ValueError, match=r"target\(s\) \['qproj'\] match no module.*'q_proj'"):
        add_lora(model, ("qproj",))
    with pytest.raises(TypeError, match="wraps a layer of type Linear, got RMSNorm"):
        add_lora(model, ("input_layernorm",))
    with pytest.raises(TypeError, match="non-empty sequence of module names"):
        add_lora(model, "q_proj")
    with pytest.raises(ValueError, match=r"\[1, 32\].*got 33"):
        add_lora(model, ("q_proj",), r=33)
    add_lora(model, ("q_proj",), r=2)
    with pytest.raises(ValueError, match="already has a LoRA adapter"):
        add_lora(model, ("q_proj",))
    with pytest.raises(ValueError, match="no LoRA layers; call add_lora"):
        lora_state_dict(random_llama(SMALL))
    with pytest.raises(ValueError, match="no LoRA layers"):
        with adapters_disabled(random_llama(SMALL)):
            pass
