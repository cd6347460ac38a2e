"""labkit.compress.awq and .gptq, and quantize's whole-model helpers: AWQ with alpha = 0 is round-to-nearest,
GPTQ equals the one-weight-at-a-time OBQ update it accelerates (written here from the paper's equations with
an explicit inverse), and both beat round-to-nearest on the output error they minimise."""
import pytest
import torch

from labkit.compress.awq import awq_model, awq_quantize, awq_scales
from labkit.compress.gptq import gptq_model, gptq_quantize, hessian
from labkit.compress.quantize import (block_linears, code_range, linear_inputs, quantize, quantize_model,
                                      with_weights)
from tiny_llama import random_llama

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def activations(tokens=256, dim=64, seed=0, outliers=(3, 40)) -> torch.Tensor:
    """Correlated activations with a few channels far larger than the rest, as in real LLMs."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, dim, generator=gen) @ (torch.randn(dim, dim, generator=gen) * 0.3)
    x[:, list(outliers)] *= 30
    return x


def matrix(out=24, inp=64, seed=1) -> torch.Tensor:
    return torch.randn(out, inp, generator=torch.Generator().manual_seed(seed)) * 0.05


def output_error(x, w, w_hat) -> float:
    w, w_hat = w.detach(), w_hat.detach()
    return float((x @ (w_hat - w).T).norm() / (x @ w.T).norm())


# ---- GPTQ --------------------------------------------------------------------------------------------------

def obq_reference(w, h, bits, group_size, symmetric, damp=0.01):
    """Quantize the columns in order; after each, move the remaining columns by the OBQ update
    delta_F = -(w_j - q_j) / [H_F^-1]_jj (H_F^-1)_{j,F} and remove j from H_F^-1 (Frantar et al. 2022, eq. 2-3)."""
    h = h.double() + damp * torch.diagonal(h.double()).mean() * torch.eye(h.shape[0], dtype=torch.float64)
    hinv = torch.linalg.inv(h)
    work = w.double().clone()
    out = torch.zeros_like(work)
    low, high = code_range(bits, symmetric)
    for j in range(w.shape[1]):
        if j % (group_size or w.shape[1]) == 0:
            p = quantize(work[:, j:j + (group_size or w.shape[1])].float(), bits, "channel", None, symmetric)
            scale, zero = p.scale.double()[:, 0], (0 if p.zero is None else p.zero.double()[:, 0])
        q = ((torch.round(work[:, j] / scale) + zero).clamp(low, high) - zero) * scale
        out[:, j] = q
        err = (work[:, j] - q) / hinv[j, j]
        work[:, j:] -= err[:, None] * hinv[j, j:][None, :]
        hinv = hinv - torch.outer(hinv[:, j], hinv[j, :]) / hinv[j, j]
    return out


@pytest.mark.parametrize("group_size,symmetric", [(None, False), (16, False), (32, True)])
def test_gptq_equals_obq_reference(group_size, symmetric):
    x, w = activations(), matrix()
    h = hessian(x)
    q = gptq_quantize(w, h, 4, group_size, symmetric, block=24)   # 24 -> 16 or 32: groups align with blocks
    expected = obq_reference(w, h, 4, group_size, symmetric)
    torch.testing.assert_close(q.dequantize().double(), expected, rtol=0, atol=1e-6)


def test_gptq_blocks_change_nothing():
    x, w = activations(), matrix()
    h = hessian(x)
    a, b = gptq_quantize(w, h, 4, 16, block=16), gptq_quantize(w, h, 4, 16, block=64)
    assert torch.equal(a.codes, b.codes) and torch.equal(a.scale, b.scale)


def test_gptq_with_uncorrelated_inputs_is_round_to_nearest():
    """A diagonal H couples no two columns: there is nothing to compensate with."""
    w = matrix()
    h = torch.diag(torch.linspace(0.5, 3.0, 64, dtype=torch.float64))
    for g in (None, 16):
        q = gptq_quantize(w, h, 4, g, False)
        rtn = quantize(w, 4, "group" if g else "channel", g, False)
        assert torch.equal(q.codes, rtn.codes) and torch.equal(q.scale, rtn.scale)


def test_gptq_beats_round_to_nearest_on_its_objective():
    x, w = activations(), matrix()
    for g in (None, 16):
        q = gptq_quantize(w, hessian(x), 4, g, False)
        rtn = quantize(w, 4, "group" if g else "channel", g, False)
        assert q.codes.shape == w.shape and q.scale.shape == rtn.scale.shape and q.zero.shape == rtn.zero.shape
        assert output_error(x, w, q.dequantize()) < 0.8 * output_error(x, w, rtn.dequantize())


def test_gptq_dead_inputs():
    x, w = activations(), matrix()
    x[:, 7] = 0
    q = gptq_quantize(w, hessian(x), 4, 16)
    assert bool(torch.isfinite(q.dequantize()).all())
    assert bool((q.dequantize()[:, 7] == 0).all())     # an input that is always 0: its weights do not matter


def test_gptq_errors():
    w = matrix()
    with pytest.raises(ValueError, match=r"h must be \[in, in\] = \[64, 64\]"):
        gptq_quantize(w, torch.eye(32), 4, 16)
    with pytest.raises(ValueError, match="group_size 48 does not divide the input dimension 64"):
        gptq_quantize(w, torch.eye(64), 4, 48)
    with pytest.raises(ValueError, match="bits must be an int in 2..8"):
        gptq_quantize(w, torch.eye(64), 9, 16)
    with pytest.raises(ValueError, match=r"x must be float activations \[tokens, in\]"):
        hessian(torch.ones(4, dtype=torch.long))


# ---- AWQ ---------------------------------------------------------------------------------------------------

def test_awq_alpha_zero_is_round_to_nearest():
    x, w = activations(), matrix()
    (w_hat,), (q,), alpha = awq_quantize([w], x, 4, 16, grid=1)
    assert alpha == 0 and torch.equal(w_hat, quantize(w, 4, "group", 16, False).dequantize())


def test_awq_protects_salient_channels():
    x, w = activations(), matrix()
    rtn = quantize(w, 4, "group", 32, False).dequantize()
    (w_hat,), _, alpha = awq_quantize([w], x, 4, 32)
    assert alpha > 0
    assert output_error(x, w, w_hat) < 0.9 * output_error(x, w, rtn)
    # the columns reading the outlier channels are reconstructed better than round-to-nearest does
    for j in (3, 40):
        assert float((w_hat - w)[:, j].norm()) < float((rtn - w)[:, j].norm())


def test_awq_scales_are_the_best_of_the_grid():
    x, ws = activations(), [matrix(seed=1), matrix(16, seed=2)]
    s, alpha = awq_scales(ws, x, 4, 16)
    assert s.shape == (64,) and torch.isclose(s.max() * s.min(), torch.tensor(1.0))

    def err(a):
        sa = x.abs().mean(0).pow(a).clamp(min=1e-4)
        sa = sa / (sa.max() * sa.min()).sqrt()
        return sum(output_error(x, w, quantize(w * sa, 4, "group", 16, False).dequantize() / sa) ** 2
                   * float((x @ w.T).norm()) ** 2 for w in ws)
    chosen = err(alpha)
    assert all(chosen <= err(i / 20) * (1 + 1e-6) for i in range(20))


def test_awq_errors():
    with pytest.raises(ValueError, match=r"every weight must be \[out, 64\]"):
        awq_scales([matrix(inp=32)], activations())
    with pytest.raises(ValueError, match=r"x must be float activations"):
        awq_scales([matrix()], torch.ones(64))


# ---- whole models -------------------------------------------------------------------------------------------

def test_linear_inputs_and_with_weights():
    model = random_llama()
    ids = torch.randint(0, 97, (2, 9), generator=torch.Generator().manual_seed(0))
    xs = linear_inputs(model, ids)
    assert list(xs) == list(block_linears(model)) and len(xs) == 2 * 7
    assert xs["layers.0.self_attn.q_proj"] is xs["layers.0.self_attn.v_proj"]
    assert xs["layers.1.mlp.gate_proj"] is xs["layers.1.mlp.up_proj"]
    assert xs["layers.0.mlp.down_proj"].shape == (18, 48)
    with torch.no_grad():   # layer 0's q, k, v read the normalised embeddings
        expected = model.layers[0].input_layernorm(model.embed_tokens(ids)).reshape(-1, 32)
    torch.testing.assert_close(xs["layers.0.self_attn.q_proj"], expected)

    name = "layers.1.self_attn.o_proj"
    copy = with_weights(model, {name: torch.zeros(32, 32)})
    assert bool((copy.get_submodule(name).weight == 0).all())
    assert not bool((model.get_submodule(name).weight == 0).all())             # the original is untouched
    assert copy.embed_tokens.weight is model.embed_tokens.weight               # the rest is shared
    with pytest.raises(KeyError, match="not a block matrix"):
        with_weights(model, {"embed_tokens": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"weight shape \(3, 3\), expected \(32, 32\)"):
        with_weights(model, {name: torch.zeros(3, 3)})


def test_models_quantized_three_ways():
    model = random_llama(std=0.2)
    calib = torch.randint(0, 97, (2, 33), generator=torch.Generator().manual_seed(1))
    rtn, rtn_bytes = quantize_model(model, 4, "group", 16, symmetric=False)
    awq, awq_bytes, alphas = awq_model(model, calib, 4, 16)
    gptq, gptq_bytes = gptq_model(model, calib, 4, 16)
    assert rtn_bytes == awq_bytes == gptq_bytes == sum(
        quantize(m.weight, 4, "group", 16, symmetric=False).nbytes() for m in block_linears(model).values())
    assert len(alphas) == 2 * 4                          # q+k+v, o, gate+up, down in each of 2 layers
    xs = linear_inputs(model, calib)

    def total(m):  # summed relative output error over the matrices, on the calibration inputs
        return sum(output_error(xs[n], lin.weight, block_linears(m)[n].weight) for n, lin in
                   block_linears(model).items())
    assert total(gptq) < total(rtn) and total(awq) <= total(rtn) * (1 + 1e-6)
