"""The Game of 24, exactly: a solver, the census of all 1820 puzzles, a safe checker and a step API for search.

A puzzle is four whole numbers; combine all four, each exactly once, with + - * / and parentheses, to make 24.
Chapter 11 uses the game to separate *search* from *the model*: the exact solver here is an oracle that a
tree search can call instead of the language model, so a search that fails with the oracle has a bug, and one
that fails with the model has a weak model.

    solve([4, 9, 10, 13])            one expression per distinct solution, e.g. ['(10 - 4) * (13 - 9)']
    census()                          {puzzle: number of distinct solutions} for every multiset of 1..13
    check_expression("(10-4)*(13-9)", [4, 9, 10, 13])   Verdict(ok=True, reason='ok: ...')

**Arithmetic is exact.** Every value is a `fractions.Fraction`: 8 / (3 - 8 / 3) is exactly 24, while floats
give 23.999999999999993 (and a checker comparing floats with == rejects a right answer; one comparing with a
tolerance accepts wrong ones near 24).

**Distinct solutions.** Two expressions count as the same solution when they are equal up to commutativity
and associativity of + and *, with subtraction and division folded in: every maximal chain of + and - is read
as a multiset of added terms and a multiset of subtracted terms, every chain of * and / as a multiset of
multiplied and a multiset of divided factors. So a + b - c, b - (c - a) and (a - c) + b are one solution, and
so are a * (b / c), (a * b) / c and a / (c / b). Nothing else is identified: not distributivity
(a*b + a*c vs a*(b + c)), not sign flips ((a - b) * (c - d) vs (b - a) * (d - c)), not multiplying vs
dividing by 1 (a * 1 vs a / 1), not cancellations. `difficulty` is this count (fewer distinct solutions,
harder puzzle); the ToT paper ranks puzzles by human solving time instead (4nums.com), which this module does
not have.

**The checker never evaluates text.** `check_expression` parses with `ast` and walks the tree itself,
allowing only decimal integer literals, the four binary operators and parentheses; it returns a `Verdict` with
a reason for every rejection instead of raising on whatever a user or a model typed.

**Steps for search.** Tree of Thoughts (Yao et al. 2023) solves 24 one step at a time: pick two of the
numbers left, combine them, e.g. "4 + 9 = 13" leaves 10 13 13. `State`, `start`, `next_steps`, `is_solved`,
`is_solvable` (memoised: the oracle) and `expression` (the full expression rebuilt from the steps, for
`check_expression` to verify) are that view of the game.
"""
from __future__ import annotations

import ast
import itertools
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from fractions import Fraction
from functools import lru_cache
from typing import NamedTuple

TARGET = Fraction(24)
MAX_CHARS = 200  # longer text is rejected before parsing: a 24 answer is ~20 characters
MAX_NUMBERS = 6  # the solver's cost grows fast with the count; 4 is the game

# ------------------------------------------------------------------------------------------------------------
# canonical forms: what makes two solutions "the same"

# A form is a leaf (0, value) or a chain (1, op, terms, inverse_terms) with op "+" (terms added, inverse terms
# subtracted) or "*" (terms multiplied, inverse terms divided); terms are sorted tuples of forms. Tuples of this
# shape compare and hash, so sorting them is how commutativity is forgotten.
Form = tuple

_CHAIN = {"+": "+", "-": "+", "*": "*", "/": "*"}


def _parts(form: Form, chain: str) -> tuple[tuple, tuple]:
    """A form's (terms, inverse terms) as a member of a `chain` ("+" or "*"): its own if it is that chain."""
    if form[0] == 1 and form[1] == chain:
        return form[2], form[3]
    return (form,), ()


def _combine(op: str, a: Form, b: Form) -> Form:
    """The form of (a op b): a - (b - c) has terms {a, c} and inverse terms {b}, exactly as a - b + c."""
    chain = _CHAIN[op]
    (ap, an), (bp, bn) = _parts(a, chain), _parts(b, chain)
    if op in "+*":
        terms, inverse = ap + bp, an + bn
    else:
        terms, inverse = ap + bn, an + bp
    return (1, chain, tuple(sorted(terms)), tuple(sorted(inverse)))


def _leaf(value: Fraction) -> Form:
    return (0, value)


def _apply(op: str, a: Fraction, b: Fraction) -> Fraction:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    return a / b  # ZeroDivisionError for b == 0: callers skip or report it


# ------------------------------------------------------------------------------------------------------------
# text: the fewest parentheses that keep the meaning

_PREC = {"+": 1, "-": 1, "*": 2, "/": 2}
_ATOM = 3


def _number_text(x: Fraction) -> str:
    return str(x.numerator) if x.denominator == 1 else f"{x.numerator}/{x.denominator}"


def _render(op: str, left: tuple[str, int], right: tuple[str, int]) -> tuple[str, int]:
    """(text, precedence) of left op right; the right operand of - and / keeps its parentheses at equal
    precedence, since a - (b - c) is not a - b - c."""
    (lt, lp), (rt, rp), p = left, right, _PREC[op]
    lt = lt if lp >= p else f"({lt})"
    rt = rt if rp > p or (rp == p and op in "+*") else f"({rt})"
    return f"{lt} {op} {rt}", p


# ------------------------------------------------------------------------------------------------------------
# the solver

def _check_numbers(numbers: object, what: str = "numbers", most: int = MAX_NUMBERS) -> tuple[int, ...]:
    if isinstance(numbers, (str, bytes)) or not isinstance(numbers, Iterable):
        raise TypeError(f"{what} must be a sequence of whole numbers, got {type(numbers).__name__}: {numbers!r:.80}")
    numbers = tuple(numbers)
    bad = [n for n in numbers if isinstance(n, bool) or not isinstance(n, int)]
    if bad:
        raise TypeError(f"{what} must be whole numbers (int), got {bad[0]!r} ({type(bad[0]).__name__})")
    if not 1 <= len(numbers) <= most:
        raise ValueError(f"{what}: expected 1 to {most} numbers (the game uses 4), got {len(numbers)}")
    if any(n < 0 for n in numbers):
        raise ValueError(f"{what} must be non-negative (an expression has no unary minus), got {list(numbers)}")
    return numbers


def _splits(numbers: tuple[Fraction, ...]) -> list[tuple[tuple, tuple]]:
    """Every way to cut a sorted multiset in two non-empty parts, each unordered pair once."""
    n, seen = len(numbers), {}
    for mask in range(1, 2 ** n - 1):
        if not mask & 1:  # the part holding element 0 comes first: {A, B} and {B, A} once
            continue
        a = tuple(numbers[i] for i in range(n) if mask >> i & 1)
        b = tuple(numbers[i] for i in range(n) if not mask >> i & 1)
        seen.setdefault((a, b), None)
    return list(seen)


def _ops(a: Fraction, b: Fraction) -> Iterable[tuple[str, bool, Fraction]]:
    """(op, swapped, value) for a op b and b op a: + and * once, - and / both ways, no division by zero."""
    yield "+", False, a + b
    yield "*", False, a * b
    yield "-", False, a - b
    yield "-", True, b - a
    if b != 0:
        yield "/", False, a / b
    if a != 0:
        yield "/", True, b / a


@lru_cache(maxsize=None)
def _forms(numbers: tuple[Fraction, ...]) -> dict[Fraction, dict[Form, tuple[str, int]]]:
    """Every value an expression over exactly this multiset can take, with each distinct form that makes it
    and one text for that form: {value: {form: (text, precedence)}}. Memoised: sub-multisets are shared."""
    if len(numbers) == 1:
        x = numbers[0]
        return {x: {_leaf(x): (_number_text(x), _ATOM)}}
    out: dict[Fraction, dict[Form, tuple[str, int]]] = {}
    for a_part, b_part in _splits(numbers):
        for va, fa in _forms(a_part).items():
            for vb, fb in _forms(b_part).items():
                for op, swapped, value in _ops(va, vb):
                    target = out.setdefault(value, {})
                    for (na, ta), (nb, tb) in itertools.product(fa.items(), fb.items()):
                        left, right = ((nb, tb), (na, ta)) if swapped else ((na, ta), (nb, tb))
                        form = _combine(op, left[0], right[0])
                        if form not in target:
                            target[form] = _render(op, left[1], right[1])
    return out


def _needed(va: Fraction, target: Fraction) -> Iterable[tuple[str, bool, Fraction]]:
    """For a left value va, each (op, swapped, vb) with (va op vb, or vb op va if swapped) == target."""
    yield "+", False, target - va
    yield "-", False, va - target
    yield "-", True, va + target
    if va != 0:
        yield "*", False, target / va
        yield "/", False, va / target
        yield "/", True, target * va


def solutions(numbers: Sequence[int], target: int = 24) -> dict[Form, str]:
    """{canonical form: one expression} for every distinct way to make `target` from all the numbers.

    The whole multiset is split in two, and instead of trying every pair of values, each value of one part
    looks up the value the other part would need (target - va, target / va, ...): a dictionary lookup where
    a loop would be."""
    nums = tuple(sorted(Fraction(n) for n in _check_numbers(numbers)))
    goal = Fraction(target)
    if len(nums) == 1:
        return {_leaf(nums[0]): _number_text(nums[0])} if nums[0] == goal else {}
    found: dict[Form, str] = {}
    for a_part, b_part in _splits(nums):
        b_forms = _forms(b_part)
        for va, fa in _forms(a_part).items():
            for op, swapped, vb in _needed(va, goal):
                fb = b_forms.get(vb)
                if not fb:
                    continue
                for (na, ta), (nb, tb) in itertools.product(fa.items(), fb.items()):
                    left, right = ((nb, tb), (na, ta)) if swapped else ((na, ta), (nb, tb))
                    form = _combine(op, left[0], right[0])
                    if form not in found:
                        found[form] = _render(op, left[1], right[1])[0]
    return found


def solve(numbers: Sequence[int], target: int = 24) -> list[str]:
    """One expression per distinct solution (see the module docstring), sorted; [] when there is none."""
    return sorted(solutions(numbers, target).values(), key=lambda s: (len(s), s))


def difficulty(numbers: Sequence[int]) -> int:
    """The number of distinct solutions: 0 is unsolvable, 1 is the hardest solvable kind."""
    return len(solutions(numbers))


def all_puzzles(low: int = 1, high: int = 13, size: int = 4) -> list[tuple[int, ...]]:
    """Every multiset of `size` numbers from low..high, sorted: C(13 + 3, 4) = 1820 for the game."""
    if not 0 <= low <= high:
        raise ValueError(f"need 0 <= low <= high, got low={low}, high={high}")
    return list(itertools.combinations_with_replacement(range(low, high + 1), size))


@lru_cache(maxsize=4)
def _census(low: int, high: int) -> tuple[tuple[tuple[int, ...], int], ...]:
    return tuple((p, difficulty(p)) for p in all_puzzles(low, high))


def census(low: int = 1, high: int = 13) -> dict[tuple[int, ...], int]:
    """{puzzle: number of distinct solutions} for every multiset of 4 numbers from low..high (cached)."""
    return dict(_census(low, high))


# ------------------------------------------------------------------------------------------------------------
# the safe checker

class Verdict(NamedTuple):
    """ok, and why. A rejection's reason starts with one of: "not text", "too long", "syntax error",
    "disallowed node", "wrong numbers", "division by zero", "value is"."""
    ok: bool
    reason: str


class _Rejected(Exception):
    """A reason to reject, raised inside the walker and turned into a Verdict at the edge."""


_ALLOWED_OPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}
_ALIASES = str.maketrans({"×": "*", "÷": "/", "−": "-"})  # what models and people also write
_ANSWER = re.compile(r"^\s*answer\s*:\s*", re.IGNORECASE)
_EQUALS_24 = re.compile(r"(?<![=<>!])\s*=\s*24\s*$")  # "= 24", not the end of "== 24"


def _clean(text: str) -> str:
    """Accepted decorations, removed: a leading "Answer:" (the ToT paper's output format), a trailing "= 24",
    and the signs ×, ÷, − for *, /, -. Anything else is left for the parser to judge."""
    text = _ANSWER.sub("", text.translate(_ALIASES), count=1)
    return _EQUALS_24.sub("", text, count=1).strip()


def _disallowed(body: ast.AST, source: str) -> str | None:
    """The first node (breadth first) that is not an int literal, a + - * / or a BinOp, described."""
    for node in ast.walk(body):
        if isinstance(node, ast.BinOp):
            if type(node.op) not in _ALLOWED_OPS:
                return f"{type(node.op).__name__} (only + - * / are allowed)"
        elif isinstance(node, ast.Constant):
            value = node.value
            if isinstance(value, bool) or not isinstance(value, int):
                return f"Constant {value!r:.20} (only whole numbers are allowed)"
            literal = ast.get_source_segment(source, node) or ""
            if not (literal.isascii() and literal.isdigit()):
                return f"Constant {literal!r:.20} (write numbers in decimal digits)"
        elif isinstance(node, tuple(_ALLOWED_OPS)):
            continue
        else:
            detail = {ast.UnaryOp: " (no unary minus or plus)",
                      ast.Name: f" ({getattr(node, 'id', '')!r:.20}: names are not numbers)",
                      ast.Call: " (no function calls)"}.get(type(node), "")
            return f"{type(node).__name__}{detail}"
    return None


def _leaves(body: ast.AST) -> list[int]:
    return [node.value for node in ast.walk(body) if isinstance(node, ast.Constant)]


def _value(node: ast.AST) -> Fraction:
    """Exact value of a checked tree (only BinOp and int Constant remain)."""
    if isinstance(node, ast.Constant):
        return Fraction(node.value)
    op = _ALLOWED_OPS[type(node.op)]
    try:
        return _apply(op, _value(node.left), _value(node.right))
    except ZeroDivisionError:
        raise _Rejected("division by zero") from None


def _form(node: ast.AST) -> Form:
    if isinstance(node, ast.Constant):
        return _leaf(Fraction(node.value))
    return _combine(_ALLOWED_OPS[type(node.op)], _form(node.left), _form(node.right))


def _parse(expr: object) -> tuple[ast.AST, str]:
    """The checked expression tree of some text, or _Rejected with the reason."""
    if not isinstance(expr, str):
        raise _Rejected(f"not text: expected a str, got {type(expr).__name__}")
    if len(expr) > MAX_CHARS:
        raise _Rejected(f"too long: {len(expr)} characters (at most {MAX_CHARS})")
    source = _clean(expr)
    if not source:
        raise _Rejected("syntax error: the expression is empty")
    try:
        body = ast.parse(source, mode="eval").body
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:  # ValueError: a NUL character
        raise _Rejected(f"syntax error: {getattr(e, 'msg', None) or e}") from None
    bad = _disallowed(body, source)
    if bad:
        raise _Rejected(f"disallowed node {bad}")
    return body, source


def check_expression(expr: str, numbers: Sequence[int]) -> Verdict:
    """Does `expr` make 24 from exactly `numbers` (each once, as a multiset), using only + - * / and
    parentheses? Never raises on `expr` (it is user or model text); raises TypeError/ValueError for bad
    `numbers` (that is the caller's bug). The first problem found, in this order, is the reason: not text,
    too long, syntax error, disallowed node, wrong numbers, division by zero, value is X not 24."""
    given = _check_numbers(numbers, most=MAX_CHARS)  # the solver's limit is not the checker's
    try:
        body, _ = _parse(expr)
        used = _leaves(body)
        if Counter(used) != Counter(given):
            raise _Rejected(f"wrong numbers (used {sorted(used)}, given {sorted(given)})")
        value = _value(body)
    except _Rejected as e:
        return Verdict(False, str(e))
    if value != TARGET:
        return Verdict(False, f"value is {_number_text(value)} not 24")
    return Verdict(True, "ok: each given number used once, and the value is exactly 24")


def canonical(expr: str) -> Form:
    """The canonical form of an allowed expression (ValueError with the reason otherwise): two solutions are
    the same solution exactly when their canonical forms are equal."""
    try:
        body, _ = _parse(expr)
    except _Rejected as e:
        raise ValueError(f"not an allowed expression: {e}") from None
    return _form(body)


# ------------------------------------------------------------------------------------------------------------
# the step API for search

class State(NamedTuple):
    """The numbers left (sorted Fractions) and the steps taken so far, as text like "13 - 9 = 4"."""
    numbers: tuple[Fraction, ...]
    steps: tuple[str, ...] = ()

    def left(self) -> str:
        """The numbers left as the ToT prompt writes them: "4 10 13"."""
        return " ".join(_number_text(x) for x in self.numbers)


def start(numbers: Sequence[int]) -> State:
    return State(tuple(sorted(Fraction(n) for n in _check_numbers(numbers))))


def _state(state: object) -> State:
    if not isinstance(state, State):
        raise TypeError(f"expected a game24.State (from start() or next_steps()), got {type(state).__name__}")
    return state


def next_steps(state: State) -> list[State]:
    """Every state one step away: two of the numbers left replaced by a + b, a * b, a - b, b - a, a / b or
    b / a (never dividing by zero). Children with the same numbers left are one child (the first step
    found); the order is deterministic."""
    nums, out, seen = _state(state).numbers, [], set()
    for i, j in itertools.combinations(range(len(nums)), 2):
        small, big = nums[i], nums[j]  # sorted: small <= big
        rest = nums[:i] + nums[i + 1:j] + nums[j + 1:]
        for op, x, y in (("+", big, small), ("*", big, small), ("-", big, small), ("-", small, big),
                         ("/", big, small), ("/", small, big)):
            if op == "/" and y == 0:
                continue
            value = _apply(op, x, y)
            left = tuple(sorted(rest + (value,)))
            if left in seen:
                continue
            seen.add(left)
            step = f"{_number_text(x)} {op} {_number_text(y)} = {_number_text(value)}"
            out.append(State(left, state.steps + (step,)))
    return out


def is_solved(state: State) -> bool:
    return len(_state(state).numbers) == 1 and state.numbers[0] == TARGET


@lru_cache(maxsize=None)
def _solvable(numbers: tuple[Fraction, ...]) -> bool:
    if len(numbers) == 1:
        return numbers[0] == TARGET
    return any(_solvable(child.numbers) for child in next_steps(State(numbers)))


def is_solvable(state: State) -> bool:
    """Can the numbers left still make 24? Exact, memoised on the numbers: the oracle for search."""
    return _solvable(_state(state).numbers)


_STEP = re.compile(r"^\s*(-?\d+(?:/\d+)?)\s*([-+*/])\s*(-?\d+(?:/\d+)?)\s*=\s*(-?\d+(?:/\d+)?)\s*$")


def parse_step(step: str) -> tuple[Fraction, str, Fraction, Fraction]:
    """"13 - 9 = 4" -> (13, "-", 9, 4); ValueError if it is not of that shape or its arithmetic is wrong."""
    m = _STEP.match(step) if isinstance(step, str) else None
    if not m:
        raise ValueError(f"a step looks like '13 - 9 = 4', got {step!r:.80}")
    a, op, b, c = Fraction(m[1]), m[2], Fraction(m[3]), Fraction(m[4])
    if op == "/" and b == 0:
        raise ValueError(f"step {step!r} divides by zero")
    if _apply(op, a, b) != c:
        raise ValueError(f"step {step!r} is wrong: {m[1]} {op} {m[3]} = {_number_text(_apply(op, a, b))}")
    return a, op, b, c


def _take(pool: list, value: Fraction, step: str) -> tuple:
    for k, item in enumerate(pool):
        if item[0] == value:
            return pool.pop(k)
    raise ValueError(f"step {step!r} uses {_number_text(value)}, which is not among the numbers left")


def expression(state: State) -> str:
    """The full expression a finished state's steps build, e.g. "(10 - 4) * (13 - 9)", for check_expression.

    The starting numbers are not stored: undoing the steps from the last (remove its result, put back its two
    operands) recovers them, and replaying the steps forward builds the expression."""
    state = _state(state)
    if len(state.numbers) != 1:
        raise ValueError(f"expression() needs a state with one number left, got {len(state.numbers)}: "
                         f"{state.left()}")
    parsed = [parse_step(s) for s in state.steps]
    pool = list(state.numbers)
    for (a, op, b, c), step in zip(reversed(parsed), reversed(state.steps)):
        if c not in pool:
            raise ValueError(f"step {step!r} makes {_number_text(c)}, which no later step or result uses")
        pool.remove(c)
        pool += [a, b]
    items = [(x, (_number_text(x), _ATOM)) for x in pool]
    for (a, op, b, c), step in zip(parsed, state.steps):
        left, right = _take(items, a, step), _take(items, b, step)
        items.append((c, _render(op, left[1], right[1])))
    return items[0][1][0]
