"""Tree of Thoughts search (labkit.reasoning.tot): the BFS step, BFS and DFS on toy trees and on Game of 24."""
from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from labkit.reasoning.tot import bfs, bfs_step, dfs

# a toy tree: states are tuples of bits, a thought appends one bit; the goal is one hidden string
TARGET = (1, 0, 1, 1)


def propose_bits(s):
    return [s + (0,), s + (1,)] if len(s) < len(TARGET) else []


def prefix_value(s):
    """1 if s is a prefix of TARGET, else 0 (an exact oracle)."""
    return float(s == TARGET[:len(s)])


def test_bfs_step_keeps_the_best_children_of_every_state_best_first():
    frontier = [(0,), (1,)]
    value = lambda s: sum(s) + 0.1 * len(s)  # noqa: E731
    out = bfs_step(frontier, propose_bits, value, breadth=3)
    assert out == [(1, 1), (0, 1), (1, 0)]   # (0,1) and (1,0) tie: generation order (children of (0,) first)


def test_bfs_step_scores_candidates_not_parents():
    # the parent (1,) is the better one, but its children are worse than (0,)'s
    value = {(0,): 0, (1,): 9, (0, 0): 5, (0, 1): 4, (1, 0): 1, (1, 1): 2}.__getitem__
    assert bfs_step([(0,), (1,)], propose_bits, value, breadth=2) == [(0, 0), (0, 1)]


def test_bfs_step_with_a_constant_value_keeps_the_first_proposals():
    assert bfs_step([(0,), (1,)], propose_bits, lambda s: 0.0, breadth=3) == [(0, 0), (0, 1), (1, 0)]


def test_bfs_step_returns_fewer_when_there_are_fewer_candidates():
    assert bfs_step([(1,)], propose_bits, lambda s: 0.0, breadth=5) == [(1, 0), (1, 1)]
    assert bfs_step([], propose_bits, lambda s: 0.0, breadth=5) == []


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.integers(-3, 3), max_size=4), max_size=4), st.integers(1, 6))
def test_bfs_step_equals_a_full_sort_by_value_then_generation_order(children, breadth):
    # frontier state i proposes the candidates (i, j) with value children[i][j]
    frontier = list(range(len(children)))
    propose = lambda i: [(i, j) for j in range(len(children[i]))]  # noqa: E731
    value = lambda c: children[c[0]][c[1]]  # noqa: E731
    flat = [(i, j) for i in frontier for j in range(len(children[i]))]
    ranked = sorted(range(len(flat)), key=lambda k: (-value(flat[k]), k))
    assert bfs_step(frontier, propose, value, breadth) == [flat[k] for k in ranked[:breadth]]


def test_bfs_step_rejects_bad_arguments():
    with pytest.raises(ValueError, match="breadth must be an int >= 1"):
        bfs_step([()], propose_bits, prefix_value, 0)
    with pytest.raises(ValueError, match="breadth must be an int >= 1"):
        bfs_step([()], propose_bits, prefix_value, True)
    with pytest.raises(TypeError, match="frontier must be a sequence"):
        bfs_step(iter([()]), propose_bits, prefix_value, 1)


def test_bfs_with_the_oracle_value_finds_the_target_and_records_the_tree():
    search = bfs((), propose_bits, prefix_value, breadth=1, depth=4, is_goal=lambda s: s == TARGET)
    assert search.solutions == [TARGET]
    # breadth 1: one state expanded per step, two children each
    assert search.proposals == 4 and search.evaluations == 8 and len(search.nodes) == 9
    kept = [n.state for n in search.nodes if n.status in ("kept", "solution")]
    assert kept == [TARGET[:k] for k in range(1, 5)]
    assert all(n.parent is None or search.nodes[n.parent].depth == n.depth - 1 for n in search.nodes)


def test_bfs_with_a_useless_value_needs_breadth():
    # constant value keeps the first-generated children: all-zero prefixes, never the target with b = 1
    narrow = bfs((), propose_bits, lambda s: 0.0, breadth=1, depth=4, is_goal=lambda s: s == TARGET)
    wide = bfs((), propose_bits, lambda s: 0.0, breadth=16, depth=4, is_goal=lambda s: s == TARGET)
    assert not narrow.solved and wide.solutions == [TARGET]


def test_dfs_backtracks_to_the_solution_and_prunes_below_threshold():
    # a misleading value: prefers 0 bits, but a dead end (too many zeros) is valued below the threshold
    value = lambda s: 0.0 if s.count(0) > 1 else 1.0 - 0.1 * sum(s)  # noqa: E731
    search = dfs((), propose_bits, value, depth=4, is_goal=lambda s: s == TARGET, threshold=0.5)
    assert search.solutions == [TARGET]
    statuses = {n.state: n.status for n in search.nodes}
    assert statuses[(0, 0)] == "pruned" and statuses[TARGET] == "solution"
    assert statuses[(0,)] == "kept"   # visited first (higher value), then backtracked from


def test_dfs_stops_at_the_step_budget():
    search = dfs((), propose_bits, lambda s: 1.0, depth=4, is_goal=lambda s: s == (1, 1, 1, 1), max_steps=3)
    assert search.proposals == 3 and not search.solved
    every = dfs((), propose_bits, lambda s: 1.0, depth=4, is_goal=lambda s: True, all_solutions=True)
    assert len(every.solutions) == 16 and every.proposals == 15


def test_search_rejects_bad_depth_and_budget():
    with pytest.raises(ValueError, match="depth must be an int >= 1"):
        bfs((), propose_bits, prefix_value, breadth=1, depth=0)
    with pytest.raises(ValueError, match="max_steps must be an int >= 1"):
        dfs((), propose_bits, prefix_value, depth=2, is_goal=bool, max_steps=0)


# ---- Game of 24 with the exact solver as the oracle: a failure here is a bug in the search, not the model ----

def _oracle_value(state):
    from labkit.reasoning import game24

    return float(game24.is_solvable(state))


def _solvable_puzzles():
    from labkit.reasoning import game24

    return [p for p in game24.all_puzzles() if game24.is_solvable(game24.start(p))]


def test_with_the_oracle_bfs_and_dfs_solve_every_solvable_puzzle():
    from labkit.reasoning import game24

    puzzles = _solvable_puzzles()
    assert len(puzzles) == 1362
    for p in puzzles:
        for search in (bfs(game24.start(p), game24.next_steps, _oracle_value, breadth=1, depth=3,
                           is_goal=game24.is_solved),
                       dfs(game24.start(p), game24.next_steps, _oracle_value, depth=3, is_goal=game24.is_solved)):
            assert search.solved, p
            verdict = game24.check_expression(game24.expression(search.solutions[0]), p)
            assert verdict.ok, (p, verdict)


def test_with_the_oracle_dfs_never_backtracks_and_bfs_finds_nothing_on_unsolvable_puzzles():
    from labkit.reasoning import game24

    p = (1, 1, 1, 1)
    assert not bfs(game24.start(p), game24.next_steps, _oracle_value, breadth=5, depth=3,
                   is_goal=game24.is_solved).solved
    search = dfs(game24.start(p), game24.next_steps, _oracle_value, depth=3, is_goal=game24.is_solved)
    assert not search.solved and search.proposals == 1   # every child of the root is pruned
    search = dfs(game24.start((4, 9, 10, 13)), game24.next_steps, _oracle_value, depth=3, is_goal=game24.is_solved)
    assert search.proposals == 3   # exact values: straight down, one expansion per level


# ---- the model's side (labkit.reasoning.prompts24): parsing never evaluates, and counts what is malformed ----

def test_parse_proposals_keeps_checked_steps_and_counts_the_rest():
    from labkit.reasoning import game24
    from labkit.reasoning.prompts24 import parse_proposals

    state = game24.start((2, 8, 8, 14))
    text = ("2 + 8 = 10 (left: 8 10 14)\n"
            "8 / 2 = 4 (left: 99)\n"          # a wrong "left" is ignored: the state is recomputed
            "8 + 2 = 10 (left: 8 10 14)\n"    # the same numbers left as the first line: dropped
            "14 - 8 = 5 (left: 2 5 8)\n"      # wrong arithmetic
            "3 * 8 = 24 (left: 2 8 14 24)\n"  # 3 is not among the numbers
            "__import__('os').system('echo hi') = 0\n")
    children, bad = parse_proposals(text, state)
    assert [c.left() for c in children] == ["8 10 14", "4 8 14"]
    assert children[0].steps == ("2 + 8 = 10",)
    assert bad == {"wrong arithmetic": 1, "numbers not available": 1, "unparseable": 1}
    with pytest.raises(TypeError, match="state must be a game24.State"):
        parse_proposals(text, (2, 8, 8, 14))


def test_parse_proposals_reads_fractions_and_steps_rebuild_a_checked_expression():
    from labkit.reasoning import game24
    from labkit.reasoning.prompts24 import parse_proposals, solved_by

    state = game24.start((3, 3, 8, 8))
    for line in ("8 / 3 = 8/3", "3 - 8/3 = 1/3", "8 / 1/3 = 24"):
        (state,), _ = parse_proposals(line, state)
    assert state.numbers == (24,) and solved_by(state, (3, 3, 8, 8))


def test_label_value_maps_the_words_like_the_paper():
    from labkit.reasoning.prompts24 import label_value

    assert label_value([0.0, -1e9, -1e9]) == pytest.approx(20.0)
    assert label_value([-1e9, -1e9, 0.0]) == pytest.approx(0.001)
    assert label_value([-1.0, -1.0, -1.0]) == pytest.approx((20 + 1 + 0.001) / 3)


def test_vote_groups_answers_by_canonical_form_and_breaks_ties_by_first_seen():
    from labkit.reasoning.prompts24 import vote

    nums = (4, 9, 10, 13)
    assert vote(["(13 - 9) * (10 - 4)", "junk", "(10 - 4) * (13 - 9)"], nums) == "(13 - 9) * (10 - 4)"
    assert vote(["junk", "(13 - 9) * (10 - 4)"], nums) == "junk"


def test_answer_line_and_the_puzzle_set_are_deterministic():
    from labkit.reasoning import game24
    from labkit.reasoning.prompts24 import BINS, answer_line, puzzle_set

    assert answer_line("Steps:\n1 + 2 = 3\nAnswer: (1 + 2) * 8 = 24\nmore") == "(1 + 2) * 8 = 24"
    assert answer_line("") == ""
    first, again = puzzle_set(2), puzzle_set(2)
    assert first == again and len(first) == 2 * len(BINS)
    census = game24.census()
    for k, (lo, hi) in enumerate(BINS):
        assert all(lo <= census[p] <= hi for p in first[2 * k:2 * k + 2])


@pytest.mark.slow
def test_the_saved_runs_first_greedy_proposal_reproduces():
    from labkit.course.saved import load
    from labkit.llm import connect
    from labkit.reasoning import game24
    from labkit.reasoning.prompts24 import ModelThoughts

    try:
        record = load("11-search").record
    except FileNotFoundError:
        pytest.skip("results/11-search.json not saved yet")
    thoughts = ModelThoughts(connect())
    thoughts.propose(game24.start(record["first_proposal"]["numbers"]))
    (text, *_), = thoughts._proposals.values()
    assert text == record["first_proposal"]["text"]
