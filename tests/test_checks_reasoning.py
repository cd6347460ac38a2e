"""labkit.checks.reasoning: the lab-11 checks pass labkit's own functions and catch plausible wrong ones, each
with a message that says what is wrong."""
import ast
import builtins
from fractions import Fraction

import pytest

from labkit.checks.reasoning import _CHECKER_CASES, CATEGORIES, check_bfs_step, check_check_expression
from labkit.reasoning import game24, tot


def test_labkit_itself_passes(capsys):
    check_check_expression(game24.check_expression)
    check_check_expression(lambda e, n: tuple(game24.check_expression(e, n)))
    check_bfs_step(tot.bfs_step)
    out = capsys.readouterr().out
    assert "✓ check_expression passes" in out and "✓ bfs_step passes" in out


def test_stubs_raise_not_implemented():
    def stub(*args, **kwargs):
        raise NotImplementedError("Exercise")
    for check in (check_check_expression, check_bfs_step):
        with pytest.raises(NotImplementedError):
            check(stub)


def test_the_battery_covers_every_category_and_both_verdicts():
    verdicts = [game24.check_expression(e, n) for e, n, _ in _CHECKER_CASES]
    assert any(v.ok for v in verdicts)
    assert {next(c for c in CATEGORIES if v.reason.startswith(c)) for v in verdicts if not v.ok} == set(CATEGORIES)
    assert 8 / (3 - 8 / 3) != 24  # the float case really is one


# ------------------------------------------------------------------------------------------------- the checker

OPS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
       ast.Div: lambda a, b: a / b}


def _checker(numbers_as=sorted, number=Fraction, catch_zero=True, limit=200, exclude_bool=True, errors=(SyntaxError,
             ValueError), extra_allowed=(), order_numbers_last=False, strip=True):
    """A configurable student checker: the right one by default, each argument one plausible mistake."""
    def check(expr, numbers):
        if limit is not None and len(expr) > limit:
            return False, "too long"
        try:
            body = ast.parse(expr.strip() if strip else expr, mode="eval").body
        except errors as e:
            return False, f"syntax error: {e}"
        allowed = (ast.BinOp, ast.Add, ast.Sub, ast.Mult, ast.Div) + extra_allowed
        used = []
        for node in ast.walk(body):
            if isinstance(node, ast.Constant) and (type(node.value) is int if exclude_bool
                                                   else isinstance(node.value, int)):
                used.append(node.value)
            elif not isinstance(node, allowed):
                return False, f"disallowed node {type(node).__name__}"

        def value(node):
            if isinstance(node, ast.Constant):
                return number(node.value)
            return OPS[type(node.op)](value(node.left), value(node.right))

        wrong = numbers_as(used) != numbers_as(numbers)
        if wrong and not order_numbers_last:
            return False, "wrong numbers"
        try:
            v = value(body)
        except ZeroDivisionError:
            if not catch_zero:
                raise
            return False, "division by zero"
        if wrong:
            return False, "wrong numbers"
        return (True, "ok") if v == 24 else (False, f"value is {v} not 24")
    return check


def _sorts_in_place(expr, numbers):
    numbers.sort()
    return game24.check_expression(expr, numbers)


def _uses_eval(expr, numbers):
    verdict = game24.check_expression(expr, numbers)
    return verdict if not verdict.ok else (eval(expr) == 24, "ok")


@pytest.mark.parametrize("fn, message", [
    (_checker(), None),
    (_checker(numbers_as=set), "not sets"),
    (_checker(number=float), "in floats"),
    (_checker(catch_zero=False), "raised ZeroDivisionError"),
    (_checker(limit=None), "too long"),
    (_checker(limit=250), "too long"),
    (_checker(exclude_bool=False), "True"),
    (_checker(extra_allowed=(ast.UnaryOp, ast.USub)), r"'-4 \* -6 \* 1 \* 1'"),
    (_checker(extra_allowed=(ast.FloorDiv,)), r"'6 // 1 \* 4 \* 1'"),
    (_checker(order_numbers_last=True), "order"),
    (_checker(strip=False), "rejected a right answer"),
    (_sorts_in_place, "changed the list of numbers"),
    (_uses_eval, "never run user text"),
    (lambda e, n: game24.check_expression(e, n).ok, r"should return a pair \(ok, reason\)"),
    (lambda e, n: (int(game24.check_expression(e, n).ok), "x"), "ok a bool"),
    (lambda e, n: (True, "ok"), "accepted a wrong answer"),
    (lambda e, n: (False, "no"), "rejected a right answer"),
])
def test_checker_check_catches(fn, message, capsys):
    if message is None:
        check_check_expression(fn)
        return
    with pytest.raises(AssertionError, match=message):
        check_check_expression(fn)
    assert "✓" not in capsys.readouterr().out
    assert builtins.eval is not None and builtins.eval("1 + 1") == 2  # eval is back after a failure


def test_eval_comes_back_after_a_pass():
    check_check_expression(game24.check_expression)
    assert builtins.eval("2 * 3") == 6 and callable(builtins.exec)


# ------------------------------------------------------------------------------------------------- BFS step

def _scored_children(frontier, propose, value):
    return [(value(c), c) for s in frontier for c in propose(s)]


def _heap_best(frontier, propose, value, breadth):
    import heapq
    return heapq.nlargest(breadth, [c for s in frontier for c in propose(s)], key=value)


def _values_twice(frontier, propose, value, breadth):
    children = [c for s in frontier for c in propose(s)]
    best = sorted(children, key=value, reverse=True)[:breadth]
    return sorted(best, key=value, reverse=True)


def _unordered(frontier, propose, value, breadth):
    best = tot.bfs_step(frontier, propose, value, breadth)
    return best[1:2] + best[:1] + best[2:]  # the first two swapped


@pytest.mark.parametrize("fn, message", [
    (_heap_best, None),
    (lambda f, p, v, b: sorted([c for s in f for c in p(s)], key=lambda c: -v(c))[:b], None),
    (lambda f, p, v, b: sorted([c for s in f for c in p(s)], key=v)[:b], "LOWEST"),
    (lambda f, p, v, b: [c for s in sorted(f, key=v, reverse=True) for c in p(s)][:b], "not the states"),
    (lambda f, p, v, b: sorted(p(f[0]), key=v, reverse=True)[:b] if f else [], "expand every state"),
    (lambda f, p, v, b: sorted([c for s in f for c in p(s)], key=v)[::-1][:b], "reverse order"),
    (lambda f, p, v, b: sorted([c for s in f for c in p(s)], key=v, reverse=True)[:b + 1], "expected"),
    (lambda f, p, v, b: tuple(tot.bfs_step(f, p, v, b)), "should return a list"),
    (lambda f, p, v, b: (c for c in tot.bfs_step(f, p, v, b)), "should return a list"),
    (_values_twice, "more than once"),
    (_unordered, "not in order"),
    (lambda f, p, v, b: f.clear() or [], "in place"),
])
def test_bfs_check_catches(fn, message, capsys):
    if message is None:
        check_bfs_step(fn)
        return
    with pytest.raises(AssertionError, match=message):
        check_bfs_step(fn)
    assert "✓" not in capsys.readouterr().out
