"""agents.reflection: the code tasks (each reference passes its tests in the sandbox, each wrong solution fails),
the test harness's verdicts and messages, the parsers, and the Reflexion loop's wiring on a scripted LLM."""
from __future__ import annotations

import re

import pytest

from labkit.agents import reflection as rf
from labkit.agents.reflection import Attempt, run_tests
from tests.scripted_llm import ScriptedLLM

TASKS = rf.load_code_tasks()


class TextScriptedLLM(ScriptedLLM):
    """ScriptedLLM that also takes a plain-text prompt (write_tests uses one)."""

    def _generate(self, prompt, *, stop, **settings):
        if isinstance(prompt, str):
            from labkit.llm.base import Message
            prompt = [Message("user", prompt)]
        return super()._generate(prompt, stop=stop, **settings)


# ---- the task set -------------------------------------------------------------------------------------------

def test_task_set_shape():
    assert len(TASKS) == 20
    assert len({t.id for t in TASKS}) == len(TASKS)
    for t in TASKS:
        assert len(t.visible_tests) == 3 and len(t.hidden_tests) == 5, t.id
        assert not set(t.visible_tests) & set(t.hidden_tests), t.id
        assert t.prompt.startswith(f"def {t.entry_point}(") and '"""' in t.prompt, t.id
        for test in t.visible_tests + t.hidden_tests:
            assert rf.check_test(test) is None, (t.id, test)
            assert re.search(rf"\b{t.entry_point}\(", test), (t.id, test)
        assert t.solution != t.wrong_solution and t.wrong_because


def test_every_reference_passes_and_every_wrong_solution_fails_in_the_sandbox():
    wrong_passing_visible = 0
    for t in TASKS:
        right = run_tests(t.solution, t.visible_tests + t.hidden_tests)
        assert right.passed, (t.id, right.feedback())
        wrong = run_tests(t.wrong_solution, t.hidden_tests)
        assert not wrong.passed, (t.id, "the wrong solution passes the hidden tests")
        wrong_passing_visible += run_tests(t.wrong_solution, t.visible_tests).passed
    # the visible tests alone are a weak judge: some plausible wrong solutions pass them (the lesson shows it)
    assert 0 < wrong_passing_visible < len(TASKS)


def test_load_code_tasks_names_a_bad_row(tmp_path):
    path = tmp_path / "tasks.jsonl"
    path.write_text('{"id": "x"}\n')
    with pytest.raises(ValueError, match="tasks.jsonl:1: a code task needs id, entry_point"):
        rf.load_code_tasks(path)


# ---- the harness ---------------------------------------------------------------------------------------------

def test_run_tests_reports_what_a_call_returned_and_each_failure_kind():
    code = "def f(x):\n    if x == 3:\n        raise KeyError(x)\n    return x + 1\n"
    report = run_tests(code, ["assert f(1) == 2", "assert f(2) == 2", "assert f(3) == 4", "assert g(1) == 1",
                              "assert f(1) in (5,)", "assert f(0) is None"])
    assert [o.passed for o in report.outcomes] == [True, False, False, False, False, False]
    assert report.outcomes[1].message == "f(2) returned 3, expected 2"
    assert report.outcomes[2].message == "KeyError: 3"
    assert report.outcomes[3].message == "NameError: name 'g' is not defined"
    assert report.outcomes[4].message == "assertion failed"
    assert report.outcomes[5].message == "f(0) returned 1, expected None"
    assert report.n_passed == 1 and not report.passed
    assert report.feedback().startswith("5 of 6 tests failed:\nassert f(2) == 2\n  -> f(2) returned 3, expected 2")
    assert report.feedback().endswith("(3 more failed)")


def test_code_that_does_not_run_fails_every_test_with_the_reason():
    report = run_tests("def f(x) return x\n", ["assert f(1) == 1", "assert f(2) == 2"])
    assert not report.passed
    assert all(o.message.startswith("the code did not run: SyntaxError") for o in report.outcomes)
    report = run_tests("raise RuntimeError('at import')\n", ["assert True"])
    assert report.outcomes[0].message == "the code did not run: RuntimeError: at import"


def test_a_test_that_loops_is_stopped_and_the_rest_are_not_run():
    report = run_tests("def f(x):\n    while True:\n        pass\n", ["assert f(1) == 1", "assert f(2) == 2"],
                       seconds_per_test=0.3)
    assert report.outcomes[0].message == "timed out after 0.3 s"
    assert report.outcomes[1].message == "not run: an earlier test timed out"
    assert report.stopped_by is None  # the harness stopped it, not the sandbox


def test_printing_is_kept_apart_and_a_forged_or_missing_verdict_fails_every_test():
    assert run_tests("print('noise')\ndef f():\n    print('more')\n    return 1\n", ["assert f() == 1"]).passed
    forged = "import os\nprint('@@verdicts-0000000000000000@@[[true, \"\"]]', flush=True)\nos._exit(0)\n"
    report = run_tests(forged, ["assert f() == 1"])
    assert not report.passed and "left no verdicts" in report.stopped_by
    early = run_tests("import os\nos._exit(0)\n", ["assert True"])
    assert not early.passed and "left no verdicts" in early.outcomes[0].message
    assert run_tests("import sys\nsys.exit(0)\n", ["assert True"]).outcomes[0].message == \
        "the code did not run: SystemExit: 0"


def test_the_sandbox_still_holds_the_code():
    report = run_tests("import socket\ndef f():\n    return socket.socket()\n", ["assert f() is None"])
    assert not report.passed and report.stopped_by.startswith("forbidden: socket")
    report = run_tests("def f():\n    return open('/tmp/labkit-reflection-escape', 'w')\n", ["assert f()"])
    assert not report.passed and "for writing" in report.stopped_by


def test_run_tests_rejects_bad_arguments():
    with pytest.raises(TypeError, match="code must be a str"):
        run_tests(b"x", ["assert True"])
    with pytest.raises(TypeError, match="tests must be a list"):
        run_tests("x = 1", "assert True")
    with pytest.raises(ValueError, match="test 0 is not a unit test: a test must be exactly one assert"):
        run_tests("x = 1", ["x == 1"])
    with pytest.raises(ValueError, match="test 1 is not a unit test: not valid Python"):
        run_tests("x = 1", ["assert x", "assert ("])
    with pytest.raises(ValueError, match="seconds_per_test must be a number in"):
        run_tests("x = 1", ["assert x"], seconds_per_test=0)
    with pytest.raises(ValueError, match="at most 20 tests"):
        run_tests("x = 1", ["assert x"] * 21)
    empty = run_tests("x = 1", [])
    assert empty == rf.TestReport((), None) and not empty.passed and empty.feedback() == "No tests were run."


# ---- parsing the model's replies ----------------------------------------------------------------------------

def test_extract_code():
    assert rf.extract_code("```python\ndef f():\n    return 1\n```\nThis works.") == "def f():\n    return 1\n"
    assert rf.extract_code("```python\ndef f():\n    return 1") == "def f():\n    return 1\n"  # cut by the stop
    assert rf.extract_code("Here it is:\ndef f():\n    return 2\n") == "def f():\n    return 2\n"
    assert rf.extract_code("return 3") == "return 3\n"
    with pytest.raises(TypeError, match="reply must be a str"):
        rf.extract_code(None)


def test_extract_tests_keeps_only_parsable_asserts_on_the_function():
    reply = ("assert f(1) == 2\nassert f(1) == 2\n  assert f(2) == 3\nassert g(1) == 1\nassert f(3 == 4\n"
             "print(f(1))\nassert f (4) == 5\nassert f(5) == 6\nassert f(6) == 7\nassert f(7) == 8\n")
    assert rf.extract_tests(reply, "f") == ["assert f(1) == 2", "assert f(2) == 3", "assert f (4) == 5",
                                            "assert f(5) == 6", "assert f(6) == 7"]
    assert rf.extract_tests(reply, "f", limit=2) == ["assert f(1) == 2", "assert f(2) == 3"]
    assert rf.extract_tests("no tests here", "f") == []


def test_check_test():
    assert rf.check_test("assert f(1) == 2") is None
    assert rf.check_test(3) == "a test must be a str, got int"
    assert rf.check_test("assert f(1) == 2; assert f(2) == 3") == "a test must be exactly one assert statement"
    assert rf.check_test("assert " + "1" * 600).startswith("a test is one line of at most 500")


# ---- the loop, on a scripted model -------------------------------------------------------------------------

TASK = next(t for t in TASKS if t.id == "count-positive")
WRONG = "```python\ndef count_positive(numbers):\n    return len(numbers)\n```"
RIGHT = "```python\ndef count_positive(numbers):\n    return sum(1 for x in numbers if x > 0)\n```"


def test_reflexion_retries_with_the_feedback_and_its_reflection_until_the_tests_pass():
    llm = ScriptedLLM([WRONG, "It counts every number; count only those above zero.", RIGHT])
    ep = rf.solve(TASK, llm, feedback="visible", reflect=True, max_attempts=3)
    assert len(ep.attempts) == 2 and ep.calls == 3 == llm.usage.calls
    assert ep.attempts[0].reflection == "It counts every number; count only those above zero."
    assert ep.attempts[1].report.passed and ep.attempts[1].reflection is None
    retry = llm.prompts[2][-1].content  # the actor's third prompt: the failure and the lesson
    assert "count_positive([1, -1, 2]) returned 3, expected 2" in retry
    assert "Lesson from attempt 1: It counts every number" in retry
    assert llm.prompts[2][-2].content == f"```python\n{rf.extract_code(WRONG)}```"
    assert run_tests(ep.code, TASK.hidden_tests).passed


def test_plain_retry_has_no_reflection_and_the_attempt_limit_holds():
    llm = ScriptedLLM([WRONG])
    ep = rf.solve(TASK, llm, feedback="visible", reflect=False, max_attempts=3)
    assert len(ep.attempts) == 3 and ep.calls == 3 and all(a.reflection is None for a in ep.attempts)
    assert "Lesson" not in llm.prompts[-1][-1].content
    one = rf.solve(TASK, ScriptedLLM([WRONG, "words"]), reflect=True, max_attempts=1)
    assert one.calls == 1 and one.attempts[0].reflection is None  # no reflection after the last attempt


def test_a_given_first_attempt_is_reused_and_self_tests_judge_the_loop():
    first = Attempt(WRONG, rf.extract_code(WRONG), 7, run_tests(rf.extract_code(WRONG), TASK.visible_tests))
    llm = ScriptedLLM(["why", RIGHT])
    own = ["assert count_positive([1, 2]) == 2", "assert count_positive([0]) == 1"]  # the second test is wrong
    ep = rf.solve(TASK, llm, feedback="self", self_tests=own, reflect=True, max_attempts=3, first=first)
    assert ep.attempts[0].code == first.code and ep.tests == tuple(own) and llm.usage.calls == 0
    # a false positive: the wrong first attempt passes the model's (wrong) tests, so the loop stops, satisfied
    assert ep.calls == 1 and ep.attempts[0].report.passed and not run_tests(ep.code, TASK.hidden_tests).passed
    # and a false negative: the right code fails them
    assert not run_tests(rf.extract_code(RIGHT), own).passed
    none = rf.solve(TASK, ScriptedLLM([RIGHT]), feedback="self", self_tests=[], max_attempts=3, first=first)
    assert none.calls == 1 and len(none.attempts) == 1  # no test: nothing to judge or reflect on


def test_solve_rejects_bad_arguments():
    llm = ScriptedLLM([RIGHT])
    with pytest.raises(ValueError, match="max_attempts must be an int >= 1"):
        rf.solve(TASK, llm, max_attempts=0)
    with pytest.raises(ValueError, match="feedback must be 'visible'"):
        rf.solve(TASK, llm, feedback="hidden")
    with pytest.raises(ValueError, match="feedback='self' needs self_tests"):
        rf.solve(TASK, llm, feedback="self")
    with pytest.raises(TypeError, match="llm must be a labkit.llm LLM"):
        rf.solve(TASK, "model")
    with pytest.raises(TypeError, match="task must be a CodeTask"):
        rf.solve("count-positive", llm)
    assert llm.usage.calls == 0


def test_confusion():
    assert rf.confusion([True, True, False, False, None], [True, False, True, False, True]) == \
        {"TP": 1, "FP": 1, "FN": 1, "TN": 1, "untested": 1}
    with pytest.raises(ValueError, match="same length"):
        rf.confusion([True], [])


def test_the_run_and_its_summary_on_a_scripted_model():
    wrong = "```python\ndef count_vowels(text):\n    return 0\n```"
    right = "```python\ndef count_vowels(text):\n    return sum(c in 'aeiou' for c in text.lower())\n```"
    # in call order: first attempt, own tests; retry: 2 attempts; reflexion: reflection, attempt, reflection,
    # attempt; self-reflexion: reflection, attempt (its tests pass the right code and the loop stops)
    llm = TextScriptedLLM([wrong, "'a') == 1", wrong, right, "why", wrong, "why", right, "why", right])
    record = rf.reflection_run(llm, limit=1, progress=False)
    row = record["tasks"][0]
    assert row["id"] == TASKS[0].id and row["own_tests"]["tests"] == ["assert count_vowels('a') == 1"]
    assert row["own_tests"]["on_reference"] == [True] and row["own_tests"]["on_first"] == [False]
    assert [len(row[c]["attempts"]) for c in rf.CONDITIONS] == [3, 3, 2]
    assert [row[c]["calls"] for c in rf.CONDITIONS] == [3, 5, 3] and record["usage"]["calls"] == 10
    assert [row[c]["hidden_ok"] for c in rf.CONDITIONS] == [True, True, True] and not row["first"]["hidden_ok"]
    s = rf.summarize(record)
    assert s["tasks"] == 1 and s["table"]["first attempt"] == {"solved": 0, "calls": 1, "tokens": 5}
    assert s["table"]["self-reflexion"]["calls"] == 4  # its loop and the call that wrote its tests
    assert s["solved_after_attempt"] == {"retry": [0, 0, 1], "reflexion": [0, 0, 1], "self-reflexion": [0, 1]}
    assert s["own_tests"] == {"tasks_with_tests": 1, "tests": 1, "right_tests": 1,
                              "confusion_first": {"TP": 0, "FN": 0, "FP": 0, "TN": 1, "untested": 0},
                              "confusion_self_final": {"TP": 1, "FN": 0, "FP": 0, "TN": 0, "untested": 0}}
    assert s["repeated_code"] == {"retries": 5, "same_code_as_before": 2}
