"""Graded checks for the labs: one module per chapter, named like the chapter's labkit module.

Each `check_<name>(fn)` calls the student's function on several inputs (edge cases included), compares with
labkit's reference and with properties any correct answer has, and raises AssertionError saying what is wrong
(which input, expected vs got). On success it prints one line, e.g. "✓ count_ngrams passes 6 checks".
A stub that raises NotImplementedError is not caught: the blank lab must fail loudly.
"""
from __future__ import annotations

from collections.abc import Callable

# Helpers every chapter's checks share.


def _short(obj: object, limit: int = 160) -> str:
    text = repr(obj)
    return text if len(text) <= limit else text[:limit] + " ...]"


def _call(fn: Callable, call: str, *args):
    """fn(*args); NotImplementedError propagates (the blank lab must fail), other errors name the input."""
    try:
        return fn(*args)
    except NotImplementedError:
        raise
    except Exception as e:
        raise AssertionError(f"{call} raised {type(e).__name__}: {e}") from e


def _passed(name: str, checks: int) -> None:
    print(f"✓ {name} passes {checks} checks")
