"""UCT search (labkit.reasoning.mcts) on a toy tree and on Game of 24 with the exact oracle."""
from __future__ import annotations

import math

import pytest
from hypothesis import given, settings, strategies as st

from labkit.reasoning.mcts import mcts, uct
from labkit.reasoning.tot import bfs

TARGET = (1, 0, 1, 1)


def propose_bits(s):
    return [s + (0,), s + (1,)] if len(s) < 4 else []


def test_uct_is_mean_plus_exploration_bonus():
    assert uct(3.0, 4, 10, 0.0) == 0.75
    assert uct(3.0, 4, 10, 2.0) == pytest.approx(0.75 + 2 * math.sqrt(math.log(10) / 4))


def test_greedy_mcts_with_an_exact_value_goes_straight_down():
    search = mcts((), propose_bits, lambda s: float(s == TARGET[:len(s)]), depth=4,
                  is_goal=lambda s: s == TARGET, budget=100, c=0.0)
    assert search.solutions == [TARGET] and search.evaluations == 8 and search.proposals == 4
    assert len(search.nodes) == 9


def test_mcts_exhausts_a_tree_without_a_goal_and_never_overspends():
    search = mcts((), propose_bits, lambda s: 0.0, depth=4, is_goal=lambda s: False, budget=100)
    assert not search.solved and search.evaluations == 30 and len(search.nodes) == 31
    small = mcts((), propose_bits, lambda s: 0.0, depth=4, is_goal=lambda s: False, budget=7)
    assert small.evaluations <= 7 and len(small.nodes) == small.evaluations + 1


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 40), st.floats(0, 3), st.integers(0, 15))
def test_mcts_respects_any_budget_and_finds_any_goal_when_the_budget_covers_the_tree(budget, c, goal):
    target = tuple(int(b) for b in f"{goal:04b}")
    search = mcts((), propose_bits, lambda s: 0.5, depth=4, is_goal=lambda s: s == target, budget=budget, c=c)
    assert search.evaluations <= budget
    if budget >= 30:
        assert search.solutions == [target]
    assert all(n.parent is None or search.nodes[n.parent].depth == n.depth - 1 for n in search.nodes)


def test_with_the_oracle_greedy_mcts_solves_every_solvable_puzzle_within_the_bfs_budget():
    from labkit.reasoning import game24

    value = lambda s: float(game24.is_solvable(s))  # noqa: E731
    for p in game24.all_puzzles()[::7]:
        root = game24.start(p)
        if not game24.is_solvable(root):
            continue
        budget = bfs(root, game24.next_steps, value, breadth=1, depth=3, is_goal=game24.is_solved).evaluations
        search = mcts(root, game24.next_steps, value, depth=3, is_goal=game24.is_solved, budget=budget, c=0.0)
        assert search.solved and game24.check_expression(game24.expression(search.solutions[0]), p).ok


def test_mcts_rejects_bad_arguments():
    with pytest.raises(ValueError, match="budget must be an int >= 1"):
        mcts((), propose_bits, lambda s: 0.0, depth=4, is_goal=bool, budget=0)
    with pytest.raises(ValueError, match="c \\(the exploration weight\\)"):
        mcts((), propose_bits, lambda s: 0.0, depth=4, is_goal=bool, budget=5, c=-1)
    with pytest.raises(ValueError, match="depth must be an int >= 1"):
        mcts((), propose_bits, lambda s: 0.0, depth=0, is_goal=bool, budget=5)
