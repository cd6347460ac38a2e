"""labkit.agents.tools: schemas from typed functions (checked as Draft 2020-12 by `jsonschema`, the oracle), the
validator agreeing with jsonschema on random argument dicts, each bad call's observation, and the call parser."""
from __future__ import annotations

from typing import Literal, Optional

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from labkit.agents.tools import (MAX_CALL_CHARS, Tool, ToolBox, ToolCallError, default_toolbox, function_schema,
                                 parse_tool_call, validate)


def lookup(query: str, k: int = 3, method: Literal["bm25", "dense", "hybrid"] = "hybrid",
           weights: list[float] | None = None, exact: bool = False, tags: Optional[list[str]] = None) -> str:
    """Look something up.

    A second paragraph that is not part of the description.

    Args:
        query: what to look for,
            over two lines.
        k (int): how many.
        method: which retriever.
        weights: one weight per retriever.
        exact: match words exactly.

    Returns:
        the hits.
    """
    return f"{query}|{k}|{method}|{weights}|{exact}|{tags}"


def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: the first.
        b: the second.
    """
    return a + b


def divide(a: float, b: float) -> float:
    """Divide a by b."""
    return a / b


def nothing() -> str:
    """Takes no arguments."""
    return "ok"


def pick(level: Literal[1, 2], flags: Optional[list[bool]] = None) -> str:
    """Pick a level."""
    return f"{level}{flags}"


FUNCTIONS = [lookup, add, divide, nothing, pick]


def test_schema_of_a_typed_function():
    s = function_schema(lookup)
    assert s == {
        "type": "object",
        "properties": {
            "query": {"type": "string", "description": "what to look for, over two lines."},
            "k": {"type": "integer", "description": "how many.", "default": 3},
            "method": {"type": "string", "enum": ["bm25", "dense", "hybrid"], "description": "which retriever.",
                       "default": "hybrid"},
            "weights": {"anyOf": [{"type": "array", "items": {"type": "number"}}, {"type": "null"}],
                        "description": "one weight per retriever.", "default": None},
            "exact": {"type": "boolean", "description": "match words exactly.", "default": False},
            "tags": {"anyOf": [{"type": "array", "items": {"type": "string"}}, {"type": "null"}],
                     "default": None},
        },
        "required": ["query"],
        "additionalProperties": False,
    }
    assert Tool.from_function(lookup).description == "Look something up."


@pytest.mark.parametrize("fn", FUNCTIONS + [t.fn for t in default_toolbox().tools.values()])
def test_generated_schemas_are_valid_draft_2020_12(fn):
    schema = function_schema(fn)
    jsonschema.Draft202012Validator.check_schema(schema)  # raises SchemaError if not a valid schema
    defaults = {k: p["default"] for k, p in schema["properties"].items() if "default" in p}
    assert jsonschema.Draft202012Validator(schema).is_valid({**defaults, **{k: _example(schema["properties"][k])
                                                                             for k in schema["required"]}})


def _example(prop: dict):
    return {"string": "x", "integer": 1, "number": 1.5, "boolean": True}[prop["type"]]


def test_functions_a_schema_cannot_describe_are_refused():
    def untyped(x):
        """x."""
    def star(*xs: int):
        """xs."""
    def mapping(x: dict):
        """x."""
    def mixed(x: Literal["a", 1]):
        """x."""
    for fn, match in [(untyped, "needs a type annotation"), (star, "named arguments only"),
                      (mapping, r"must be str, int, float, bool.*got <class 'dict'>"), (mixed, "Literal")]:
        with pytest.raises(TypeError, match=match):
            function_schema(fn)
    with pytest.raises(TypeError, match="must be a function, got int"):
        function_schema(3)


# ------------------------------------------------------------------------------------------------------------
# the validator agrees with jsonschema

JSON = st.recursive(st.none() | st.booleans() | st.integers(-5, 5) | st.floats(-3, 3, allow_nan=False) |
                    st.sampled_from([1.0, 0.0, -2.0]) | st.text(max_size=3),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=2), inner,
                                                                                 max_size=2), max_leaves=6)


NEAR_MISSES = st.sampled_from([True, False, 1, 2.0, 2.5, "2", "", None, [], {}])  # what a type test might confuse


def _fitting(prop: dict):
    """Values of the right kind for `prop` (so that valid dicts are common), mixed with near misses."""
    if "anyOf" in prop:
        return st.one_of([_fitting(p) for p in prop["anyOf"]])
    if "enum" in prop:
        return st.sampled_from(prop["enum"]) | NEAR_MISSES
    if prop["type"] == "array":
        return st.lists(_fitting(prop["items"]) | NEAR_MISSES, max_size=3)
    return NEAR_MISSES | {"string": st.text(max_size=3), "integer": st.integers(-9, 9),
                          "number": st.floats(-9, 9, allow_nan=False) | st.integers(-9, 9),
                          "boolean": st.booleans(), "null": st.none()}[prop["type"]]


@st.composite
def arguments(draw, schema):
    out = {}
    for name, prop in schema["properties"].items():
        if draw(st.integers(0, 4)) > 0 or name in schema["required"] and draw(st.booleans()):
            out[name] = draw(_fitting(prop) if draw(st.integers(0, 3)) else JSON)
    if draw(st.integers(0, 5)) == 0:
        out[draw(st.sampled_from(["extra", "Query", "k "]))] = draw(JSON)
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_validator_agrees_with_jsonschema(data):
    fn = data.draw(st.sampled_from(FUNCTIONS))
    schema = function_schema(fn)
    args = data.draw(arguments(schema) | JSON)
    ours = validate(args, schema)
    assert (ours is None) == jsonschema.Draft202012Validator(schema).is_valid(args), (args, ours)


def test_the_random_cases_reach_both_outcomes():  # the agreement test above would pass vacuously otherwise
    schema = function_schema(lookup)
    seen = set()

    @settings(max_examples=200, deadline=None, database=None, derandomize=True)  # the same draws every run
    @given(arguments(schema))
    def collect(args):
        seen.add(validate(args, schema) is None)

    collect()
    assert seen == {True, False}


def test_json_schema_rules_not_pythons():
    s = function_schema(add)
    assert validate({"a": True, "b": 1}, s) == "argument 'a' must be an integer, got True"
    assert validate({"a": 2.0, "b": 1}, s) is None  # 2.0 is an integer in JSON Schema
    assert ToolBox([add]).call("add", {"a": 2.0, "b": 1}) == "3"  # ... and reaches the function as int
    assert validate({"a": 2.5, "b": 1}, s) == "argument 'a' must be an integer, got 2.5"
    assert validate({"a": 1, "b": 2}, function_schema(divide)) is None
    assert validate(True, {"enum": [1, 2]}) == "arguments must be one of 1, 2, got True"  # true is not 1 ...
    assert validate(1.0, {"enum": [1, 2]}) is None  # ... but 1.0 is
    assert jsonschema.Draft202012Validator({"enum": [1, 2]}).is_valid(1.0)
    assert not jsonschema.Draft202012Validator({"enum": [1, 2]}).is_valid(True)
    assert validate({"query": "q", "weights": [1, "x"]}, function_schema(lookup)) == \
        "argument 'weights' must be an array of numbers or null, got [1, 'x']"


# ------------------------------------------------------------------------------------------------------------
# bad calls are observations naming the field

@pytest.fixture
def box():
    return ToolBox([lookup, add, divide, nothing], allow=["lookup", "add", "divide"])


@pytest.mark.parametrize("name, args, message", [
    ("lookup", {"query": "LoRA", "k": "ten"}, "error: argument 'k' must be an integer, got 'ten'"),
    ("lookup", {"k": 2}, "error: missing required argument 'query'"),
    ("lookup", {"query": "q", "n": 2},
     "error: unexpected argument 'n' (expected query, k, method, weights, exact, tags)"),
    ("lookup", {"query": "q", "method": "sql"},
     'error: argument \'method\' must be one of "bm25", "dense", "hybrid", got \'sql\''),
    ("lookup", {"query": "q", "tags": ["a", 3]}, "error: argument 'tags' must be an array of strings or null, "
                                                  "got ['a', 3]"),
    ("lookup", {"query": 7}, "error: argument 'query' must be a string, got 7"),
    ("lookup", ["LoRA"], "error: arguments of 'lookup' must be a JSON object, got ['LoRA']"),
    ("search", {"query": "q"}, "error: unknown tool 'search'; available tools: lookup, add, divide"),
    ("nothing", {}, "error: tool 'nothing' is not allowed here; allowed tools: lookup, add, divide"),
    ("divide", {"a": 1, "b": 0}, "error: tool 'divide' failed: ZeroDivisionError: float division by zero"),
    (None, {}, "error: unknown tool None; available tools: lookup, add, divide"),
])
def test_each_bad_call_is_an_observation(box, name, args, message):
    assert box.call(name, args) == message


def test_good_calls_apply_defaults(box):
    assert box.call("lookup", {"query": "q"}) == "q|3|hybrid|None|False|None"
    assert box.call("lookup", {"query": "q", "k": 1, "weights": [1, 0.5], "tags": None}) == \
        "q|1|hybrid|[1.0, 0.5]|False|None"
    assert box.call("divide", {"a": 1, "b": 4}) == "0.25"
    assert [s["name"] for s in box.specs()] == ["lookup", "add", "divide"]


def test_registry_edges():
    with pytest.raises(ValueError, match="'add' is already registered"):
        ToolBox([add, add])
    with pytest.raises(TypeError, match="allow must be a collection of tool names, got a str"):
        ToolBox([add], allow="add")


def test_course_tools():
    box = default_toolbox(allow=["calculator", "run_python"])
    assert box.call("calculator", {"expression": "12 + 7"}) == "19"
    assert box.call("calculator", {"expression": "__import__('os')"}).startswith("error: not allowed")
    assert box.call("run_python", {"code": "print(6 * 7)"}) == "stdout:\n42\n\nfinished"
    assert "stopped by: error: ZeroDivisionError" in box.call("run_python", {"code": "1/0"})
    assert box.call("search_docs", {"query": "LoRA"}).startswith("error: tool 'search_docs' is not allowed")


# ------------------------------------------------------------------------------------------------------------
# parsing the model's text

CALL = '{"name": "add", "arguments": {"a": 2, "b": 3}}'


@pytest.mark.parametrize("text", [
    CALL,
    f"I will add them.\n{CALL}\nThat should do it.",
    f"```json\n{CALL}\n```",
    f"Thinking {{not json}} first.\n```\n{CALL}\n```",
    '{"tool_call": ' + CALL + "}",  # wrapped: the outer object has no name, the inner one is the call
    '{"name": "add", "arguments": "{\\"a\\": 2, \\"b\\": 3}"}',  # arguments as a JSON string (OpenAI style)
])
def test_parser_finds_the_call(text):
    call = parse_tool_call(text)
    assert (call.name, call.arguments) == ("add", {"a": 2, "b": 3})
    assert ToolBox([add]).run(text) == "5"


@pytest.mark.parametrize("text, match", [
    ("The answer is 5.", "no tool call found"),
    ('{"name": "add", "arguments": {"a": 2, "b": 3}', "malformed JSON in the tool call: Expecting ',' delimiter"),
    ('{"name": "add", "arguments": {"a": 2**10}}', "malformed JSON"),
    ("{'name': 'add', 'arguments': {}}", "malformed JSON.*property name enclosed in double quotes"),
    ('{"name": ["add"], "arguments": {}}', '"name" must be a string'),
    ('{"name": "add", "arguments": [2, 3]}', '"arguments" must be a JSON object, got \\[2, 3\\]'),
    ('{"name": "add", "arguments": "a=2"}', '"arguments" is a string but not JSON'),
    ('{"arguments": {"a": 1}}', "no tool call found"),
    ("{" * (MAX_CALL_CHARS + 1), "a tool call is at most"),
    # thousands of levels: json's decoder recurses per level and raised RecursionError out of the parser
    ('{"name": "add", "arguments": ' + "[" * 5000, "malformed JSON in the tool call: nested too deeply, from "
                                                      "character 0"),
    ('```json\n' + '{"a": ' * 3000 + '```', "malformed JSON in the tool call: nested too deeply"),
    ('{"name": "add", "arguments": "' + "[" * 5000 + '"}', '"arguments" is a string but not JSON: nested too deeply'),
])
def test_parser_refuses_with_a_reason(text, match):
    with pytest.raises(ToolCallError, match=match):
        parse_tool_call(text)
    assert ToolBox([add]).run(text).startswith("error: ")


def test_parser_never_evaluates():
    text = '{"name": "add", "arguments": {"a": __import__("os").system("touch /tmp/pwned"), "b": 1}}'
    with pytest.raises(ToolCallError, match="malformed JSON"):
        parse_tool_call(text)
    with pytest.raises(TypeError, match="text must be a str, got bytes"):
        parse_tool_call(CALL.encode())


def test_no_arguments_means_empty():
    assert parse_tool_call('{"name": "nothing"}').arguments == {}
    assert ToolBox([nothing]).run('{"name": "nothing"}') == "ok"
