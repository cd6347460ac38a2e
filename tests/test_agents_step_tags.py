"""labkit.agents.step_tags: reading tagged steps, checking a step's arithmetic, judging a chain against the gold
steps (the first failing step's tag), the prompts, and the run's wiring on a scripted LLM (accuracies come from
the real model, in the saved run)."""
from __future__ import annotations

import operator
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labkit.agents import step_tags as S
from labkit.agents.tasks import load_tasks
from labkit.llm.base import Completion, cut_at_stop
from scripted_llm import ScriptedLLM

TASKS = {t.id: t for t in load_tasks()}
HEAD_WIDTH = TASKS["multihop-02"]  # 576 / 9 = 64, facts 576 (d) and 9 (query heads)
TICKETS = TASKS["arithmetic-05"]  # 256 * 14 + 118 * 11 = 4882


def chain(*lines: str) -> S.Parsed:
    return S.parse_tagged("\n".join(lines))


# ---------------------------------------------------------------- parsing

def test_parse_reads_tags_at_line_starts_and_stops_at_the_answer():
    p = S.parse_tagged(" <memory> SmolLM2 has 9 query heads.\nso we divide\n⟨REASON⟩ 576 / 9 = 64.\n"
                       "Answer: 64\n<reason> 1 + 1 = 3\n")
    assert p.steps == (S.TaggedStep("memory", "SmolLM2 has 9 query heads."), S.TaggedStep("reason", "576 / 9 = 64."))
    assert p.answer == "64" and p.untagged == ("so we divide",)
    # a tag inside a line is prose, not a step; no Answer line -> None
    p = S.parse_tagged("I will <reason> about it\n<memory>A fact")
    assert p.steps == (S.TaggedStep("memory", "A fact"),) and p.answer is None
    assert S.parse_tagged("") == S.Parsed((), None, ())


def test_equations_are_checked_by_the_calculator():
    found = S.equations("So 1,080 - 360 = 720 MiB, and 12 x 64 = 768; also 2 * (3 + 4) = 15.")
    assert [(e.lhs, e.rhs, e.value, e.holds) for e in found] == [
        ("1,080 - 360", 720, 720, True), ("12 x 64", 768, 768, True), ("2 * (3 + 4)", 15, 14, False)]
    assert S.equations("d = 576 and x = 5") == []  # no operator: a definition, not a claim
    assert S.equations("9 ** 9 ** 9 = 1") == []  # refused by the calculator: skipped, never computed
    assert [e.holds for e in S.equations("576 / 9 = 60.")] == [False]
    assert S.equations("256 * 14 = 3,584")[0].rhs == 3584


@settings(max_examples=200, deadline=None, database=None, derandomize=True)
@given(st.integers(0, 9999), st.integers(1, 9999), st.sampled_from(["+", "-", "*", "/"]), st.integers(-3, 3))
def test_an_equation_holds_exactly_when_its_result_is_right(a, b, op, off):
    truth = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv}[op](Fraction(a),
                                                                                                Fraction(b))
    if truth.denominator != 1:
        return
    claimed = truth + off
    (e,) = S.equations(f"<reason> {a} {op} {b} = {claimed}.")
    assert e.holds is (off == 0)


# ---------------------------------------------------------------- judging

def test_a_right_chain_is_correct_with_no_bin():
    j = S.judge(HEAD_WIDTH, chain("<memory> The model width is 576.", "<memory> It has 9 query heads.",
                                  "<reason> 576 / 9 = 64.", "Answer: 64"))
    assert j.correct and j.first_error is None and [v.ok for v in j.verdicts] == [True, True, True]


def test_a_false_fact_first_is_a_memory_error():
    j = S.judge(HEAD_WIDTH, chain("<memory> The model width is 512.", "<memory> It has 9 query heads.",
                                  "<reason> 512 / 9 = 60.", "Answer: 60"))
    assert not j.correct and j.first_error == "memory"
    assert [v.ok for v in j.verdicts] == [False, True, False]
    assert "recalls 512" in j.verdicts[0].why and "false arithmetic" in j.verdicts[2].why


def test_right_facts_then_wrong_arithmetic_is_a_reasoning_error():
    j = S.judge(HEAD_WIDTH, chain("<memory> The model width is 576.", "<memory> It has 9 query heads.",
                                  "<reason> 576 / 9 = 62.", "Answer: 62"))
    assert j.first_error == "reason" and j.verdicts[2].why == "false arithmetic: 576 / 9 is 64, not 62"


def test_valid_arithmetic_on_the_wrong_quantities_is_a_reasoning_error_at_the_last_step():
    j = S.judge(HEAD_WIDTH, chain("<memory> The model width is 576.", "<memory> It has 9 query heads.",
                                  "<reason> 576 * 9 = 5184.", "Answer: 5184"))
    assert j.first_error == "reason" and j.verdicts[2].why == "concludes 5184, not the answer"
    # the same step in the middle of a chain that goes on to the answer is not an error
    j = S.judge(HEAD_WIDTH, chain("<reason> 576 * 9 = 5184.", "<reason> 5184 / 81 = 64.", "Answer: 64"))
    assert j.correct and [v.ok for v in j.verdicts] == [True, True]


def test_memory_steps_restating_the_question_or_without_numbers_are_not_errors():
    j = S.judge(TICKETS, chain("<memory> 256 adult tickets cost 14 dollars each.", "<memory> Tickets are sold.",
                               "<reason> 256 * 14 = 3584.", "<reason> 118 * 11 = 1298.",
                               "<reason> 3584 + 1298 = 4882.", "Answer: 4882"))
    assert j.correct and [v.ok for v in j.verdicts] == [True, None, True, True, True]


def test_the_other_bins():
    assert S.judge(TICKETS, chain("It is 4000.", "Answer: 4000")).first_error == "no steps"
    cut = chain("<reason> 256 * 14 = 3584.", "<reason> 118 * 11 = 1298.")
    assert S.judge(TICKETS, cut, finish="length").first_error == "cut off"
    assert S.judge(TICKETS, cut, finish="stop").first_error == "answer only"  # stopped with no answer
    # every step right, the answer line wrong
    wrong_answer = chain("<reason> 256 * 14 = 3584.", "<reason> so it is big", "Answer: 3584")
    assert S.judge(TICKETS, wrong_answer).first_error == "answer only"


def test_judge_rejects_bad_input():
    with pytest.raises(TypeError, match="task must be a Task"):
        S.judge("multihop-02", chain())
    with pytest.raises(TypeError, match="parsed must be a Parsed"):
        S.judge(HEAD_WIDTH, "<reason> 1 + 1 = 2")
    with pytest.raises(ValueError, match="finish must be 'stop' or 'length', got 'eos'"):
        S.judge(HEAD_WIDTH, chain(), finish="eos")
    with pytest.raises(TypeError, match="text must be a str, got int"):
        S.parse_tagged(3)


# ---------------------------------------------------------------- prompts

def test_prompts_end_with_the_question_and_show_no_task_answer():
    for t in TASKS.values():
        tagged, plain = S.tagged_prompt(t), S.tagged_prompt(t, tags=False)
        assert tagged.endswith(f"Q: {t.question}\n") and plain.endswith(f"Q: {t.question}\n")
        shots = tagged.split(f"Q: {t.question}")[0]
        assert f"Answer: {t.answer}\n" not in shots  # the worked examples never answer a task
        assert "<memory>" in tagged and "<" not in plain
    facts = S.tagged_prompt(HEAD_WIDTH, facts=True)
    assert facts.endswith("<memory> SmolLM2's model width is d = 576.\n<memory> SmolLM2 has 9 query heads.\n")
    with pytest.raises(ValueError, match="condition must be one of"):
        S.condition_prompt(HEAD_WIDTH, "oracle")
    with pytest.raises(TypeError, match="task must be a Task"):
        S.tagged_prompt({"question": "?"})


def test_the_worked_examples_are_right_by_the_judge():
    for q, steps, answer in S.EXAMPLES:
        text = "".join(f"<{tag}> {line}\n" for tag, line in steps) + f"Answer: {answer}"
        for tag, line in steps:
            assert all(e.holds for e in S.equations(line))
        assert S.parse_tagged(text).answer == answer


# ---------------------------------------------------------------- the run's wiring

class TextLLM(ScriptedLLM):
    """ScriptedLLM for plain-text prompts (its token count reads chat messages)."""

    supports_logprobs = False

    def _generate(self, prompt, *, stop, **settings):
        self.prompts.append(prompt)
        self.stops.append(stop)
        text = self.replies[(len(self.prompts) - 1) % len(self.replies)]
        text, _ = cut_at_stop(text, stop)
        return [Completion(text, len(text.split()), self.finish_reason)]


def test_run_and_summary_wiring():
    llm = TextLLM(["<memory> It has 9 query heads.\n<reason> 9 * 3 = 27.\nAnswer: 27\n\nQ: next question"])
    record = S.step_tags_run(llm, limit=2, progress=False)
    assert list(record["conditions"]) == list(S.CONDITIONS)
    assert [r["id"] for r in record["conditions"]["tagged"]] == ["arithmetic-01", "arithmetic-02"]
    assert [r["id"] for r in record["conditions"]["facts given"]] == ["multihop-01", "multihop-02"]
    assert llm.stops[0] == S.STOP and record["usage"]["calls"] == 6
    assert record["conditions"]["plain"][0]["text"].endswith("Answer: 27")  # cut at the blank line
    assert llm.prompts[4] == S.tagged_prompt(TASKS["multihop-01"], facts=True)
    table = S.summarize(record)
    assert table["tagged"]["correct"] == 0 and table["tagged"]["steps"]["memory"]["written"] == 2
    # arithmetic-01: "9" is no number of that task -> memory; facts given: multihop-01 (9 / 3) -> the given
    # facts are right, "9 * 3 = 27" is valid arithmetic concluding the wrong number -> reason
    assert table["tagged"]["bins"]["memory"] == 2
    assert table["facts given"]["bins"]["reason"] == 2 and table["facts given"]["reason_share"] == 1.0
    assert "bins" not in table["plain"]
    with pytest.raises(ValueError, match="limit must be None or a positive int"):
        S.step_tags_run(llm, limit=0)
    with pytest.raises(TypeError, match="record must be the dict"):
        S.summarize({"rows": []})
