"""Graded checks for the labs: one module per chapter, named like the chapter's labkit module.

Each `check_<name>(fn)` calls the student's function on several inputs (edge cases included), compares with
labkit's reference and with properties any correct answer has, and raises AssertionError saying what is wrong
(which input, expected vs got). On success it prints one line, e.g. "✓ count_ngrams passes 6 checks".
A stub that raises NotImplementedError is not caught: the blank lab must fail loudly.
"""
from __future__ import annotations

import copy
from collections.abc import Callable

# Helpers every chapter's checks share.


def _short(obj: object, limit: int = 160) -> str:
    text = repr(obj)
    return text if len(text) <= limit else text[:limit] + " ...]"


def _snapshot(arg: object) -> object | None:
    """A copy of a mutable argument (tensor, array, list, dict, set), or None for one that cannot change."""
    if hasattr(arg, "shape") and hasattr(arg, "clone"):
        return arg.clone()  # a torch tensor
    if hasattr(arg, "shape") and hasattr(arg, "copy"):
        return arg.copy()  # a numpy array
    if isinstance(arg, (list, dict, set, bytearray)):
        return copy.deepcopy(arg)
    return None


def _unchanged(before: object, after: object) -> bool:
    if hasattr(after, "clone"):
        import torch

        return before.shape == after.shape and bool(((before == after) | (torch.isnan(before) & torch.isnan(after))).all())
    if hasattr(after, "shape"):
        import numpy as np

        try:
            return np.array_equal(before, after, equal_nan=True)
        except TypeError:
            return np.array_equal(before, after)
    return before == after


def _call(fn: Callable, call: str, *args, may_modify: tuple[int, ...] = ()):
    """fn(*args); NotImplementedError propagates (the blank lab must fail), other errors name the input.

    An argument the function changes in place fails the check (unless its index is in `may_modify`, for
    functions whose job is to write into it): `x *= cos` returns the right value and corrupts the caller's x."""
    before = [None if i in may_modify else _snapshot(a) for i, a in enumerate(args)]
    try:
        got = fn(*args)
    except NotImplementedError:
        raise
    except Exception as e:
        raise AssertionError(f"{call} raised {type(e).__name__}: {e}") from e
    for i, (a, b) in enumerate(zip(args, before)):
        if b is not None and not _unchanged(b, a):
            raise AssertionError(f"{call} changed its argument {i + 1} ({type(a).__name__}) in place, so the "
                                 f"caller's data is corrupted. Build a new result instead (e.g. `x = x * cos`, "
                                 f"not `x *= cos`; copy a list before editing it).")
    return got


def _passed(name: str, checks: int) -> None:
    print(f"✓ {name} passes {checks} checks")
