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

import json
import math
import re
from collections import Counter
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

if TYPE_CHECKING:
    from labkit.llm import LLM

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


# ---- the experiment: direct vs chain-of-thought vs self-consistency on the course's word problems ----------------

PROBLEMS = Path(__file__).resolve().parents[2] / "data" / "word-problems" / "problems.jsonl"
STOP = ("\n\n", "\nQ:")                  # a chain ends where the next few-shot question would begin
ZERO_SHOT_TRIGGER = "Let's think step by step."   # Kojima et al. 2022
ANSWER_TRIGGER = "\nTherefore, the answer is"     # their second stage: read the answer out of the chain


def load_problems(split: str = "eval", path: Path = PROBLEMS) -> list[dict]:
    """The course's word problems: split "eval" (64, 16 per number of steps 1-4) or "exemplar" (the 4 worked
    solutions the few-shot prompts show, never evaluated)."""
    if split not in ("eval", "exemplar"):
        raise ValueError(f"split must be 'eval' or 'exemplar', got {split!r}")
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return [r for r in rows if r["split"] == split]


def _question(problem: Mapping) -> str:
    q = problem.get("question") if isinstance(problem, Mapping) else None
    if not isinstance(q, str) or not q:
        raise ValueError(f"a problem must be a dict with a non-empty 'question', got {problem!r:.80}")
    return q


def direct_prompt(problem: Mapping, exemplars: Sequence[Mapping]) -> str:
    """Few-shot, answers only: each exemplar shows 'The answer is N.' and nothing before it."""
    shots = "".join(f"Q: {_question(e)}\nA: The answer is {e['answer']}.\n\n" for e in exemplars)
    return f"{shots}Q: {_question(problem)}\nA:"


def cot_prompt(problem: Mapping, exemplars: Sequence[Mapping]) -> str:
    """Few-shot chain-of-thought: the same exemplars, each with its worked solution ending 'The answer is N.'"""
    shots = "".join(f"Q: {_question(e)}\nA: {e['solution']}\n\n" for e in exemplars)
    return f"{shots}Q: {_question(problem)}\nA:"


def zero_shot_prompt(problem: Mapping) -> str:
    """Zero-shot chain-of-thought: no exemplars, only the trigger sentence after the question."""
    return f"Q: {_question(problem)}\nA: {ZERO_SHOT_TRIGGER}"


def cot_run(llm: LLM | None = None, *, n: int = 16, temperature: float = 0.7, max_tokens: int = 80, seed: int = 0,
            limit: int | None = None, progress: bool = True) -> dict:
    """Saved run `10-cot`: on every evaluation problem, greedy direct answering, greedy zero-shot and few-shot
    CoT, and n sampled few-shot CoT chains (seed + the problem's index), as a plain dict of texts and answers.
    `summarize(record)` turns it into the chapter's tables. Any `labkit.llm` backend works (default: connect())."""
    from labkit.llm import connect

    llm = llm if llm is not None else connect()
    exemplars, problems = load_problems("exemplar"), load_problems("eval")[:limit]
    rows = []
    bar = problems
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(problems, desc="word problems")
    for i, p in enumerate(bar):
        row: dict = {"id": p["id"], "steps": p["steps"], "gold": p["answer"]}
        out = llm.generate(direct_prompt(p, exemplars), max_tokens=10, stop=("\n",))[0]
        row["direct"] = {"text": out.text, "answer": extract_answer(out.text)[0], "logprob": out.logprob}
        if llm.supports_logprobs:   # how likely the right answer was, direct: the live slice re-scores it
            row["direct"]["gold_logprob"] = llm.logprobs(direct_prompt(p, exemplars),
                                                         [f" The answer is {p['answer']}."])[0]
        chain = llm.generate(zero_shot_prompt(p), max_tokens=max_tokens, stop=STOP)[0]
        said = llm.generate(zero_shot_prompt(p) + chain.text + ANSWER_TRIGGER, max_tokens=8, stop=STOP + ("\n",))[0]
        row["zero_shot"] = {"text": chain.text, "finish": chain.finish_reason, "answer_text": said.text,
                            "answer": extract_answer(said.text)[0]}
        greedy = llm.generate(cot_prompt(p, exemplars), max_tokens=max_tokens, stop=STOP)[0]
        row["cot"] = {"text": greedy.text, "finish": greedy.finish_reason, **_answer(greedy.text)}
        chains = llm.generate(cot_prompt(p, exemplars), max_tokens=max_tokens, stop=STOP, n=n,
                              temperature=temperature, seed=seed + i)
        row["chains"] = [{"text": c.text, "finish": c.finish_reason, "tokens": c.tokens, **_answer(c.text)}
                         for c in chains]
        rows.append(row)
    return {"model": llm.name, "n": n, "temperature": temperature, "max_tokens": max_tokens, "seed": seed,
            "stop": list(STOP), "exemplars": [e["id"] for e in exemplars], "problems": rows,
            "usage": {"calls": llm.usage.calls, "prompt_tokens": llm.usage.prompt_tokens,
                      "completion_tokens": llm.usage.completion_tokens}}


def _answer(text: str) -> dict:
    answer, how = extract_answer(text)
    return {"answer": answer, "how": how}


METHODS = ("direct", "zero-shot CoT", "few-shot CoT", "one sampled chain", "vote of 16 chains")


def summarize(record: Mapping) -> dict:
    """The chapter's tables from a `cot_run` record (pure counting, so it prints the same on every CPU).

    per problem: correct (bool) for direct / zero-shot / few-shot CoT, p = the share of its n chains that are
    right, and the vote's credit at k = n. maj@k is averaged over all k-subsets of each problem's chains
    (`expected_maj_at_k`), then over problems; "binomial" is the two-answer idealisation at each problem's p.
    Paired tests compare each method with direct answering; for the vote, a problem counts as right when gold
    is the sole winner (a tie counts as wrong, so the test cannot flatter the vote)."""
    rows = record["problems"]
    if not rows:
        raise ValueError("the record has no problems")
    n = len(rows[0]["chains"])
    per = []
    for r in rows:
        answers = [c["answer"] for c in r["chains"]]
        gold = r["gold"]
        per.append({"id": r["id"], "steps": r["steps"],
                    "direct": r["direct"]["answer"] == gold, "zero-shot CoT": r["zero_shot"]["answer"] == gold,
                    "few-shot CoT": r["cot"]["answer"] == gold,
                    "p": sum(a == gold for a in answers) / n,
                    "vote credit": maj_at_k_credit(answers, gold),
                    "vote sole winner": majority_vote(answers) == [gold],
                    "distinct answers": len({a for a in answers if a is not None}),
                    "maj@k": [float(expected_maj_at_k(answers, gold, k)) for k in range(1, n + 1)]})

    def table(subset: list[dict]) -> dict:
        m = len(subset)
        return {"problems": m,
                "direct": sum(x["direct"] for x in subset) / m,
                "zero-shot CoT": sum(x["zero-shot CoT"] for x in subset) / m,
                "few-shot CoT": sum(x["few-shot CoT"] for x in subset) / m,
                "one sampled chain": sum(x["p"] for x in subset) / m,
                "vote of 16 chains": sum(x["vote credit"] for x in subset) / m}

    paired = {}
    for name, key in (("zero-shot CoT", "zero-shot CoT"), ("few-shot CoT", "few-shot CoT"),
                      ("vote of 16 chains", "vote sole winner")):
        b, c = discordant_pairs([x["direct"] for x in per], [x[key] for x in per])
        paired[name] = {"direct only": b, "method only": c, "p_value": mcnemar_exact(b, c)}
    how = Counter(c["how"] for r in rows for c in r["chains"])
    return {
        "n": n, "per_problem": per, "overall": table(per),
        "by_steps": {s: table([x for x in per if x["steps"] == s]) for s in sorted({x["steps"] for x in per})},
        "maj_at_k": [sum(x["maj@k"][k] for x in per) / len(per) for k in range(n)],
        "binomial": [sum(binomial_majority(x["p"], k) for x in per) / len(per) for k in range(1, n + 1)],
        "paired": paired,
        "extraction": {h: how.get(h, 0) for h in ("answer is", "last number", "none")},
        "cut_by_max_tokens": sum(c["finish"] == "length" for r in rows for c in r["chains"]),
    }
