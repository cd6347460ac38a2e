"""Structured output: decode only what a JSON Schema allows, by masking the logits token by token.

(Chapter 10.) A schema is compiled to an automaton over the text; at every decoding step the mask says which
vocabulary tokens keep the text a prefix of some schema-valid document.
"""
from __future__ import annotations

from typing import Callable, Hashable, Sequence

import numpy as np
import torch

State = Hashable


def mask_step(advance: Callable[[State, object], State | None], state: State, vocab: Sequence[str]) -> torch.Tensor:
    """bool [len(vocab)]: token i is allowed iff walking ALL its symbols from `state` with
    `advance(state, symbol) -> new state | None` never returns None (None: that symbol cannot come next).

    The plain reference: one loop over the vocabulary, one over each token's characters (or bytes, if the
    tokens are `bytes`). The empty token is never allowed: it would let the decoder loop without progress."""
    allowed = torch.zeros(len(vocab), dtype=torch.bool)
    for i, token in enumerate(vocab):
        if len(token) == 0:
            continue
        s = state
        for symbol in token:
            s = advance(s, symbol)
            if s is None:
                break
        else:  # every symbol was accepted, the last one included
            allowed[i] = True
    return allowed


# ---------------------------------------------------------------------------------------------------------------
# The schema compiler: JSON Schema (a subset) -> an automaton over the bytes of the JSON text.
#
# A state is a tuple of frames, one per JSON value still open (a stack: object > array > string ...); a frame is a
# small tuple (node index, then the node's own counters), so states are immutable, hashable and cheap to cache.
# Every node steps one byte at a time and answers: a new frame (byte consumed), Push (open a child value and
# feed it the byte), POP (this value is finished and the byte belongs to the parent), or None (not allowed).
# ---------------------------------------------------------------------------------------------------------------
import json
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Union

ANNOTATIONS = frozenset({"title", "description", "$schema", "$id", "$comment", "examples", "default"})
KEYWORDS = {
    "object": {"type", "properties", "required", "additionalProperties"},
    "array": {"type", "items", "minItems", "maxItems"},
    "string": {"type", "enum", "minLength", "maxLength"},
    "integer": {"type", "enum"},
    "number": {"type", "enum"},
    "boolean": {"type", "enum"},
    "null": {"type"},
}
SPACES = ("never", "optional", "always")
MAX_INT_DIGITS, MAX_FRAC_DIGITS, MAX_EXP_DIGITS = 16, 21, 3  # bounded: no runaway through digits; enough for
# every float Python writes (repr: at most 16 integer digits, then 1e+16; down to 0.0001 and 17 digits, then 1e-05)
POP = "pop"


@dataclass(frozen=True)
class Push:
    frame: tuple   # the parent's frame once the child is finished
    child: int     # the node index of the child value, which is fed the byte


def _space(policy: str, b: int, spaced: bool) -> str | None:
    """After ':' and ',' the text holds at most one space (policy never / optional / always), so a model cannot
    pad spaces until max_tokens. "space": the byte is that space; "next": the byte starts what follows."""
    if b == 0x20 and not spaced and policy != "never":
        return "space"
    if policy == "always" and not spaced:
        return None
    return "next"


class Literals:
    """One of a few fixed texts (true/false/null, an enum or a const). Frame: (index, bytes so far)."""

    def __init__(self, index: int, options: Iterable[bytes]) -> None:
        self.index, self.options = index, frozenset(options)

    def start(self) -> tuple:
        return (self.index, b"")

    def step(self, frame: tuple, b: int):
        p = frame[1] + bytes((b,))
        if any(o.startswith(p) for o in self.options):
            return (self.index, p)
        return POP if frame[1] in self.options else None

    def can_end(self, frame: tuple) -> bool:
        return frame[1] in self.options


class Number:
    """-?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?, or its integer part only. Frame: (index, phase, digits).
    Phases: 0 start, 1 after '-', 2 after a leading 0, 3 integer digits, 4 after '.', 5 fraction digits,
    6 after e/E, 7 after the exponent's sign, 8 exponent digits."""
    ENDS = frozenset({2, 3, 5, 8})

    def __init__(self, index: int, integer: bool) -> None:
        self.index, self.integer = index, integer

    def start(self) -> tuple:
        return (self.index, 0, 0)

    def step(self, frame: tuple, b: int):
        _, phase, n = frame
        digit = 0x30 <= b <= 0x39
        if phase in (0, 1):
            if b == 0x2D and phase == 0:
                return (self.index, 1, 0)
            if digit:
                return (self.index, 2 if b == 0x30 else 3, 1)
            return None
        if digit and phase in (3, 4, 5, 6, 7, 8):
            nxt = {3: 3, 4: 5, 5: 5, 6: 8, 7: 8, 8: 8}[phase]
            n = n + 1 if nxt == phase else 1
            limit = {3: MAX_INT_DIGITS, 5: MAX_FRAC_DIGITS, 8: MAX_EXP_DIGITS}[nxt]
            return (self.index, nxt, n) if n <= limit else None
        if not self.integer:
            if b == 0x2E and phase in (2, 3):
                return (self.index, 4, 0)
            if b in (0x65, 0x45) and phase in (2, 3, 5):
                return (self.index, 6, 0)
            if b in (0x2B, 0x2D) and phase == 6:
                return (self.index, 7, 0)
        return POP if phase in self.ENDS else None

    def can_end(self, frame: tuple) -> bool:
        return frame[1] in self.ENDS


# UTF-8: after a lead byte, how many continuation bytes follow and the range of the first one (strict: no
# overlong forms, no surrogates, nothing above U+10FFFF), so every string the automaton accepts decodes.
def _utf8_lead(b: int) -> tuple[int, int, int] | None:
    if 0xC2 <= b <= 0xDF:
        return 1, 0x80, 0xBF
    if 0xE0 <= b <= 0xEF:
        return 2, (0xA0 if b == 0xE0 else 0x80), (0x9F if b == 0xED else 0xBF)
    if 0xF0 <= b <= 0xF4:
        return 3, (0x90 if b == 0xF0 else 0x80), (0x8F if b == 0xF4 else 0xBF)
    return None


class String:
    """A JSON string with minLength/maxLength counted in characters (an escape or a multi-byte UTF-8 character
    is one). Frame: (index, phase, count, need, lo, hi): phase 0 before the opening quote, 1 content, 2 after a
    backslash, 3-6 inside \\uXXXX (4..1 hex digits to go), 7 closed; need = UTF-8 continuation bytes still
    due, the next one in [lo, hi]."""
    ESCAPES = frozenset(b'"\\/bfnrt')
    HEX = frozenset(b"0123456789abcdefABCDEF")

    def __init__(self, index: int, min_length: int = 0, max_length: int | None = None) -> None:
        self.index, self.min_length, self.max_length = index, min_length, max_length

    def start(self) -> tuple:
        return (self.index, 0, 0, 0, 0, 0)

    def room(self, count: int) -> bool:
        return self.max_length is None or count < self.max_length

    def more(self, count: int) -> int:
        """count + 1, but without maxLength only minLength needs counting: saturating the count keeps the
        states of a long free string equal, so their masks come from the cache."""
        return count + 1 if self.max_length is not None or count < self.min_length else count

    def step(self, frame: tuple, b: int):
        i, phase, count, need, lo, hi = frame
        if phase == 0:
            return (i, 1, 0, 0, 0, 0) if b == 0x22 else None
        if phase == 1:
            if need:  # inside a multi-byte character
                return (i, 1, count, need - 1, 0x80, 0xBF) if lo <= b <= hi else None
            if b == 0x22:
                return (i, 7, count, 0, 0, 0) if count >= self.min_length else None
            if b < 0x20 or not self.room(count):  # raw control characters are not JSON
                return None
            if b == 0x5C:
                return (i, 2, self.more(count), 0, 0, 0)
            if b < 0x80:
                return (i, 1, self.more(count), 0, 0, 0)
            lead = _utf8_lead(b)
            return None if lead is None else (i, 1, self.more(count), *lead)
        if phase == 2:
            if b == 0x75:  # \uXXXX
                return (i, 3, count, 0, 0, 0)
            return (i, 1, count, 0, 0, 0) if b in self.ESCAPES else None
        if 3 <= phase <= 6:
            return ((i, phase + 1 if phase < 6 else 1, count, 0, 0, 0)) if b in self.HEX else None
        return POP  # closed: the byte is the parent's

    def can_end(self, frame: tuple) -> bool:
        return frame[1] == 7


class Object:
    """{"k1": v1, "k2": v2} with the properties in the schema's order (a required property cannot be skipped,
    an optional one can). A fixed order keeps the automaton small: after each value only the next few keys can
    come, instead of any key not yet used (2^n subsets of keys to remember).
    Frame: (index, phase, i, key bytes so far): phase 0 before '{', 1 after '{', 2 after ',', 3 after ', ',
    4 inside a key, 5 after a key, 6 after ':', 7 after ': ', 8 after a value, 9 closed. i: the property the
    key, value or next key is about."""

    def __init__(self, index: int, keys: Sequence[bytes], children: Sequence[int], required: Sequence[bool],
                 space: str) -> None:
        self.index, self.keys, self.children, self.required, self.space = index, keys, children, required, space

    def start(self) -> tuple:
        return (self.index, 0, 0, b"")

    def candidates(self, i: int) -> range:
        """The properties that may come next when the next unused one is i: up to the first required one."""
        j = i
        while j < len(self.keys) and not self.required[j]:
            j += 1
        return range(i, min(j + 1, len(self.keys)))

    def can_close(self, i: int) -> bool:
        return not any(self.required[i:])

    def step(self, frame: tuple, b: int):
        x, phase, i, key = frame
        if phase == 0:
            return (x, 1, 0, b"") if b == 0x7B else None
        if phase in (2, 3):
            sp = _space(self.space, b, phase == 3)
            if sp != "next":
                return None if sp is None else (x, 3, i, b"")
        if phase in (1, 2, 3):
            if b == 0x22 and len(self.candidates(i)):
                return (x, 4, i, b'"')
            return (x, 9, i, b"") if b == 0x7D and phase == 1 and self.can_close(i) else None
        if phase == 4:
            key += bytes((b,))
            for j in self.candidates(i):
                if self.keys[j] == key:
                    return (x, 5, j, b"")
            return (x, 4, i, key) if any(self.keys[j].startswith(key) for j in self.candidates(i)) else None
        if phase == 5:
            return (x, 6, i, b"") if b == 0x3A else None
        if phase in (6, 7):
            sp = _space(self.space, b, phase == 7)
            if sp != "next":
                return None if sp is None else (x, 7, i, b"")
            return Push((x, 8, i, b""), self.children[i])
        if phase == 8:
            if b == 0x2C and len(self.candidates(i + 1)):
                return (x, 2, i + 1, b"")
            return (x, 9, i, b"") if b == 0x7D and self.can_close(i + 1) else None
        return POP

    def can_end(self, frame: tuple) -> bool:
        return frame[1] == 9


class Array:
    """[v, v, ...] with minItems/maxItems. Frame: (index, phase, count): phase 0 before '[', 1 after '[',
    2 after ',', 3 after ', ', 4 after a value, 5 closed."""

    def __init__(self, index: int, child: int, min_items: int, max_items: int | None, space: str) -> None:
        self.index, self.child, self.min_items, self.max_items, self.space = index, child, min_items, max_items, space

    def start(self) -> tuple:
        return (self.index, 0, 0)

    def step(self, frame: tuple, b: int):
        x, phase, n = frame
        if phase == 0:
            return (x, 1, 0) if b == 0x5B else None
        if phase == 1 and b == 0x5D:
            return (x, 5, 0) if self.min_items == 0 else None
        if phase in (2, 3):
            sp = _space(self.space, b, phase == 3)
            if sp != "next":
                return None if sp is None else (x, 3, n)
        if phase in (1, 2, 3):
            return Push((x, 4, n + 1), self.child) if self.max_items is None or n < self.max_items else None
        if phase == 4:
            if b == 0x2C and (self.max_items is None or n < self.max_items):
                return (x, 2, n)
            return (x, 5, n) if b == 0x5D and n >= self.min_items else None
        return POP

    def can_end(self, frame: tuple) -> bool:
        return frame[1] == 5


Node = Union[Literals, Number, String, Object, Array]


class Grammar:
    """The compiled schema: `start`, `advance(state, ch)`, `is_accepting(state)`. The automaton reads bytes
    (the tokenizer's alphabet: a token may end inside a multi-byte character); `advance` also takes one
    character as a str, which it walks as its UTF-8 bytes."""

    def __init__(self, nodes: Sequence[Node], root: int, schema: Mapping, space: str) -> None:
        self.nodes, self.root, self.schema, self.space = tuple(nodes), root, schema, space
        self.start: State = (self.nodes[root].start(),)

    def step(self, state: tuple, b: int) -> tuple | None:
        """One byte: the top frame takes it, or finishes (POP) and hands it to its parent."""
        while state:
            frame = state[-1]
            r = self.nodes[frame[0]].step(frame, b)
            if r is None:
                return None
            if r is POP:
                state = state[:-1]
            elif type(r) is Push:  # the parent waits in r.frame; the new child reads the byte
                state = state[:-1] + (r.frame, self.nodes[r.child].start())
            else:
                return state[:-1] + (r,)
        return None  # the document is finished: nothing may follow it

    def advance(self, state: tuple, ch: str | int) -> tuple | None:
        if isinstance(ch, int):
            return self.step(state, ch)
        if not isinstance(ch, str) or len(ch) != 1:
            raise TypeError(f"advance takes one character (a str of length 1) or one byte (an int), got {ch!r}")
        return self.walk(state, ch.encode())

    def walk(self, state: tuple | None, data: bytes) -> tuple | None:
        for b in data:
            if state is None:
                return None
            state = self.step(state, b)
        return state

    def is_accepting(self, state: tuple) -> bool:
        """The text so far is a whole document: every open value may end here."""
        return all(self.nodes[f[0]].can_end(f) for f in state)

    def accepts(self, text: str) -> bool:
        state = self.walk(self.start, text.encode())
        return state is not None and self.is_accepting(state)


def _scalar_literal(value: object, where: str) -> bytes:
    if value is not None and not isinstance(value, (str, int, float, bool)):
        raise ValueError(f"{where}: enum/const values must be strings, numbers, booleans or null, got {value!r}")
    return json.dumps(value, ensure_ascii=False).encode()


def _count(schema: Mapping, key: str, where: str) -> int | None:
    v = schema.get(key)
    if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
        raise ValueError(f"{where}: {key} must be an int >= 0, got {v!r}")
    return v


def compile_schema(schema: Mapping[str, Any], *, space: str = "optional") -> Grammar:
    """The automaton for a JSON-Schema subset: type object (properties, required), array (items, minItems,
    maxItems), string (enum, minLength, maxLength), integer, number, boolean, null; enum and const of scalars.
    Objects are written with their properties in the schema's order and nothing else (additionalProperties:
    false is assumed). Whitespace: none except at most one space after ':' and ',' (space="optional"; "never"
    or "always" fix it). Anything else raises ValueError naming the keyword."""
    if space not in SPACES:
        raise ValueError(f"space must be one of {SPACES}, got {space!r}")
    nodes: list = []
    supported = set().union(*KEYWORDS.values(), {"enum", "const"}, ANNOTATIONS)

    def build(s: object, where: str) -> int:
        if not isinstance(s, Mapping):
            raise TypeError(f"{where}: a schema must be a dict, got {type(s).__name__}")
        for key in s:
            if key not in supported:
                raise ValueError(f"unsupported JSON-Schema keyword {key!r} at {where}")
        index = len(nodes)
        nodes.append(None)  # reserve the index: children are numbered after their parent
        t = s.get("type")
        if isinstance(t, list):
            raise ValueError(f"unsupported JSON-Schema 'type' list {t!r} at {where}: give one type")
        if t is not None and t not in KEYWORDS:
            raise ValueError(f"unknown JSON-Schema type {t!r} at {where}; supported: {', '.join(KEYWORDS)}")
        for key in s:
            if t is not None and key not in KEYWORDS[t] | ANNOTATIONS | {"enum", "const"}:
                raise ValueError(f"JSON-Schema keyword {key!r} does not apply to type {t!r} (at {where})")
        if "enum" in s or "const" in s:
            values = [s["const"]] if "const" in s else s["enum"]
            if not isinstance(values, list) or not values:
                raise ValueError(f"{where}: enum must be a non-empty list, got {values!r}")
            if t is not None and (bad := [v for v in values if not _is_type(v, t)]):
                raise ValueError(f"{where}: enum/const value {bad[0]!r} is not of type {t!r}")
            nodes[index] = Literals(index, (_scalar_literal(v, where) for v in values))
        elif t is None:
            raise ValueError(f"{where}: a schema needs a 'type' (or 'enum'/'const'), got keys {sorted(s)}")
        elif t in ("boolean", "null"):
            nodes[index] = Literals(index, (b"true", b"false") if t == "boolean" else (b"null",))
        elif t in ("integer", "number"):
            nodes[index] = Number(index, integer=t == "integer")
        elif t == "string":
            lo, hi = _count(s, "minLength", where) or 0, _count(s, "maxLength", where)
            if hi is not None and lo > hi:
                raise ValueError(f"{where}: minLength {lo} > maxLength {hi}")
            nodes[index] = String(index, lo, hi)
        elif t == "array":
            if "items" not in s:
                raise ValueError(f"{where}: an array schema needs 'items'")
            lo, hi = _count(s, "minItems", where) or 0, _count(s, "maxItems", where)
            if hi is not None and lo > hi:
                raise ValueError(f"{where}: minItems {lo} > maxItems {hi}")
            nodes[index] = Array(index, build(s["items"], where + "/items"), lo, hi, space)
        else:  # object
            props, required = s.get("properties", {}), s.get("required", [])
            if not isinstance(props, Mapping):
                raise ValueError(f"{where}: properties must be a dict, got {props!r}")
            if not isinstance(required, list) or (bad := [r for r in required if r not in props]):
                raise ValueError(f"{where}: required must list names from properties, got {required!r}")
            if s.get("additionalProperties", False) is not False:
                raise ValueError(f"unsupported JSON-Schema keyword 'additionalProperties' (other than false) "
                                 f"at {where}: the automaton writes only the listed properties")
            children = [build(p, f"{where}/properties/{k}") for k, p in props.items()]
            keys = [json.dumps(k, ensure_ascii=False).encode() for k in props]
            nodes[index] = Object(index, keys, children, [k in required for k in props], space)
        return index

    return Grammar(nodes, build(schema, "#"), schema, space)


# ---------------------------------------------------------------------------------------------------------------
# Checking a finished text against the schema (the same subset; tests compare it with the `jsonschema` package).
# ---------------------------------------------------------------------------------------------------------------
def _is_type(v: object, t: str) -> bool:
    if t == "integer":
        return (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, float) and v.is_integer())
    if t == "number":
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    return isinstance(v, {"string": str, "boolean": bool, "null": type(None), "object": dict, "array": list}[t])


def _same(a: object, b: object) -> bool:
    """JSON equality of scalars: true is not 1 (Python says it is), 1 is 1.0."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    return type(a) is type(b) and a == b


def schema_errors(value: object, schema: Mapping[str, Any], where: str = "$") -> list[str]:
    """What is wrong with a parsed JSON value under the schema subset compile_schema reads (empty: valid)."""
    if "const" in schema and not _same(value, schema["const"]):
        return [f"{where}: {value!r} is not the const {schema['const']!r}"]
    if "enum" in schema and not any(_same(value, v) for v in schema["enum"]):
        return [f"{where}: {value!r} is not one of {schema['enum']!r}"]
    t = schema.get("type")
    if t is None:
        return []
    if not _is_type(value, t):
        return [f"{where}: expected {t}, got {type(value).__name__}"]
    errors = []
    if t == "string":
        if len(value) > schema.get("maxLength", len(value)) or len(value) < schema.get("minLength", 0):
            errors.append(f"{where}: length {len(value)} outside [minLength, maxLength]")
    elif t == "array":
        if len(value) > schema.get("maxItems", len(value)) or len(value) < schema.get("minItems", 0):
            errors.append(f"{where}: {len(value)} items outside [minItems, maxItems]")
        for i, item in enumerate(value):
            errors += schema_errors(item, schema["items"], f"{where}[{i}]")
    elif t == "object":
        props = schema.get("properties", {})
        errors += [f"{where}: missing required {k!r}" for k in schema.get("required", []) if k not in value]
        if schema.get("additionalProperties", True) is False:
            errors += [f"{where}: unexpected property {k!r}" for k in value if k not in props]
        for k, v in value.items():
            if k in props:
                errors += schema_errors(v, props[k], f"{where}.{k}")
    return errors


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def check_output(text: str, schema: Mapping[str, Any], finish_reason: str) -> str:
    """"valid" | "incomplete" | "invalid" for a model's reply that should be one JSON document.

    A reply cut by max_tokens (finish_reason "length") is "incomplete" unless it is already a closed document:
    never "valid" because the parser happened to stop at a good place (a cut number "12" may have been 123)."""
    if finish_reason not in ("stop", "length"):
        raise ValueError(f"finish_reason must be 'stop' or 'length', got {finish_reason!r}")
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    cut = finish_reason == "length"
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except ValueError:
        return "incomplete" if cut else "invalid"
    if cut and isinstance(value, (int, float)) and not isinstance(value, bool):
        return "incomplete"
    return "invalid" if schema_errors(value, schema) else "valid"


def first_json(text: str) -> object | None:
    """The first JSON object in a reply (models like to wrap it in prose or ``` fences), or None."""
    decoder = json.JSONDecoder()
    for i, ch in enumerate(text):
        if ch == "{":
            try:
                return decoder.raw_decode(text, i)[0]
            except ValueError:
                continue
    return None


# ---------------------------------------------------------------------------------------------------------------
# From characters to tokens: the mask over a real vocabulary, fast.
# ---------------------------------------------------------------------------------------------------------------
def token_bytes(tokenizer) -> list[bytes | None]:
    """The exact bytes each token id contributes to the text (byte-level BPE: a token may hold part of a
    multi-byte character); None for special tokens (<|im_start|>, ...), which never appear inside JSON."""
    from labkit.bpe import _BYTE_OF_CHAR  # chapter 2's byte-level alphabet, inverted

    special = set(tokenizer.all_special_ids) | {int(i) for i in getattr(tokenizer, "added_tokens_decoder", {})}
    pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    return [None if i in special else bytes(_BYTE_OF_CHAR[ch] for ch in p) for i, p in enumerate(pieces)]


class _Trie:
    """The vocabulary's tokens as a byte trie: tokens that share a prefix share its walk through the automaton."""

    def __init__(self, vocab: Sequence[bytes | None], ids: Iterable[int]) -> None:
        self.children: list[dict[int, int]] = [{}]
        ends: list[list[int]] = [[]]
        for i in ids:
            node = 0
            for b in vocab[i]:
                nxt = self.children[node].get(b)
                if nxt is None:
                    nxt = len(self.children)
                    self.children[node][b] = nxt
                    self.children.append({})
                    ends.append([])
                node = nxt
            ends[node].append(i)
        self.ends = [np.array(e, dtype=np.int64) if e else None for e in ends]


class Vocabulary:
    """A tokenizer's tokens as the mask needs them, built once and shared by every grammar: the bytes of each
    token, the byte trie, and the 'plain' tokens (printable ASCII other than '"' and '\\') sorted by length."""

    def __init__(self, vocab: Sequence[bytes | None], end_ids: Iterable[int] = ()) -> None:
        self.tokens, self.end_ids = list(vocab), sorted(set(end_ids))
        self.size = len(self.tokens)
        usable = [i for i, t in enumerate(self.tokens) if t]
        plain = [i for i in usable if all(0x20 <= b < 0x7F and b not in (0x22, 0x5C) for b in self.tokens[i])]
        plain_set = set(plain)
        self.trie = _Trie(self.tokens, usable)
        self.rest = _Trie(self.tokens, [i for i in usable if i not in plain_set])
        lengths = np.array([len(self.tokens[i]) for i in plain])
        order = np.argsort(lengths, kind="stable")
        self.plain_ids, self.plain_len = np.array(plain, dtype=np.int64)[order], lengths[order]

    @classmethod
    def from_tokenizer(cls, tokenizer) -> Vocabulary:
        return cls(token_bytes(tokenizer), end_ids(tokenizer))


class TokenMasks:
    """mask(state): which tokens of a vocabulary the grammar allows next, equal to mask_step (a test checks)
    but fast: one walk of the token trie, pruned where the automaton says None, and cached per state.

    One shortcut: inside a JSON string, the tokens made only of printable ASCII other than '"' and '\\'
    (most of the vocabulary) are string content byte by byte, so they are allowed exactly when they fit
    maxLength; the trie walk then only covers the other tokens."""

    def __init__(self, grammar: Grammar, vocab: Vocabulary, cache_size: int = 4096) -> None:
        if not isinstance(vocab, Vocabulary):
            raise TypeError(f"vocab must be a Vocabulary, got {type(vocab).__name__}")
        self.grammar, self.vocab, self.cache_size, self._cache = grammar, vocab, cache_size, {}
        self.size, self.end_ids = vocab.size, vocab.end_ids

    def _walk(self, trie: _Trie, state: tuple, out: np.ndarray) -> None:
        step, children, ends = self.grammar.step, trie.children, trie.ends
        stack = [(0, state)]
        while stack:
            node, s = stack.pop()
            for b, child in children[node].items():
                s2 = step(s, b)
                if s2 is not None:
                    if ends[child] is not None:
                        out[ends[child]] = True
                    if children[child]:
                        stack.append((child, s2))

    def mask(self, state: tuple) -> np.ndarray:
        """bool [vocab]: the tokens whose every byte the automaton accepts from `state` (no end-of-sequence)."""
        packed = self._cache.get(state)
        if packed is not None:
            return np.unpackbits(packed, count=self.size).astype(bool)
        out = np.zeros(self.size, dtype=bool)
        top = state[-1] if state else None
        node = self.grammar.nodes[top[0]] if top else None
        if isinstance(node, String) and top[1] == 1 and top[3] == 0:  # inside a string, between characters
            room = np.inf if node.max_length is None else node.max_length - top[2]
            v = self.vocab
            out[v.plain_ids[:np.searchsorted(v.plain_len, room, side="right")]] = True
            self._walk(v.rest, state, out)
        else:
            self._walk(self.vocab.trie, state, out)
        if len(self._cache) >= self.cache_size:
            self._cache.clear()
        self._cache[state] = np.packbits(out)
        return out

    def allowed(self, state: tuple) -> torch.Tensor:
        """The mask with the end-of-sequence tokens allowed exactly when the text is a whole document."""
        out = self.mask(state)
        if self.end_ids and self.grammar.is_accepting(state):
            out[self.end_ids] = True
        return torch.from_numpy(out)


class JsonConstraint:
    """labkit.llm's Constraint for one sample: the automaton's state, advanced token by token."""

    def __init__(self, masks: TokenMasks) -> None:
        self.masks, self.state, self.tokens = masks, masks.grammar.start, 0

    def allowed(self) -> torch.Tensor:
        return self.masks.allowed(self.state)

    def advance(self, token_id: int) -> None:
        tokens = self.masks.vocab.tokens
        if not 0 <= token_id < self.masks.size or tokens[token_id] is None:
            raise ValueError(f"token {token_id} cannot be part of a JSON text (special or out of range)")
        state = self.masks.grammar.walk(self.state, tokens[token_id])
        if state is None:
            raise ValueError(f"token {token_id} ({tokens[token_id]!r}) is not allowed after "
                             f"{self.tokens} tokens: the mask should have removed it")
        self.state, self.tokens = state, self.tokens + 1

    def is_complete(self) -> bool:
        return self.masks.grammar.is_accepting(self.state)


def end_ids(tokenizer) -> list[int]:
    """The tokens that end a sample, as labkit.llm.local ends it: eos, and <|endoftext|> if the vocabulary has it."""
    ids = [tokenizer.eos_token_id]
    if "<|endoftext|>" in tokenizer.get_vocab():
        ids.append(tokenizer.convert_tokens_to_ids("<|endoftext|>"))
    return [i for i in ids if i is not None]


def json_constraint(grammar: Grammar, tokenizer) -> Callable[[], JsonConstraint]:
    """The factory generate(constraint=...) takes: the token masks are built once and shared (with their cache)
    by every sample; each call makes a fresh JsonConstraint at the grammar's start. `tokenizer` is a Hugging
    Face byte-level BPE tokenizer, or a Vocabulary already built from one (building takes about a second)."""
    if not isinstance(grammar, Grammar):
        raise TypeError(f"grammar must come from compile_schema, got {type(grammar).__name__}")
    vocab = tokenizer if isinstance(tokenizer, Vocabulary) else Vocabulary.from_tokenizer(tokenizer)
    masks = TokenMasks(grammar, vocab)
    return lambda: JsonConstraint(masks)


# ---------------------------------------------------------------------------------------------------------------
# The course's extraction task: a sentence about a person -> {"name", "age", "city"}, with and without the mask.
# ---------------------------------------------------------------------------------------------------------------
PERSON_SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 40}, "age": {"type": "integer"},
                   "city": {"type": "string", "maxLength": 40}},
    "required": ["name", "age", "city"],
    "additionalProperties": False,
}
EXTRACTION_SYSTEM = ('Extract the person\'s name, age and city from the sentence. Reply with only a JSON object '
                     'with the keys "name", "age" and "city".')
FIELDS = ("name", "age", "city")


def load_people(path: str | None = None) -> list[dict]:
    """data/extraction/people.jsonl: {"text": sentence, "record": {"name", "age", "city"}} per line."""
    from pathlib import Path

    file = Path(path) if path else Path(__file__).resolve().parents[2] / "data" / "extraction" / "people.jsonl"
    return [json.loads(line) for line in file.read_text().splitlines() if line.strip()]


def extraction_messages(text: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": EXTRACTION_SYSTEM}, {"role": "user", "content": text}]


def score_reply(text: str, finish_reason: str, gold: Mapping[str, Any], schema: Mapping[str, Any] = PERSON_SCHEMA
                ) -> dict:
    """How one reply fares: the whole reply as a document (check_output), the first JSON object in it (a lenient
    reader that skips prose and ``` fences), and which fields of that object equal the gold record."""
    found = first_json(text)
    return {"status": check_output(text, schema, finish_reason),
            "found_json": found is not None,
            "found_schema_valid": found is not None and not schema_errors(found, schema),
            "correct": {f: isinstance(found, dict) and f in found and _same(found[f], gold[f]) for f in FIELDS}}


def extraction_run(llm, examples: Sequence[Mapping], *, max_tokens: int = 48, vocab: Vocabulary | None = None
                   ) -> dict:
    """Greedy replies to every example, unconstrained and constrained by PERSON_SCHEMA, each scored."""
    factory = json_constraint(compile_schema(PERSON_SCHEMA), vocab or llm.tokenizer)
    out = []
    for ex in examples:
        row = {"text": ex["text"], "record": ex["record"]}
        for name, constraint in (("unconstrained", None), ("constrained", factory)):
            c = llm.generate(extraction_messages(ex["text"]), max_tokens=max_tokens, constraint=constraint)[0]
            row[name] = {"reply": c.text, "finish_reason": c.finish_reason, "tokens": c.tokens,
                         **score_reply(c.text, c.finish_reason, ex["record"])}
        out.append(row)
    return {"schema": PERSON_SCHEMA, "system": EXTRACTION_SYSTEM, "max_tokens": max_tokens, "examples": out,
            "summary": summarize(out)}


def summarize(rows: Sequence[Mapping]) -> dict:
    """Counts per setting: replies that are a valid document, that hold a JSON object, a schema-valid one, and
    the number of correct values per field (out of len(rows))."""
    summary = {"n": len(rows)}
    for name in ("unconstrained", "constrained"):
        r = [row[name] for row in rows]
        summary[name] = {"valid": sum(x["status"] == "valid" for x in r),
                         "incomplete": sum(x["status"] == "incomplete" for x in r),
                         "invalid": sum(x["status"] == "invalid" for x in r),
                         "found_json": sum(x["found_json"] for x in r),
                         "found_schema_valid": sum(x["found_schema_valid"] for x in r),
                         "correct": {f: sum(x["correct"][f] for x in r) for f in FIELDS},
                         "tokens": sum(x["tokens"] for x in r)}
    return summary
