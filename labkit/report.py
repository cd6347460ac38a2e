"""Printing measured numbers so that a notebook's output reads the same on every CPU.

The last digits of a float depend on which kernels computed it (labkit/course/cpu.py says why), so a committed
output prints what survives a change of CPU: an error as a bound that the cell asserts, a count exactly.
"""
from __future__ import annotations

import math


def below(value: float, bound: float) -> str:
    """Assert 0 <= value < bound (a measured error) and return the claim as text, e.g. '< 1e-05'.

    The printed bound is the claim the notebook makes; the assertion makes the cell fail, on any machine,
    the moment the claim stops being true.
    """
    value, bound = float(value), float(bound)
    if not bound > 0 or math.isinf(bound):
        raise ValueError(f"bound must be a finite number > 0, got {bound!r}")
    if math.isnan(value) or not 0 <= value < bound:
        raise AssertionError(f"measured {value:.3g}, which is not below the stated bound {bound:.0e}")
    return f"< {bound:.0e}"
