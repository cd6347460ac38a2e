"""The ReAct step format as an automaton: constrained decoding keeps a small model inside the format.

`labkit.agents.react` reads whatever a model writes and turns a malformed reply into an observation. A 135M
model writes many of those: an "Action:" naming a tool that does not exist, "Action Input:" that is not JSON,
arguments the tool does not take, a reply with neither an action nor an answer. Chapter 10 removed such errors
for one JSON document by masking the logits token by token (`labkit.prompting.constrained`). Here the same
machinery holds the whole step. The automaton accepts exactly these replies:

    Thought: <one line of text>
    Action: <one of the allowed tool names>
    Action Input: <one JSON object valid for that tool's parameters>          <- then only end-of-sequence

    Thought: <one line of text>
    Final Answer: <one non-empty line of text>                                <- then only end-of-sequence

The labels, the line breaks and the tool name are fixed texts the model can only choose among; the arguments
are chapter 10's JSON-Schema automaton (`compile_schema`) for the chosen tool's parameters, so a required
argument cannot be left out, an integer cannot be "ten", and a string has 1 to `max_string` characters. The
free text (the thought and the answer) may be anything on one line except the start of a forged observation:
"Observation:" (any case, with spaces or a number before the colon: what `react.parse_step` cuts) is not
allowed there. A thought gets at most `thought_tokens` tokens, an answer `answer_tokens`; after that the mask
allows only tokens that end the line, so a model cannot ramble until max_tokens cuts its reply.

What the mask cannot do: choose the right tool, the right arguments or the right answer. It removes the
malformed-reply observations; whether the episode succeeds is still the model's doing (the notebook measures
both). One state of this automaton is either a single frame of the step's own (a fixed text, free text, done)
or, inside the arguments, the stack of JSON frames of chapter 10's grammar, so chapter 10's `TokenMasks` (the
trie walk, its cache, its shortcut inside JSON strings) and `JsonConstraint` run it unchanged.

    fmt = ReactFormat(ToolBox([calculator]), llm.tokenizer)
    run_react(llm, "What is 12 + 7?", box, constraint=fmt)
"""
from __future__ import annotations

import copy
from functools import lru_cache
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from labkit.prompting.constrained import (Grammar, JsonConstraint, TokenMasks, Vocabulary, _utf8_lead,
                                          compile_schema)

FORBIDDEN = "observation"  # then [ \t]* [0-9]* [ \t]* ":" — the pattern react.parse_step cuts at
_AFTER_WORD, _DIGITS, _SPACES = len(FORBIDDEN), len(FORBIDDEN) + 1, len(FORBIDDEN) + 2

# Phases of a step frame (R, phase, ...): fixed texts (a literal being typed), free text, done.
PREFIX, THOUGHT, LABEL, NAME, ANSWER, DONE = range(6)
THOUGHT_START = b"Thought: "
LABELS = (b"Action: ", b"Final Answer: ")
INPUT_LINE = b"\nAction Input: "


@lru_cache(maxsize=None)
def _fallback(k: int, c: int) -> int:
    """After k letters of "observation" matched and the byte c breaks the match: how much is still matched
    (the longest end of the text that starts the word, as in Knuth-Morris-Pratt: "observatio" + "b" -> "ob")."""
    text = FORBIDDEN[:k] + chr(c).lower()
    for j in range(min(len(text), len(FORBIDDEN) - 1), 0, -1):
        if text.endswith(FORBIDDEN[:j]):
            return j
    return 0


def _watch(k: int, b: int) -> int | None:
    """The forged-observation watch: progress k after byte b, or None if b completes `observation...:`."""
    lower = chr(b).lower() if b < 0x80 else ""
    if k < len(FORBIDDEN):
        if lower == FORBIDDEN[k]:
            return k + 1
        return _fallback(k, b) if b < 0x80 else 0
    # after the whole word: spaces, then digits, then spaces, then ":" would be a forged observation
    if b == 0x3A:
        return None
    if b in (0x20, 0x09):
        return _AFTER_WORD if k == _AFTER_WORD else _SPACES
    if 0x30 <= b <= 0x39 and k in (_AFTER_WORD, _DIGITS):
        return _DIGITS
    return 1 if lower == "o" else 0


def _cap_strings(schema: Any, max_string: int) -> Any:
    """A copy of a parameter schema in which every free string has 1 to max_string characters (an empty
    expression or query is never a useful argument, and an unbounded one runs until max_tokens)."""
    if isinstance(schema, Mapping):
        out = {k: _cap_strings(v, max_string) for k, v in schema.items()}
        if out.get("type") == "string" and "enum" not in out and "const" not in out:
            out["maxLength"] = min(out.get("maxLength", max_string), max_string)
            out["minLength"] = min(max(out.get("minLength", 1), 1), out["maxLength"])
        return out
    if isinstance(schema, list):
        return [_cap_strings(v, max_string) for v in schema]
    return copy.deepcopy(schema)


class ReactGrammar(Grammar):
    """The step automaton over bytes (see the module docstring). Built from tool specs
    ({"name", "parameters"}, as `ToolBox.specs()` gives them)."""

    def __init__(self, specs: Sequence[Mapping[str, Any]], *, max_string: int = 200,
                 allow_answer: bool = True) -> None:
        names = [s.get("name") for s in specs] if isinstance(specs, Sequence) else None
        if not names or not all(isinstance(n, str) and n and "\n" not in n for n in names):
            raise ValueError(f"specs must be a non-empty list of tool specs with names (ToolBox.specs()), "
                             f"got {specs!r:.120}")
        if len(set(names)) != len(names):
            raise ValueError(f"tool names must be unique, got {names}")
        if isinstance(max_string, bool) or not isinstance(max_string, int) or max_string < 1:
            raise ValueError(f"max_string must be an int >= 1, got {max_string!r}")
        # All tools' parameter schemas compiled as the properties of one object: one node list, so each
        # tool's arguments start at that object's child node and frames of different tools never collide.
        params = {}
        for s in specs:
            p = _cap_strings(s.get("parameters", {"type": "object", "properties": {}}), max_string)
            try:
                compile_schema(p)
            except (ValueError, TypeError) as e:
                raise ValueError(f"tool {s['name']!r}: its parameters cannot be constrained: {e}") from e
            params[s["name"]] = p
        inner = compile_schema({"type": "object", "properties": params, "additionalProperties": False})
        root = inner.nodes[inner.root]
        self.names = tuple(names)
        self.allow_answer = allow_answer
        self._argument_node = {n.encode(): root.children[i] for i, n in enumerate(names)}
        self._names = tuple(n.encode() + INPUT_LINE for n in names)
        self._labels = LABELS if allow_answer else LABELS[:1]
        self.R = len(inner.nodes)  # the index of the step's own frames: after every JSON node
        super().__init__(list(inner.nodes) + [None], inner.root, {"tools": params}, inner.space)
        self.start = ((self.R, PREFIX, b""),)

    def in_step(self, state: tuple) -> bool:
        """The state is one of the step's own frames (not inside the JSON arguments)."""
        return state[0][0] == self.R

    def phase(self, state: tuple) -> str:
        if not self.in_step(state):
            return "arguments"
        return ("prefix", "thought", "label", "name", "answer", "done")[state[0][1]]

    def _literal(self, options: Sequence[bytes], sofar: bytes, b: int) -> bytes | None:
        text = sofar + bytes((b,))
        return text if any(o.startswith(text) for o in options) else None

    def _free(self, frame: tuple, b: int) -> tuple | str | None:
        """One byte of free text (thought or answer). Returns the new frame, "end" at a newline, or None.
        Frame: (R, phase, watch, need, lo, hi, chars)."""
        r, phase, k, need, lo, hi, n = frame
        if need:  # inside a multi-byte UTF-8 character
            return (r, phase, 0, need - 1, 0x80, 0xBF, n) if lo <= b <= hi else None
        if b == 0x0A:
            return "end" if n > 0 or phase == THOUGHT else None  # an answer needs at least one character
        if b < 0x20 or b == 0x7F:
            return None
        if b >= 0x80:
            lead = _utf8_lead(b)
            return None if lead is None else (r, phase, 0, *lead, 1)
        k2 = _watch(k, b)
        if k2 is None:
            return None
        return (r, phase, k2, 0, 0, 0, 1 if b != 0x20 or n else 0)  # chars: 0 until a non-space (saturated: 1)

    def step(self, state: tuple, b: int) -> tuple | None:
        if not self.in_step(state):
            return super().step(state, b)  # inside the arguments: chapter 10's automaton (None once complete)
        frame = state[0]
        r, phase = frame[0], frame[1]
        if phase == PREFIX:
            text = self._literal((THOUGHT_START,), frame[2], b)
            if text is None:
                return None
            return ((r, THOUGHT, 0, 0, 0, 0, 0),) if text == THOUGHT_START else ((r, PREFIX, text),)
        if phase in (THOUGHT, ANSWER):
            nxt = self._free(frame, b)
            if nxt == "end":
                return ((r, LABEL, b""),) if phase == THOUGHT else ((r, DONE),)
            return None if nxt is None else (nxt,)
        if phase == LABEL:
            text = self._literal(self._labels, frame[2], b)
            if text == LABELS[0]:
                return ((r, NAME, b""),)
            if text == LABELS[1]:
                return ((r, ANSWER, 0, 0, 0, 0, 0),)
            return None if text is None else ((r, LABEL, text),)
        if phase == NAME:
            text = self._literal(self._names, frame[2], b)
            if text in self._names:  # the name and "\nAction Input: " are written: the arguments begin
                node = self.nodes[self._argument_node[text[:-len(INPUT_LINE)]]]
                return (node.start(),)
            return None if text is None else ((r, NAME, text),)
        return None  # DONE: nothing may follow

    def is_accepting(self, state: tuple) -> bool:
        if not self.in_step(state):
            return super().is_accepting(state)
        frame = state[0]
        return frame[1] == DONE or (frame[1] == ANSWER and frame[6] > 0 and frame[3] == 0)


class ReactConstraint(JsonConstraint):
    """labkit.llm's Constraint for one reply: the automaton's state, plus the token budget of the free text.
    Once a thought has `thought_tokens` tokens (an answer `answer_tokens`), only tokens that end the line (or
    end-of-sequence, after an answer) stay allowed."""

    def __init__(self, masks: TokenMasks, newline: np.ndarray, thought_tokens: int, answer_tokens: int) -> None:
        super().__init__(masks)
        self.newline, self.budget = newline, {THOUGHT: thought_tokens, ANSWER: answer_tokens}
        self.in_phase = 0  # tokens spent in the current free-text phase

    def _free_phase(self) -> int | None:
        g = self.masks.grammar
        return self.state[0][1] if g.in_step(self.state) and self.state[0][1] in self.budget else None

    def allowed(self) -> torch.Tensor:
        mask = super().allowed()
        phase = self._free_phase()
        if phase is not None and self.in_phase >= self.budget[phase]:
            ends = mask & torch.from_numpy(self.newline)
            if self.masks.grammar.is_accepting(self.state):
                ends[self.masks.end_ids] = True
            if ends.any():  # (inside a multi-byte character no token may end the line yet: finish it first)
                return ends
        return mask

    def advance(self, token_id: int) -> None:
        before = self._free_phase()
        super().advance(token_id)
        self.in_phase = self.in_phase + 1 if before is not None and self._free_phase() == before else 0


class ReactFormat:
    """The zero-argument factory `run_react(..., constraint=...)` and `llm.generate(constraint=...)` take: the
    automaton and its token masks are built once (with their cache) and shared by every reply; each call
    makes a fresh ReactConstraint at "Thought: ". `tools` is a ToolBox (its allowed tools) or a list of specs."""

    def __init__(self, tools: Any, tokenizer: Any, *, max_string: int = 200, thought_tokens: int = 48,
                 answer_tokens: int = 24, allow_answer: bool = True) -> None:
        specs = tools.specs() if hasattr(tools, "specs") else tools
        for name, v in (("thought_tokens", thought_tokens), ("answer_tokens", answer_tokens)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        self.grammar = ReactGrammar(specs, max_string=max_string, allow_answer=allow_answer)
        self.vocab = tokenizer if isinstance(tokenizer, Vocabulary) else Vocabulary.from_tokenizer(tokenizer)
        self.masks = TokenMasks(self.grammar, self.vocab)
        self.newline = np.array([t is not None and 0x0A in t for t in self.vocab.tokens], dtype=bool)
        self.thought_tokens, self.answer_tokens = thought_tokens, answer_tokens

    @property
    def tool_names(self) -> tuple[str, ...]:
        return self.grammar.names

    def __call__(self) -> ReactConstraint:
        return ReactConstraint(self.masks, self.newline, self.thought_tokens, self.answer_tokens)

    def accepts(self, text: str) -> bool:
        """The reply is a whole step of the format (the automaton reads it to an accepting state)."""
        return self.grammar.accepts(text)
