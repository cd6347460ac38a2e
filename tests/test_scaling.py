"""labkit.prompting.scaling: C = 6ND and its inverses, Chinchilla's split of a budget, and the metric argument
for emergence (exact match p^L against the expected token errors), with their errors."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from labkit.prompting.scaling import (CHINCHILLA_TOKENS_PER_PARAM, chinchilla_optimal, crossing_scale, exact_match,
                                      per_token_accuracy, token_errors, tokens_for_budget, training_flops)


def test_worked_example():
    # a budget of 1e12 FLOPs and a 2B-parameter model buy 1e12 / (6 * 2e9) = 83.3 tokens
    assert tokens_for_budget(1e12, 2e9) == pytest.approx(83.333, rel=1e-4)
    assert training_flops(135e6, 2e12) == pytest.approx(1.62e21)


@settings(max_examples=100, deadline=None)
@given(n=st.floats(1e3, 1e13), d=st.floats(1e3, 1e14))
def test_budget_round_trips(n, d):
    c = training_flops(n, d)
    assert tokens_for_budget(c, n) == pytest.approx(d, rel=1e-12)
    n_opt, d_opt = chinchilla_optimal(c)
    assert training_flops(n_opt, d_opt) == pytest.approx(c, rel=1e-12)
    assert d_opt / n_opt == pytest.approx(CHINCHILLA_TOKENS_PER_PARAM)


def test_chinchilla_70b():
    # Chinchilla itself: 70B parameters on 1.4T tokens (20 per parameter), C = 6 * 70e9 * 1.4e12 = 5.88e23
    n, d = chinchilla_optimal(training_flops(70e9, 1.4e12))
    assert n == pytest.approx(70e9) and d == pytest.approx(1.4e12)


def test_exact_match_is_sharper_than_per_token():
    n = torch.logspace(7, 13, 61, dtype=torch.float64)
    p = per_token_accuracy(n)
    assert (p.diff() > 0).all() and (p > 0).all() and (p < 1).all()
    torch.testing.assert_close(exact_match(p, 1), p)
    em = exact_match(p, 20)
    assert (em <= p).all()
    # the longer the answer, the later (in N) exact match crosses one half, and the steeper it rises there
    x1, x20 = crossing_scale(n, p), crossing_scale(n, em)
    assert x20 > 10 * x1
    # the linear metric has no threshold: expected token errors fall smoothly, L(1 - p)
    torch.testing.assert_close(token_errors(p, 20), 20 * (1 - p))


def test_crossing_scale_interpolates_in_log_n():
    n = torch.tensor([1.0, 100.0])
    assert crossing_scale(n, torch.tensor([0.0, 1.0])) == pytest.approx(10.0)
    assert math.isnan(crossing_scale(n, torch.tensor([0.1, 0.2])))
    assert crossing_scale(n, torch.tensor([0.6, 0.9])) == 1.0


def test_errors():
    with pytest.raises(ValueError, match="n_params must be a finite number > 0, got 0"):
        training_flops(0, 10)
    with pytest.raises(ValueError, match="flops must be a finite number > 0"):
        tokens_for_budget(float("inf"), 10)
    with pytest.raises(ValueError, match="tokens_per_param must be a finite number > 0"):
        chinchilla_optimal(1e20, tokens_per_param=-1)
    with pytest.raises(ValueError, match="length must be an int >= 1"):
        exact_match(torch.tensor([0.5]), 0)
    with pytest.raises(ValueError, match="probabilities in"):
        exact_match(torch.tensor([1.5]), 2)
    with pytest.raises(ValueError, match="positive parameter counts"):
        per_token_accuracy(torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="1-D of equal length"):
        crossing_scale(torch.ones(3), torch.ones(2))
