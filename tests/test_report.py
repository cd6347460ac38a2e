import math

import pytest

from labkit.report import below


def test_below_states_the_bound():
    assert below(3.2e-7, 1e-5) == "< 1e-05"
    assert below(0.0, 1e-3) == "< 1e-03"


@pytest.mark.parametrize("value", [1e-5, 2e-5, math.nan, -1.0])
def test_below_fails_when_the_claim_is_false(value):
    with pytest.raises(AssertionError, match="not below the stated bound 1e-05"):
        below(value, 1e-5)


@pytest.mark.parametrize("bound", [0.0, -1.0, math.inf])
def test_below_refuses_a_meaningless_bound(bound):
    with pytest.raises(ValueError, match="bound must be a finite number > 0"):
        below(1.0, bound)
