"""labkit.agents.agency: the three levels of agency (router, state machine, autonomous loop) on the real
calculator — each happy path, the router's fallback on a malformed choice, the state machine refusing an illegal
transition and always stopping within its step limit, the loop's summary, and bad arguments.

A scripted fake LLM (a real `labkit.llm.base.LLM` subclass) drives them: these tests check the wiring; how often
each level answers correctly is measured with the real model."""
from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labkit.agents.agency import (DEFAULT_ROUTE, TRANSITIONS, AgencyResult, autonomous, parse_route, route,
                                  state_machine)
from labkit.agents.calculator import calculator
from labkit.agents.tools import ToolBox
from scripted_llm import ScriptedLLM


def box() -> ToolBox:
    return ToolBox([calculator])


CALL = json.dumps({"name": "calculator", "arguments": {"expression": "12 + 7"}})


# ---------------------------------------------------------------- level 1: the router

def test_router_runs_the_chosen_tool_once_then_answers_from_its_result():
    llm = ScriptedLLM(['Route: calculator\nInput: {"expression": "12 + 7"}', "19"])
    r = route(llm, "What is 12 + 7?", box())
    assert isinstance(r, AgencyResult)
    assert (r.level, r.path, r.answer, r.model_calls, r.stopped, r.notes, r.observations) == (
        "router", ["calculator"], "19", 2, "answer", [], ["19"])
    assert "calculator" in llm.prompts[0][0].content  # the model was shown the routes
    assert "Tool result (calculator): 19" in llm.prompts[1][-1].content  # ... and then the tool's result
    assert (r.prompt_tokens, r.completion_tokens) == (llm.usage.prompt_tokens, llm.usage.completion_tokens)


def test_router_answer_route_asks_the_model_once_more():
    r = route(ScriptedLLM(["Route: answer", "Paris"]), "Capital of France?", box())
    assert (r.path, r.answer, r.model_calls, r.notes) == (["answer"], "Paris", 2, [])


@pytest.mark.parametrize("reply, why", [
    ("I think the calculator.", 'no "Route:" line'),
    ("Route: search_docs", "unknown route 'search_docs'"),          # not in this toolbox
    ("Route: calculator\nInput: 12 + 7", "JSON object"),             # arguments not JSON
    ("Route: calculator\nInput: [1, 2]", "JSON object"),
    ("Route: calculator", "JSON object"),                            # a tool route without its input
    ("Route: calculator\nInput: " + "[" * 10_000, "JSON object"),   # nested past json's recursion limit
])
def test_router_falls_back_to_the_default_route_and_says_why(reply, why):
    r = route(ScriptedLLM([reply, "fallback answer"]), "What is 12 + 7?", box())
    assert r.path == [DEFAULT_ROUTE] and r.answer == "fallback answer" and r.model_calls == 2
    assert len(r.notes) == 1 and r.notes[0].startswith(f"fallback to {DEFAULT_ROUTE!r}") and why in r.notes[0]
    assert parse_route(reply, ["calculator", "answer"])[0] == DEFAULT_ROUTE


def test_route_name_must_match_exactly():
    assert parse_route("Route: Calculator", ["calculator", "answer"])[2] is not None  # no case folding
    assert parse_route('Route: calculator\nInput: {"expression": "1"}', ["calculator", "answer"]) == (
        "calculator", {"expression": "1"}, None)
    with pytest.raises(TypeError, match="must be a str"):
        parse_route(None, ["answer"])


# ---------------------------------------------------------------- level 2: the state machine

def test_state_machine_happy_path_with_the_calculator():
    llm = ScriptedLLM(["Use the calculator.\nNext: act", CALL, "The tool says 19.\nNext: done\nAnswer: 19"])
    r = state_machine(llm, "What is 12 + 7?", box())
    assert (r.level, r.path, r.answer, r.stopped, r.model_calls, r.notes) == (
        "state_machine", ["plan", "act", "check", "done"], "19", "answer", 3, [])
    assert r.observations == ["19"]
    assert "Observation: 19" in llm.prompts[2][1].content  # "check" saw the tool's result


def test_state_machine_loops_check_to_act():
    llm = ScriptedLLM(["Next: act", CALL, "Again.\nNext: act", CALL, "Next: done\nAnswer: 19"])
    r = state_machine(llm, "What is 12 + 7?", box(), max_steps=5)
    assert r.path == ["plan", "act", "check", "act", "check", "done"] and r.answer == "19"


def test_state_machine_refuses_illegal_transitions_and_stops_at_its_limit():
    # plan -> check is not an edge; "done" without an answer is refused too; the state is kept each time.
    llm = ScriptedLLM(["Next: check", "Next: done", "Next: act", "not a tool call"])
    r = state_machine(llm, "What is 12 + 7?", box(), max_steps=4)
    assert r.notes[0] == "refused: plan -> check (allowed: act, done)"
    assert r.notes[1] == 'refused: plan -> done without an "Answer:" line'
    assert r.path == ["plan", "act", "check"] and r.observations[0].startswith("error:")
    assert (r.stopped, r.answer, r.model_calls) == ("step_limit", None, 4)


@settings(max_examples=60, deadline=None)
@given(replies=st.lists(st.sampled_from(["Next: act", "Next: done\nAnswer: 7", "Next: done", "Next: check",
                                          "Next: plan", CALL, "", "Answer: 3\nNext: DONE", "junk"]),
                        min_size=1, max_size=6),
       max_steps=st.integers(1, 8))
def test_any_script_terminates_within_the_limit_along_legal_edges(replies, max_steps):
    r = state_machine(ScriptedLLM(replies), "q?", box(), max_steps=max_steps)
    assert r.model_calls <= max_steps and r.path[0] == "plan"
    assert all(b in TRANSITIONS[a] for a, b in zip(r.path, r.path[1:]))  # never an edge the code did not draw
    assert (r.stopped == "answer") == (r.path[-1] == "done") == (r.answer is not None)


# ---------------------------------------------------------------- level 3: the autonomous loop

def test_autonomous_wraps_react_with_the_same_summary():
    act = 'Thought: add.\nAction: calculator\nAction Input: {"expression": "12 + 7"}'
    r = autonomous(ScriptedLLM(["no format here", act, "Thought: 19.\nFinal Answer: 19"]), "What is 12 + 7?",
                   box(), max_steps=4)
    assert (r.level, r.path, r.answer, r.stopped, r.model_calls) == (
        "autonomous", ["malformed", "calculator", "answer"], "19", "answer", 3)
    assert r.observations == ["19"] and len(r.notes) == 1 and r.notes[0].startswith("malformed:")
    r = autonomous(ScriptedLLM([act]), "What is 12 + 7?", box(), max_steps=2)
    assert (r.stopped, r.answer, r.model_calls) == ("step_limit", None, 2)


# ---------------------------------------------------------------- bad arguments

@pytest.mark.parametrize("level", [route, state_machine, autonomous])
def test_bad_arguments(level):
    llm = ScriptedLLM(["x"])
    with pytest.raises(TypeError, match="llm must be"):
        level(object(), "q?", box())
    with pytest.raises(ValueError, match="question must be a non-empty string"):
        level(llm, "  ", box())
    with pytest.raises(TypeError, match="toolbox must have"):
        level(llm, "q?", [calculator])
    if level is not route:
        with pytest.raises(ValueError, match="max_steps must be an int >= 1"):
            level(llm, "q?", box(), max_steps=0)


# ---------------------------------------------------------------- the measured run's plumbing

def test_rows_score_with_the_task_rule_and_the_summary_counts_them():
    from labkit.agents.agency import LEVELS, agency_row, summarize_agency
    from labkit.agents.tasks import load_tasks

    task = load_tasks("arithmetic")[0]
    scripts = {"router": [f'Route: calculator\nInput: {json.dumps({"expression": task.steps[0].expression})}',
                          "I am not sure."],
               "state_machine": ["Plan.\nNext: act", CALL, f"Next: done\nAnswer: {task.answer}"],
               "autonomous": [f"Thought: t\nFinal Answer: it is {task.answer}"]}
    rows = [agency_row(ScriptedLLM(scripts[level]), task, level, box()) for level in LEVELS]
    assert [r["correct"] for r in rows] == [False, True, True]
    assert [r["model_calls"] for r in rows] == [2, 3, 1]
    assert rows[1]["path"] == ["plan", "act", "check", "done"] and rows[1]["observations"] == ["19"]
    s = summarize_agency({"rows": rows})
    assert s["levels"]["state_machine"]["arithmetic"] == {"n": 1, "correct": 1, "answered": 1, "model_calls": 3,
                                                          "prompt_tokens": rows[1]["prompt_tokens"],
                                                          "completion_tokens": rows[1]["completion_tokens"]}
    assert s["levels"]["router"]["all"]["correct"] == 0
    assert s["behaviour"]["router"]["steps"] == {"calculator": 1}
    assert s["behaviour"]["state_machine"]["steps"] == {"act": 1, "check": 1, "done": 1}
    with pytest.raises(ValueError, match="level must be one of"):
        agency_row(ScriptedLLM(["x"]), task, "swarm", box())


def test_demonstrations_are_shown_as_chat_turns_before_the_question():
    from labkit.agents.agency import MACHINE_DEMOS, ROUTER_DEMOS

    llm = ScriptedLLM(['Route: calculator\nInput: {"expression": "12 + 7"}', "19"])
    route(llm, "What is 12 + 7?", box(), shots=ROUTER_DEMOS)
    assert [m.role for m in llm.prompts[0]] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert llm.prompts[0][2].content == ROUTER_DEMOS[1]["content"] and len(llm.prompts[1]) == 2  # not when answering
    llm = ScriptedLLM(["Plan.\nNext: act", CALL, "Next: done\nAnswer: 19"])
    r = state_machine(llm, "What is 12 + 7?", box(), shots=MACHINE_DEMOS)
    assert r.answer == "19"
    for prompt, state in zip(llm.prompts, ("plan", "act", "check")):
        assert prompt[1].content == MACHINE_DEMOS[state][0]["content"] and prompt[-1].content.startswith("Question:")
    with pytest.raises(ValueError, match="shots must map states"):
        state_machine(llm, "q", box(), shots={"think": ()})
    with pytest.raises(ValueError, match=r"shots\[0\] must be"):
        route(llm, "q", box(), shots=[{"role": "system", "content": "x"}])
    with pytest.raises(TypeError, match="shots must be a list"):
        route(llm, "q", box(), shots="Route: answer")
