"""Chain-of-thought and self-consistency, measured on arithmetic word problems (chapter 10).

Chain-of-thought (CoT, Wei et al. 2022) asks a model to write its working before the answer; self-consistency
(Wang et al. 2022) samples several chains and takes the majority answer. This module holds what the chapter
measures with:

    extract_answer(text)           the chain's final answer: the number after "The answer is", else the last number
    majority_vote(answers)         the most-voted answers (every tied winner, sorted); None casts no vote
    maj_at_k_credit(answers, gold) 1/len(winners) if gold is a winner: the accuracy of a uniform random tie-break
    expected_maj_at_k(answers, gold, k)   the credit averaged over every k-subset of the chains, counted exactly
    binomial_majority(p, k)        the two-answer idealisation: P(a majority of k votes is right | each right w.p. p)
    mcnemar_exact(b, c)            the exact two-sided sign test on the discordant pairs of a paired comparison

and the experiment itself (`cot_run`, saved as `10-cot`), which goes through `labkit.llm` only, so it runs on
the local SmolLM2 or on any bigger model behind LABKIT_LLM_URL.
"""
from __future__ import annotations

import math
import re
from collections import Counter
from fractions import Fraction
from typing import Sequence

# a number as a model writes it: optional sign, digits with optional thousands commas, optional decimals
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_ANSWER_IS = re.compile(r"answer\s+is\s*:?\s*\$?\s*(-?\d[\d,]*(?:\.\d+)?)", re.IGNORECASE)


def normalize_number(token: str) -> str | None:
    """'1,200' -> '1200', '12.0' -> '12', '2.5' -> '2.5', '-3' -> '-3'; None for text that is not a number."""
    if not isinstance(token, str):
        raise TypeError(f"token must be a string, got {type(token).__name__}")
    token = token.replace(",", "").rstrip(".")
    try:
        value = Fraction(token)
    except (ValueError, ZeroDivisionError):
        return None
    # an integer prints without decimals, so "12.0" and "12" vote together
    return str(value.numerator) if value.denominator == 1 else str(float(value))


def extract_answer(text: str) -> tuple[str | None, str]:
    """(the answer, how it was found) from a model's reply.

    how is "answer is" (the number right after the last "The answer is"), "last number" (no such phrase: the
    last number in the text, the usual fallback for a chain cut short), or "none" (no number at all: the chain
    casts no vote)."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a string, got {type(text).__name__}")
    found = _ANSWER_IS.findall(text)
    if found:
        return normalize_number(found[-1]), "answer is"
    numbers = [n for n in (normalize_number(t) for t in _NUMBER.findall(text)) if n is not None]
    return (numbers[-1], "last number") if numbers else (None, "none")


def _check_answers(answers: object) -> Sequence[str | None]:
    if isinstance(answers, (str, bytes)) or not isinstance(answers, Sequence):
        raise TypeError(f"answers must be a list of strings or None, got {type(answers).__name__}")
    for i, a in enumerate(answers):
        if a is not None and not isinstance(a, str):
            raise TypeError(f"answer {i} must be a string or None, got {type(a).__name__}")
    return answers


def majority_vote(answers: Sequence[str | None]) -> list[str]:
    """The answers with the most votes: every tied winner, sorted, so the result does not depend on the order
    the chains came in. None (a chain with no parseable answer) casts no vote; [] when no chain answered."""
    votes = Counter(a for a in _check_answers(answers) if a is not None)
    if not votes:
        return []
    top = max(votes.values())
    return sorted(a for a, v in votes.items() if v == top)


def maj_at_k_credit(answers: Sequence[str | None], gold: str) -> float:
    """1/len(winners) if gold is among the majority vote's winners, else 0: the expected accuracy of the vote
    when a tie is broken uniformly at random (a tie never counts as a sure win)."""
    if not isinstance(gold, str):
        raise TypeError(f"gold must be a string, got {type(gold).__name__}")
    winners = majority_vote(answers)
    return 1 / len(winners) if gold in winners else 0.0


def _poly_mul(a: list[int], b: list[int]) -> list[int]:
    out = [0] * (len(a) + len(b) - 1)
    for i, x in enumerate(a):
        if x:
            for j, y in enumerate(b):
                out[i + j] += x * y
    return out


def expected_maj_at_k(answers: Sequence[str | None], gold: str, k: int) -> Fraction:
    """maj_at_k_credit averaged over all C(n, k) subsets of k chains out of the n given, computed exactly.

    Brute force would visit C(16, 8) = 12870 subsets for one problem at k = 8. Counting is cheaper: a subset
    with j gold votes scores 1/t when every other answer has at most j votes and t - 1 of them have exactly j.
    For each j, a polynomial product over the other answers counts the subsets by (size, number of answers at
    exactly j); None chains join a subset freely because they never vote."""
    _check_answers(answers)
    if not isinstance(gold, str):
        raise TypeError(f"gold must be a string, got {type(gold).__name__}")
    n = len(answers)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
        raise ValueError(f"k must be an int in 1..{n} (the number of chains), got {k!r}")
    counts = Counter(answers)
    g = counts.pop(gold, 0)
    nones = counts.pop(None, 0)
    others = list(counts.values())
    total = Fraction(0)
    for j in range(1, min(g, k) + 1):
        # poly[size][t] = number of ways to pick `size` chains from the other answers (and Nones) with
        # every other answer at most j votes and t of them at exactly j
        poly = [[1]]
        for s in others:
            factor = [[0] for _ in range(min(s, j) + 1)]
            for c in range(min(s, j) + 1):
                factor[c] = [0, math.comb(s, c)] if c == j else [math.comb(s, c)]
            poly = _poly2_mul(poly, factor)
        poly = _poly2_mul(poly, [[math.comb(nones, c)] for c in range(nones + 1)])
        rest = k - j
        if rest < len(poly):
            for t, ways in enumerate(poly[rest]):
                total += Fraction(math.comb(g, j) * ways, t + 1)
    return total / math.comb(n, k)


def _poly2_mul(a: list[list[int]], b: list[list[int]]) -> list[list[int]]:
    """Product of two polynomials in (x, y), stored as a[power of x] = coefficients in y."""
    out: list[list[int]] = [[0] for _ in range(len(a) + len(b) - 1)]
    for i, ai in enumerate(a):
        for j, bj in enumerate(b):
            prod = _poly_mul(ai, bj)
            row = out[i + j]
            if len(row) < len(prod):
                row.extend([0] * (len(prod) - len(row)))
            for t, v in enumerate(prod):
                row[t] += v
    return out


def binomial_majority(p: float, k: int) -> float:
    """P(the majority of k independent votes is right) when each vote is right with probability p and every
    wrong vote names the same wrong answer (the two-answer idealisation); a tie scores 1/2 (a coin flip).
    Above p = 1/2 the vote climbs towards 1 as k grows; below it, towards 0."""
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
        raise ValueError(f"p must be a probability in [0, 1], got {p!r}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an int >= 1, got {k!r}")
    win = sum(math.comb(k, i) * p ** i * (1 - p) ** (k - i) for i in range(k // 2 + 1, k + 1))
    tie = math.comb(k, k // 2) * (p * (1 - p)) ** (k // 2) / 2 if k % 2 == 0 else 0.0
    return win + tie


def discordant_pairs(a: Sequence[bool], b: Sequence[bool]) -> tuple[int, int]:
    """(problems a got right and b wrong, problems b got right and a wrong): all a paired test looks at."""
    if len(a) != len(b):
        raise ValueError(f"paired results must have the same length, got {len(a)} and {len(b)}")
    return sum(1 for x, y in zip(a, b) if x and not y), sum(1 for x, y in zip(a, b) if y and not x)


def mcnemar_exact(b: int, c: int) -> float:
    """Exact two-sided McNemar test (a sign test): the probability, if both methods were equally good, of a
    split of the b + c discordant pairs at least as uneven as the one seen. Each discordant pair is then a fair
    coin, so p = min(1, 2 * P(Binomial(b + c, 1/2) <= min(b, c)))."""
    for name, v in (("b", b), ("c", c)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"{name} must be a count (an int >= 0), got {v!r}")
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1))
    return min(1.0, float(Fraction(2 * tail, 2 ** n)))
