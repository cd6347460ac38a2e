"""ReAct: a model that alternates reasoning and tool calls, and the loop around it (Yao et al., ICLR 2023).

ReAct ("Reasoning and Acting", Yao et al., *ReAct: Synergizing Reasoning and Acting in Language Models*, ICLR
2023) lets a model interleave free-text reasoning with actions whose results it reads before going on. Each
model reply is ONE step, in exactly this format (the one this module parses; `SYSTEM` shows it to the model):

    Thought: I should add the two numbers with the calculator.      <- free text, any number of lines
    Action: calculator                                               <- one tool name, alone on its line
    Action Input: {"expression": "12 + 7"}                           <- the arguments: one JSON object

or, when the model knows the answer:

    Thought: The calculator says 19.
    Final Answer: 19

The loop (`run_react`) then calls the tool with `ToolBox.call(name, arguments)` — the same validated path as a
JSON tool call `{"name": ..., "arguments": {...}}` (`Step.tool_call()` gives that `ToolCall`) — and shows the
model the result as the next message, "Observation: 19". Four rules make the loop safe on any model output:

1. **Labels count only at the start of a line.** "Thought: I won't use Action: search_docs here" is prose; the
   action is the `Action:` line that *follows* the thought. (A parser that takes the first "Action:" anywhere runs
   the tool the model just said it would not use — the lab's mutant.)
2. **Whatever the model writes from "Observation:" on is cut.** Only a tool writes observations. A model (or a
   document injected into its context) that writes "Observation: 42 / Final Answer: 42" has forged a tool result
   and an answer built on it; both are dropped (kept in `Step.cut` so a reader can see them), and "Observation:"
   is also a stop sequence, so a well-behaved backend never generates it.
3. **Malformed output is an observation, not a crash.** A reply with no action, a missing or non-JSON "Action
   Input", an empty answer... becomes "Observation: error: ...", which restates the expected format, and the model
   tries again. A tool's error comes back the same way (ToolBox.call never raises).
4. **A step limit.** `max_steps` model calls at most, whatever the model writes: the loop always terminates, and
   the trajectory says why it stopped ("answer" or "step_limit").

A small model breaks the format often. `run_react(..., constraint=ReactFormat(toolbox, llm.tokenizer))` (from
`labkit.agents.react_format`) masks every reply token by token so that it can only be one well-formed step.

Untrusted text (model output, tool results) is never evaluated: the action input is read with `json`, and both
renderers (`render_text`, `render_html`) treat every such string as data — the HTML one escapes all of it.
Tests drive the loop with a scripted fake LLM (the wiring); success rates come from the real model.

    box = ToolBox([calculator])
    traj = run_react(llm, "What is 12 + 7?", box, max_steps=4)
    traj.answer, traj.stopped, traj.model_calls        ('19', 'answer', 2)
    print(render_text(traj))
"""
from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Protocol, Sequence, runtime_checkable

from labkit.agents.tools import ToolCall
from labkit.llm.base import LLM, Usage

MAX_REPLY_CHARS = 20_000  # a step is a few hundred characters; a longer reply is refused before it is scanned
OBSERVATION = "Observation:"
STOP = (OBSERVATION,)  # the model stops where a tool's answer would start; the parser cuts there anyway (rule 2)
StopReason = Literal["answer", "step_limit"]
CUT_NOTE = ' before "Observation:" (only a tool writes observations; your text from there on was dropped)'

# Labels are recognised only at the start of a line (rule 1); "Action Input" is tried before "Action".
_LABEL = re.compile(r"^[ \t]*(thought|action input|action|final answer)[ \t]*:", re.IGNORECASE | re.MULTILINE)
# Anything that looks like the start of an observation, anywhere ("Observation:", "observation 2 :"): cut (rule 2).
_FORGED = re.compile(r"observation[ \t]*\d*[ \t]*:", re.IGNORECASE)
_THOUGHT_LABEL = re.compile(r"\A\s*thought[ \t]*:", re.IGNORECASE)
_TOOL_NAME = re.compile(r"[A-Za-z_][\w.-]{0,63}")
_FENCE_OPEN = re.compile(r"```[A-Za-z]*[ \t]*\n?")
_EXAMPLE = '{"expression": "2 + 2"}'

FORMAT = ("Thought: <your reasoning>\nAction: <one tool name>\nAction Input: <the arguments as one JSON object>\n"
          "or, when you know the answer:\nThought: <your reasoning>\nFinal Answer: <the answer>")


# ------------------------------------------------------------------------------------------------------------
# one step: parsing a model reply

@dataclass(frozen=True)
class Step:
    """One model reply, read. Exactly one of: an action (`action` + `arguments`), a `final_answer`, or an `error`
    (malformed: the message says what was wrong). `text` is the part that was read; `cut` what the model wrote
    from "Observation:" on (dropped, never used); `ignored` what followed the action or answer (not used)."""
    text: str
    thought: str = ""
    action: str | None = None
    arguments: dict | None = None
    final_answer: str | None = None
    error: str | None = None
    cut: str = ""
    ignored: str = ""

    @property
    def malformed(self) -> bool:
        return self.error is not None

    @property
    def kind(self) -> Literal["action", "answer", "malformed"]:
        return "malformed" if self.error is not None else "answer" if self.final_answer is not None else "action"

    def tool_call(self) -> ToolCall:
        """The action as the JSON tool call {"name", "arguments"} that `labkit.agents.tools` parses."""
        if self.action is None:
            raise ValueError(f"this step is not an action (it is {self.kind})")
        return ToolCall(self.action, dict(self.arguments or {}))


def _decode_input(text: str) -> tuple[dict | None, str, str | None]:
    """(arguments, the text after them, error) from what follows "Action Input:" (an optional ``` fence allowed)."""
    body = text.lstrip()
    fenced = _FENCE_OPEN.match(body) if body.startswith("```") else None
    if fenced:
        body = body[fenced.end():].lstrip()
    if not body:
        return None, "", f'the "Action Input:" line is empty; write the arguments as a JSON object, e.g. {_EXAMPLE}'
    try:
        value, end = json.JSONDecoder().raw_decode(body)
    except json.JSONDecodeError as e:
        return None, "", f'"Action Input" is not valid JSON ({e.msg} at character {e.pos})'
    except RecursionError:  # json's decoder recurses once per nesting level: "[[[[..." thousands deep
        return None, "", '"Action Input" is nested too deeply; write one flat JSON object of arguments'
    if not isinstance(value, dict):
        shown = json.dumps(value)[:40]
        return None, "", f'"Action Input" must be a JSON object of arguments, e.g. {_EXAMPLE}; got {shown}'
    rest = body[end:].lstrip()
    if fenced and rest.startswith("```"):
        rest = rest[3:]
    return value, rest.strip(), None


def parse_step(text: str) -> Step:
    """Read one model reply in the module's format (see the module docstring). Never raises on any string:
    a reply that cannot be read is a Step whose `error` says why."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str (a model reply), got {type(text).__name__}")
    if len(text) > MAX_REPLY_CHARS:
        return Step(text[:200], error=f"the reply is {len(text)} characters long; one step is at most "
                                      f"{MAX_REPLY_CHARS}")
    forged = _FORGED.search(text)
    kept, cut = (text[:forged.start()], text[forged.start():]) if forged else (text, "")
    labels = [m for m in _LABEL.finditer(kept) if m.group(1).lower() != "thought"]
    first = labels[0] if labels else None
    thought = _THOUGHT_LABEL.sub("", kept[:first.start()] if first else kept, count=1).strip()
    step = dict(text=kept, thought=thought, cut=cut)
    if first is None:
        why = "the reply is empty" if not kept.strip() else 'no "Action:" or "Final Answer:" line'
        if cut:  # say so, or a model that did write an action after its own "Observation:" cannot see why
            why += CUT_NOTE
        return Step(**step, error=why)
    label = first.group(1).lower()
    if label == "action input":
        return Step(**step, error='"Action Input:" came before any "Action:" line')
    if label == "final answer":
        # The answer runs to the next labelled line; a premature action after it is not taken.
        after = next((m for m in _LABEL.finditer(kept, first.end())), None)
        end = after.start() if after else len(kept)
        answer = kept[first.end():end].strip()
        if not answer:
            return Step(**step, error='the "Final Answer:" is empty')
        return Step(**step, final_answer=answer, ignored=kept[end:].strip())
    line_end = kept.find("\n", first.end())
    line_end = len(kept) if line_end < 0 else line_end
    name = kept[first.end():line_end].strip()
    if not _TOOL_NAME.fullmatch(name):
        return Step(**step, error=f'"Action:" must be followed by one tool name alone on its line '
                                  f'(e.g. "Action: calculator"); got {name[:40]!r}')
    # The next line that is not blank must be "Action Input:"; a thought or a second action in between is not it.
    rest = kept[line_end:]
    nxt = _LABEL.match(rest.lstrip("\n\r\t "))
    if nxt is None or nxt.group(1).lower() != "action input":
        return Step(**step, error=f'missing "Action Input:" line after "Action: {name}"')
    arguments, ignored, why = _decode_input(rest.lstrip("\n\r\t ")[nxt.end():])
    if why is not None:
        return Step(**step, error=why)
    # A premature "Final Answer:" (written before the tool answered) lands in `ignored`: the tool runs first.
    return Step(**step, action=name, arguments=arguments, ignored=ignored)


# ------------------------------------------------------------------------------------------------------------
# the loop

@runtime_checkable
class Tools(Protocol):
    """What the loop needs from a tool registry: `ToolBox` and `MCPToolBox` both have it."""

    def specs(self) -> list[dict]: ...

    def call(self, name: str, arguments: dict[str, Any] | None = None) -> str: ...


@dataclass(frozen=True)
class Turn:
    """One step of a trajectory: the model's reply as read, and the observation shown back (None after an answer).
    `tokens` is what the reply cost in generated tokens; `finish_reason` is the backend's ("length" = cut)."""
    step: Step
    observation: str | None
    tokens: int
    finish_reason: str


@dataclass
class Trajectory:
    """Everything one episode did: each step and observation, the answer (None without one), why it stopped,
    and what it cost (model calls; tokens from the backend's `usage` — None where the backend does not count)."""
    question: str
    turns: list[Turn] = field(default_factory=list)
    answer: str | None = None
    stopped: StopReason = "step_limit"
    model_calls: int = 0
    prompt_tokens: int | None = None
    completion_tokens: int = 0

    @property
    def tool_calls(self) -> list[ToolCall]:
        return [t.step.tool_call() for t in self.turns if t.step.kind == "action"]

    def _repr_html_(self) -> str:  # a notebook shows the rendered trajectory
        return render_html(self)

    def to_dict(self) -> dict:
        """The trajectory as plain JSON-able data (a saved run keeps it; `from_dict` reads it back)."""
        return {"question": self.question, "answer": self.answer, "stopped": self.stopped,
                "model_calls": self.model_calls, "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
                "turns": [{"step": {k: getattr(t.step, k) for k in _STEP_FIELDS}, "observation": t.observation,
                           "tokens": t.tokens, "finish_reason": t.finish_reason} for t in self.turns]}

    @classmethod
    def from_dict(cls, data: dict) -> "Trajectory":
        if not isinstance(data, dict) or not {"question", "turns"} <= set(data):
            raise ValueError(f"expected a dict from Trajectory.to_dict(), got {str(data)[:80]!r}")
        turns = [Turn(Step(**{k: t["step"][k] for k in _STEP_FIELDS}), t["observation"], t["tokens"],
                      t["finish_reason"]) for t in data["turns"]]
        return cls(data["question"], turns, data.get("answer"), data.get("stopped", "step_limit"),
                   data.get("model_calls", 0), data.get("prompt_tokens"), data.get("completion_tokens", 0))


_STEP_FIELDS = ("text", "thought", "action", "arguments", "final_answer", "error", "cut", "ignored")


# The step format as a system prompt states it; every agent of the chapter that runs on run_react (this module's
# SYSTEM, memory.PAGING_SYSTEM) is told it in these words.
STEP_RULES = """Each reply is ONE step, in exactly this form:
Thought: <your reasoning>
Action: <one tool name from the list>
Action Input: <the arguments as one JSON object>

Then stop: the tool's result comes back to you as "Observation: ...". When you know the answer, reply:
Thought: <your reasoning>
Final Answer: <the answer>"""

SYSTEM = "You answer questions. You may use these tools:\n{tools}\n\nWork in steps. " + STEP_RULES + """

Example:
Question: What is 23 * 4 + 5?
Thought: I should compute this with the calculator.
Action: calculator
Action Input: {{"expression": "23 * 4 + 5"}}
Observation: 97
Thought: The calculator says 97.
Final Answer: 97"""
# The example's numbers are not chapter 4's "12 + 7": a measured before/after on that sum must not find the
# answer in the prompt.

# Demonstration episodes, as the chat turns the model will see (`shots`): a small chat model copies the shape of
# earlier turns far better than a format described in the system prompt (the react notebook measures both).
# One calculator episode (not chapter 4's sums) and one search: a real passage of chapter 12's corpus.
_SEARCHED = ('[pydoc/types#26] Built-in functions ------------------ A built-in function object is a wrapper around '
             'a C function. Examples of built-in functions are "len()" and "math.sin()". Special read-only '
             'attributes: "__doc__" is the function\u2019s documentation string, or "None" if unavailable; '
             '"__name__" is the function\u2019s name.')
DEMOS: tuple[dict[str, str], ...] = (
    {"role": "user", "content": "Question: What is 31 + 45?"},
    {"role": "assistant", "content": 'Thought: I add the numbers with the calculator.\nAction: calculator\n'
                                     'Action Input: {"expression": "31 + 45"}'},
    {"role": "user", "content": f"{OBSERVATION} 76"},
    {"role": "assistant", "content": "Thought: The calculator says 76.\nFinal Answer: 76"},
    {"role": "user", "content": "Question: Which attribute holds the name of a built-in Python function?"},
    {"role": "assistant", "content": 'Thought: I search the documents.\nAction: search_docs\n'
                                     'Action Input: {"query": "built-in function name attribute", "k": 1}'},
    {"role": "user", "content": f"{OBSERVATION} {_SEARCHED}"},
    {"role": "assistant", "content": 'Thought: The passage says "__name__" is the function\'s name.\n'
                                     "Final Answer: __name__"},
)


def _argument_line(parameters: dict) -> str:
    """{"expression": string, "k": integer (default 3)} — the arguments a small model needs, without the schema."""
    parts = []
    for name, schema in parameters.get("properties", {}).items():
        kind = schema.get("type") or " or ".join(s.get("type", "?") for s in schema.get("anyOf", []))
        default = f" (default {json.dumps(schema['default'])})" if "default" in schema else ""
        parts.append(f'"{name}": {kind}{default}')
    return "{" + ", ".join(parts) + "}"


def describe_tools(toolbox: Tools) -> str:
    """One line per allowed tool: its name, description and arguments, as SYSTEM lists them."""
    return "\n".join(f"- {s['name']}: {s.get('description', '')} "
                     f"Action Input: {_argument_line(s.get('parameters', {}))}" for s in toolbox.specs())


def react_messages(question: str, toolbox: Tools, system: str = SYSTEM,
                   shots: Sequence[dict[str, str]] = ()) -> list[dict[str, str]]:
    """The episode's opening chat: the format and the tools (system), any demonstration turns (`shots`, e.g.
    DEMOS), then the question (user). Each step adds the model's reply (assistant) and "Observation: ..." (user),
    so any chat model's own template applies."""
    return [{"role": "system", "content": system.format(tools=describe_tools(toolbox))}, *map(dict, shots),
            {"role": "user", "content": f"Question: {question.strip()}"}]


def _check_shots(shots: object) -> tuple[dict[str, str], ...]:
    if isinstance(shots, (str, bytes)) or not isinstance(shots, Sequence):
        raise TypeError(f"shots must be a list of chat messages (user/assistant turns), got {type(shots).__name__}")
    out = []
    for i, m in enumerate(shots):
        if not (isinstance(m, dict) and set(m) == {"role", "content"} and m["role"] in ("user", "assistant")
                and isinstance(m["content"], str)):
            raise ValueError(f"shots[{i}] must be {{'role': 'user' or 'assistant', 'content': str}}, got {m!r:.80}")
        out.append(m)
    return tuple(out)


def format_error(why: str, finish_reason: str = "stop", max_tokens: int | None = None) -> str:
    """The observation for a malformed reply: what was wrong, and the format again."""
    cut = (f" (your reply reached the limit of {max_tokens} tokens and was cut: be brief)"
           if finish_reason == "length" and max_tokens is not None else "")
    return f"error: could not read your reply: {why}{cut}. Reply in this form:\n{FORMAT}"


def _call_tool(toolbox: Tools, step: Step) -> str:
    try:
        return str(toolbox.call(step.action, step.arguments))
    except Exception as e:  # ToolBox.call never raises, but another registry (MCP) might: still an observation
        return f"error: tool {step.action!r} failed: {type(e).__name__}: {e}"


def check_episode(llm: object, question: object, toolbox: object, max_steps: object | None = None) -> None:
    """The checks every agent loop makes before its first model call (ReAct here, and agency's levels):
    a labkit LLM, a non-empty question, a toolbox with specs() and call(), and max_steps an int >= 1 if given."""
    if not isinstance(llm, LLM):
        raise TypeError(f"llm must be a labkit.llm.base.LLM (LocalLLM, HttpLLM, ...), got {type(llm).__name__}")
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"question must be a non-empty string, got {question!r:.80}")
    if not isinstance(toolbox, Tools):
        raise TypeError(f"toolbox must have specs() and call(name, arguments) (a ToolBox), "
                        f"got {type(toolbox).__name__}")
    if max_steps is not None and (isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1):
        raise ValueError(f"max_steps must be an int >= 1, got {max_steps!r}")


def run_react(llm: LLM, question: str, toolbox: Tools, max_steps: int = 6, *, max_tokens: int = 256,
              temperature: float = 0.0, system: str = SYSTEM, stop: Sequence[str] = STOP,
              constraint: Callable[[], Any] | None = None, shots: Sequence[dict[str, str]] = ()) -> Trajectory:
    """Run one ReAct episode: at most `max_steps` model calls, each one step (see the module docstring).

    Returns the Trajectory: stopped == "answer" with the answer, or "step_limit" with answer None.
    `system` must contain "{tools}" (where the tool list goes); `stop` must include "Observation:".
    `constraint`: a factory of token-by-token constraints applied to every reply, e.g.
    `labkit.agents.react_format.ReactFormat(toolbox, llm.tokenizer)` (the step format as an automaton); one that
    names its tools (`tool_names`) must name exactly the toolbox's allowed tools. `shots`: demonstration turns
    shown before the question (e.g. DEMOS; user and assistant messages).
    """
    check_episode(llm, question, toolbox, max_steps)
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise ValueError(f"max_tokens must be an int >= 1, got {max_tokens!r}")
    if not isinstance(system, str) or "{tools}" not in system:
        raise ValueError("system must be a string containing '{tools}', where the tool list is inserted")
    if constraint is not None:
        if not callable(constraint):
            raise TypeError(f"constraint must be None or a zero-argument factory of constraints (ReactFormat), "
                            f"got {type(constraint).__name__}")
        names = getattr(constraint, "tool_names", None)
        offered = tuple(s["name"] for s in toolbox.specs())
        if names is not None and tuple(names) != offered:  # a mask for other tools would force calls that fail
            raise ValueError(f"the constraint allows the tools {list(names)}, the toolbox offers {list(offered)}")
    shots = _check_shots(shots)
    stop = (stop,) if isinstance(stop, str) else tuple(stop)
    if OBSERVATION not in stop:
        raise ValueError(f"stop must include {OBSERVATION!r}, so the model does not write its own observations; "
                         f"got {stop!r}")

    usage = llm.usage if isinstance(getattr(llm, "usage", None), Usage) else None
    before = (usage.prompt_tokens, usage.completion_tokens) if usage else (0, 0)
    messages = react_messages(question, toolbox, system, shots)
    traj = Trajectory(question=question)
    for _ in range(max_steps):  # the only loop: it cannot run more than max_steps times (rule 4)
        reply = llm.chat(messages, max_tokens=max_tokens, temperature=temperature, stop=stop,
                         constraint=constraint)[0]
        traj.model_calls += 1
        traj.completion_tokens += reply.tokens
        step = parse_step(reply.text)
        if step.kind == "answer":
            traj.turns.append(Turn(step, None, reply.tokens, reply.finish_reason))
            traj.answer, traj.stopped = step.final_answer, "answer"
            break
        observation = (format_error(step.error, reply.finish_reason, max_tokens) if step.malformed
                       else _call_tool(toolbox, step))
        traj.turns.append(Turn(step, observation, reply.tokens, reply.finish_reason))
        # The model sees what it wrote up to the cut (never its forged observation), then the real one.
        messages += [{"role": "assistant", "content": step.text.strip() or "(empty reply)"},
                     {"role": "user", "content": f"{OBSERVATION} {observation}"}]
    if usage is not None:  # tokens as the backend counted them (a prefix served from its cache is not re-counted)
        traj.prompt_tokens = usage.prompt_tokens - before[0]
        traj.completion_tokens = usage.completion_tokens - before[1]
    return traj


# ------------------------------------------------------------------------------------------------------------
# rendering

def _check_trajectory(traj: object) -> Trajectory:
    if not isinstance(traj, Trajectory):
        raise TypeError(f"expected a Trajectory (from run_react), got {type(traj).__name__}")
    return traj


def _summary(traj: Trajectory) -> str:
    tokens = f"{traj.completion_tokens} generated tokens"
    if traj.prompt_tokens is not None:
        tokens = f"{traj.prompt_tokens} prompt + {tokens}"
    return f"stopped: {traj.stopped} after {len(traj.turns)} step(s), {traj.model_calls} model call(s), {tokens}"


def render_text(traj: Trajectory) -> str:
    """The trajectory as plain text, one labelled line per part (the format the model saw, plus what was cut)."""
    traj = _check_trajectory(traj)
    lines = [f"Question: {traj.question}"]
    for i, turn in enumerate(traj.turns, 1):
        s = turn.step
        lines.append(f"--- step {i} ({s.kind})")
        if s.thought and not s.malformed:  # a malformed reply is shown whole below
            lines.append(f"Thought: {s.thought}")
        if s.kind == "action":
            lines += [f"Action: {s.action}", f"Action Input: {json.dumps(s.arguments, ensure_ascii=False)}"]
        elif s.kind == "answer":
            lines.append(f"Final Answer: {s.final_answer}")
        else:
            lines.append(f"Malformed reply: {s.text.strip() or '(empty)'}")
        if s.ignored:
            lines.append(f"[ignored: {s.ignored}]")
        if s.cut:
            lines.append(f"[cut, written by the model after 'Observation:': {s.cut.strip()}]")
        if turn.observation is not None:
            lines.append(f"Observation: {turn.observation}")
    lines.append(f"Answer: {traj.answer if traj.answer is not None else '(none)'}")
    lines.append(_summary(traj))
    return "\n".join(lines)


_STYLE = {"thought": "color:#555", "action": "color:#1a4f8a", "observation": "background:#f4f4f4",
          "answer": "color:#176c2e;font-weight:bold", "malformed": "color:#a33", "dropped": "color:#999"}


def _row(kind: str, label: str, text: str, pre: bool = False) -> str:
    body = f"<pre style='margin:0;white-space:pre-wrap'>{html.escape(text)}</pre>" if pre else html.escape(text)
    return (f"<div class='react-{kind}' style='{_STYLE[kind]};margin:2px 0'>"
            f"<b>{html.escape(label)}</b> {body}</div>")


def render_html(traj: Trajectory) -> str:
    """The trajectory as HTML for the book and notebooks. Every string from the model or a tool is escaped with
    html.escape, so a "<script>" in a retrieved document is shown, never run."""
    traj = _check_trajectory(traj)
    out = ["<div class='react-trajectory' style='font-family:sans-serif;font-size:14px'>",
           f"<div><b>Question:</b> {html.escape(traj.question)}</div>"]
    for i, turn in enumerate(traj.turns, 1):
        s = turn.step
        out.append(f"<div class='react-step' style='border-left:3px solid #ccc;padding-left:8px;margin:6px 0'>"
                   f"<div style='color:#888'>step {i}</div>")
        if s.thought and not s.malformed:  # a malformed reply is shown whole below
            out.append(_row("thought", "Thought:", s.thought))
        if s.kind == "action":
            out.append(_row("action", f"Action: {s.action}", json.dumps(s.arguments, ensure_ascii=False), pre=True))
        elif s.kind == "answer":
            out.append(_row("answer", "Final Answer:", s.final_answer or ""))
        else:
            out.append(_row("malformed", "Malformed reply:", s.text.strip() or "(empty)", pre=True))
        if s.ignored:
            out.append(_row("dropped", "ignored:", s.ignored, pre=True))
        if s.cut:
            out.append(_row("dropped", "cut (written by the model after 'Observation:'):", s.cut.strip(), pre=True))
        if turn.observation is not None:
            out.append(_row("observation", "Observation:", turn.observation, pre=True))
        out.append("</div>")
    answer = traj.answer if traj.answer is not None else "(none)"
    out += [f"<div><b>Answer:</b> {html.escape(answer)}</div>",
            f"<div style='color:#888'>{html.escape(_summary(traj))}</div>", "</div>"]
    return "\n".join(out)
