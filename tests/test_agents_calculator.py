"""labkit.agents.calculator: exact arithmetic that agrees with Fraction arithmetic, and a clear refusal for
everything else (each attack of the chapter's safety list that targets a calculator)."""
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labkit.agents import calculator as calc
from labkit.agents.calculator import MAX_BITS, MAX_CHARS, MAX_DEPTH, CalculatorError, calculator, evaluate

# ------------------------------------------------------------------------- random expressions, valued by Fraction
# Each example is (text, value) built together: the text's value is computed here with Fraction operators,
# never by parsing the text, so the test's oracle shares no code with the module. value None = division by 0.

_numbers = st.one_of(
    st.integers(0, 10**6).map(lambda n: (str(n), Fraction(n))),
    st.tuples(st.integers(0, 999), st.integers(0, 999)).map(  # decimals: exact from their digits
        lambda p: (f"{p[0]}.{p[1]:03d}", Fraction(p[0]) + Fraction(p[1], 1000))))


def _binary(children):
    def combine(args):
        (lt, lv), op, (rt, rv) = args
        text = f"({lt} {op} {rt})"
        if lv is None or rv is None:
            return text, None
        if op == "/":
            return text, None if rv == 0 else lv / rv
        return text, {"+": lv + rv, "-": lv - rv, "*": lv * rv}[op]
    return st.tuples(children, st.sampled_from("+-*/"), children).map(combine)


def _unary(children):
    return children.map(lambda c: (f"-{c[0]}" if c[0].startswith("(") else f"-({c[0]})",
                                   None if c[1] is None else -c[1]))


def _power(children):
    def combine(args):
        (bt, bv), n = args
        text = f"(({bt}) ** {n})" if n >= 0 else f"(({bt}) ** ({n}))"  # ** groups right and binds tight
        return text, None if bv is None or (bv == 0 and n < 0) else bv ** n
    return st.tuples(children, st.integers(-3, 3)).map(combine)


expressions = st.recursive(_numbers, lambda c: st.one_of(_binary(c), _unary(c), _power(c)), max_leaves=12)


def _fits(value: Fraction) -> bool:
    return max(value.numerator.bit_length(), value.denominator.bit_length()) <= MAX_BITS


@settings(max_examples=300, deadline=None)
@given(expressions)
def test_agrees_with_fraction_arithmetic_on_random_expressions(example):
    text, value = example
    if value is None:
        with pytest.raises(CalculatorError, match="^division by zero"):
            evaluate(text)
    elif not _fits(value):  # a value past the bound is refused, never computed wrongly
        with pytest.raises(CalculatorError, match="^too large"):
            evaluate(text)
    else:
        try:
            got = evaluate(text)
        except CalculatorError as e:  # an intermediate power may exceed the bound even when the end value fits
            assert str(e).startswith("too large"), (text, e)
        else:
            assert got == value, text


@settings(max_examples=100, deadline=None)
@given(st.fractions(max_denominator=10**6).filter(lambda f: abs(f) < 10**9))
def test_the_tool_text_is_the_exact_value(x):
    text = f"{x.numerator} / {x.denominator}"
    answer = calculator(text)
    exact = answer.split(" ")[0]
    assert Fraction(exact) == x
    if x.denominator != 1:  # the decimal reading follows the exact value
        assert float(answer.split("≈ ")[1].rstrip(")")) == pytest.approx(float(x), rel=1e-11)


@pytest.mark.parametrize("text, value", [
    ("12 + 7", 19), ("0.1 + 0.2", Fraction(3, 10)), ("8 / (3 - 8 / 3)", 24), ("-2 ** 2", -4), ("(-2) ** 2", 4),
    ("2 ** -3", Fraction(1, 8)), ("2 ** 3 ** 2", 512), ("12×3−1÷2", Fraction(71, 2)), ("2^10", 1024),
    (".5 + 1.", Fraction(3, 2)), ("+-+3", -3), ("(-1) ** 10 ** 9", 1), ("0 ** 0", 1), ("2 ** 9999", 2**9999),
    ("1" + "+1" * (MAX_DEPTH - 2), MAX_DEPTH - 1), ("(" * 150 + "7" + ")" * 150, 7),
])
def test_known_values(text, value):
    assert evaluate(text) == value  # ** binds tighter than unary minus and groups to the right, as in Python


def test_tool_output_format():
    assert calculator("12 + 7") == "19"
    assert calculator("1 / 3") == "1/3 (≈ 0.333333333333)"
    assert calculator("-7 / 2") == "-7/2 (≈ -3.5)"
    big = calculator("2 ** 9000 / 3")  # past a float's range: the exact text alone
    assert big.endswith("/3") and "≈" not in big


# ------------------------------------------------------------------------------------------ each refusal, named

REFUSALS = [
    ("+0" * 200000, rf"^too long: 400000 characters \(at most {MAX_CHARS}\)"),
    ("9**9**9", r"^too large: 9 \*\* 387420489 would need about 1\.23e\+09 bits"),
    ("10 ** 3011", r"^too large: 10 \*\* 3011"),
    # exponents too big for a float (the size estimate once raised OverflowError out of the tool)
    ("2 ** (10 ** 400)", r"^too large: 2 \*\* 100000000000\.\.\. \(401 digits\) would need more than 2\*\*1000 bits"),
    ("0.5 ** -(10 ** 400)", r"^too large: 1/2 \*\* -10000000000\.\.\. \(401 digits\)"),
    ("3 ** 2 ** 1000", r"^too large: 3 \*\* 107150860718\.\.\. \(302 digits\)"),
    ("2 ** (2 ** 999)", r"^too large: 2 \*\* 535754303593\.\.\. \(301 digits\) would need about 5\.36e\+300 bits"),
    ("2 ** 9999 * 2", r"^too large: an intermediate value needs 10001 bits"),
    ("2 ** 0.5", r"^not exact: exponent 1/2 is not a whole number"),
    ("1 / 0", r"^division by zero$"),
    ("1 / (2 - 2)", r"^division by zero$"),
    ("0 ** -1", r"^division by zero: 0 to a negative power"),
    ("-" * 500 + "1", rf"^too deep: nesting depth 501 \(at most {MAX_DEPTH}\)"),
    ("1" + "+1" * 300, r"^too deep: nesting depth 301"),
    ("(" * 250 + "1" + ")" * 250, r"^syntax error: too many nested parentheses"),
    ("__import__('os')", r"^not allowed: function calls \(Call \"__import__\('os'\)\"\)"),
    ("().__class__.__bases__[0].__subclasses__()", r"^not allowed: function calls"),
    ("(1).__class__", r"^not allowed: attribute access \(Attribute '\(1\).__class__'\)"),
    ("x + 1", r"^not allowed: names \(Name 'x'\)"),
    ("'+0' * 200000", r"^not allowed: the constant \"'\+0'\" is not a number"),
    ("True + 1", r"^not allowed: the constant 'True' is not a number"),
    ("[1][0]", r"^not allowed: subscripts"),
    ("(lambda: 1)()", r"^not allowed: function calls"),
    ("1 if 1 else 2", r"^not allowed: if-expressions"),
    ("(y := 2)", r"^not allowed: assignments"),
    ("1 < 2", r"^not allowed: comparisons"),
    ("7 // 2", r"^not allowed: the operator FloorDiv"),
    ("7 % 2", r"^not allowed: the operator Mod"),
    ("~7", r"^not allowed: the operator Invert"),
    ("[1, 2]", r"^not allowed: List"),
    ("1e400", r"^not a plain number: '1e400'"),
    ("0x10", r"^not a plain number: '0x10'"),
    ("1_000", r"^not a plain number: '1_000'"),
    ("2j", r"^not allowed: the constant '2j' is not a number"),
    ("import os", r"^syntax error"),
    ("1 +", r"^syntax error"),
    ("\x00", r"^syntax error"),
    ("   ", r"^syntax error: the expression is empty"),
]


@pytest.mark.parametrize("text, reason", REFUSALS, ids=[t[:24] for t, _ in REFUSALS])
def test_each_refusal_names_what_was_refused(text, reason):
    with pytest.raises(CalculatorError, match=reason):
        evaluate(text)
    assert calculator(text).startswith("error: ")  # the tool answers with an observation, never raises


def test_refusals_come_before_any_work():
    """9**9**9 is refused from the size estimate: computing it would take minutes (chapter's attack list)."""
    with pytest.raises(CalculatorError, match="too large"):
        calc._power(Fraction(9), Fraction(387420489))
    with pytest.raises(CalculatorError, match="too large"):
        calc._power(Fraction(1, 3), Fraction(-387420489))  # small fractions to negative powers grow too


def test_calculator_error_is_a_value_error_and_bad_types_are_type_errors():
    assert issubclass(CalculatorError, ValueError)
    with pytest.raises(TypeError, match="expression must be a str, got int: 12"):
        evaluate(12)
    assert calculator(None) == "error: expression must be a str, got NoneType: None"


def test_the_module_never_calls_eval_or_exec():
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(calc))
    called = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    assert not called & {"eval", "exec", "compile", "__import__"}
