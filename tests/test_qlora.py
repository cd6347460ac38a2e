"""labkit.finetune.qlora: int4 storage, LoRA over it, merging into the dequantised weight, memory by bytes."""
import copy

import pytest
import torch
from torch import nn

from labkit.compress.quantize import quantize
from labkit.finetune.lora import add_lora, lora_layers, trainable_parameters
from labkit.finetune.qlora import (Int4Linear, QLoRALinear, add_qlora, memory_bytes, merge_qlora, pack_int4,
                                   unpack_int4)
from labkit.llama import Llama
from tiny_llama import SMALL, random_llama

pytestmark = pytest.mark.usefixtures("torch_one_thread")
IDS = torch.randint(0, SMALL.vocab_size, (2, 9), generator=torch.Generator().manual_seed(1))
GROUP = 16  # divides SMALL's widths (32 and 48)


def randomise_B(model, std=0.1):
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g) * std)


def test_pack_unpack_round_trip():
    codes = torch.randint(-8, 8, (5, 12), generator=torch.Generator().manual_seed(0), dtype=torch.int8)
    packed = pack_int4(codes)
    assert packed.dtype == torch.uint8 and packed.shape == (5, 6)
    assert torch.equal(unpack_int4(packed), codes)
    assert int(packed[0, 0]) == (int(codes[0, 0]) + 8) + 16 * (int(codes[0, 1]) + 8)  # low nibble first
    with pytest.raises(ValueError, match=r"4-bit codes lie in \[-8, 7\], got values in \[0, 9\]"):
        pack_int4(torch.tensor([[0, 9]], dtype=torch.int8))
    with pytest.raises(ValueError, match="even in"):
        pack_int4(torch.zeros(2, 3, dtype=torch.int8))


def test_int4_linear_is_the_quantizer_and_costs_what_it_claims():
    torch.manual_seed(0)
    lin = nn.Linear(64, 24, bias=False)
    layer = Int4Linear(lin, group_size=32)
    q = quantize(lin.weight, bits=4, granularity="group", group_size=32)
    assert torch.equal(layer.quantized().codes, q.codes)
    # the scales are stored in fp16: the weight moves by at most 2^-11 of itself
    torch.testing.assert_close(layer.dequantize(), q.dequantize(), atol=0, rtol=2 ** -11)
    x = torch.randn(3, 64)
    torch.testing.assert_close(layer(x), x @ layer.dequantize().T, atol=1e-6, rtol=0)
    actual = sum(b.nbytes for b in layer.buffers())
    assert actual == q.nbytes() == 64 * 24 // 2 + 2 * 24 * 2
    assert list(layer.parameters()) == []


def test_qlora_is_lora_over_the_dequantised_model():
    base = random_llama(SMALL, std=0.2)
    qmodel, reference = copy.deepcopy(base), copy.deepcopy(base)
    torch.manual_seed(0)
    names = add_qlora(qmodel, ("q_proj", "v_proj"), r=4, alpha=8, group_size=GROUP)
    assert names == [f"layers.{i}.self_attn.{p}" for i in range(2) for p in ("q_proj", "v_proj")]
    # the reference: every block's linear weight replaced by its dequantised int4 copy, then plain LoRA
    with torch.no_grad():
        for name, module in qmodel.named_modules():
            if isinstance(module, Int4Linear):
                reference.get_submodule(name.removesuffix(".base")).weight.copy_(module.dequantize())
    torch.manual_seed(0)
    add_lora(reference, ("q_proj", "v_proj"), r=4, alpha=8)
    randomise_B(qmodel)
    randomise_B(reference)
    assert trainable_parameters(qmodel) == trainable_parameters(reference)
    torch.testing.assert_close(qmodel(IDS), reference(IDS), atol=1e-5, rtol=0)
    with torch.no_grad():
        assert (qmodel(IDS) - base(IDS)).abs().max() > 1e-3  # int4 is not the fp32 model
    qmodel(IDS).logsumexp(-1).sum().backward()
    reference(IDS).logsumexp(-1).sum().backward()
    for (_, a), (_, b) in zip(lora_layers(qmodel).items(), lora_layers(reference).items(), strict=True):
        torch.testing.assert_close(a.lora_A.grad, b.lora_A.grad, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(a.lora_B.grad, b.lora_B.grad, atol=1e-5, rtol=1e-4)
    assert all(not p.requires_grad for n, p in qmodel.named_parameters() if "lora_" not in n)


def test_merge_folds_into_the_dequantised_weight():
    base = random_llama(SMALL, std=0.2)
    model = copy.deepcopy(base)
    add_qlora(model, ("q_proj", "v_proj", "down_proj"), r=4, alpha=8, group_size=GROUP)
    randomise_B(model)
    # the bug users ship: the update added to the original fp32 weights, which the adapter never saw
    wrong = copy.deepcopy(base)
    with torch.no_grad():
        for name, layer in lora_layers(model).items():
            wrong.get_submodule(name).weight += layer.delta_weight()
        adapted = model(IDS)
        merged_names = merge_qlora(model)
        merged = model(IDS)
    assert len(merged_names) == 6 and not lora_layers(model)
    assert isinstance(model.layers[0].self_attn.q_proj, nn.Linear)
    assert isinstance(model.layers[0].self_attn.k_proj, Int4Linear)  # the rest stays int4
    assert (merged - adapted).abs().max() <= 1e-5
    assert (wrong(IDS) - adapted).abs().max() > 1e-3  # so a merge into the fp32 weights would fail the line above


def test_merge_smollm2_int4():
    model = Llama.from_pretrained()
    add_qlora(model, ("q_proj", "v_proj"), r=8, alpha=16)
    randomise_B(model, std=0.02)
    ids = torch.tensor([[1, 504, 3458, 314, 260, 2356, 28, 5320, 30]])
    with torch.no_grad():
        adapted = model(ids)
        merge_qlora(model)
        assert (model(ids) - adapted).abs().max() <= 1e-4


def test_memory_counts_the_tensors():
    model = random_llama(SMALL)
    P = sum(p.numel() for p in model.parameters())

    def one_step(m):
        opt = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=1e-3)
        m(IDS).logsumexp(-1).sum().backward()
        opt.step()
        return memory_bytes(m, opt)

    full = one_step(copy.deepcopy(model))
    assert full == {"weights": 4 * P, "gradients": 4 * P, "optimizer": 8 * P, "total": 16 * P}
    lora = copy.deepcopy(model)
    add_lora(lora, ("q_proj", "v_proj"), r=4, alpha=8)
    n = trainable_parameters(lora)
    assert one_step(lora) == {"weights": 4 * (P + n), "gradients": 4 * n, "optimizer": 8 * n, "total": 4 * P + 16 * n}
    q = copy.deepcopy(model)
    add_qlora(q, ("q_proj", "v_proj"), r=4, alpha=8, group_size=GROUP)
    linear = sum(m.weight.numel() for name, m in model.named_modules() if isinstance(m, nn.Linear))
    scales = linear // GROUP
    mem = one_step(q)
    assert mem["weights"] == 4 * (P - linear) + linear // 2 + 2 * scales + 4 * n
    assert mem["gradients"] == 4 * n and mem["optimizer"] == 8 * n


def test_bad_input():
    with pytest.raises(TypeError, match="Int4Linear quantizes an nn.Linear, got Embedding"):
        Int4Linear(nn.Embedding(4, 4))
    with pytest.raises(ValueError, match="bias-free"):
        Int4Linear(nn.Linear(4, 4, bias=True))
    with pytest.raises(ValueError, match="group_size 64 does not divide the input dimension 32"):
        add_qlora(random_llama(SMALL))
    with pytest.raises(TypeError, match="QLoRALinear wraps a layer of type Int4Linear, got Linear"):
        QLoRALinear(nn.Linear(4, 4), r=2, alpha=2)
    model = random_llama(SMALL)
    add_qlora(model, ("q_proj",), group_size=GROUP)
    with pytest.raises(RuntimeError, match="cannot merge into its 4-bit weight; use merge_qlora"):
        model.layers[0].self_attn.q_proj.merge()
    with pytest.raises(ValueError, match="no QLoRA layers"):
        merge_qlora(random_llama(SMALL))
