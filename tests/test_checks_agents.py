"""labkit.checks.agents: the lab-13 checks pass labkit's own functions and the solution's, refuse to swallow a
blank exercise, and catch every wrong implementation in tests/mutants/13-agents.py (here in-process; the notebook
runs are tests/test_labs.py's), each with a message that says what is wrong."""
import ast
import importlib.util
import json
import math
import re
import tracemalloc
from fractions import Fraction
from pathlib import Path

import pytest

from labkit.agents import memory, react
from labkit.agents.calculator import MAX_BITS, MAX_CHARS, MAX_DEPTH, CalculatorError, evaluate
from labkit.checks.agents import (_ALLOWED, _REFUSED, check_calculate, check_fit_to_budget, check_parse_step)
from labkit.llm.base import Message

CHECKS = {"calculate": check_calculate, "parse_step": check_parse_step, "fit_to_budget": check_fit_to_budget}


def _mutants_module():
    path = Path(__file__).parent / "mutants" / "13-agents.py"
    spec = importlib.util.spec_from_file_location("mutants_13_agents", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


MUTANTS = _mutants_module()


def _define(source: str, name: str):
    """The function a lab cell defines, with the names the lab's first cell imports."""
    namespace = dict(ast=ast, json=json, math=math, re=re, Fraction=Fraction, MAX_BITS=MAX_BITS,
                     MAX_CHARS=MAX_CHARS, MAX_DEPTH=MAX_DEPTH)
    exec(source, namespace)  # test code defining a function from the solution's text; never untrusted input
    return namespace[name]


def labkit_parse(text):
    step = react.parse_step(text)
    if step.kind == "action":
        return ("action", step.action, step.arguments)
    return ("answer", step.final_answer) if step.kind == "answer" else ("malformed", step.error)


def labkit_fit(messages, budget, count):
    kept, evicted = memory.fit_to_budget([Message(**m) for m in messages], budget, count)
    out = [m for m in messages if Message(**m) in evicted]
    return [m for m in messages if all(m is not e for e in out)], out


def test_labkit_and_the_solution_pass(capsys):
    check_calculate(evaluate)
    check_parse_step(labkit_parse)
    check_fit_to_budget(labkit_fit)
    for source, name in ((MUTANTS._CALC, "calculate"), (MUTANTS._PARSE, "parse_step"), (MUTANTS._FIT, "fit_to_budget")):
        CHECKS[name](_define(source, name))  # the solution's text, as the mutants start from it
    out = capsys.readouterr().out
    for name in CHECKS:
        assert out.count(f"✓ {name} passes") == 2


def test_stubs_raise_not_implemented():
    def stub(*args, **kwargs):
        raise NotImplementedError("Exercise")
    for check in CHECKS.values():
        with pytest.raises(NotImplementedError):
            check(stub)


def test_the_tables_say_what_labkit_does():
    for text, _ in _ALLOWED:
        evaluate(text)
    for text, _ in _REFUSED:
        with pytest.raises(CalculatorError):
            evaluate(text)


@pytest.mark.parametrize("mutant", MUTANTS.MUTANTS + MUTANTS.MORE_MUTANTS, ids=lambda m: m.why[:60])
def test_every_mutant_fails_its_check(mutant, capsys):
    fn = _define(mutant.source, mutant.function)
    for name in mutant.fails:
        with pytest.raises(AssertionError):
            CHECKS[name](fn)
    assert "✓" not in capsys.readouterr().out


def _mutant(why_starts: str):
    found = [m for m in MUTANTS.MUTANTS + MUTANTS.MORE_MUTANTS if m.why.startswith(why_starts)]
    assert len(found) == 1, why_starts
    return _define(found[0].source, found[0].function)


@pytest.mark.parametrize("why, check, message", [
    ("a calculator that allows attribute access", "calculate", r"\(1\)\.__class__.*Attribute access must be refused"),
    ("a calculator that allows unbounded powers", "calculate", r"2 \*\* 10000.*Estimate a power's size"),
    ("a calculator that computes a power first", "calculate", r"7 \*\* 1000000.*only after allocating"),
    ("a calculator that checks only powers", "calculate", r"an intermediate value over MAX_BITS"),
    ("a calculator on floats", "calculate", r"expected 3/10, got 10808639105689191/36028797018963968"),
    ("a calculator that accepts bools", "calculate", r"True is a bool"),
    ("a calculator that lets ZeroDivisionError escape", "calculate", r"raised ZeroDivisionError.*ValueError"),
    ("a calculator without a depth limit", "calculate", r"deeper than MAX_DEPTH"),
    ("a calculator without a length limit", "calculate", r"raised RecursionError"),
    ('a parser that takes the first "Action:" anywhere', "parse_step", r"only at the START of a line"),
    ('a parser that does not cut', "parse_step", r'Cut the text at the first "Observation:"'),
    ("a parser that takes the last action", "parse_step", r'FIRST line that starts with "Action:"'),
    ("a parser that reads the Action Input's JSON from its line only", "parse_step", r"may span lines"),
    ("an eviction that drops the system prompt", "fit_to_budget", r"A system message was evicted"),
    ("an eviction that drops the newest turn", "fit_to_budget", r"should raise ValueError"),
    ("an eviction whose budget is exclusive", "fit_to_budget", r"inclusive: <="),
    ("an eviction that takes the largest turns first", "fit_to_budget", r"evict the OLDEST non-system turns first"),
    ("an eviction that pops from the caller's list", "fit_to_budget", r"changed its argument 1 \(list\) in place"),
])
def test_messages_name_the_mistake(why, check, message):
    with pytest.raises(AssertionError, match=message):
        CHECKS[check](_mutant(why))


def test_the_power_guard_works_when_tracemalloc_is_already_on():
    """A student who traces memory themselves must not switch the guard off (nor have it switch theirs off)."""
    tracemalloc.start()
    try:
        with pytest.raises(AssertionError, match="only after allocating"):
            check_calculate(_mutant("a calculator that computes a power first"))
        assert tracemalloc.is_tracing()
    finally:
        tracemalloc.stop()


def test_other_right_designs_pass(capsys):
    """The checks hold the rules, not labkit's wording: other refusal messages, other reasons, copies of dicts."""
    def calc(expression):
        try:
            return evaluate(expression)
        except CalculatorError as e:
            raise ValueError("no") from e

    def parse(text):
        got = labkit_parse(text)
        return ("malformed", "bad step") if got[0] == "malformed" else got

    def fit(messages, budget, count):
        kept, evicted = labkit_fit(messages, budget, count)
        return [dict(m) for m in kept], [dict(m) for m in evicted]

    check_calculate(calc)
    check_parse_step(parse)
    check_fit_to_budget(fit)
    assert capsys.readouterr().out.count("✓") == 3


@pytest.mark.parametrize("fn, check, message", [
    (lambda e: float(evaluate(e)), check_calculate, "should return a fractions.Fraction"),
    (lambda t: list(labkit_parse(t)), check_parse_step, r"should return \('action', name, arguments\)"),
    (lambda t: ("malformed", "") if labkit_parse(t)[0] == "malformed" else labkit_parse(t), check_parse_step,
     "non-empty str"),
    (lambda m, b, c: tuple(labkit_fit(m, b, c)[0]), check_fit_to_budget, "a pair of lists"),
])
def test_wrong_return_types_are_named(fn, check, message):
    with pytest.raises(AssertionError, match=message):
        check(fn)
