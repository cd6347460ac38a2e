"""Graded checks for lab 13 (tools and agents: a safe calculator, the ReAct step parser, the memory eviction policy).

    from labkit.checks.agents import check_calculate, check_parse_step, check_fit_to_budget
    check_calculate(calculate)          # your functions, defined in the lab
    check_parse_step(parse_step)
    check_fit_to_budget(fit_to_budget)

The references are labkit's own: `labkit.agents.calculator.evaluate`, `labkit.agents.react.parse_step` and
`labkit.agents.memory.fit_to_budget`. Each check runs hand-made cases first (the attacks of chapter 13 and the
corners of each rule), then seeded random ones, and stops at the first wrong answer with a message that names
the input, what was expected, what came back and, where the answer is what a known mistake gives, the mistake.

The calculator's check never runs an input that could hang a wrong calculator: it asks for powers that are cheap
to compute (2 ** 20000 takes microseconds) and catches a calculator that computes a power before checking its
size by the memory the refusal allocates (`tracemalloc`), not by a clock, so that the check is the same on every
machine. Only after that does it send the issue's 9 ** 9 ** 9.
"""
from __future__ import annotations

import ast
import json
import random
import tracemalloc
from collections.abc import Callable
from fractions import Fraction

from labkit.agents import memory, react
from labkit.agents.calculator import MAX_BITS, MAX_CHARS, MAX_DEPTH, CalculatorError, evaluate
from labkit.checks import _call, _passed, _short
from labkit.llm.base import Message

# ----------------------------------------------------------------------------------------------------------
# the safe calculator

_ALLOWED: list[tuple[str, str]] = [
    ("12 + 7", "chapter 4's sum"),
    ("(1 + 2) / 4 - 0.5", "division is exact: a Fraction, not a float"),
    ("0.1 + 0.2", "a decimal is read from its digits: exactly 3/10 (floats give 0.30000000000000004)"),
    ("2 ** 10 / 3", "a power, then an exact division"),
    ("2 ** -3", "a negative exponent"),
    ("-(3 - 5) ** 2", "unary minus binds looser than **, as in Python"),
    ("2 ** 3 ** 2", "** is right-associative: 2 ** 9"),
    ("(-2) ** 3", "a negative base"),
    ("(-1) ** 1000001", "a base of -1 never grows, whatever the exponent"),
    ("0 ** 0", "0 ** 0 is 1, as in Python"),
    ("1 ** 99999999", "a base of 1 never grows: the size estimate must allow it"),
    ("2 ** 9999", "the largest power of 2 within MAX_BITS bits (10000 bits): allowed"),
    ("(1/3) ** 5000", "a fraction to a power within the bound (about 7925 bits)"),
    ("+7 - -3", "unary plus and minus"),
    ("-" * 100 + "1", "100 unary minuses: deep, but within MAX_DEPTH"),
    ("1" + " + 1" * 100, "a sum of 101 terms, within MAX_DEPTH"),
    ("123456789 * 987654321 - 3.5", "big products stay exact"),
]

# (expression, what is wrong with it); labkit refuses each (asserted when the check runs)
_REFUSED: list[tuple[str, str]] = [
    ("__import__('os')", "a function call (the classic escape: it imports os)"),
    ("().__class__.__bases__[0].__subclasses__()", "a dunder walk to every class in the interpreter"),
    ("(1).__class__", "attribute access"),
    ("(2).numerator", "attribute access (harmless here, but a.b is how every escape starts)"),
    ("x + 1", "a name"),
    ("[1][0]", "a subscript"),
    ("(lambda: 1)()", "a lambda"),
    ("[x for x in (1, 2)]", "a comprehension"),
    ("'+0' * 3", "a string"),
    ("True + 1", "a bool (True is an int in Python; it is not a number the calculator accepts)"),
    ("2j * 2", "a complex number"),
    ("1 < 2", "a comparison"),
    ("7 // 2", "floor division (only + - * / ** are allowed)"),
    ("7 % 2", "the modulo operator"),
    ("1 << 100", "a shift (1 << 10**9 is another way to ask for a huge number)"),
    ("~7", "the unary operator ~"),
    ("1 / 0", "division by zero"),
    ("1 / (2 - 2)", "division by zero, computed"),
    ("0 ** -1", "0 to a negative power: a division by zero"),
    ("2 ** 0.5", "a non-integer exponent: the result is not exact"),
    ("4 ** 0.5", "a non-integer exponent (even where the result happens to be rational)"),
    ("2 ** 10000", "a result of 10001 bits: over MAX_BITS"),
    ("2 ** 20000", "a power far over MAX_BITS"),
    ("(1/3) ** -7000", "a fraction to a negative power grows too: 3 ** 7000"),
    ("(2 ** 6000) * (2 ** 6000)", "an intermediate value over MAX_BITS (each factor is within it)"),
    ("2 ** 9999 * 2", "a product one bit over MAX_BITS"),
    ("-" * 500 + "1", "500 unary minuses: nested deeper than MAX_DEPTH"),
    ("1" + "+1" * 300, "a sum of 301 terms: a tree deeper than MAX_DEPTH"),
    ("(" * 250 + "1" + ")" * 250, "250 nested parentheses: Python's parser refuses them (a SyntaxError)"),
    ("+0" * 200000, "400000 characters: over MAX_CHARS (parsing it alone overflows Python's stack)"),
    ("1 +", "a syntax error"),
    ("import os", "a statement, not an expression"),
    ("", "an empty expression"),
]

_MEMORY_LIMIT = 200_000  # bytes a refusal may allocate: 7 ** 1000000 alone is ~350 KB; a right refusal ~15 KB


def _calc_hint(expression: str, got: object) -> str:
    if isinstance(got, float):
        return (" That is a float: keep every value a fractions.Fraction, reading each literal from its text "
                "(Fraction('0.1') is exactly 1/10; Fraction(0.1) is the float's binary value).")
    try:
        nodes = {type(n) for n in ast.walk(ast.parse(expression, mode="eval"))}
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        nodes = set()
    if ast.Attribute in nodes:
        return (" Attribute access must be refused: a.b is the first step of every escape (().__class__..."
                "__subclasses__() reaches subprocess.Popen). Allow only the node types listed; refuse the rest.")
    if "True" in expression:
        return " True is a bool (a subclass of int): accept only int and float constants, and not bool."
    if ast.Pow in nodes:
        return (" Estimate a power's size before computing it: |n| * log2(max(|p|, q)) bits for (p/q) ** n; "
                "refuse when that exceeds MAX_BITS + 1, then check the size of every result too.")
    if ast.BinOp in nodes and isinstance(got, Fraction) and max(got.numerator.bit_length(),
                                                                  got.denominator.bit_length()) > MAX_BITS:
        return f" Check the size of every result, not only of powers: at most MAX_BITS = {MAX_BITS} bits."
    if len(expression) > MAX_CHARS:
        return f" Refuse a text longer than MAX_CHARS = {MAX_CHARS} characters before parsing it."
    if expression.count("-") >= 100 or expression.count("+") >= 100:
        return " Measure the tree's depth before walking it, and refuse a tree deeper than MAX_DEPTH."
    return ""


def _refusal(fn: Callable, expression: str, what: str) -> None:
    call = f"calculate({_short(expression, 60)}) ({what})"
    try:
        got = fn(expression)
    except NotImplementedError:
        raise
    except ValueError:
        return
    except Exception as e:  # noqa: BLE001 - any other exception is the student's bug, named in the message
        raise AssertionError(f"{call} raised {type(e).__name__}: {_short(str(e), 100)}. Refuse with a ValueError "
                             f"(catch what Python raises and raise ValueError with a reason): a tool must answer "
                             f"every input, and the agent shows the reason to the model.") from e
    raise AssertionError(f"{call} should be refused with a ValueError, got {_short(got)}.{_calc_hint(expression, got)}")


def _random_expression(rng: random.Random, depth: int = 0) -> str:
    if depth > 3 or rng.random() < 0.3:
        return rng.choice([str(rng.randint(0, 999)), f"{rng.randint(0, 99)}.{rng.randint(0, 99):02d}",
                           f"{rng.randint(1, 9)}"])
    kind = rng.random()
    if kind < 0.15:
        return f"-({_random_expression(rng, depth + 1)})"
    if kind < 0.3:
        return f"({_random_expression(rng, depth + 1)}) ** {rng.choice([-3, -2, -1, 0, 1, 2, 3, 5])}"
    op = rng.choice(["+", "-", "*", "/"])
    return f"({_random_expression(rng, depth + 1)}) {op} ({_random_expression(rng, depth + 1)})"


def _value_case(fn: Callable, expression: str, what: str) -> None:
    call = f"calculate({_short(expression, 60)}) ({what})"
    try:
        expected = evaluate(expression)
    except CalculatorError:
        _refusal(fn, expression, what)
        return
    got = _call(fn, call, expression)
    if not isinstance(got, Fraction):
        raise AssertionError(f"{call} should return a fractions.Fraction, got {type(got).__name__}: "
                             f"{_short(got)}.{_calc_hint(expression, got)}")
    if got != expected:
        raise AssertionError(f"{call}: expected {expected}, got {got}.{_calc_hint(expression, got)}")


def _refusal_memory(fn: Callable, expression: str) -> int:
    """Peak bytes allocated while fn refuses `expression` (a calculator that computes the power first
    allocates the whole number)."""
    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    try:
        _refusal(fn, expression, "a power of about 2.8 million bits")
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        if not was_tracing:
            tracemalloc.stop()


def check_calculate(fn: Callable) -> None:
    """calculate(expression) -> Fraction: exact arithmetic on numbers, + - * / **, unary - and +, parentheses;
    anything else, and any value over MAX_BITS bits, refused with a ValueError before the work is done."""
    assert (MAX_CHARS, MAX_DEPTH, MAX_BITS) == (1000, 200, 10_000), "the lab states these limits"
    count = 0
    for expression, what in _ALLOWED:
        _value_case(fn, expression, what)
        count += 1
    for expression, what in _REFUSED:
        try:
            evaluate(expression)
        except CalculatorError:
            pass
        else:  # the table must say what labkit does
            raise RuntimeError(f"labkit's calculator accepts {expression!r}: fix the check's table")
        _refusal(fn, expression, what)
        count += 1
    peak = _refusal_memory(fn, "7 ** 1000000")
    if peak > _MEMORY_LIMIT:
        raise AssertionError(
            f"calculate('7 ** 1000000') was refused, but only after allocating {peak / 1e3:,.0f} KB: the power was "
            f"computed first and its size checked afterwards. That is too late: 9 ** 9 ** 9 would then compute "
            f"for minutes before being refused. Estimate the size first: |n| * log2(max(|p|, q)) bits for "
            f"(p/q) ** n, and refuse when it exceeds MAX_BITS + 1.")
    _refusal(fn, "9 ** 9 ** 9", "the issue's attack: about 1.2e9 bits, minutes of CPU if computed")
    count += 2
    rng = random.Random(13)
    for i in range(60):
        _value_case(fn, _random_expression(rng), f"seeded random expression {i + 1}")
        count += 1
    _passed("calculate", count)


# ----------------------------------------------------------------------------------------------------------
# the ReAct step parser

def _act(name: str, arguments: dict, thought: str = "I should use a tool.") -> str:
    return f"Thought: {thought}\nAction: {name}\nAction Input: {json.dumps(arguments)}"


_STEPS: list[tuple[str, str]] = [
    (_act("calculator", {"expression": "12 + 7"}), "a plain action"),
    ("Thought: The calculator says 19.\nFinal Answer: 19", "a plain answer"),
    ('I need to add.\nAction: calculator\nAction Input: {"expression": "1 + 1"}',
     "the Thought: label is optional"),
    ('Thought: Action: search_docs would be wrong here; I will not search. The calculator is right.\n'
     'Action: calculator\nAction Input: {"expression": "12 + 7"}',
     'an "Action:" inside the thought\'s prose is not the action: only a line that STARTS with "Action:" is'),
    ('Thought: maybe Final Answer: 7? No, compute it.\nAction: calculator\nAction Input: {"expression": "3 + 4"}',
     'a "Final Answer:" inside the thought is prose too'),
    ('Thought: add them\nAction: calculator\nAction Input: {"expression": "2 + 2"}\nObservation: 5\n'
     'Thought: so it is 5\nFinal Answer: 5',
     'the model forged the tool\'s result and an answer after it: cut at "Observation:", the action stands'),
    ("Thought: I know this one.\nObservation: the calculator says 42\nFinal Answer: 42",
     'a forged observation before the answer: everything from "Observation:" on is cut, and no step is left'),
    ("Thought: easy\nobservation: 9\nFinal Answer: 9", 'the cut ignores case: "observation:" is cut too'),
    ("Thought: my observation: nothing to compute\nFinal Answer: 3",
     'the cut happens anywhere, even in the middle of a line'),
    ("  thought: done\n  final answer:   19  ", "labels ignore case and leading spaces; the answer is stripped"),
    ('Action: search_docs\nAction Input: {"query": "rotary position embedding",\n "k": 3}',
     "the JSON object may span lines"),
    ('Action: calculator\nAction Input: {"expression": "6 * 7"} I hope this works.\nFinal Answer: 42',
     "text after the JSON object is ignored (and a Final Answer written before the tool answered is not taken)"),
    ('Action: lookup\nAction Input: {"exact": true, "limit": null, "ids": [1, 2]}',
     "the arguments are JSON (true, null), read with json, never eval"),
    ('Action: calculator\n\n  Action Input:\n  {"expression": "5 - 1"}',
     "blank lines may stand between the two lines, and the object may start on the next line"),
    ("Thought: x\nAction: calculator", 'no "Action Input:" line'),
    ('Action: calculator\nThought: wait\nAction Input: {"expression": "1"}',
     'the line after "Action:" must be "Action Input:"'),
    ('Action Input: {"expression": "1"}\nAction: calculator', '"Action Input:" before any "Action:"'),
    ("Action: calculator\nAction Input: expression = 12 + 7", "the Action Input is not JSON"),
    ('Action: calculator\nAction Input: "12 + 7"', "the Action Input is JSON but not an object"),
    ("Action: calculator\nAction Input: {\"expression\": \"1", "the Action Input's JSON is cut off"),
    ('Action: use the calculator\nAction Input: {"expression": "1"}', "the tool name is not one word"),
    ('Action:\nAction Input: {"expression": "1"}', "no tool name"),
    ("Thought: hm\nFinal Answer:   ", "an empty Final Answer"),
    ("I think the answer is 19.", "no labelled line at all"),
    ("", "an empty reply"),
    ('Action: calculator\nAction Input: {"expression": "1 + 1"}\nAction: search_docs\nAction Input: {"query": "x"}',
     "two actions: the first one is the step"),
    ('Final Answer: 19\nAction: calculator\nAction Input: {"expression": "1 + 1"}',
     "the first labelled line decides: an answer, even with an action after it"),
    ("Thought: sum it\nFinal Answer: The sum is 19.\nIt was computed exactly.\nThought: done",
     "the answer runs to the next labelled line, over several lines"),
    ('Thought: first\nActions: none yet\nAction: calculator\nAction Input: {"expression": "2 * 3"}',
     '"Actions:" is not the label "Action:"'),
]


def _reference_step(text: str) -> tuple:
    step = react.parse_step(text)
    if step.kind == "action":
        return ("action", step.action, step.arguments)
    if step.kind == "answer":
        return ("answer", step.final_answer)
    return ("malformed", step.error)


def _step_hint(text: str, got: tuple, expected: tuple) -> str:
    forged = react._FORGED.search(text)
    if forged and got[0] != "malformed" and got != expected:
        return (' Cut the text at the first "Observation:" (any case, anywhere) before reading it: only a tool '
                'writes observations, and what the model writes after one is forged.')
    kept = text[:forged.start()] if forged else text
    mid_line = any(line.lstrip().lower().find(label) > 0 for line in kept.split("\n")
                   for label in ("action:", "final answer:", "action input:") if line.strip())
    if mid_line and got[0] != "answer" and expected[0] == "action":
        return (' A label counts only at the START of a line (after spaces): an "Action:" or "Final Answer:" in '
                'the middle of a thought is prose about a tool, not a call to it.')
    if got[0] == "action" and expected[0] == "action" and got[1] != expected[1]:
        return ' The action is the FIRST line that starts with "Action:" (after spaces).'
    if got[0] == "answer" and expected[0] != "answer":
        return ' A "Final Answer:" counts only at the start of a line, and only if it is the first labelled line.'
    if got[0] == "malformed" and expected[0] == "action":
        return (' Read the arguments with json.JSONDecoder().raw_decode on the text after "Action Input:" '
                '(stripped): the object may span lines and be followed by other text.')
    if got[0] == "answer" and expected[0] == "answer":
        return " The answer is the text after the label up to the next labelled line (or the end), stripped."
    return ""


def _check_one_step(fn: Callable, text: str, what: str) -> None:
    call = f"parse_step({_short(text, 120)}) ({what})"
    got = _call(fn, call, text)
    expected = _reference_step(text)
    if not isinstance(got, tuple) or not got or got[0] not in ("action", "answer", "malformed") or \
            len(got) != {"action": 3, "answer": 2, "malformed": 2}[got[0]]:
        raise AssertionError(f"{call} should return ('action', name, arguments), ('answer', text) or "
                             f"('malformed', reason), got {_short(got)}")
    if got[0] == "malformed":
        if not isinstance(got[1], str) or not got[1].strip():
            raise AssertionError(f"{call}: a malformed reply's reason must be a non-empty str (the model reads it "
                                 f"and tries again), got {_short(got[1])}")
        if expected[0] == "malformed":
            return
    if got[0] == "action" and not isinstance(got[2], dict):
        raise AssertionError(f"{call}: the arguments must be a dict, got {type(got[2]).__name__}")
    shown = expected if expected[0] != "malformed" else ("malformed", "<a reason>")
    if got != expected:
        raise AssertionError(f"{call}: expected {_short(shown, 200)}, got {_short(got, 200)}."
                             f"{_step_hint(text, got, expected)}")


_PROSE = ["I should compute this.", "Let me think.", "maybe Action: search_docs, or not.",
          "I could write Final Answer: 3 now, but I have not checked.", "The tool said Action Input: {} before.",
          "the numbers are 12 and 7", "this needs no observation: really"]


def _random_step(rng: random.Random) -> str:
    lines = []
    if rng.random() < 0.8:
        lines.append(("Thought: " if rng.random() < 0.8 else "") + rng.choice(_PROSE))
    for _ in range(rng.randint(0, 2)):
        lines.append(rng.choice(_PROSE))
    kind = rng.random()
    if kind < 0.45:
        name = rng.choice(["calculator", "search_docs", "run_python", "a tool"])
        args = rng.choice([{"expression": f"{rng.randint(1, 99)} + {rng.randint(1, 99)}"}, {"query": "heads", "k": 2},
                           {}])
        lines.append(f"Action: {name}")
        if rng.random() < 0.2:
            lines.append("")
        if rng.random() < 0.9:
            text = json.dumps(args) if rng.random() < 0.85 else rng.choice(["12 + 7", '"x"', "{bad json}"])
            lines.append(f"Action Input: {text}")
    elif kind < 0.8:
        lines.append(f"Final Answer: {rng.choice(['19', 'It is 42.', '', '7 heads'])}")
    if rng.random() < 0.4:
        lines.append(rng.choice(["Observation: 20", "observation: done", "Observation:"]))
        lines.append(f"Final Answer: {rng.randint(0, 99)}")
    elif rng.random() < 0.3:
        lines.append(rng.choice(["Thought: done", "Final Answer: 5", 'Action: calculator\nAction Input: {}']))
    return "\n".join(lines)


def check_parse_step(fn: Callable) -> None:
    """parse_step(text) -> ('action', name, arguments) | ('answer', text) | ('malformed', reason): one ReAct reply
    read as labkit.agents.react.parse_step reads it (labels at line starts, cut at "Observation:")."""
    rng = random.Random(13)
    cases = _STEPS + [(_random_step(rng), f"seeded random reply {i + 1}") for i in range(80)]
    for text, what in cases:
        _check_one_step(fn, text, what)
    _passed("parse_step", len(cases))


# ----------------------------------------------------------------------------------------------------------
# the memory eviction policy

def _words(n: int, tag: str) -> str:
    return " ".join(f"{tag}{i}" for i in range(n))


def _conversation(spec: list[tuple[str, int]]) -> list[dict]:
    # every content distinct (an empty one is i + 1 spaces: 0 words), so that equal dicts are the same message
    return [{"role": role, "content": _words(n, f"m{i}.") or " " * (i + 1)} for i, (role, n) in enumerate(spec)]


def count_words(text: str) -> int:
    return len(text.split())


def count_chars(text: str) -> int:
    return len(text)


_FIT: list[tuple[list[tuple[str, int]], int, Callable[[str], int], str]] = [
    ([("system", 3), ("user", 4), ("assistant", 2)], 20, count_words, "everything fits: nothing is evicted"),
    ([("system", 3), ("user", 4), ("assistant", 2)], 9, count_words, "exactly at the budget: nothing is evicted"),
    ([("system", 3), ("user", 4), ("assistant", 2), ("user", 3)], 9, count_words,
     "one turn over: the oldest non-system turn goes"),
    ([("system", 2), ("user", 3), ("assistant", 2), ("user", 4), ("assistant", 1)], 8, count_words,
     "evict oldest first, and stop as soon as the rest fits"),
    ([("system", 2), ("user", 1), ("assistant", 9), ("user", 2)], 6, count_words,
     "a small old turn goes before a big newer one: oldest first, not largest first"),
    ([("system", 2), ("user", 8), ("assistant", 1), ("user", 2)], 6, count_words,
     "the big oldest turn alone is enough: the small newer one stays"),
    ([("system", 6), ("user", 5), ("assistant", 5), ("user", 3)], 9, count_words,
     "the system prompt is the OLDEST message, and it is never evicted"),
    ([("user", 5), ("assistant", 5), ("user", 3)], 4, count_words,
     "no system prompt: only the newest message is protected"),
    ([("system", 2), ("user", 3), ("tool", 6), ("assistant", 1), ("system", 2), ("user", 2)], 8, count_words,
     "every system message is kept, wherever it stands; a tool result is a turn like any other"),
    ([("system", 3), ("user", 2), ("assistant", 2), ("user", 9)], 12, count_words,
     "the newest message is big: everything between it and the system prompt goes"),
    ([("system", 3), ("user", 2), ("assistant", 2), ("user", 9)], 11, count_words,
     "the system prompt and the newest message alone are 12 tokens, over 11: a ValueError, never truncation"),
    ([("user", 7)], 6, count_words, "a single message over the budget: a ValueError"),
    ([("user", 7)], 7, count_words, "a single message that fits"),
    ([("system", 1), ("user", 4), ("assistant", 4), ("user", 1)], 30, count_chars,
     "the counter is the one passed in (here: characters, not words)"),
    ([("system", 1), ("user", 4), ("assistant", 4), ("user", 1)], 40, count_chars,
     "the counter is the one passed in (here: characters, not words)"),
]


def _fit_hint(messages: list[dict], kept: list[dict], evicted: list[dict], budget: int, count) -> str:
    sizes = [count(m["content"]) for m in messages]
    index = {id(m): i for i, m in enumerate(messages)}
    kept_i = [index.get(id(m), _position(messages, m)) for m in kept]
    out_i = [index.get(id(m), _position(messages, m)) for m in evicted]
    if sum(sizes[i] for i in kept_i if i is not None) > budget:
        return f" Your kept messages take {sum(sizes[i] for i in kept_i if i is not None)} tokens, over the budget."
    if any(messages[i]["role"] == "system" for i in out_i if i is not None):
        return " A system message was evicted: the system prompt is never evicted, even though it is the oldest."
    if messages and len(messages) - 1 in out_i:
        return " The newest message was evicted: it is the question being answered now, and is never evicted."
    free = [i for i in kept_i if i is not None and messages[i]["role"] != "system" and i != len(messages) - 1]
    if out_i and free and max(i for i in out_i if i is not None) > min(free):
        return " A newer turn was evicted while an older one was kept: evict the OLDEST non-system turns first."
    if out_i and sum(sizes[i] for i in kept_i if i is not None) + sizes[out_i[-1]] <= budget:
        return " More was evicted than needed: stop as soon as the rest fits (the budget is inclusive: <=)."
    return ""


def _position(messages: list[dict], m: object) -> int | None:
    return next((i for i, x in enumerate(messages) if x == m), None)


def _check_one_fit(fn: Callable, spec: list[tuple[str, int]], budget: int, count, what: str) -> None:
    messages = _conversation(spec)
    shown = "[" + ", ".join(f"{m['role']}:{count(m['content'])}" for m in messages) + "]"
    call = f"fit_to_budget({shown} (role:tokens), budget={budget}, count={count.__name__}) ({what})"
    try:
        kept_ref, out_ref = memory.fit_to_budget([Message(**m) for m in messages], budget, count)
        expected = ([m for m in messages if Message(**m) in kept_ref], [m for m in messages if Message(**m) in out_ref])
    except ValueError:
        expected = None
    if expected is None:
        try:
            got = _call(fn, call, messages, budget, count)
        except AssertionError as e:
            if isinstance(e.__cause__, ValueError):
                return
            raise
        raise AssertionError(f"{call} should raise ValueError (the system prompt and the newest message alone do "
                             f"not fit, and neither may be evicted or cut), got {_short(got)}")
    got = _call(fn, call, messages, budget, count)
    if not isinstance(got, tuple) or len(got) != 2 or not all(isinstance(x, list) for x in got):
        raise AssertionError(f"{call} should return a pair of lists (kept, evicted), got {_short(got)}")
    kept, evicted = got
    if (kept, evicted) != expected:
        roles = lambda ms: [f"{m['role']}:{count(m['content'])}" if isinstance(m, dict) else _short(m, 30)  # noqa: E731
                            for m in ms]
        raise AssertionError(f"{call}: expected kept {roles(expected[0])}, evicted {roles(expected[1])}; got kept "
                             f"{roles(kept)}, evicted {roles(evicted)} (both in the conversation's order)."
                             f"{_fit_hint(messages, kept, evicted, budget, count)}")


def check_fit_to_budget(fn: Callable) -> None:
    """fit_to_budget(messages, budget, count) -> (kept, evicted): the oldest non-system messages evicted first,
    never a system message or the newest message, only as many as needed; ValueError when those alone exceed the
    budget. Both lists hold the input's messages in their original order."""
    rng = random.Random(13)
    cases = list(_FIT)
    for i in range(60):
        spec = ([("system", rng.randint(1, 8))] if rng.random() < 0.8 else []) + [
            (rng.choice(["user", "assistant", "tool", "user", "assistant", "system"] if j else ["user"]),
             rng.randint(0, 12)) for j in range(rng.randint(1, 10))]
        cases.append((spec, rng.randint(1, 60), count_words, f"seeded random conversation {i + 1}"))
    for spec, budget, count, what in cases:
        _check_one_fit(fn, spec, budget, count, what)
    _passed("fit_to_budget", len(cases))
