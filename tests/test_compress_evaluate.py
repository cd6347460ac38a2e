"""labkit.compress.evaluate: perplexity and KL to a reference model on the same windows."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F

from labkit.compress.evaluate import Reference, evaluate, reference_logprobs
from labkit.gqa import perplexity, window_losses
from tiny_llama import random_llama

pytestmark = pytest.mark.usefixtures("torch_one_thread")
WINDOWS = torch.randint(0, 97, (5, 17), generator=torch.Generator().manual_seed(0))


def perturbed(model, eps=0.05, seed=1):
    other = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * eps)
    return other


def test_reference_against_itself_is_zero_kl():
    model = random_llama(std=0.3)
    ref = reference_logprobs(model, WINDOWS)
    out = evaluate(model, WINDOWS, ref)
    assert out["kl"] == 0 and out["delta_loss"] == 0 and out["delta_loss_se"] == 0
    assert math.isclose(out["ppl"], perplexity(model, WINDOWS), rel_tol=1e-6)   # float32 log-softmax
    assert out["windows"] == 5 and out["tokens"] == 5 * 16
    low, high = out["ppl_spread"]
    assert low < out["ppl"] < high


def test_variant_matches_oracles():
    model = random_llama(std=0.3)
    other = perturbed(model)
    ref = reference_logprobs(model, WINDOWS, batch_size=2)
    out = evaluate(other, WINDOWS, ref, batch_size=3)
    torch.testing.assert_close(torch.tensor(out["losses"], dtype=torch.float64), window_losses(other, WINDOWS),
                               rtol=1e-6, atol=0)
    with torch.no_grad():
        logp = F.log_softmax(model(WINDOWS[:, :-1]), -1)
        logq = F.log_softmax(other(WINDOWS[:, :-1]), -1)
    kl = F.kl_div(logq, logp, log_target=True, reduction="none").sum(-1).mean(1)   # torch's KL(p || q) per window
    torch.testing.assert_close(torch.tensor(out["kls"], dtype=torch.float64), kl.double(), rtol=1e-4, atol=1e-7)
    assert out["kl"] > 0
    torch.testing.assert_close(torch.tensor(out["delta_loss"], dtype=torch.float64),
                               window_losses(other, WINDOWS).mean() - window_losses(model, WINDOWS).mean(),
                               rtol=1e-5, atol=1e-9)


def test_larger_perturbation_moves_further():
    model = random_llama(std=0.3)
    ref = reference_logprobs(model, WINDOWS)
    kls = [evaluate(perturbed(model, eps), WINDOWS, ref)["kl"] for eps in (0.01, 0.05, 0.2)]
    assert kls == sorted(kls) and kls[0] > 0


def test_errors():
    model = random_llama()
    ref = reference_logprobs(model, WINDOWS)
    assert isinstance(ref, Reference) and ref.logprobs.shape == (5, 16, 97)
    with pytest.raises(ValueError, match="very windows the reference scored"):
        evaluate(model, WINDOWS[:3], ref)
    with pytest.raises(ValueError, match="very windows the reference scored"):
        evaluate(model, WINDOWS.flip(0), ref)
    with pytest.raises(TypeError, match="Reference from reference_logprobs, got dict"):
        evaluate(model, WINDOWS, {})
    with pytest.raises(ValueError, match=r"integer token-id tensor \[batch, T\].*torch.float32"):
        reference_logprobs(model, WINDOWS.float())
    with pytest.raises(ValueError, match=r"T >= 2, got shape \(5,\)"):
        reference_logprobs(model, WINDOWS[:, 0])
