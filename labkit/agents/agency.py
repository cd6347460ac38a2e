"""Levels of agency: a router, a state machine, an autonomous loop — who decides the control flow.

"Agent" covers a range of systems, and the useful question is *who decides what happens next*. The course's
seed material (the "prompt -> model -> agent" long read) orders three levels by how much of the control flow the
model owns:

1. **Router** — code decides, the model picks one branch. The model reads the input and chooses ONE route from a
   fixed set (here: a tool from the toolbox, or "answer" directly); the code then runs that route once — the
   tool, then one more model call that writes the answer from the tool's result — and stops. A little agency:
   the model steers, but it cannot loop or come back.
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
Every level terminates whatever the model writes: the router makes exactly two model calls, the state machine
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
from typing import Literal, Mapping, Sequence

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
    prompt_tokens: int | None = None  # as the backend counted them (None where it does not count)
    completion_tokens: int = 0


def _labels(text: str) -> dict[str, str]:
    """{label: value} for the labelled lines of a reply; the first occurrence of each label counts."""
    found: dict[str, str] = {}
    for m in _LINE.finditer(text[:MAX_REPLY_CHARS]):
        found.setdefault(m.group(1).lower(), m.group(2).strip())
    return found


def _usage(llm: LLM) -> tuple[int, int] | None:
    usage = getattr(llm, "usage", None)
    return (usage.prompt_tokens, usage.completion_tokens) if usage is not None else None


def _spent(llm: LLM, result: AgencyResult, before: tuple[int, int] | None) -> AgencyResult:
    """Record the tokens the backend counted since `before` on the result (and return it)."""
    after = _usage(llm)
    if before is not None and after is not None:
        result.prompt_tokens, result.completion_tokens = after[0] - before[0], after[1] - before[1]
    return result


def _check_shots(shots: object) -> tuple[dict[str, str], ...]:
    """Demonstration turns: user and assistant chat messages only (a system message there would be a second one)."""
    if isinstance(shots, (str, bytes)) or not isinstance(shots, Sequence):
        raise TypeError(f"shots must be a list of chat messages (user/assistant turns), got {type(shots).__name__}")
    for i, m in enumerate(shots):
        if not (isinstance(m, Mapping) and set(m) == {"role", "content"} and m["role"] in ("user", "assistant")
                and isinstance(m["content"], str)):
            raise ValueError(f"shots[{i}] must be {{'role': 'user' or 'assistant', 'content': str}}, got {m!r:.80}")
    return tuple(shots)


def _ask(llm: LLM, result: AgencyResult, system: str, user: str, max_tokens: int,
         shots: Sequence[dict[str, str]] = ()) -> str:
    reply = llm.chat([{"role": "system", "content": system}, *shots, {"role": "user", "content": user}],
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
FROM_RESULT_SYSTEM = "Answer the question briefly from the tool result below. Reply with the answer only."


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
    except (json.JSONDecodeError, RecursionError):  # RecursionError: JSON nested thousands deep
        return DEFAULT_ROUTE, None, f'route {name!r} needs an "Input:" line with a JSON object'
    if not isinstance(arguments, dict):
        return DEFAULT_ROUTE, None, f'route {name!r}: "Input:" must be a JSON object'
    return name, arguments, None


def route(llm: LLM, question: str, toolbox: Tools, *, max_tokens: int = 128,
          shots: Sequence[dict[str, str]] = ()) -> AgencyResult:
    """Level 1: one model call picks a route; the code runs it once. A tool route calls the tool, then asks the
    model once more for the answer, given the question and the tool's result; the "answer" route (also the
    fallback) asks the model once more for the answer alone. Two model calls, always. `shots`: demonstration
    turns shown before the question when the route is chosen (e.g. ROUTER_DEMOS)."""
    check_episode(llm, question, toolbox)
    result = AgencyResult("router", question)
    before = _usage(llm)
    routes = [s["name"] for s in toolbox.specs()] + [ANSWER_ROUTE]
    system = ROUTER_SYSTEM.format(routes=describe_tools(toolbox))
    chosen, arguments, why = parse_route(_ask(llm, result, system, f"Question: {question.strip()}", max_tokens,
                                              _check_shots(shots)), routes)
    if why is not None:
        result.notes.append(f"fallback to {DEFAULT_ROUTE!r}: {why}")
    result.path.append(chosen)
    if chosen == ANSWER_ROUTE:
        result.answer = _ask(llm, result, DIRECT_SYSTEM, question.strip(), max_tokens).strip() or None
    else:
        observation = str(toolbox.call(chosen, arguments))  # a bad call comes back as an "error:" observation
        result.observations.append(observation)
        user = f"Question: {question.strip()}\nTool result ({chosen}): {observation}"
        result.answer = _ask(llm, result, FROM_RESULT_SYSTEM, user, max_tokens).strip() or None
    result.stopped = "answer"  # a router always ends after its one route, answer or not
    return _spent(llm, result, before)


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

# Demonstrations, shown as earlier chat turns (`shots`): a small chat model copies the shape of earlier turns far
# better than a format described in the system prompt (react.DEMOS, for the loop, says the same). The questions
# are react.DEMOS's, in no task and not chapter 4's 12 + 7, so no task's answer is in a prompt.
_SUM, _PLAN = "Question: What is 31 + 45?", "Plan: I will add the numbers with the calculator.\nNext: act"
ROUTER_DEMOS: tuple[dict[str, str], ...] = (
    {"role": "user", "content": _SUM},
    {"role": "assistant", "content": 'Route: calculator\nInput: {"expression": "31 + 45"}'},
    {"role": "user", "content": "Question: Which attribute holds the name of a built-in Python function?"},
    {"role": "assistant", "content": 'Route: search_docs\nInput: {"query": "built-in function name attribute"}'},
)
MACHINE_DEMOS: dict[str, tuple[dict[str, str], ...]] = {  # one demonstration per state, in that state's prompt
    "plan": ({"role": "user", "content": _SUM},
             {"role": "assistant", "content": "I will add the numbers with the calculator.\nNext: act"}),
    "act": ({"role": "user", "content": f"{_SUM}\n{_PLAN}"},
            {"role": "assistant", "content": '{"name": "calculator", "arguments": {"expression": "31 + 45"}}'}),
    "check": ({"role": "user", "content": f"{_SUM}\n{_PLAN}\nObservation: 76"},
              {"role": "assistant", "content": "The calculator says 76.\nNext: done\nAnswer: 76"}),
}


def state_machine(llm: LLM, question: str, toolbox: Tools, max_steps: int = 6, *, max_tokens: int = 256,
                  shots: Mapping[str, Sequence[dict[str, str]]] | None = None) -> AgencyResult:
    """Level 2: at most `max_steps` model calls, one per state visited. In "act" the reply's JSON tool call is
    parsed (`parse_tool_call`) and made (`toolbox.call`), junk becoming an "error:" observation, and the code
    moves on to "check"; in "plan" and "check" the model's "Next:" must be an allowed transition, or it is
    refused (noted) and the state is kept. `shots`: demonstration turns per state (e.g. MACHINE_DEMOS)."""
    check_episode(llm, question, toolbox, max_steps)
    if shots is not None and (not isinstance(shots, Mapping) or set(shots) - set(TRANSITIONS)):
        raise ValueError(f"shots must map states ({', '.join(TRANSITIONS)}) to demonstration turns, got {shots!r:.80}")
    shots = {state: _check_shots(turns) for state, turns in (shots or {}).items()}
    result = AgencyResult("state_machine", question, path=[START])
    before = _usage(llm)
    state, history = START, []
    for _ in range(max_steps):  # the only loop: max_steps model calls at most, whatever the model writes
        allowed = TRANSITIONS[state]
        system = MACHINE_SYSTEM.format(tools=describe_tools(toolbox), state=state,
                                       task=TASKS[state].format(), allowed=", ".join(allowed))
        user = "\n".join([f"Question: {question.strip()}", *history])
        reply = _ask(llm, result, system, user, max_tokens, shots.get(state, ()))
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
    return _spent(llm, result, before)


# ------------------------------------------------------------------------------------------------------------
# level 3: the autonomous loop

def autonomous(llm: LLM, question: str, toolbox: Tools, max_steps: int = 6, **react_settings) -> AgencyResult:
    """Level 3: `run_react` decides nothing here; the model does. The trajectory is summarised as an AgencyResult
    (path: each step's tool name, "malformed", or "answer"); other settings go to `run_react` unchanged."""
    check_episode(llm, question, toolbox, max_steps)
    traj = run_react(llm, question, toolbox, max_steps, **react_settings)
    result = AgencyResult("autonomous", question, model_calls=traj.model_calls, answer=traj.answer,
                          stopped=traj.stopped, prompt_tokens=traj.prompt_tokens,
                          completion_tokens=traj.completion_tokens)
    for turn in traj.turns:
        step = turn.step
        result.path.append(step.action if step.kind == "action" else step.kind)
        if step.malformed:
            result.notes.append(f"malformed: {step.error}")
        if turn.observation is not None and not step.malformed:
            result.observations.append(turn.observation)
    return result


# ------------------------------------------------------------------------------------------------------------
# measured: the three levels on the chapter's task set (saved run "13-agency")

LEVELS: tuple[Level, ...] = ("router", "state_machine", "autonomous")
TOOLS = ("calculator", "search_docs")  # what the task set needs (run_python is left out: no task needs it)
SETTINGS = {"max_steps": 4, "max_tokens": 48}  # a step is one short line or two; 48 tokens keeps 90 episodes short
OBSERVATION_CHARS = 300  # observations are kept this long in the record (search_docs returns ~1,800 characters)


TASKS_PER_KIND = 10  # every task (10 of each kind): 90 episodes, about 10 minutes on an idle 2-core machine


def run_level(llm: LLM, level: str, question: str, toolbox: Tools, settings: dict = SETTINGS) -> AgencyResult:
    """One question at one level with the run's settings, each level with its demonstrations (ROUTER_DEMOS,
    MACHINE_DEMOS, react.DEMOS); the router takes no step limit: it has none."""
    from labkit.agents.react import DEMOS

    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
    if level == "router":
        return route(llm, question, toolbox, max_tokens=settings["max_tokens"], shots=ROUTER_DEMOS)
    if level == "state_machine":
        return state_machine(llm, question, toolbox, settings["max_steps"], max_tokens=settings["max_tokens"],
                             shots=MACHINE_DEMOS)
    return autonomous(llm, question, toolbox, settings["max_steps"], max_tokens=settings["max_tokens"], shots=DEMOS)


def agency_row(llm: LLM, task, level: str, toolbox: Tools, settings: dict = SETTINGS) -> dict:
    """One task at one level as a plain dict: the saved run's row (scored with `tasks.is_correct`)."""
    from labkit.agents.tasks import is_correct

    r = run_level(llm, level, task.question, toolbox, settings)
    return {"id": task.id, "kind": task.kind, "level": level, "answer": r.answer,
            "correct": is_correct(task, r.answer), "model_calls": r.model_calls, "prompt_tokens": r.prompt_tokens,
            "completion_tokens": r.completion_tokens, "stopped": r.stopped, "path": r.path, "notes": r.notes,
            "observations": [o[:OBSERVATION_CHARS] for o in r.observations]}


def agency_run(llm: LLM | None = None, tasks: list | None = None, *, settings: dict = SETTINGS,
               progress: bool = True) -> dict:
    """Saved run `13-agency`: tasks of `labkit.agents.tasks` (default: the first TASKS_PER_KIND of each kind) at
    each of the three levels, greedy, with the calculator and search_docs and each level's demonstrations. `summarize_agency(record)` makes the chapter's table."""
    from labkit.agents.tasks import KINDS, load_tasks
    from labkit.agents.tools import default_toolbox
    from labkit.llm import connect

    llm = llm if llm is not None else connect()
    tasks = list(tasks) if tasks is not None else [t for kind in KINDS for t in load_tasks(kind)[:TASKS_PER_KIND]]
    box = default_toolbox(allow=TOOLS)
    jobs = [(t, level) for t in tasks for level in LEVELS]
    if progress:
        from tqdm.auto import tqdm
        jobs = tqdm(jobs, desc="episodes")
    rows = [agency_row(llm, t, level, box, settings) for t, level in jobs]
    return {"model": llm.name, "settings": dict(settings), "tools": list(TOOLS), "tasks": [t.id for t in tasks],
            "rows": rows}


def summarize_agency(record: dict) -> dict:
    """Per level and per kind (and "all"): tasks, successes, answered, model calls, tokens; and per level what
    the model did with its share of the control flow — the router's routes and fallbacks, the state machine's
    refused transitions and paths that reached "done", the loop's malformed steps and tool calls."""
    rows = record["rows"]
    if not rows:
        raise ValueError("the record has no rows")
    kinds = sorted({r["kind"] for r in rows}, key=lambda k: (k not in ("arithmetic", "lookup", "multihop"), k))
    out: dict = {"levels": {}, "behaviour": {}}
    for level in LEVELS:
        mine = [r for r in rows if r["level"] == level]
        out["levels"][level] = {}
        for kind in (*kinds, "all"):
            r = [x for x in mine if kind == "all" or x["kind"] == kind]
            out["levels"][level][kind] = {"n": len(r), "correct": sum(x["correct"] for x in r),
                                          "answered": sum(x["answer"] is not None for x in r),
                                          "model_calls": sum(x["model_calls"] for x in r),
                                          "prompt_tokens": sum(x["prompt_tokens"] or 0 for x in r),
                                          "completion_tokens": sum(x["completion_tokens"] for x in r)}
        notes = [n for x in mine for n in x["notes"]]
        steps: dict[str, int] = {}
        for x in mine:
            for p in (x["path"] if level != "state_machine" else x["path"][1:]):
                steps[p] = steps.get(p, 0) + 1
        out["behaviour"][level] = {
            "steps": dict(sorted(steps.items(), key=lambda kv: (-kv[1], kv[0]))),
            "fallbacks": sum(n.startswith("fallback") for n in notes),
            "refused": sum(n.startswith("refused") for n in notes),
            "malformed": sum(n.startswith("malformed") for n in notes),
            "tool_errors": sum(o.startswith("error:") for x in mine for o in x["observations"]),
            "reached_answer": sum(x["stopped"] == "answer" for x in mine)}
    return out
