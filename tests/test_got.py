"""Graph of Thoughts in miniature (labkit.reasoning.got): the exact scorer, the three plans, the noisy oracle."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from labkit.reasoning.got import (NoisyOracleSorter, cot_sort, got_sort, inversions, parse_list, sort_errors,
                                  tot_sort)

ints = st.lists(st.integers(0, 9), min_size=1, max_size=40)


@settings(max_examples=200, deadline=None)
@given(ints)
def test_sort_errors_is_zero_exactly_on_the_sorted_input(xs):
    assert sort_errors(sorted(xs), xs) == 0
    if sorted(xs) != list(reversed(sorted(xs))):
        assert sort_errors(list(reversed(sorted(xs))), xs) > 0
    assert sort_errors(sorted(xs)[1:], xs) == 1            # one missing element
    assert sort_errors(sorted(xs + [xs[-1]]), xs) == 1     # one extra element


@settings(max_examples=200, deadline=None)
@given(ints)
def test_inversions_equal_the_bubble_sort_swap_count(xs):
    ys, swaps = list(xs), 0
    for i in range(len(ys)):
        for j in range(len(ys) - 1 - i):
            if ys[j] > ys[j + 1]:
                ys[j], ys[j + 1] = ys[j + 1], ys[j]
                swaps += 1
    assert inversions(xs) == swaps


@settings(max_examples=100, deadline=None)
@given(ints, st.integers(1, 4), st.integers(1, 3))
def test_with_an_exact_sorter_every_plan_sorts_and_got_uses_the_expected_calls(xs, chunks, k):
    exact = NoisyOracleSorter(sort_rate=0.0, merge_rate=0.0)
    chunks = min(chunks, len(xs))
    assert cot_sort(xs, exact) == sorted(xs) == tot_sort(xs, exact, k) == got_sort(xs, exact, chunks, k)
    exact.cost.calls = 0
    got_sort(xs, exact, chunks, k)
    size = -(-len(xs) // chunks)
    parts = len(range(0, len(xs), size))
    assert exact.cost.calls == k * parts + k * (parts - 1) + k   # sorts, merges (a binary tree), refinements


def test_the_graph_beats_the_tree_at_the_same_calls_with_the_noisy_oracle():
    lists = [[int(v) for v in np.random.default_rng(t).integers(0, 10, 32)] for t in range(30)]
    exact = {}
    for name, plan in (("cot", lambda x, s: cot_sort(x, s)), ("tot", lambda x, s: tot_sort(x, s, k=12)),
                       ("got", lambda x, s: got_sort(x, s, chunks=4, k=3))):
        sorter = NoisyOracleSorter(seed=1)
        exact[name] = sum(sort_errors(plan(xs, sorter), xs) == 0 for xs in lists)
        if name != "cot":
            assert sorter.cost.calls == 24 * len(lists)          # the same number of calls
    assert exact["cot"] < exact["tot"] < exact["got"]


def test_the_noisy_oracle_is_seeded():
    xs = list(range(20, 0, -1))
    assert NoisyOracleSorter(seed=3).sort(xs) == NoisyOracleSorter(seed=3).sort(xs)


def test_parse_list_reads_digits_only():
    assert parse_list("[1, 2, 10]") == [1, 2, 10]
    assert parse_list("sure: [3,4") == [3, 4]
    assert parse_list("no list here") is None
    assert parse_list("[__import__('os')]") == []


def test_bad_arguments_are_named():
    with pytest.raises(TypeError, match="output must be a sequence of ints"):
        sort_errors("123", [1, 2, 3])
    with pytest.raises(TypeError, match="xs must be a non-empty sequence of ints"):
        cot_sort([], NoisyOracleSorter())
    with pytest.raises(ValueError, match="k \\(attempts per thought\\)"):
        tot_sort([1, 2], NoisyOracleSorter(), k=0)
    with pytest.raises(ValueError, match="chunks must be an int in 1..len\\(xs\\)"):
        got_sort([1, 2], NoisyOracleSorter(), chunks=3)
