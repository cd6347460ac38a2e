"""A calculator an agent may call with any text: exact arithmetic, bounded sizes, and it never runs the text.

Chapter 4 showed a language model writing "12 + 7 = 9": a model predicts the next token, it does not add. The fix
agents use is a tool: the model writes the expression, a program computes it. That program receives text a
model (or an attacker, through a model) wrote, so it must be safe on *every* input:

- **It never evaluates text.** Python's `eval("9**9**9")` computes for hours, `eval("().__class__...")` walks
  to any object in the interpreter. Like chapter 11's 24-checker (`labkit.reasoning.game24`), this module
  parses with `ast` and walks the tree itself, allowing only numbers, + - * / **, unary minus/plus and
  parentheses. Everything else (names, calls, attributes, subscripts, strings, comprehensions...) is refused
  with the kind of node named.
- **Arithmetic is exact.** Every value is a `fractions.Fraction`; a decimal literal is read from its digits,
  so `0.1 + 0.2` is exactly `3/10` (floats give 0.30000000000000004).
- **Sizes are bounded before any work is done.** The text is at most `MAX_CHARS` characters (`"+0" * 200000`
  is refused before parsing), the tree at most `MAX_DEPTH` deep, and no value may need more than `MAX_BITS`
  bits: a power's size is estimated from the exponent and the base's bit length *before* it is computed, so
  `9**9**9` (about 1.2e9 bits, minutes of CPU) is refused in microseconds.

    evaluate("(1 + 2) / 4 - 0.5")     Fraction(1, 4)
    calculator("2**10 / 3")           '1024/3 (≈ 341.333333333)'   (the tool: a str, never raises)
    calculator("__import__('os')")    'error: not allowed: function calls (Call) ...'
"""
from __future__ import annotations

import ast
import math
import re
from fractions import Fraction

from labkit.reasoning.game24 import _ALIASES, _apply, _number_text

MAX_CHARS = 1000  # a calculation a model writes is tens of characters; this leaves room, not a denial of service
MAX_DEPTH = 200  # nesting of the parsed tree (a sum of 150 terms is 150 deep); the walker recurses, Python's
# own limit is 1000 frames
MAX_BITS = 10_000  # ~3000 decimal digits for any numerator or denominator along the way

_BINARY = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.Pow: "**"}
_UNARY = (ast.USub, ast.UAdd)
_DECIMAL = re.compile(r"(?:\d+(?:\.\d*)?|\.\d+)\Z")  # plain digits with an optional point: no 1e9, 0x10, 1_0, 1j
_NAMED = {ast.Name: "names", ast.Call: "function calls", ast.Attribute: "attribute access",
          ast.Subscript: "subscripts", ast.Lambda: "lambdas", ast.Compare: "comparisons",
          ast.BoolOp: "and/or", ast.IfExp: "if-expressions", ast.NamedExpr: "assignments (:=)",
          ast.JoinedStr: "f-strings"}


class CalculatorError(ValueError):
    """Why an expression was refused. The message starts with one of: "too long", "syntax error", "too deep",
    "not allowed", "not a plain number", "division by zero", "not exact", "too large"."""


def _check_size(value: Fraction, what: str) -> Fraction:
    bits = max(value.numerator.bit_length(), value.denominator.bit_length())
    if bits > MAX_BITS:
        raise CalculatorError(f"too large: {what} needs {bits} bits (at most {MAX_BITS})")
    return value


def _power(base: Fraction, exponent: Fraction) -> Fraction:
    """base ** exponent for an integer exponent, refused *before* computing when the result would be too big."""
    if exponent.denominator != 1:
        raise CalculatorError(f"not exact: exponent {_number_text(exponent)} is not a whole number")
    n = exponent.numerator
    if base == 0 and n < 0:
        raise CalculatorError("division by zero: 0 to a negative power")
    if base in (0, 1, -1):  # the only bases whose powers stay small for any exponent
        return base ** n
    shown = str(n) if len(str(n)) <= 15 else f"{str(n)[:12]}... ({len(str(abs(n)))} digits)"
    if abs(n).bit_length() > 1000:  # an exponent like 10**400 does not fit a float for the estimate below; with
        # any base but 0, 1, -1 the power needs at least |n| bits, far more than MAX_BITS
        raise CalculatorError(f"too large: {_number_text(base)} ** {shown} would need more than 2**1000 bits "
                              f"(at most {MAX_BITS})")
    # |p/q| ** n needs about |n| * log2(max(|p|, q)) bits: compare the estimate, never the number
    bits = abs(n) * math.log2(max(abs(base.numerator), base.denominator))
    if bits > MAX_BITS + 1:  # + 1: the estimate may sit a hair above an exact power of two
        raise CalculatorError(f"too large: {_number_text(base)} ** {shown} would need about {bits:.3g} bits "
                              f"(at most {MAX_BITS})")
    return base ** n


def _depth(tree: ast.AST) -> int:
    """The tree's depth, without recursion (a 500-deep "-----1" must not exhaust the Python stack here)."""
    deepest, stack = 0, [(tree, 1)]
    while stack:
        node, d = stack.pop()
        deepest = max(deepest, d)
        stack.extend((child, d + 1) for child in ast.iter_child_nodes(node))
    return deepest


def _refuse(node: ast.AST, source: str) -> CalculatorError:
    kind = type(node).__name__
    if type(node) in _NAMED:
        segment = ast.get_source_segment(source, node) or ""
        return CalculatorError(f"not allowed: {_NAMED[type(node)]} ({kind} {segment!r:.40})")
    if isinstance(node, ast.BinOp):
        return CalculatorError(f"not allowed: the operator {type(node.op).__name__} (only + - * / ** are allowed)")
    if isinstance(node, ast.UnaryOp):
        return CalculatorError(f"not allowed: the operator {type(node.op).__name__} (only unary - and +)")
    return CalculatorError(f"not allowed: {kind} (only numbers, + - * / **, unary minus and parentheses)")


def _value(node: ast.AST, source: str) -> Fraction:
    """Exact value of a tree whose depth was checked; refuses any node that is not arithmetic."""
    if isinstance(node, ast.Constant):
        literal = ast.get_source_segment(source, node) or ""
        if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
            raise CalculatorError(f"not allowed: the constant {literal!r:.40} is not a number")
        if not (literal.isascii() and _DECIMAL.match(literal)):
            raise CalculatorError(f"not a plain number: {literal!r:.40} (write digits with an optional "
                                  f"decimal point)")
        return _check_size(Fraction(literal), "a number")  # from the digits: 0.1 is exactly 1/10
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, _UNARY):
        operand = _value(node.operand, source)
        return -operand if isinstance(node.op, ast.USub) else operand
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        op = _BINARY[type(node.op)]
        left, right = _value(node.left, source), _value(node.right, source)
        if op == "**":
            return _check_size(_power(left, right), "a power")
        if op == "/" and right == 0:
            raise CalculatorError("division by zero")
        return _check_size(_apply(op, left, right), "an intermediate value")
    raise _refuse(node, source)


def evaluate(expression: str) -> Fraction:
    """The exact value of an arithmetic expression, or CalculatorError (a ValueError) saying what was refused.

    Accepts numbers in plain decimal digits (`3`, `2.5`, `.5`), + - * / and ** (also written ×, ÷, −, ^),
    unary minus and plus, and parentheses. TypeError if `expression` is not a str."""
    if not isinstance(expression, str):
        raise TypeError(f"expression must be a str, got {type(expression).__name__}: {expression!r:.80}")
    if len(expression) > MAX_CHARS:
        raise CalculatorError(f"too long: {len(expression)} characters (at most {MAX_CHARS})")
    source = expression.translate(_ALIASES).replace("^", "**").strip()  # models write 2^10 for a power
    if not source:
        raise CalculatorError("syntax error: the expression is empty")
    try:
        tree = ast.parse(source, mode="eval").body
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:  # ValueError: a NUL character
        raise CalculatorError(f"syntax error: {getattr(e, 'msg', None) or e}") from None
    depth = _depth(tree)
    if depth > MAX_DEPTH:
        raise CalculatorError(f"too deep: nesting depth {depth} (at most {MAX_DEPTH})")
    return _value(tree, source)


def format_value(value: Fraction) -> str:
    """"42", or "7/2 (≈ 3.5)": the exact value first, a decimal reading for fractions."""
    if value.denominator == 1:
        return str(value.numerator)
    try:
        approx = float(value)
    except OverflowError:  # beyond 1.8e308: the exact text alone
        return _number_text(value)
    return f"{_number_text(value)} (≈ {approx:.12g})"


def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression exactly: numbers, + - * / **, parentheses. Returns the result, or a
    line starting with "error:" that says what was refused.

    Args:
        expression: the arithmetic to compute, e.g. "(12 + 7) * 3 / 2".
    """
    try:
        return format_value(evaluate(expression))
    except (CalculatorError, TypeError) as e:  # a tool answers a bad call with an observation, never a crash
        return f"error: {e}"
