"""labkit.agents.react_eval: the wiring of the 13-react study (one episode per task and condition, the summary
per kind, chapter 4's sums) on a scripted LLM; the success rates themselves come from the real model."""
from __future__ import annotations

import json

import pytest

from labkit.agents.calculator import calculator
from labkit.agents.react import DEMOS
from labkit.agents.react_eval import (CONDITIONS, chapter4_pairs, demos_for, episode, summarize, task_toolbox,
                                      trajectory)
from labkit.agents.tools import ToolBox
from labkit.agents.tasks import load_tasks
from scripted_llm import ScriptedLLM


def test_chapter4s_sums_are_the_ones_chapter_4_printed():
    pairs = chapter4_pairs()
    assert pairs[0] == (12, 7) and len(pairs) == 21
    assert pairs[1:4] == [(54, 19), (93, 70), (53, 79)] and pairs[-1] == (81, 98)  # chapter 4's first and last


def test_an_episode_in_each_condition():
    task = load_tasks("arithmetic")[0]  # 1248 + 375 - 189 = 1434
    box = task_toolbox()
    direct = episode(ScriptedLLM(["It has 1434 books."]), task, "direct", box)
    assert direct["correct"] and direct["model_calls"] == 1 and "trajectory" not in direct
    script = ['Thought: add, then subtract\nAction: calculator\nAction Input: {"expression": "1248 + 375 - 189"}',
              "Thought: it says 1434\nFinal Answer: 1434 books"]
    react = episode(ScriptedLLM(script), task, "react", box)
    assert (react["correct"], react["model_calls"], react["tools"], react["malformed"]) == (True, 2, ["calculator"], 0)
    assert react["trajectory"]["turns"][0]["observation"] == "1434"
    wrong = episode(ScriptedLLM(["I cannot say", "Final Answer: 1433"]), task, "react", box)
    assert not wrong["correct"] and wrong["malformed"] == 1 and json.dumps(wrong)  # JSON-able
    with pytest.raises(ValueError, match="condition must be one of"):
        episode(ScriptedLLM(["x"]), task, "reflexion", box)
    with pytest.raises(ValueError, match="needs fmt"):
        episode(ScriptedLLM(["x"]), task, "react+format", box)


def test_summarize_counts_per_condition_and_kind():
    rows = [{"id": "a", "kind": "arithmetic", "condition": "react", "correct": True, "model_calls": 2,
             "completion_tokens": 10, "prompt_tokens": 50, "malformed": 1, "answer": "3"},
            {"id": "b", "kind": "lookup", "condition": "react", "correct": False, "model_calls": 4,
             "completion_tokens": 20, "prompt_tokens": None, "malformed": 0, "answer": None},
            {"id": "a", "kind": "arithmetic", "condition": "direct", "correct": False, "model_calls": 1,
             "completion_tokens": 7, "prompt_tokens": 9, "answer": "2"}]
    s = summarize(rows)
    assert set(s) == set(CONDITIONS)
    assert s["react"]["all"] == {"n": 2, "correct": 1, "model_calls": 6, "completion_tokens": 30,
                                 "prompt_tokens": 50, "malformed": 1, "answered": 1}
    assert s["react"]["lookup"]["correct"] == 0 and s["direct"]["arithmetic"]["n"] == 1
    assert s["react+format"]["all"]["n"] == 0


def test_a_saved_trajectory_is_found_or_a_clear_error():
    task = load_tasks("arithmetic")[0]
    row = episode(ScriptedLLM(["Final Answer: 1434"]), task, "react", task_toolbox())
    record = {"rows": [row]}
    assert trajectory(record, task.id, "react").answer == "1434"
    with pytest.raises(KeyError, match="no ReAct episode for task 'lookup-01'"):
        trajectory(record, "lookup-01", "react")


def test_demonstrations_show_only_offered_tools():
    assert demos_for(task_toolbox()) == DEMOS  # calculator and search_docs: both episodes
    calc = demos_for(ToolBox([calculator]))
    assert calc == DEMOS[:4] and "search_docs" not in " ".join(m["content"] for m in calc)
    llm = ScriptedLLM(["Final Answer: 1434"])
    episode(llm, load_tasks("arithmetic")[0], "react", task_toolbox())
    assert len(llm.prompts[0]) == 2 + len(DEMOS)  # system, the demonstrations, the question


def test_a_backend_that_cannot_mask_runs_the_study_without_the_format_condition():
    from labkit.agents.react_eval import react_run

    llm = ScriptedLLM(["Thought: I know it\nFinal Answer: 1434"])
    llm.supports_constraints = False  # as an HTTP server: it never shows the logits
    record = react_run(llm, load_tasks("arithmetic")[:2], progress=False)
    assert record["conditions"] == ["direct", "react"] and record["chapter4"] is None
    assert [(r["id"], r["condition"]) for r in record["rows"]] == [
        ("arithmetic-01", "direct"), ("arithmetic-01", "react"), ("arithmetic-02", "direct"), ("arithmetic-02", "react")]
    assert record["summary"]["react"]["all"]["correct"] == 1 and record["summary"]["react+format"]["all"]["n"] == 0
