"""labkit.agents.tasks: the task set's integrity (every memory step's fact is in its corpus section, every reason
step computes, the last step is the answer, ten tasks per kind) and the answer scorer's corners."""
from __future__ import annotations

import json
import re
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labkit.agents.calculator import evaluate
from labkit.agents.tasks import KINDS, TAGS, GoldStep, Task, is_correct, load_tasks, numbers
from labkit.rag.documents import load_documents
from labkit.rag.metrics import normalize_answer

TASKS = load_tasks()


@pytest.fixture(scope="module")
def sections() -> dict[str, str]:
    return {s.id: s.text for d in load_documents() for s in d.sections}


def task(answer: str, answer_kind: str = "number") -> Task:
    return Task(id="t", kind="lookup", question="?", answer=answer, answer_kind=answer_kind,
                steps=(GoldStep("reason", answer, answer),))


# ---------------------------------------------------------------- the set

def test_ten_tasks_of_each_kind_with_unique_ids_in_kind_order():
    assert [t.kind for t in TASKS].count("arithmetic") == 10
    assert all([t.kind for t in TASKS].count(k) == 10 for k in KINDS) and len(TASKS) == 30
    assert len({t.id for t in TASKS}) == 30
    for kind in KINDS:
        assert [t.id for t in load_tasks(kind)] == [f"{kind}-{n:02d}" for n in range(1, 11)]


def test_every_memory_step_is_a_fact_of_a_real_section(sections):
    memory = [(t.id, s) for t in TASKS for s in t.steps if s.tag == "memory"]
    assert len(memory) >= 30  # every lookup and multihop task recalls at least one fact
    for tid, s in memory:
        assert s.section in sections, f"{tid}: {s.section} is not a section of the corpus"
        # the value as a whole token: "9" must not be found inside "1990" or "x9"
        pattern = rf"(?<![\w.,]){re.escape(s.value)}(?![\w]|[.,]\d)"
        assert re.search(pattern, sections[s.section]), f"{tid}: {s.value!r} not in {s.section}"


def test_every_reason_step_computes_its_value():
    reason = [(t.id, s) for t in TASKS for s in t.steps if s.tag == "reason"]
    assert reason and all(s.expression for _, s in reason)
    for tid, s in reason:
        assert evaluate(s.expression) == Fraction(s.value), tid


def test_the_last_step_is_the_answer_and_each_kind_has_its_shape():
    for t in TASKS:
        last = t.steps[-1].value
        if t.answer_kind == "number":
            assert Fraction(last.replace(",", "")) == Fraction(t.answer), t.id
        else:
            assert normalize_answer(last) == normalize_answer(t.answer), t.id
        tags = [s.tag for s in t.steps]
        assert set(tags) <= set(TAGS)
        if t.kind == "arithmetic":  # two or three operations, nothing to recall
            assert tags in (["reason"] * 2, ["reason"] * 3), t.id
        elif t.kind == "lookup":
            assert tags == ["memory"], t.id
        else:  # facts first, then the arithmetic that combines them
            assert tags.count("memory") >= 2 and tags[-1] == "reason", t.id
        assert is_correct(t, t.answer) and is_correct(t, f"So the answer is {last}."), t.id


def test_arithmetic_operands_have_two_to_four_digits():
    for t in load_tasks("arithmetic"):
        given_numbers = [int(n) for n in numbers(t.question)]
        assert given_numbers and all(10 <= n <= 9999 for n in given_numbers), t.id


# ---------------------------------------------------------------- loading

def test_bad_kind_is_a_value_error():
    with pytest.raises(ValueError, match="kind must be None or one of"):
        load_tasks("maths")


def test_malformed_files_are_value_errors_naming_the_line(tmp_path):
    good = json.loads((json.dumps({"id": "a", "kind": "lookup", "question": "q", "answer": "1",
                                   "answer_kind": "number",
                                   "steps": [{"tag": "memory", "text": "t", "value": "1", "section": "s@0"}]})))
    cases = {"not JSON": "{", "exactly the fields": json.dumps({**good, "extra": 1}),
             "kind must be one of": json.dumps({**good, "kind": "maths"}),
             "answer_kind must be one of": json.dumps({**good, "answer_kind": "float"}),
             "tag must be one of": json.dumps({**good, "steps": [{"tag": "recall", "text": "t", "value": "1"}]}),
             "needs the section": json.dumps({**good, "steps": [{"tag": "memory", "text": "t", "value": "1"}]}),
             "at least one gold step": json.dumps({**good, "steps": []})}
    for why, line in cases.items():
        path = tmp_path / "tasks.jsonl"
        path.write_text(json.dumps(good) + "\n" + line + "\n")
        with pytest.raises(ValueError, match=rf"tasks.jsonl:2(, step 0)?: .*{why}"):
            load_tasks(path=path)
    path.write_text(json.dumps(good) + "\n\n")
    assert load_tasks(path=path)[0].steps[0].section == "s@0"


# ---------------------------------------------------------------- is_correct

@pytest.mark.parametrize("answer, ok", [
    ("19", True), ("The answer is 19.", True), ("19.0", True), ("12 + 7 = 19", True),
    ("19 apples, not 20", False),  # the LAST number is the answer
    ("12 + 7 = 9", False), ("1 9", False), ("-19", False), ("190", False), ("19.5", False), ("x19", False),
    ("", False), ("   ", False), (None, False), ("no number here", False),
])
def test_number_answers(answer, ok):
    assert is_correct(task("19"), answer) is ok


def test_digit_groups_and_signs():
    assert is_correct(task("28311552"), "49,152 * 576 = 28,311,552")
    assert is_correct(task("28311552"), "28 311 552")
    assert not is_correct(task("28311552"), "28,311,553")
    assert is_correct(task("1434"), "1,434.00")
    assert is_correct(task("4"), "9 - 4 = 5 - 1 = 4") and not is_correct(task("-4"), "9 - 4")
    assert is_correct(task("-4"), "the result is -4") and is_correct(task("-4"), "x = - 4")


def test_a_slash_is_a_fraction_only_when_the_gold_is_one():
    assert not is_correct(task("0.5"), "1/2")  # read as the numbers 1 and 2: the last is 2
    assert is_correct(task("2"), "the ratio is 1/2")
    assert is_correct(task("1/2"), "1/2") and is_correct(task("1/2"), "2/4") and is_correct(task("1/2"), "0.5")
    assert not is_correct(task("1/2"), "1/3")
    assert numbers("3/0 and 7", fractions=True) == [Fraction(7)]


def test_text_answers_match_whole_words_after_normalising():
    zero = task("ZeroDivisionError", "text")
    assert is_correct(zero, 'It raises a "ZeroDivisionError" exception.')
    assert is_correct(zero, "zerodivisionerror")
    assert not is_correct(zero, "ZeroDivisionErrors are raised") and not is_correct(zero, "ValueError")
    null = task("null operation", "text")
    assert is_correct(null, "pass is a null operation.") and not is_correct(null, "an operation that is null")
    assert not is_correct(null, "") and not is_correct(null, None)


def test_is_correct_type_errors():
    with pytest.raises(TypeError, match="task must be a Task"):
        is_correct({"answer": "1"}, "1")
    with pytest.raises(TypeError, match="answer must be a str or None, got int"):
        is_correct(task("1"), 1)
    with pytest.raises(TypeError, match="text must be a str, got bytes"):
        numbers(b"1")


@settings(max_examples=200, deadline=None, database=None, derandomize=True)
@given(st.integers(-10**9, 10**9), st.sampled_from(["{:,}", "{:d}", "{:,}.0", "{:_}"]), st.text(max_size=8))
def test_any_integer_however_grouped_is_read_back(n, form, prefix):
    text = form.format(n).replace("_", " ")
    prefix = re.sub(r"[\d\-\u2212.,]", "", prefix)  # a prefix that is no part of a number
    assert numbers(f"{prefix} {text}")[-1] == n
