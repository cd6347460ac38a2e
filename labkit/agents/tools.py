"""Tools an agent can call: a JSON Schema made from a typed Python function, a validator, a registry, a parser.

Function calling, as every model API and the Model Context Protocol do it, has three parts:

1. **A schema per tool.** The model is shown each tool's name, description and a JSON Schema of its arguments.
   We write the schema from the function itself: the signature gives the names, types and defaults, the
   docstring's first paragraph the description and its "Args:" section each argument's description. A
   parameter without a default is "required"; "additionalProperties": false says no other argument exists.

       def search_docs(query: str, k: int = 3) -> str        {"type": "object",
           '''Search the course documents.                      "properties": {"query": {"type": "string", ...},
           Args:                                                               "k": {"type": "integer", "default": 3}},
               query: what to look for.                           "required": ["query"],
               k: how many passages to return.'''                "additionalProperties": false}

2. **A parser for the model's call.** The model writes text; somewhere in it, perhaps in a ```json fence, perhaps
   after a sentence of chatter, is `{"name": ..., "arguments": {...}}`. It is read with `json` — never `eval`:
   the text is untrusted, and `eval` would run whatever it says.
3. **Validation, then the call.** A model calls tools wrongly all the time (`"k": "ten"`, a missing query, an
   invented argument, a tool that does not exist). Each mistake comes back as an *observation* — a line starting
   "error:" that names the field — which the agent shows the model so it can try again. Nothing raises into
   the agent's loop: a tool that fails is one more observation.

The validator covers exactly the part of JSON Schema the generator writes (type, enum, items, anyOf, properties,
required, additionalProperties) and follows JSON Schema's rules, not Python's: `true` is not an integer, `3.0`
is one. The tests check it against the `jsonschema` package on random argument dicts.

    box = default_toolbox()
    box.call("calculator", {"expression": "12 + 7"})       '19'
    box.call("search_docs", {"query": "LoRA", "k": "ten"})  "error: argument 'k' must be an integer, got 'ten'"
    box.run('Let me compute. {"name": "calculator", "arguments": {"expression": "2**10"}}')   '1024'
"""
from __future__ import annotations

import inspect
import json
import re
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Literal, Union

from labkit.agents.calculator import calculator

MAX_CALL_CHARS = 20_000  # a tool call is a few hundred characters; longer text is refused, not scanned
MAX_OBJECTS = 50  # how many "{" the parser tries before giving up (each try is a JSON decode)
MAX_OBSERVATION = 4_000  # characters of a tool's answer shown to the model; the rest is cut, and it says so

_JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean"}


# ------------------------------------------------------------------------------------------------------------
# schema from a function

def _type_schema(annotation: Any, where: str) -> dict:
    """The JSON Schema of one Python type annotation (str/int/float/bool, Literal, list[...], Optional)."""
    if annotation in _JSON_TYPES:
        return {"type": _JSON_TYPES[annotation]}
    if annotation is type(None):
        return {"type": "null"}
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        kinds = {type(a) for a in args}
        if len(kinds) != 1 or not kinds <= set(_JSON_TYPES):
            raise TypeError(f"{where}: a Literal's values must all be str, or all int, or all bool; got {args!r}")
        return {"type": _JSON_TYPES[kinds.pop()], "enum": list(args)}
    if origin is list:
        if len(args) != 1:
            raise TypeError(f"{where}: a list needs its item type, e.g. list[str]; got {annotation!r}")
        return {"type": "array", "items": _type_schema(args[0], where)}
    if origin in (Union, types.UnionType):
        return {"anyOf": [_type_schema(a, where) for a in args]}
    raise TypeError(f"{where}: a tool argument must be str, int, float, bool, a Literal, a list of these, or "
                    f"Optional; got {annotation!r}")


def _docstring(fn: Callable) -> tuple[str, dict[str, str]]:
    """(description, {parameter: description}) from a docstring with a Google-style "Args:" section."""
    doc = inspect.getdoc(fn) or ""
    head, _, rest = doc.partition("\nArgs:")
    description = " ".join(head.split("\n\n")[0].split())
    params: dict[str, str] = {}
    name = None
    for line in rest.splitlines():
        if line.strip() and not line.startswith((" ", "\t")):
            break  # the next section ("Returns:") starts at the left margin
        m = re.match(r"\s+(\w+)\s*(?:\([^)]*\))?:\s*(.*)", line)
        if m and (name is None or len(line) - len(line.lstrip()) <= indent):
            name, indent = m.group(1), len(line) - len(line.lstrip())
            params[name] = m.group(2).strip()
        elif name is not None and line.strip():  # a continuation line of the previous argument
            params[name] = f"{params[name]} {line.strip()}".strip()
    return description, params


def function_schema(fn: Callable) -> dict:
    """The JSON Schema of `fn`'s arguments (an object schema; see the module docstring)."""
    if not callable(fn):
        raise TypeError(f"fn must be a function, got {type(fn).__name__}")
    hints = typing.get_type_hints(fn)
    _, described = _docstring(fn)
    properties, required = {}, []
    for p in inspect.signature(fn).parameters.values():
        where = f"{fn.__name__}({p.name})"
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD, p.POSITIONAL_ONLY):
            raise TypeError(f"{where}: a tool takes named arguments only (no *args, **kwargs or positional-only)")
        if p.name not in hints:
            raise TypeError(f"{where}: every tool argument needs a type annotation")
        prop = _type_schema(hints[p.name], where)
        if p.name in described:
            prop["description"] = described[p.name]
        if p.default is p.empty:
            required.append(p.name)
        else:
            prop["default"] = p.default
        properties[p.name] = prop
    return {"type": "object", "properties": properties, "required": required, "additionalProperties": False}


# ------------------------------------------------------------------------------------------------------------
# the validator: the subset of JSON Schema that function_schema writes

_ARTICLE = {"string": "a string", "integer": "an integer", "number": "a number", "boolean": "a boolean",
            "array": "an array", "object": "an object", "null": "null"}


def _is(value: Any, kind: str) -> bool:
    """JSON Schema's type test: booleans are not numbers, and a float with no fraction is an integer."""
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "null":
        return value is None
    if isinstance(value, bool):
        return False
    return {"string": isinstance(value, str),
            "integer": isinstance(value, int) or (isinstance(value, float) and value.is_integer()),
            "number": isinstance(value, (int, float)),
            "array": isinstance(value, list),
            "object": isinstance(value, dict)}[kind]


def _same(a: Any, b: Any) -> bool:
    """JSON equality for enum: 1 == 1.0, but true is not 1."""
    return isinstance(a, bool) == isinstance(b, bool) and a == b


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _describe(schema: dict) -> str:
    if "anyOf" in schema:
        return " or ".join(_describe(s) for s in schema["anyOf"])
    if "enum" in schema:
        return "one of " + ", ".join(json.dumps(v) for v in schema["enum"])
    if schema.get("type") == "array":
        return f"an array of {_describe(schema['items']).split(' ', 1)[-1]}s" if "items" in schema else "an array"
    return _ARTICLE[schema["type"]]


def validate(value: Any, schema: dict, path: str = "") -> str | None:
    """The first reason `value` does not satisfy `schema`, naming the argument, or None if it does."""
    field = f"argument '{path}'" if path else "arguments"
    if "anyOf" in schema:
        if any(validate(value, s, path) is None for s in schema["anyOf"]):
            return None
        return f"{field} must be {_describe(schema)}, got {_shown(value)}"
    if "type" in schema and not _is(value, schema["type"]):
        return f"{field} must be {_describe(schema)}, got {_shown(value)}"
    if "enum" in schema and not any(_same(value, v) for v in schema["enum"]):
        return f"{field} must be {_describe(schema)}, got {_shown(value)}"
    if schema.get("type") == "array" and "items" in schema:
        for i, item in enumerate(value):
            if (why := validate(item, schema["items"], f"{path}[{i}]")) is not None:
                return why
    if schema.get("type") == "object":
        properties = schema.get("properties", {})
        for name in schema.get("required", []):
            if name not in value:
                return f"missing required argument '{name}'"
        if schema.get("additionalProperties") is False:
            extra = [k for k in value if k not in properties]
            if extra:
                return (f"unexpected argument '{extra[0]}' (expected "
                        f"{', '.join(properties) or 'no arguments'})")
        for name, sub in properties.items():
            if name in value and (why := validate(value[name], sub, name if not path else f"{path}.{name}")):
                return why
    return None


def _coerce(value: Any, schema: dict) -> Any:
    """A valid JSON value as the Python type the function declared (3.0 for an integer -> 3)."""
    if "anyOf" in schema:
        return _coerce(value, next(s for s in schema["anyOf"] if validate(value, s) is None))
    if schema.get("type") == "integer" and isinstance(value, float):
        return int(value)
    if schema.get("type") == "number" and isinstance(value, int):
        return float(value)
    if schema.get("type") == "array":
        return [_coerce(v, schema.get("items", {})) for v in value]
    return value


# ------------------------------------------------------------------------------------------------------------
# tools and the registry

@dataclass(frozen=True)
class Tool:
    """A function an agent may call: its name, description, argument schema, and the function itself."""
    name: str
    description: str
    parameters: dict
    fn: Callable[..., Any]

    @classmethod
    def from_function(cls, fn: Callable[..., Any], name: str | None = None) -> "Tool":
        description, _ = _docstring(fn)
        return cls(name or fn.__name__, description, function_schema(fn), fn)

    def spec(self) -> dict:
        """The tool as a model API lists it: {"name", "description", "parameters"}."""
        return {"name": self.name, "description": self.description, "parameters": self.parameters}


def _observation(result: Any) -> str:
    text = result if isinstance(result, str) else json.dumps(result, default=str, ensure_ascii=False)
    if len(text) > MAX_OBSERVATION:
        text = text[:MAX_OBSERVATION] + f"\n[... cut: {len(text) - MAX_OBSERVATION} more characters]"
    return text


class ToolBox:
    """Registered tools, the allow-list of those the agent may call, and `call` that never raises.

    `allow` (None = all registered tools) is a defence: a tool not on it is refused, even when the model (or
    text injected into what it reads) asks for it by name.
    """

    def __init__(self, tools: Iterable[Tool | Callable[..., Any]] = (), allow: Iterable[str] | None = None):
        self.tools: dict[str, Tool] = {}
        for t in tools:
            self.register(t)
        if allow is not None and isinstance(allow, str):
            raise TypeError("allow must be a collection of tool names, got a str")
        self.allow = None if allow is None else frozenset(allow)

    def register(self, tool: Tool | Callable[..., Any]) -> Tool:
        tool = tool if isinstance(tool, Tool) else Tool.from_function(tool)
        if tool.name in self.tools:
            raise ValueError(f"a tool named {tool.name!r} is already registered")
        self.tools[tool.name] = tool
        return tool

    @property
    def allowed(self) -> list[str]:
        return [n for n in self.tools if self.allow is None or n in self.allow]

    def specs(self) -> list[dict]:
        """The allowed tools as a model is shown them."""
        return [self.tools[n].spec() for n in self.allowed]

    def call(self, name: str, arguments: dict[str, Any] | None = None) -> str:
        """Run tool `name` on `arguments` and return its answer as text; every failure is an "error:" line."""
        if not isinstance(name, str) or name not in self.tools:
            return f"error: unknown tool {_shown(name)}; available tools: {', '.join(self.allowed) or 'none'}"
        if name not in self.allowed:
            return f"error: tool '{name}' is not allowed here; allowed tools: {', '.join(self.allowed) or 'none'}"
        tool = self.tools[name]
        arguments = {} if arguments is None else arguments
        if not isinstance(arguments, dict):
            return f"error: arguments of '{name}' must be a JSON object, got {_shown(arguments)}"
        if (why := validate(arguments, tool.parameters)) is not None:
            return f"error: {why}"
        args = {k: _coerce(v, tool.parameters["properties"][k]) for k, v in arguments.items()}
        try:
            return _observation(tool.fn(**args))
        except Exception as e:  # the agent sees why the tool failed and goes on; KeyboardInterrupt still stops
            return f"error: tool '{name}' failed: {type(e).__name__}: {e}"

    def run(self, text: str) -> str:
        """Parse a tool call out of model text and make it: the whole path from model output to observation."""
        try:
            call = parse_tool_call(text)
        except ValueError as e:
            return f"error: {e}"
        return self.call(call.name, call.arguments)


# ------------------------------------------------------------------------------------------------------------
# parsing a tool call out of model text

@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict


class ToolCallError(ValueError):
    """Model text that holds no usable tool call; the message says what was wrong."""


_FENCE = re.compile(r"```(?:json)?\s*\n?(.*?)```", re.DOTALL)


def _objects(text: str) -> Iterable[tuple[dict | None, str | None]]:
    """(object, None) for each JSON object that starts at a "{" in text, or (None, why) where decoding failed."""
    decoder = json.JSONDecoder()
    for i, m in enumerate(re.finditer(r"\{", text)):
        if i >= MAX_OBJECTS:
            return
        try:
            obj, _ = decoder.raw_decode(text, m.start())
        except json.JSONDecodeError as e:
            yield None, f"{e.msg} at character {e.pos}"
            continue
        except RecursionError:  # "[[[[..." a few thousand deep: the decoder recurses once per level
            yield None, f"nested too deeply, from character {m.start()}"
            continue
        if isinstance(obj, dict):
            yield obj, None


def parse_tool_call(text: str) -> ToolCall:
    """The first {"name": ..., "arguments": {...}} in `text` (a fenced block is looked at first).

    "arguments" may also be a string holding a JSON object, as OpenAI-style APIs send it. Raises ToolCallError
    (a ValueError) saying what was wrong: no JSON object, malformed JSON, no name, arguments not an object.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    if len(text) > MAX_CALL_CHARS:
        raise ToolCallError(f"the text is {len(text)} characters long; a tool call is at most {MAX_CALL_CHARS}")
    fenced = [m.group(1) for m in _FENCE.finditer(text)]
    first_error = None
    for part in [*fenced, text]:
        for obj, why in _objects(part):
            if obj is None:
                first_error = first_error or why
                continue
            if "name" not in obj:
                continue  # an inner or unrelated object; keep looking
            name, arguments = obj["name"], obj.get("arguments", {})
            if not isinstance(name, str):
                raise ToolCallError(f'"name" must be a string, got {_shown(name)}')
            if isinstance(arguments, str):
                try:
                    arguments = json.loads(arguments)
                except json.JSONDecodeError as e:
                    raise ToolCallError(f'"arguments" is a string but not JSON: {e.msg} at character {e.pos}')
                except RecursionError:
                    raise ToolCallError('"arguments" is a string but not JSON: nested too deeply') from None
            if not isinstance(arguments, dict):
                raise ToolCallError(f'"arguments" must be a JSON object, got {_shown(arguments)}')
            return ToolCall(name, arguments)
    if first_error is not None:
        raise ToolCallError(f"malformed JSON in the tool call: {first_error}")
    raise ToolCallError('no tool call found: expected a JSON object {"name": "<tool>", "arguments": {...}}')


# ------------------------------------------------------------------------------------------------------------
# the course's tools

def search_docs(query: str, k: int = 3) -> str:
    """Search the course documents (chapter 12's index, hybrid BM25 + dense retrieval) and return the best
    passages, each with its id.

    Args:
        query: what to look for, in words.
        k: how many passages to return (1 to 10).
    """
    from labkit.rag.index import corpus_index  # lazy: loading the index and its vectors takes seconds

    if not 1 <= k <= 10:
        raise ValueError(f"k must be between 1 and 10, got {k}")
    index = corpus_index()
    hits = index.search(query, k)
    if not hits:
        return f"no results: {hits.reason}"
    return "\n\n".join(f"[{cid}] {' '.join(index.chunk(cid).text.split())[:600]}" for cid in hits.ids)


def run_python(code: str) -> str:
    """Run a short Python program in a sandbox (no network, no files outside its folder, a few seconds of CPU)
    and return what it printed and how it ended.

    Args:
        code: the program; print what you want to see.
    """
    from labkit.agents.sandbox import run_python as sandboxed

    result = sandboxed(code)
    parts = [f"stdout:\n{result.stdout}" if result.stdout else "stdout: (empty)"]
    if result.stderr:
        parts.append(f"stderr:\n{result.stderr}")
    parts.append("finished" if result.ok else f"stopped by: {result.stopped_by}")
    return "\n".join(parts)


COURSE_TOOLS: tuple[Callable[..., str], ...] = (calculator, search_docs, run_python)


def default_toolbox(allow: Iterable[str] | None = None) -> ToolBox:
    """The course's three tools — calculator, search_docs, run_python — behind an optional allow-list."""
    return ToolBox(COURSE_TOOLS, allow=allow)
