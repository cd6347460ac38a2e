"""Chain-of-thought and self-consistency (labkit.prompting.cot): answer extraction, the majority vote and its
tie rule, maj@k over every subset, the binomial idealisation, and the exact McNemar test."""
from __future__ import annotations

import itertools
import math
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


@given(st.integers(0, 40), st.integers(0, 40))
def test_mcnemar_exact_matches_scipy(b, c):
    stats = pytest.importorskip("scipy.stats")
    expected = 1.0 if b + c == 0 else stats.binomtest(b, b + c, 0.5).pvalue
    assert mcnemar_exact(b, c) == pytest.approx(expected, rel=1e-9)


def test_discordant_pairs():
    assert discordant_pairs([True, True, False, False], [True, False, True, True]) == (1, 2)
    with pytest.raises(ValueError, match="same length"):
        discordant_pairs([True], [True, False])
    with pytest.raises(ValueError, match="b must be a count"):
        mcnemar_exact(-1, 2)
