"""labkit.reasoning.game24: the exact solver, the census, the safe checker and the step API."""
import ast
import itertools
from collections import Counter
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labkit.reasoning import game24
from labkit.reasoning.game24 import (State, Verdict, all_puzzles, canonical, census, check_expression, difficulty,
                                     expression, is_solvable, is_solved, next_steps, parse_step, solve, start)

PUZZLES = all_puzzles()
PREFIXES = ("not text", "too long", "syntax error", "disallowed node", "wrong numbers", "division by zero",
            "value is")


# ------------------------------------------------------------------------------------ an independent brute force

def _compile(node: ast.AST):
    """This test's own walker: an expression tree as a function of env = (a, b, c, d), in Fractions."""
    if isinstance(node, ast.Name):
        index = "abcd".index(node.id)
        return lambda env: env[index]
    if isinstance(node, ast.Constant):
        value = Fraction(node.value)
        return lambda env: value
    left, right, op = _compile(node.left), _compile(node.right), type(node.op)
    if op is ast.Add:
        return lambda env: left(env) + right(env)
    if op is ast.Sub:
        return lambda env: left(env) - right(env)
    if op is ast.Mult:
        return lambda env: left(env) * right(env)
    assert op is ast.Div
    return lambda env: left(env) / right(env)  # Fraction / 0 raises ZeroDivisionError


SHAPES = ["((a{}b){}c){}d", "(a{}(b{}c)){}d", "(a{}b){}(c{}d)", "a{}((b{}c){}d)", "a{}(b{}(c{}d))"]
TEMPLATES = [(s.format(*ops), _compile(ast.parse(s.format(*ops), mode="eval").body))
             for s in SHAPES for ops in itertools.product("+-*/", repeat=3)]


def _brute_force_solvable(puzzle) -> bool:
    """Every expression string (5 bracketings x 4^3 operators x every ordering of the numbers), with Fractions."""
    for order in set(itertools.permutations(Fraction(x) for x in puzzle)):
        for _, f in TEMPLATES:
            try:
                if f(order) == 24:
                    return True
            except ZeroDivisionError:
                pass
    return False


def test_census_counts_are_pinned_and_agree_with_a_brute_force():
    assert len(PUZZLES) == 1820 and len(set(PUZZLES)) == 1820
    counts = census()
    solvable = {p for p, n in counts.items() if n > 0}
    assert len(solvable) == 1362  # measured; 458 of the 1820 have no solution
    assert sum(1 for n in counts.values() if n == 1) == 396  # a single distinct solution (this module's forms)
    assert solvable == {p for p in PUZZLES if _brute_force_solvable(p)}


def test_step_oracle_agrees_with_the_solver_on_every_puzzle():
    counts = census()
    assert all(is_solvable(start(p)) == (counts[p] > 0) for p in PUZZLES)


@pytest.mark.parametrize("puzzle, expected", [
    ((3, 3, 8, 8), ["8 / (3 - 8 / 3)"]),
    ((1, 5, 5, 5), ["(5 - 1 / 5) * 5"]),
    ((1, 3, 4, 6), ["6 / (1 - 3 / 4)"]),
    ((1, 1, 1, 1), []),
    ((4, 9, 10, 13), ["4 * (9 + 10 - 13)", "(10 - 4) * (13 - 9)", "(4 - 10) * (9 - 13)"]),
])
def test_known_puzzles(puzzle, expected):
    assert solve(puzzle) == expected
    assert difficulty(puzzle) == len(expected)


def test_solve_works_for_other_sizes_and_targets():
    assert solve([24]) == ["24"] and solve([23]) == []
    assert solve([2, 3], target=6) == ["2 * 3"]
    assert all(check_expression(e, [6, 6, 6, 6])[0] for e in solve([6, 6, 6, 6]))


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(PUZZLES))
def test_every_solution_passes_the_checker_and_they_are_distinct(puzzle):
    found = solve(puzzle)
    assert len(found) == census()[puzzle]
    for text in found:
        assert check_expression(text, puzzle).ok
    forms = [canonical(text) for text in found]
    assert len(set(forms)) == len(forms)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from([p for p in PUZZLES if census()[p] > 0]), st.data())
def test_mutated_solutions_fail_with_the_right_reason(puzzle, data):
    text = data.draw(st.sampled_from(solve(puzzle)))
    numbers = [int(n) for n in text.replace("(", " ").replace(")", " ").split() if n.isdigit()]
    # one number replaced by one that is not in the puzzle
    k = data.draw(st.integers(0, len(numbers) - 1))
    other = data.draw(st.sampled_from([n for n in range(1, 14) if n not in puzzle]))
    tokens, seen = [], -1
    for token in text.split(" "):
        digits = token.strip("()")
        if digits.isdigit():
            seen += 1
            if seen == k:
                token = token.replace(digits, str(other))
        tokens.append(token)
    verdict = check_expression(" ".join(tokens), puzzle)
    assert not verdict.ok and verdict.reason.startswith("wrong numbers")
    # a number dropped
    assert check_expression(text, list(puzzle) + [1]).reason.startswith("wrong numbers")
    # one operator changed: the verdict is whatever exact arithmetic says
    ops = [i for i, ch in enumerate(text) if ch in "+-*/"]
    i = data.draw(st.sampled_from(ops))
    new = data.draw(st.sampled_from([o for o in "+-*/" if o != text[i]]))
    changed = text[:i] + new + text[i + 1:]
    try:
        value = _compile(ast.parse(changed, mode="eval").body)(())
    except ZeroDivisionError:
        assert check_expression(changed, puzzle) == Verdict(False, "division by zero")
    else:
        verdict = check_expression(changed, puzzle)
        assert verdict.ok == (value == 24)
        if value != 24:
            assert verdict.reason.startswith("value is ")


# ------------------------------------------------------------------------------------ the checker

@pytest.mark.parametrize("text, numbers, reason", [
    ("8 / (3 - 8 / 3)", [3, 3, 8, 8], "ok"),
    ("Answer: (10 - 4) * (13 - 9) = 24", [4, 9, 10, 13], "ok"),
    ("8 ÷ (3 − 8 ÷ 3)", [3, 3, 8, 8], "ok"),
    ("  (13-9)*(10-4)  =24 ", [13, 10, 9, 4], "ok"),
    ("4 * 6 * 1 * 1", [1, 1, 4, 6], "ok"),
    ("(10 - 4) * (13 - 9) = 25", [4, 9, 10, 13], "syntax error"),
    ("(10 - 4 * (13 - 9)", [4, 9, 10, 13], "syntax error"),
    ("", [4, 9, 10, 13], "syntax error: the expression is empty"),
    ("Answer:", [4, 9, 10, 13], "syntax error: the expression is empty"),
    ("6\x00 * 4", [1, 1, 4, 6], "syntax error"),
    ("__import__('os').system('true')", [1, 1, 4, 6], "disallowed node Call"),
    ("x * 24", [1, 1, 4, 6], "disallowed node Name"),
    ("-1 + 1 + 4 * 6", [1, 1, 4, 6], "disallowed node UnaryOp"),
    ("6.0 * 4 * 1 * 1", [1, 1, 4, 6], "disallowed node Constant 6.0"),
    ("0x6 * 4 * 1 * 1", [1, 1, 4, 6], "disallowed node Constant '0x6'"),
    ("6 ** 1 * 4 * 1", [1, 1, 4, 6], "disallowed node Pow"),
    ("6 // 1 * 4 * 1", [1, 1, 4, 6], "disallowed node FloorDiv"),
    ("True * 24", [1, 1, 4, 6], "disallowed node Constant True"),
    ("[6 * 4 * 1 * 1]", [1, 1, 4, 6], "disallowed node List"),
    ("6 * 4 * 1 * 1 == 24", [1, 1, 4, 6], "disallowed node Compare"),
    ("6 * 4 * 1 * 1 = 24 = 24", [1, 1, 4, 6], "syntax error"),
    ("'24'", [1, 1, 4, 6], "disallowed node Constant '24'"),
    ("6 * 4 * 1", [1, 1, 4, 6], "wrong numbers (used [1, 4, 6], given [1, 1, 4, 6])"),
    ("6 * 4 * 1 * 1 * 1", [1, 1, 4, 6], "wrong numbers (used [1, 1, 1, 4, 6], given [1, 1, 4, 6])"),
    ("6 * 6 - 12", [1, 6, 12, 2], "wrong numbers"),
    ("8 * 3 * (3 - 3)", [3, 3, 8, 8], "wrong numbers"),
    ("8 / (3 - 3) * 8", [3, 3, 8, 8], "division by zero"),
    ("8 * 3 + 8 - 3", [3, 3, 8, 8], "value is 29 not 24"),
    ("8 / 3 + 8 / 3", [3, 3, 8, 8], "value is 16/3 not 24"),
    (24, [1, 1, 4, 6], "not text"),
    (None, [1, 1, 4, 6], "not text"),
    ("1" * 201, [1, 1, 4, 6], "too long"),
    ("(" * 150 + "1" + ")" * 49, [1, 1, 4, 6], "syntax error"),
])
def test_checker_reasons(text, numbers, reason):
    verdict = check_expression(text, numbers)
    assert isinstance(verdict, Verdict)
    assert verdict.ok == (reason == "ok")
    assert verdict.reason.startswith(reason)


def test_float_round_off_is_not_an_issue():
    assert 8 / (3 - 8 / 3) != 24  # what a float-evaluating checker sees
    assert check_expression("8 / (3 - 8 / 3)", [3, 3, 8, 8]).ok


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_checker_never_raises_on_text(text):
    verdict = check_expression(text, [1, 2, 3, 4])
    assert verdict.ok in (True, False) and verdict.reason.startswith(("ok",) + PREFIXES)


@st.composite
def _expressions(draw, depth=3):
    if depth == 0 or draw(st.booleans()):
        return str(draw(st.integers(0, 13)))
    op = draw(st.sampled_from("+-*/"))
    return f"({draw(_expressions(depth - 1))} {op} {draw(_expressions(depth - 1))})"


@settings(max_examples=300, deadline=None)
@given(_expressions())
def test_checker_agrees_with_exact_arithmetic(text):
    numbers = [int(t) for t in text.replace("(", " ").replace(")", " ").split() if t.isdigit()]
    verdict = check_expression(text, numbers)
    try:
        value = _compile(ast.parse(text, mode="eval").body)(())
    except ZeroDivisionError:
        assert verdict == Verdict(False, "division by zero")
        return
    assert verdict.ok == (value == 24), (text, value, verdict)
    wrong = Counter(numbers) + Counter([5])
    assert check_expression(text, list(wrong.elements())).reason.startswith("wrong numbers")


@pytest.mark.parametrize("numbers, error, match", [
    ("1234", TypeError, "sequence of whole numbers"),
    ([1, 2, 3.0, 4], TypeError, "whole numbers"),
    ([1, 2, True, 4], TypeError, "whole numbers"),
    ([1, -2, 3, 4], ValueError, "non-negative"),
    ([], ValueError, "expected 1 to"),
])
def test_bad_numbers_are_the_callers_error(numbers, error, match):
    with pytest.raises(error, match=match):
        check_expression("1 + 2", numbers)
    with pytest.raises(error, match=match):
        solve(numbers)


def test_the_solver_takes_at_most_six_numbers():
    with pytest.raises(ValueError, match="1 to 6 numbers"):
        solve(list(range(7)))
    assert check_expression("1 + 2", list(range(7))).reason.startswith("wrong numbers")


# ------------------------------------------------------------------------------------ canonical forms

@pytest.mark.parametrize("a, b, same", [
    ("1 + 2 - 3", "2 - (3 - 1)", True),
    ("1 + 2 - 3", "(1 - 3) + 2", True),
    ("2 * (3 / 4)", "(2 * 3) / 4", True),
    ("2 * (3 / 4)", "2 / (4 / 3)", True),
    ("(1 + 2) * (3 + 4)", "(4 + 3) * (2 + 1)", True),
    ("2 * 3 + 2 * 4", "2 * (3 + 4)", False),       # distributivity is not applied
    ("(10 - 4) * (13 - 9)", "(4 - 10) * (9 - 13)", False),  # nor sign flips
    ("5 * 1", "5 / 1", False),
])
def test_canonical_forms(a, b, same):
    assert (canonical(a) == canonical(b)) == same


def test_canonical_rejects_with_the_reason():
    with pytest.raises(ValueError, match="disallowed node Name"):
        canonical("a + 1")


# ------------------------------------------------------------------------------------ steps

def test_steps_from_a_start():
    s = start([4, 9, 10, 13])
    assert s == State((Fraction(4), Fraction(9), Fraction(10), Fraction(13)), ()) and s.left() == "4 9 10 13"
    children = next_steps(s)
    assert len(children) == len({c.numbers for c in children})          # deduplicated
    assert all(len(c.numbers) == 3 and len(c.steps) == 1 for c in children)
    assert all(list(c.numbers) == sorted(c.numbers) for c in children)
    assert "13 - 9 = 4" in [c.steps[0] for c in children]
    assert State((Fraction(4), Fraction(4), Fraction(10)), ("13 - 9 = 4",)) in children
    # 6 pairs x 6 results at most; equal pairs and equal results merge
    assert len(children) <= 36 and len(next_steps(start([2, 2, 2, 2]))) == 3  # 2 2 4, 0 2 2, 1 2 2
    assert not is_solved(s) and is_solvable(s)


def test_division_by_zero_is_skipped():
    children = next_steps(start([0, 5]))
    # 5 / 0 is skipped; 5 - 0 and 0 / 5 leave the same numbers as 5 + 0 and 5 * 0
    assert [c.steps[0] for c in children] == ["5 + 0 = 5", "5 * 0 = 0", "0 - 5 = -5"]


def _first_solution(state):
    if is_solved(state):
        return state
    for child in next_steps(state):
        if is_solvable(child):
            return _first_solution(child)
    return None


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(PUZZLES))
def test_expression_of_a_solved_state_passes_the_checker(puzzle):
    end = _first_solution(start(puzzle))
    assert (end is not None) == (census()[puzzle] > 0)
    if end is not None:
        assert is_solved(end) and len(end.steps) == 3
        assert check_expression(expression(end), puzzle).ok, (end, expression(end))


def test_expression_with_fractions_and_negatives():
    s = start([3, 3, 8, 8])
    path = ["8 / 3 = 8/3", "3 - 8/3 = 1/3", "8 / 1/3 = 24"]
    for step in path:
        s = next(c for c in next_steps(s) if c.steps[-1] == step)
    assert is_solved(s) and expression(s) == "8 / (3 - 8 / 3)"
    s = State((Fraction(24),), ("1 - 5 = -4", "1 - 7 = -6", "-4 * -6 = 24"))
    assert expression(s) == "(1 - 5) * (1 - 7)" and check_expression(expression(s), [1, 1, 5, 7]).ok


@pytest.mark.parametrize("state, match", [
    (start([1, 2]), "one number left, got 2"),
    (State((Fraction(24),), ("4 * 6 = 25",)), "is wrong"),
    (State((Fraction(24),), ("4 * 6 = 24", "1 + 1 = 2")), "makes 2, which no later step"),
    (State((Fraction(24),), ("four times six",)), "a step looks like"),
])
def test_expression_errors(state, match):
    with pytest.raises(ValueError, match=match):
        expression(state)


def test_parse_step_and_type_errors():
    assert parse_step("13 - 9 = 4") == (13, "-", 9, 4)
    assert parse_step("3 - 8/3 = 1/3") == (3, "-", Fraction(8, 3), Fraction(1, 3))
    with pytest.raises(ValueError, match="divides by zero"):
        parse_step("3 / 0 = 0")
    with pytest.raises(TypeError, match="game24.State"):
        next_steps((4, 9, 10, 13))
    with pytest.raises(TypeError, match="game24.State"):
        is_solvable([24])
    with pytest.raises(ValueError, match="low <= high"):
        all_puzzles(5, 2)
    assert game24.MAX_CHARS == 200
