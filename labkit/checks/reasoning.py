"""Graded checks for lab 11 (reasoning as search: a safe checker for the Game of 24, one step of ToT-BFS).

    from labkit.checks.reasoning import check_check_expression, check_bfs_step
    check_check_expression(check_expression)   # your functions, defined in the lab
    check_bfs_step(bfs_step)

The references are `labkit.reasoning.game24.check_expression` (its reasons begin with a category: "too long",
"syntax error", "disallowed node", "wrong numbers", "division by zero", "value is") and
`labkit.reasoning.tot.bfs_step`. The checker is compared on a battery of right answers and of every kind of
wrong one, float round-off and code injection included, with `eval` and `exec` switched off while it runs.
"""
from __future__ import annotations

import builtins
from collections.abc import Callable, Sequence
from contextlib import contextmanager

from labkit.checks import _call, _passed, _short
from labkit.reasoning import game24, tot

CATEGORIES = ("too long", "syntax error", "disallowed node", "wrong numbers", "division by zero", "value is")

# (expression, numbers, what the case is about: the hint when a checker gets it wrong)
_CHECKER_CASES: list[tuple[str, list[int], str]] = [
    ("(10 - 4) * (13 - 9)", [4, 9, 10, 13], "a plain right answer"),
    (" (13-9)*(10-4) ", [13, 10, 9, 4], "a right answer with a space before it (ast.parse calls that an indent: "
                                        "strip the text first), the numbers given in another order"),
    ("6 * 4 * 1 * 1", [1, 1, 4, 6], "a right answer where a number is given twice and used twice"),
    ("13 * 2 - 1 - 1", [1, 13, 1, 2], "a right answer"),
    ("8 / (3 - 8 / 3)", [3, 3, 8, 8],
     f"exactly 24 in fractions (3 - 8/3 = 1/3, 8 / (1/3) = 24), but {8 / (3 - 8 / 3)!r} in floats, which "
     "== 24 rejects. Evaluate with fractions.Fraction: Fraction(8) / 3 is exactly 8/3"),
    ("6 / (1 - 3 / 4)", [1, 3, 4, 6], "a right answer through a fraction (3/4)"),
    ("(10 - 4) * (13 - 9)" + " " * 181, [4, 9, 10, 13], "a right answer padded to exactly 200 characters: "
                                                         "only text LONGER than 200 characters is too long"),
    ("4 * 6 * (2 / 2)", [2, 3, 4, 6],
     "2 used twice and 3 not at all. Compare the numbers used with the numbers given as multisets "
     "(sorted lists, or collections.Counter): a set forgets how many times each number appears"),
    ("6 * 4 * 1 * 1", [1, 4, 6, 6], "1 used twice and 6 once, but 1 was given once and 6 twice: the same set "
                                    "of numbers and the same count, a different multiset. Compare sorted lists "
                                    "or Counters, not sets"),
    ("4 * 6", [2, 3, 4, 6], "two of the four numbers unused"),
    ("4 * 6 * (3 - 2) * 1", [2, 3, 4, 6], "a number that was not given (1)"),
    ("8 / (3 - 3) * 8", [3, 3, 8, 8],
     "3 - 3 = 0: catch ZeroDivisionError while evaluating and return the reason 'division by zero'"),
    ("(4 - 4) / (6 - 6)", [4, 4, 6, 6], "0 / 0: a division by zero too"),
    ("8 / (3 - 3)", [3, 3, 8, 8], "the numbers are wrong (8 is given twice, used once) and it divides by zero: "
                                  "the numbers are checked first"),
    ("8 * 3 + 8 - 3", [3, 3, 8, 8], "the right numbers, value 29"),
    ("8 / 3 * (8 / 3)", [3, 3, 8, 8], "the right numbers, value 64/9"),
    ("__import__('os').getcwd()", [1, 1, 4, 6], "code, not arithmetic: a function call"),
    ("x * 24", [1, 1, 4, 6], "a name"),
    ("abs(-24)", [1, 1, 4, 6], "a function call"),
    ("-4 * -6 * 1 * 1", [1, 1, 4, 6], "unary minus (an ast.UnaryOp): only the four binary operators are allowed"),
    ("6 // 1 * 4 * 1", [1, 1, 4, 6], "floor division (ast.FloorDiv), although the value would be 24"),
    ("6 ** 1 * 4 * 1", [1, 1, 4, 6], "a power (ast.Pow)"),
    ("6.0 * 4 * 1 * 1", [1, 1, 4, 6], "a float literal: only whole numbers"),
    ("6 * 4 * True * 1", [1, 1, 4, 6],
     "the constant True, which Python treats as the int 1 (bool is a subclass of int, and True == 1 even "
     "inside a Counter): test isinstance(value, bool) first"),
    ("'24'", [1, 1, 4, 6], "a string constant"),
    ("[6 * 4 * 1 * 1]", [1, 1, 4, 6], "a list"),
    ("6 * 4 * 1 * 1 == 24", [1, 1, 4, 6], "a comparison"),
    ("(6 * 4) * (1 * 1", [1, 1, 4, 6], "an unclosed parenthesis"),
    ("", [1, 1, 4, 6], "the empty string"),
    ("   ", [1, 1, 4, 6], "only spaces"),
    ("6 * 4 * 1 * 1\x00", [1, 1, 4, 6], "a NUL character, which ast.parse rejects with SyntaxError (ValueError "
                                         "on some older Pythons)"),
    ("(10 - 4) * (13 - 9)" + " " * 182, [4, 9, 10, 13], "a right answer padded to 201 characters: reject text "
                                                         "longer than 200 characters before parsing it"),
    ("(" * 150 + "24" + ")" * 150, [1, 1, 4, 6], "302 characters: reject text longer than 200 characters "
                                                "before parsing it"),
    ("+".join(["1"] * 3000), [1, 1, 4, 6], "5999 characters: reject text longer than 200 characters "
                                            "before parsing it"),
]


def _category(reason: str) -> str:
    return next(c for c in CATEGORIES if reason.startswith(c))


@contextmanager
def _no_eval():
    """eval and exec raise while the student's checker runs: user text must never be executed."""
    saved = builtins.eval, builtins.exec

    def refuse(*args, **kwargs):
        raise AssertionError("your check_expression called eval() or exec(): never run user text. Parse it "
                             "with ast.parse(text, mode='eval') and compute the value by walking the tree")

    builtins.eval = builtins.exec = refuse
    try:
        yield
    finally:
        builtins.eval, builtins.exec = saved


def _run_checker(fn: Callable, expr: str, numbers: list[int]) -> tuple[bool, str]:
    call = f"check_expression({_short(expr, 80)}, {numbers})"
    given = list(numbers)
    with _no_eval():
        try:
            got = fn(expr, given)
        except (NotImplementedError, AssertionError):
            raise
        except Exception as e:
            hint = (" Catch ZeroDivisionError and return (False, 'division by zero ...')."
                    if isinstance(e, ZeroDivisionError) else
                    " A checker of user text returns a reason for everything it rejects; it never raises.")
            raise AssertionError(f"{call} raised {type(e).__name__}: {e}.{hint}") from e
    if given != numbers:
        raise AssertionError(f"{call} changed the list of numbers it was given (to {given}): sort a copy "
                             f"(sorted(numbers)), not the caller's list")
    if not (isinstance(got, (tuple, list)) and len(got) == 2):
        raise AssertionError(f"{call} should return a pair (ok, reason), got {_short(got)}")
    ok, reason = got
    if not isinstance(ok, bool) or not isinstance(reason, str):
        raise AssertionError(f"{call} should return (ok, reason) with ok a bool and reason a str, got "
                             f"({_short(ok)}, {_short(reason)})")
    return ok, reason


def check_check_expression(fn: Callable) -> None:
    """check_expression(expr, numbers) -> (ok: bool, reason: str), compared with labkit's on a battery: ok must
    agree, and a rejection's reason must begin with the same category as labkit's."""
    for expr, numbers, about in _CHECKER_CASES:
        expected = game24.check_expression(expr, numbers)
        ok, reason = _run_checker(fn, expr, numbers)
        call = f"check_expression({_short(expr, 80)}, {numbers})"
        if expected.ok and not ok:
            raise AssertionError(f"{call} rejected a right answer ({about}). Your reason: {reason!r}")
        if not expected.ok and ok:
            raise AssertionError(f"{call} accepted a wrong answer: {about}. It should be rejected with a reason "
                                 f"beginning {_category(expected.reason)!r} (labkit: {expected.reason!r})")
        if not expected.ok and not reason.startswith(_category(expected.reason)):
            raise AssertionError(f"{call} is rightly rejected, but for the wrong reason: {reason!r}. The reason "
                                 f"should begin with {_category(expected.reason)!r} ({about}; labkit: "
                                 f"{expected.reason!r}). The checks run in the order: too long, syntax error, "
                                 f"disallowed node, wrong numbers, division by zero, value is")
    _passed("check_expression", len(_CHECKER_CASES))


# ----------------------------------------------------------------------------------------------------------
# one step of ToT-BFS

_TREE = {"a": ["a1", "a2", "a3"], "b": ["b1", "b2"], "c": [], "d": ["d1", "d2", "d3", "d4"]}
_SCORES = {"a": 9.0, "b": -9.0, "c": 5.0, "d": 0.0,  # parents: a search must not rank children by these
           "a1": 0.2, "a2": 0.9, "a3": 0.5, "b1": 0.7, "b2": 0.1, "d1": 0.5, "d2": 0.95, "d3": 0.5, "d4": 0.05}


class _Counted:
    """propose/value that record their calls."""

    def __init__(self, propose: Callable, value: Callable) -> None:
        self._propose, self._value = propose, value
        self.proposed: list = []
        self.valued: list = []

    def propose(self, state):
        self.proposed.append(state)
        return list(self._propose(state))

    def value(self, state):
        self.valued.append(state)
        return self._value(state)


def _bfs_cases() -> list[tuple[str, list, Callable, Callable, int]]:
    tree_propose = _TREE.__getitem__
    tree_value = _SCORES.__getitem__
    flat = {k: 1.0 for k in _SCORES}
    negative = {k: v - 10 for k, v in _SCORES.items()}

    def oracle(s: game24.State) -> float:  # 0 or 1: many ties
        return float(game24.is_solvable(s))

    def solutions_left(s: game24.State) -> float:  # how many distinct ways the whole numbers left make 24
        if all(x.denominator == 1 and x >= 0 for x in s.numbers):
            return float(game24.difficulty([int(x) for x in s.numbers]))
        return -1.0

    five = game24.next_steps(game24.start([1, 5, 5, 5]))
    return [
        ("frontier ['a', 'b'], breadth 3", ["a", "b"], tree_propose, tree_value, 3),
        ("frontier ['a', 'b'], breadth 1", ["a", "b"], tree_propose, tree_value, 1),
        ("frontier ['b', 'a', 'd'], breadth 4 (the best child, d2, comes from the last state)", ["b", "a", "d"],
         tree_propose, tree_value, 4),
        ("frontier ['a', 'b'], breadth 10 (more than the 5 children: all of them, best first)", ["a", "b"],
         tree_propose, tree_value, 10),
        ("frontier ['a', 'c', 'b'] where 'c' has no children, breadth 2", ["a", "c", "b"], tree_propose,
         tree_value, 2),
        ("an empty frontier, breadth 2", [], tree_propose, tree_value, 2),
        ("frontier ['a', 'd'], every value equal (ties keep the order the children were proposed in), breadth 4",
         ["a", "d"], tree_propose, flat.__getitem__, 4),
        ("frontier ['d', 'a'], ties at 0.5 between d1, d3 and a3 (kept in proposal order), breadth 3",
         ["d", "a"], tree_propose, tree_value, 3),
        ("frontier ['a', 'b', 'd'], every value negative (keep the highest: -9.05 beats -9.9), breadth 3",
         ["a", "b", "d"], tree_propose, negative.__getitem__, 3),
        ("Game of 24 from [4, 9, 10, 13] with the oracle value 1.0 (solvable) or 0.0, breadth 5",
         [game24.start([4, 9, 10, 13])], game24.next_steps, oracle, 5),
        ("Game of 24, a frontier of two states one step from [1, 5, 5, 5], valued by the number of distinct "
         "solutions left, breadth 4",
         five[:2], game24.next_steps, solutions_left, 4),
    ]


def _label(states: Sequence) -> str:
    return _short([s.steps[-1] if isinstance(s, game24.State) else s for s in states], 200)


def _bfs_hint(got: list, frontier: list, propose: Callable, value: Callable, breadth: int) -> str:
    children = [c for s in frontier for c in propose(s)]
    candidates = {
        "You kept the LOWEST-valued candidates: sort best first (reverse=True, or key=lambda c: -value(c))":
            sorted(children, key=value)[:breadth],
        "You ranked the children by their PARENT's value: score each candidate itself":
            [c for s in sorted(frontier, key=value, reverse=True) for c in propose(s)][:breadth],
        "You expanded only the first state of the frontier: propose from every state":
            sorted(propose(frontier[0]), key=value, reverse=True)[:breadth] if frontier else [],
        "Your ties come out in reverse order (sorting ascending and reversing the list): sort with "
        "reverse=True, or on -value, which keeps equal values in the order they were proposed":
            sorted(children, key=value)[::-1][:breadth],
        "You kept the best candidates but not in order, best first": None,
    }
    for hint, wrong in candidates.items():
        if wrong is None:
            best = tot.bfs_step(frontier, propose, value, breadth)
            if len(got) == len(best) and sorted(map(repr, got)) == sorted(map(repr, best)):
                return " " + hint + "."
        elif got == wrong:
            return " " + hint + "."
    return ""


def check_bfs_step(fn: Callable) -> None:
    """bfs_step(frontier, propose, value, breadth) -> list: the `breadth` highest-valued children of all the
    frontier's states, best first, equal values in the order proposed; each child valued once, no parent
    valued. Compared with labkit.reasoning.tot.bfs_step."""
    cases = _bfs_cases()
    for what, frontier, propose, value, breadth in cases:
        call = f"bfs_step({what})"
        counted = _Counted(propose, value)
        got = _call(fn, call, list(frontier), counted.propose, counted.value, breadth)
        expected = tot.bfs_step(frontier, propose, value, breadth)
        if not isinstance(got, list):
            raise AssertionError(f"{call} should return a list of states, got {type(got).__name__}: "
                                 f"{_short(got)}")
        parents = [s for s in counted.valued if any(s is p for p in frontier)]
        if parents:
            raise AssertionError(f"{call} called value() on a frontier state ({_label(parents[:1])}): BFS scores "
                                 f"the candidates (the children), not the states they came from")
        missing = [s for s in frontier if not any(s is p for p in counted.proposed)]
        if missing:
            raise AssertionError(f"{call} never called propose() on {len(missing)} of the {len(frontier)} "
                                 f"frontier states (e.g. {_label(missing[:1])}): expand every state")
        repeats = len(counted.valued) - len({id(s) for s in counted.valued})
        if repeats:
            raise AssertionError(f"{call} valued some candidates more than once ({len(counted.valued)} calls "
                                 f"for {len({id(s) for s in counted.valued})} candidates): with a language model "
                                 f"every value() is a call to pay for. Score each candidate once, e.g. "
                                 f"scored = [(value(c), c) for c in children]... or sorted(children, key=value)")
        if got != expected:
            hint = _bfs_hint(got, frontier, propose, value, breadth)
            raise AssertionError(f"{call}: expected {_label(expected)}, got {_label(got)}.{hint}")
    _passed("bfs_step", len(cases))

