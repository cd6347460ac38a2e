"""Levels of agency: a router, a state machine, an autonomous loop — who decides the control flow.

"Agent" covers a range of systems, and the useful question is *who decides what happens next*. The course's
seed material (the "prompt -> model -> agent" long read) orders three levels by how much of the control flow the
model owns:

1. **Router** — code decides, the model picks one branch. The model reads the input and chooses ONE route from a
   fixed set (here: a tool from the toolbox, or "answer" directly); the code then runs that route once and stops.
   A little agency: the model steers, but it cannot loop or come back.
2. **State machine** — code and model decide together. The states and the allowed transitions are written in
   code (here plan -> act -> check -> act ... -> done); in each state the model chooses only among the
   transitions that state allows, and one of those choices is whether to go round again or finish. The system
   may now loop before it ends, but never along an edge the code did not draw: an illegal choice is refused.
3. **Autonomous loop** — the model decides. It chooses, step by step, which tool to call and when it is done;
   the code only runs tools and enforces a step limit. Here that is `labkit.agents.react.run_react` (ReAct, Yao
   et al., ICLR 2023), wrapped, not rewritten. (The seed puts the top of this scale at a system that builds its
   own tools, remembers them and uses them later; this module stops at choosing among given tools.)

All three return the same `AgencyResult` — which level, the routes or states visited, model calls, the answer,
why it stopped, and every refusal or fallback — so a notebook can set them side by side on one question.
Every level terminates whatever the model writes: the router makes at most two model calls, the state machine
and the loop at most `max_steps`. Model output is parsed strictly (line labels, `json` for arguments), never
evaluated. Tests drive the levels with a scripted fake LLM (the wiring); how often each level gets a question
right is measured with the real model.

    box = ToolBox([calculator])
    route(llm, "What is 12 + 7?", box)          AgencyResult(level='router', path=['calculator'], answer='19', ...)
    state_machine(llm, "What is 12 + 7?", box)  path=['plan', 'act', 'check', 'done']
    autonomous(llm, "What is 12 + 7?", box)     path=['calculator', 'answer']
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Literal

from labkit.agents.react import Tools, check_episode, describe_tools, run_react
from labkit.agents.tools import parse_tool_call
from labkit.llm.base import LLM

Level = Literal["router", "state_machine", "autonomous"]
StopReason = Literal["answer", "step_limit"]

ANSWER_ROUTE = "answer"          # the router's route that asks the model to answer without a tool
DEFAULT_ROUTE = ANSWER_ROUTE     # where a malformed or unknown route choice goes (and the result says so)
MAX_REPLY_CHARS = 20_000         # longer replies are refused before they are scanned

# The state machine, in code: from each state, the states the model may move to. "act" has one way out, so the
# code takes it; "plan" and "check" offer a choice, and "check" -> "act" is the loop.
TRANSITIONS: dict[str, tuple[str, ...]] = {
    "plan": ("act", "done"),
    "act": ("check",),
    "check": ("act", "done"),
}
START, DONE = "plan", "done"

_LINE = re.compile(r"^[ \t]*(route|input|next|answer)[ \t]*:[ \t]*(.*)$", re.IGNORECASE | re.MULTILINE)


@dataclass
class AgencyResult:
    """What one run at one level did. `path`: the routes (router), states (state machine) or actions (loop) in
    order; `notes`: every fallback, refusal or malformed reply, in words; `observations`: tool results seen."""
    level: Level
    question: str
    path: list[str] = field(default_factory=list)
    model_calls: int = 0
    answer: str | None = None
    stopped: StopReason = "step_limit"
    notes: list[str] = field(default_factory=list)
    observations: list[str] = field(default_factory=list)


def _labels(text: str) -> dict[str, str]:
    """{label: value} for the labelled lines of a reply; the first occurrence of each label counts."""
    found: dict[str, str] = {}
    for m in _LINE.finditer(text[:MAX_REPLY_CHARS]):
        found.setdefault(m.group(1).lower(), m.group(2).strip())
    return found


def _ask(llm: LLM, result: AgencyResult, system: str, user: str, max_tokens: int) -> str:
    reply = llm.chat([{"role": "system", "content": system}, {"role": "user", "content": user}],
                     max_tokens=max_tokens, temperature=0.0)[0]
    result.model_calls += 1
    return reply.text if len(reply.text) <= MAX_REPLY_CHARS else ""


# ------------------------------------------------------------------------------------------------------------
# level 1: the router

ROUTER_SYSTEM = """Choose how to handle the question. Routes:
{routes}
- answer: answer directly, without a tool.
Reply with exactly one line "Route: <route name>". For a tool route, add one line
"Input: <the tool's arguments as one JSON object>"."""

DIRECT_SYSTEM = "Answer the question briefly. Reply with the answer only."


def parse_route(text: str, routes: list[str]) -> tuple[str, dict | None, str | None]:
    """(route, tool arguments, why it fell back) from a router reply. Strict: the route must be one of `routes`
    exactly, and a tool route needs an "Input:" JSON object; anything else is DEFAULT_ROUTE with the reason."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str (a model reply), got {type(text).__name__}")
    labels = _labels(text)
    name = labels.get("route")
    if not name:
        return DEFAULT_ROUTE, None, 'no "Route:" line'
    if name not in routes:
        return DEFAULT_ROUTE, None, f"unknown route {name[:40]!r} (routes: {', '.join(routes)})"
    if name == ANSWER_ROUTE:
        return name, None, None
    try:
        arguments = json.loads(labels.get("input", ""))  # json, never eval: the reply is untrusted
    except json.JSONDecodeError:
        return DEFAULT_ROUTE, None, f'route {name!r} needs an "Input:" line with a JSON object'
    if not isinstance(arguments, dict):
        return DEFAULT_ROUTE, None, f'route {name!r}: "Input:" must be a JSON object'
    return name, arguments, None


def route(llm: LLM, question: str, toolbox: Tools, *, max_tokens: int = 128) -> AgencyResult:
    """Level 1: one model call picks a route; the code runs it once. A tool route's answer is the tool's result;
    the "answer" route (also the fallback) asks the model once more, for the answer alone."""
    check_episode(llm, question, toolbox)
    result = AgencyResult("router", question)
    routes = [s["name"] for s in toolbox.specs()] + [ANSWER_ROUTE]
    system = ROUTER_SYSTEM.format(routes=describe_tools(toolbox))
    chosen, arguments, why = parse_route(_ask(llm, result, system, f"Question: {question.strip()}", max_tokens),
                                         routes)
    if why is not None:
        result.notes.append(f"fallback to {DEFAULT_ROUTE!r}: {why}")
    result.path.append(chosen)
    if chosen == ANSWER_ROUTE:
        result.answer = _ask(llm, result, DIRECT_SYSTEM, question.strip(), max_tokens).strip() or None
    else:
        result.answer = str(toolbox.call(chosen, arguments))
        result.observations.append(result.answer)
    result.stopped = "answer"  # a router always ends after its one route, answer or not
    return result


# ------------------------------------------------------------------------------------------------------------
# level 2: the state machine

MACHINE_SYSTEM = """You solve the question in states. Tools:
{tools}
You are in state "{state}". {task}
End your reply with one line "Next: <state>", where <state> is one of: {allowed}.
To finish, write "Next: done" and a line "Answer: <the answer>"."""

TASKS = {
    "plan": "Write a short plan.",
    "act": 'Write one tool call as a JSON object {{"name": <tool>, "arguments": {{...}}}}.',
    "check": "Read the tool results so far and decide: act again, or finish with the answer.",
}


def state_machine(llm: LLM, question: str, toolbox: Tools, max_steps: int = 6, *,
                  max_tokens: int = 256) -> AgencyResult:
    """Level 2: at most `max_steps` model calls, one per state visited. In "act" the reply's JSON tool call is
    parsed (`parse_tool_call`) and made (`toolbox.call`), junk becoming an "error:" observation, and the code
    moves on to "check"; in "plan" and "check" the model's "Next:" must be an allowed transition, or it is
    refused (noted) and the state is kept."""
    check_episode(llm, question, toolbox, max_steps)
    result = AgencyResult("state_machine", question, path=[START])
    state, history = START, []
    for _ in range(max_steps):  # the only loop: max_steps model calls at most, whatever the model writes
        allowed = TRANSITIONS[state]
        system = MACHINE_SYSTEM.format(tools=describe_tools(toolbox), state=state,
                                       task=TASKS[state].format(), allowed=", ".join(allowed))
        user = "\n".join([f"Question: {question.strip()}", *history])
        reply = _ask(llm, result, system, user, max_tokens)
        labels = _labels(reply)
        if state == "act":
            try:  # parse_tool_call raises ValueError on a reply with no tool call; that is an observation
                call = parse_tool_call(reply)
                observation = str(toolbox.call(call.name, call.arguments))
            except ValueError as e:
                observation = f"error: {e}"
            result.observations.append(observation)
            history.append(f"Observation: {observation}")
            nxt = allowed[0]  # one way out: the code takes it, the model is not asked
        else:
            nxt = labels.get("next", "").lower()
            if nxt not in allowed:
                result.notes.append(f"refused: {state} -> {nxt[:40] or '(none)'} (allowed: {', '.join(allowed)})")
                continue
            if nxt == DONE:
                answer = labels.get("answer", "")
                if not answer:
                    result.notes.append(f'refused: {state} -> done without an "Answer:" line')
                    continue
                result.answer, result.stopped = answer, "answer"
            if state == "plan" and reply.strip():
                history.append(f"Plan: {reply.strip()[:500]}")
        state = nxt
        result.path.append(state)
        if state == DONE:
            break
    return result


# ------------------------------------------------------------------------------------------------------------
# level 3: the autonomous loop

def autonomous(llm: LLM, question: str, toolbox: Tools, max_steps: int = 6, **react_settings) -> AgencyResult:
    """Level 3: `run_react` decides nothing here; the model does. The trajectory is summarised as an AgencyResult
    (path: each step's tool name, "malformed", or "answer"); other settings go to `run_react` unchanged."""
    check_episode(llm, question, toolbox, max_steps)
    traj = run_react(llm, question, toolbox, max_steps, **react_settings)
    result = AgencyResult("autonomous", question, model_calls=traj.model_calls, answer=traj.answer,
                          stopped=traj.stopped)
    for turn in traj.turns:
        step = turn.step
        result.path.append(step.action if step.kind == "action" else step.kind)
        if step.malformed:
            result.notes.append(f"malformed: {step.error}")
        if turn.observation is not None and not step.malformed:
            result.observations.append(turn.observation)
    return result
