"""Chain-of-thought and self-consistency (labkit.prompting.cot): answer extraction, the majority vote and its
tie rule, maj@k over every subset, the binomial idealisation, and the exact McNemar test."""
from __future__ import annotations

import itertools
import random
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labkit.prompting.cot import (binomial_majority, discordant_pairs, expected_maj_at_k, extract_answer,
                                  maj_at_k_credit, majority_vote, mcnemar_exact, normalize_number)

answer_lists = st.lists(st.one_of(st.none(), st.sampled_from(["1", "2", "3", "12"])), max_size=10)


# ---- answer extraction -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("She has 3 + 4 = 7 apples. The answer is 7.", ("7", "answer is")),
    ("The answer is 12. Then 5 more.", ("12", "answer is")),
    ("the answer is: $1,200", ("1200", "answer is")),
    ("First the answer is 3, no wait, the answer is 5", ("5", "answer is")),
    ("5 + 6 = 11, so 11 cookies", ("11", "last number")),
    ("It costs 12.0 dollars", ("12", "last number")),
    ("It is -4 degrees.", ("-4", "last number")),
    ("I do not know.", (None, "none")),
    ("", (None, "none")),
])
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_normalize_number():
    assert normalize_number("1,200") == "1200"
    assert normalize_number("12.0") == "12"
    assert normalize_number("2.5") == "2.5"
    assert normalize_number("7.") == "7"
    assert normalize_number("abc") is None


def test_extract_answer_rejects_non_text():
    with pytest.raises(TypeError, match="text must be a string"):
        extract_answer(7)


# ---- the majority vote -----------------------------------------------------------------------------------------

def test_majority_vote_hand_cases():
    assert majority_vote(["3", "5", "3"]) == ["3"]
    assert majority_vote(["5", "3"]) == ["3", "5"]                  # a tie keeps every winner, sorted
    assert majority_vote(["5", "5", "3", "3", "1"]) == ["3", "5"]   # not the first to appear
    assert majority_vote([None, None, None, "4"]) == ["4"]          # None casts no vote
    assert majority_vote([None, None]) == []
    assert majority_vote([]) == []


def test_maj_at_k_credit_hand_cases():
    assert maj_at_k_credit(["3", "5", "3"], "3") == 1.0
    assert maj_at_k_credit(["3", "5", "3"], "5") == 0.0
    assert maj_at_k_credit(["5", "3"], "5") == 0.5
    assert maj_at_k_credit(["1", "2", "3"], "2") == pytest.approx(1 / 3)
    assert maj_at_k_credit([None, None, "7"], "7") == 1.0
    assert maj_at_k_credit([None, None], "7") == 0.0


@given(answer_lists, st.randoms(use_true_random=False))
def test_majority_vote_ignores_order(answers, rnd):
    shuffled = list(answers)
    rnd.shuffle(shuffled)
    assert majority_vote(shuffled) == majority_vote(answers)


@given(answer_lists)
def test_majority_vote_properties(answers):
    winners = majority_vote(answers)
    votes = [a for a in answers if a is not None]
    assert winners == sorted(set(winners))
    if not votes:
        assert winners == []
        return
    top = max(votes.count(a) for a in votes)
    assert winners == sorted({a for a in votes if votes.count(a) == top})
    # the credits of all candidate golds add up to 1: a uniform tie-break picks exactly one winner
    assert sum(maj_at_k_credit(answers, g) for g in set(votes)) == pytest.approx(1.0)


def test_majority_vote_errors():
    with pytest.raises(TypeError, match="answers must be a list"):
        majority_vote("357")
    with pytest.raises(TypeError, match="answer 1 must be a string or None"):
        majority_vote(["3", 3])
    with pytest.raises(TypeError, match="gold must be a string"):
        maj_at_k_credit(["3"], 3)


# ---- maj@k over every subset -------------------------------------------------------------------------------------

def brute_maj_at_k(answers, gold, k):
    subsets = list(itertools.combinations(answers, k))
    return sum(Fraction(maj_at_k_credit(list(s), gold)).limit_denominator(100) for s in subsets) / len(subsets)


def test_expected_maj_at_k_hand_cases():
    # 2 right of 3: one chain is right 2/3 of the time; two chains: {r,r} wins, {r,w} is a coin flip
    assert expected_maj_at_k(["7", "7", "1"], "7", 1) == Fraction(2, 3)
    assert expected_maj_at_k(["7", "7", "1"], "7", 2) == Fraction(1, 3) + Fraction(2, 3) * Fraction(1, 2)
    assert expected_maj_at_k(["7", "7", "1"], "7", 3) == 1
    assert expected_maj_at_k(["1", "2", None], "7", 2) == 0
    # k = n is the vote over every chain
    answers = ["4", "4", "5", "5", None, "6"]
    assert expected_maj_at_k(answers, "4", 6) == Fraction(maj_at_k_credit(answers, "4")).limit_denominator(10)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(st.none(), st.sampled_from(["1", "2", "3", "4"])), min_size=1, max_size=8),
       st.sampled_from(["1", "2", "9"]), st.data())
def test_expected_maj_at_k_equals_brute_force(answers, gold, data):
    k = data.draw(st.integers(1, len(answers)))
    assert expected_maj_at_k(answers, gold, k) == brute_maj_at_k(answers, gold, k)


def test_expected_maj_at_k_errors():
    with pytest.raises(ValueError, match=r"k must be an int in 1\.\.3"):
        expected_maj_at_k(["1", "2", "3"], "1", 4)
    with pytest.raises(ValueError, match="k must be an int"):
        expected_maj_at_k(["1", "2", "3"], "1", 0)


# ---- the binomial idealisation ---------------------------------------------------------------------------------

def test_binomial_majority_hand_cases():
    assert binomial_majority(0.7, 1) == pytest.approx(0.7)
    assert binomial_majority(0.7, 2) == pytest.approx(0.49 + 0.21)        # right-right, or a tie half the time
    assert binomial_majority(0.7, 3) == pytest.approx(0.7 ** 3 + 3 * 0.7 ** 2 * 0.3)
    assert binomial_majority(0.5, 7) == pytest.approx(0.5)
    assert binomial_majority(0.0, 5) == 0.0 and binomial_majority(1.0, 4) == 1.0


@given(st.floats(0, 1), st.integers(1, 15))
def test_binomial_majority_symmetry_and_direction(p, k):
    assert binomial_majority(p, k) + binomial_majority(1 - p, k) == pytest.approx(1.0)
    # voting helps above 1/2 and hurts below: odd k -> k + 2 moves away from 1/2
    if k % 2 == 1:
        if p > 0.5:
            assert binomial_majority(p, k + 2) >= binomial_majority(p, k) - 1e-12
        if p < 0.5:
            assert binomial_majority(p, k + 2) <= binomial_majority(p, k) + 1e-12


def test_binomial_majority_matches_sampling():
    rng = random.Random(0)
    hits = sum(sum(rng.random() < 0.6 for _ in range(5)) >= 3 for _ in range(20000))
    assert abs(hits / 20000 - binomial_majority(0.6, 5)) < 0.02


def test_binomial_majority_errors():
    with pytest.raises(ValueError, match="p must be a probability"):
        binomial_majority(1.5, 3)
    with pytest.raises(ValueError, match="k must be an int >= 1"):
        binomial_majority(0.5, 0)


# ---- the exact McNemar test --------------------------------------------------------------------------------------

def test_mcnemar_exact_hand_cases():
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(3, 3) == 1.0
    assert mcnemar_exact(0, 1) == 1.0
    assert mcnemar_exact(5, 0) == pytest.approx(2 / 32)                     # 2 * (1/2)^5
    assert mcnemar_exact(1, 9) == pytest.approx(2 * (1 + 10) / 1024)       # 2 * P(X <= 1), n = 10
    assert mcnemar_exact(2, 8) == pytest.approx(2 * (1 + 10 + 45) / 1024)


@given(st.integers(0, 40), st.integers(0, 40))
def test_mcnemar_exact_symmetric_and_valid(b, c):
    p = mcnemar_exact(b, c)
    assert p == mcnemar_exact(c, b)
    assert 0 < p <= 1


@settings(deadline=None)  # the first example imports scipy.stats, which takes longer than hypothesis' deadline
@given(st.integers(0, 40), st.integers(0, 40))
def test_mcnemar_exact_matches_scipy(b, c):
    stats = pytest.importorskip("scipy.stats")  # installed with chapter 12's test-time oracles
    expected = 1.0 if b + c == 0 else stats.binomtest(b, b + c, 0.5).pvalue
    assert mcnemar_exact(b, c) == pytest.approx(expected, rel=1e-9)


def test_discordant_pairs():
    assert discordant_pairs([True, True, False, False], [True, False, True, True]) == (1, 2)
    with pytest.raises(ValueError, match="same length"):
        discordant_pairs([True], [True, False])
    with pytest.raises(ValueError, match="b must be a count"):
        mcnemar_exact(-1, 2)


# ---- the word problems -----------------------------------------------------------------------------------------

def _value(node):
    """Exact value of an expression of whole numbers and + - * / (the data's `expression`), without eval."""
    import ast
    if isinstance(node, ast.Expression):
        return _value(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, int):
        return Fraction(node.value)
    ops = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
           ast.Div: lambda a, b: a / b}
    assert isinstance(node, ast.BinOp) and type(node.op) in ops, ast.dump(node)
    return ops[type(node.op)](_value(node.left), _value(node.right))


def test_word_problems_answers_and_steps():
    import ast
    from labkit.prompting.cot import load_problems
    problems, exemplars = load_problems("eval"), load_problems("exemplar")
    assert len(problems) == 64 and len(exemplars) == 4
    assert len({p["id"] for p in problems + exemplars}) == 68
    assert sorted(p["steps"] for p in problems) == [s for s in (1, 2, 3, 4) for _ in range(16)]
    for p in problems + exemplars:
        tree = ast.parse(p["expression"], mode="eval")
        value = _value(tree)
        assert value.denominator == 1 and str(value.numerator) == p["answer"], p["id"]
        assert p["steps"] == sum(isinstance(n, ast.BinOp) for n in ast.walk(tree)), p["id"]
        # every intermediate result is a whole number >= 0
        assert all(_value(n).denominator == 1 and _value(n) >= 0 for n in ast.walk(tree) if isinstance(n, ast.BinOp))
    for e in exemplars:
        assert e["solution"].endswith(f"The answer is {e['answer']}.")
        assert extract_answer(e["solution"]) == (e["answer"], "answer is")
    assert {p["question"] for p in problems}.isdisjoint(e["question"] for e in exemplars)
    with pytest.raises(ValueError, match="split must be"):
        load_problems("train")


def test_prompts():
    from labkit.prompting.cot import ZERO_SHOT_TRIGGER, cot_prompt, direct_prompt, load_problems, zero_shot_prompt
    problem, exemplars = load_problems("eval")[0], load_problems("exemplar")
    direct, cot = direct_prompt(problem, exemplars), cot_prompt(problem, exemplars)
    assert direct.endswith(f"Q: {problem['question']}\nA:") and cot.endswith(f"Q: {problem['question']}\nA:")
    for e in exemplars:
        assert f"A: The answer is {e['answer']}.\n\n" in direct and e["solution"] not in direct
        assert f"A: {e['solution']}\n\n" in cot
    assert zero_shot_prompt(problem) == f"Q: {problem['question']}\nA: {ZERO_SHOT_TRIGGER}"
    with pytest.raises(ValueError, match="non-empty 'question'"):
        direct_prompt({"answer": "3"}, exemplars)


# ---- the experiment, on a scripted model (no SmolLM2) ----------------------------------------------------------

class ScriptedLLM:
    """A stand-in for labkit.llm: greedy replies and sampled chains chosen by the problem, so that every number
    summarize() reports is known in advance."""

    name, supports_logprobs = "scripted", True

    def __init__(self, problems):
        from labkit.llm import Usage
        self.usage = Usage()
        self.gold = {p["question"]: p["answer"] for p in problems}

    def _gold(self, prompt):
        question = prompt.split("Q: ")[-1].split("\nA:")[0]
        return self.gold[question], int(question == list(self.gold)[0])

    def generate(self, prompt, *, max_tokens=64, temperature=0.0, stop=(), n=1, seed=0):
        from labkit.llm import Completion
        gold, first = self._gold(prompt)
        if n > 1:   # the first problem: 9 of 16 chains right; the others: 3 right, the rest split over 13 answers
            right = 9 if first else 3
            texts = [f"So {gold}. The answer is {gold}." if i < right else f"The answer is {1000 + i}."
                     for i in range(n)]
            return [Completion(t, 5, "stop") for t in texts]
        if prompt.endswith("Let's think step by step."):
            return [Completion(" I am lost", 3, "length")]
        if prompt.endswith("the answer is"):
            return [Completion(" 0.", 2, "stop")]
        direct = "A: The answer is" in prompt   # direct_prompt's exemplars show only the answer
        text = f" The answer is {gold}." if direct or first else " The answer is 1."
        return [Completion(text, 5, "stop", logprob=-1.0)]

    def logprobs(self, prompt, continuations):
        return [-2.0 for _ in continuations]


def test_cot_run_and_summarize_on_a_scripted_model():
    from labkit.prompting.cot import cot_run, load_problems, summarize
    problems = load_problems("eval")[:3]
    record = cot_run(ScriptedLLM(problems), limit=3, progress=False)
    assert [r["id"] for r in record["problems"]] == [p["id"] for p in problems]
    assert record["problems"][0]["direct"] == {"text": f" The answer is {problems[0]['answer']}.",
                                               "answer": problems[0]["answer"], "logprob": -1.0,
                                               "gold_logprob": -2.0}
    s = summarize(record)
    assert s["overall"]["direct"] == 1.0 and s["overall"]["zero-shot CoT"] == 0.0
    assert s["overall"]["few-shot CoT"] == pytest.approx(1 / 3)
    assert s["overall"]["one sampled chain"] == pytest.approx((9 + 3 + 3) / 48)
    # 3 right of 16 still wins a plurality when the 13 wrong chains all disagree: the vote is right everywhere
    assert s["overall"]["vote of 16 chains"] == 1.0
    assert s["maj_at_k"][0] == pytest.approx(s["overall"]["one sampled chain"])
    assert s["maj_at_k"][-1] == pytest.approx(s["overall"]["vote of 16 chains"])
    assert s["binomial"][-1] < 0.5   # the two-answer idealisation says p = 3/16 should lose
    assert s["paired"]["few-shot CoT"] == {"direct only": 2, "method only": 0, "p_value": 0.5}
    assert s["paired"]["vote of 16 chains"] == {"direct only": 0, "method only": 0, "p_value": 1.0}
    assert s["extraction"] == {"answer is": 48, "last number": 0, "none": 0}
    assert s["by_steps"] == {1: s["overall"]}


# ---- the saved run 10-cot: a slice re-run on SmolLM2 -------------------------------------------------------------

@pytest.mark.slow
def test_saved_run_direct_answers_reproduce():
    """Two problems of the saved run: the gold answer's log-probability and the greedy direct answer, live."""
    from labkit.course import saved
    from labkit.llm.local import LocalLLM
    from labkit.prompting.cot import direct_prompt, load_problems

    try:
        record = saved.load("10-cot").record
    except FileNotFoundError as e:
        pytest.skip(str(e))
    llm, problems, exemplars = LocalLLM.smollm2(), load_problems("eval"), load_problems("exemplar")
    for i in (0, 40):
        prompt, row = direct_prompt(problems[i], exemplars), record["problems"][i]
        assert row["id"] == problems[i]["id"]
        gold = llm.logprobs(prompt, [f" The answer is {problems[i]['answer']}."])[0]
        assert abs(gold - row["direct"]["gold_logprob"]) < 1e-3
        assert llm.generate(prompt, max_tokens=10, stop=("\n",))[0].text == row["direct"]["text"]
