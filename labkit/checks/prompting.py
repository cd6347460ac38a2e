"""Graded checks for lab 10 (prompting patterns: the constrained-decoding mask, contextual calibration, the
majority vote of self-consistency).

    from labkit.checks.prompting import check_mask_step, check_contextual_calibrate, check_majority_vote
    check_mask_step(mask_step)                        # your functions, defined in the lab
    check_contextual_calibrate(contextual_calibrate)
    check_majority_vote(majority_vote)

The references are `labkit.prompting.constrained.mask_step`, `labkit.prompting.icl.contextual_calibrate` and
`labkit.prompting.cot.majority_vote`. The mask is checked on two small character automata (a list of integers
and the JSON keywords true/false/null) and vocabularies that hold multi-character tokens, tokens whose first
character fits and a later one does not, and the empty string.
"""
from __future__ import annotations

import random
from collections.abc import Callable

import torch

from labkit.checks import _call, _passed, _short
from labkit.prompting.constrained import mask_step as reference_mask
from labkit.prompting.cot import majority_vote as reference_vote
from labkit.prompting.icl import contextual_calibrate as reference_calibrate

# ----------------------------------------------------------------------------------------------------------
# the mask


def _one_char(ch: object) -> str:
    if not isinstance(ch, str) or len(ch) != 1:
        raise TypeError(f"advance(state, ch) takes ONE character, got {ch!r}: walk a token character by character")
    return ch


def int_list_advance(state: str, ch: str) -> str | None:
    """A character automaton for lists of integers with no spaces: [], [7], [-12,3,0] ... States are names:
    "start", "open" (after "["), "sign" (after "-"), "int" (inside a number), "comma", "done"; None: not allowed."""
    ch = _one_char(ch)
    if state == "start":
        return "open" if ch == "[" else None
    if state in ("open", "comma"):
        if ch == "-":
            return "sign"
        if ch.isdigit() and ch.isascii():
            return "int"
        return "done" if ch == "]" and state == "open" else None
    if state == "sign":
        return "int" if ch.isdigit() and ch.isascii() else None
    if state == "int":
        if ch.isdigit() and ch.isascii():
            return "int"
        return {",": "comma", "]": "done"}.get(ch)
    return None  # "done": the document is finished


KEYWORDS = ("true", "false", "null")


def keyword_advance(state: str, ch: str) -> str | None:
    """A character automaton for one JSON keyword: the state is the text so far (a prefix of a keyword)."""
    text = state + _one_char(ch)
    return text if any(k.startswith(text) for k in KEYWORDS) else None


INT_VOCAB = ["[", "]", "[1", "[12", "[-", "[-3]", "1", "12", "-", "-1", ",", ",2", ",-", "1,2", "1]", "],", "]]",
             "a", "1a", "[a", "", " ", "[ ", "12,34]", "-,", "--1", "[]", "[1,", ",]", "0", "7]", "[]]", "٣"]
KEYWORD_VOCAB = ["t", "tr", "true", "truex", "tru", "rue", "f", "fa", "false", "falsey", "null", "nul", "n",
                 "nulll", "x", "", "ue", "e", "l", "ll", "lse", "al", "alse", "true ", "T"]

_MASK_CASES: list[tuple[str, Callable, object, list[str]]] = [
    ("the integer-list automaton at 'start' (nothing written yet)", int_list_advance, "start", INT_VOCAB),
    ("the integer-list automaton at 'open' (after '[')", int_list_advance, "open", INT_VOCAB),
    ("the integer-list automaton at 'sign' (after '[-')", int_list_advance, "sign", INT_VOCAB),
    ("the integer-list automaton at 'int' (after '[12')", int_list_advance, "int", INT_VOCAB),
    ("the integer-list automaton at 'comma' (after '[1,')", int_list_advance, "comma", INT_VOCAB),
    ("the integer-list automaton at 'done' (after '[1]': nothing may follow)", int_list_advance, "done", INT_VOCAB),
    ("the keyword automaton at '' (nothing written yet)", keyword_advance, "", KEYWORD_VOCAB),
    ("the keyword automaton at 't'", keyword_advance, "t", KEYWORD_VOCAB),
    ("the keyword automaton at 'fa'", keyword_advance, "fa", KEYWORD_VOCAB),
    ("the keyword automaton at 'nul'", keyword_advance, "nul", KEYWORD_VOCAB),
]


def _mask_hint(got: torch.Tensor, advance: Callable, state: object, vocab: list[str], bad: int) -> str:
    token = vocab[bad]
    if token == "":
        return (" The empty token is never allowed: it adds no character, so a decoder that picked it would "
                "loop without progress (and all() of nothing is True: test for it).")
    first_ok = advance(state, token[0]) is not None
    if got[bad] and first_ok:
        return (f" Its first character {token[0]!r} is allowed, but a later one is not: walk ALL the token's "
                f"characters, each from the state the previous one led to, and allow the token only if no step "
                f"returns None.")
    if not got[bad]:
        s = state
        for ch in token:
            s = advance(s, ch)
        return (f" Every character of it is accepted when each one is fed to the state the previous one returned "
                f"(the walk ends in state {s!r}): carry the state along the token, starting again from `state` "
                f"for each new token.")
    return ""


def check_mask_step(fn: Callable) -> None:
    """mask_step(advance, state, vocab) -> bool tensor [len(vocab)]: True for token i iff walking all of its
    characters from `state` with advance(s, ch) never returns None; the empty token is never allowed."""
    for what, advance, state, vocab in _MASK_CASES:
        call = f"mask_step({advance.__name__}, {state!r}, vocab of {len(vocab)} tokens) for {what}"
        got = _call(fn, call, advance, state, list(vocab))
        expected = reference_mask(advance, state, vocab)
        if not isinstance(got, torch.Tensor):
            raise AssertionError(f"{call} should return a torch.Tensor of dtype torch.bool, got "
                                 f"{type(got).__name__}: {_short(got)}. torch.zeros(len(vocab), dtype=torch.bool) "
                                 f"is a good start.")
        if got.dtype != torch.bool or tuple(got.shape) != (len(vocab),):
            raise AssertionError(f"{call} should return a bool tensor of shape [{len(vocab)}] (one entry per "
                                 f"token), got dtype {got.dtype} and shape {list(got.shape)}")
        wrong = (got != expected).nonzero().flatten().tolist()
        if wrong:
            i = wrong[0]
            verdict = "allowed" if got[i] else "refused"
            should = "refused" if got[i] else "allowed"
            others = [repr(vocab[j]) for j in wrong[1:4]]
            raise AssertionError(f"{call}: you {verdict} token {vocab[i]!r}, which should be {should}."
                                 f"{_mask_hint(got, advance, state, vocab, i)}"
                                 f"{' Also wrong: ' + ', '.join(others) if others else ''}")
    _passed("mask_step", len(_MASK_CASES))


# ----------------------------------------------------------------------------------------------------------
# contextual calibration

def _softmax_rows(n: int, labels: int, seed: int, scale: float = 2.0, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(n, labels, generator=g, dtype=torch.float64) * scale, dim=1).to(dtype)


def _calibration_cases() -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    biased = torch.tensor([0.7, 0.2, 0.1])
    rows = torch.cat([biased[None], _softmax_rows(5, 3, 1)])
    raw = _softmax_rows(6, 4, 2) * torch.tensor([[0.5], [0.2], [0.9], [0.05], [0.3], [0.6]])  # rows sum < 1
    raw_cf = torch.tensor([0.3, 0.1, 0.05, 0.05])  # the raw probabilities of the labels: sums to 0.5
    return [
        ("6 inputs, 4 labels, float32", _softmax_rows(6, 4, 0), torch.tensor([0.4, 0.3, 0.2, 0.1])),
        ("6 inputs, 3 labels, the first input IS the content-free one (it must come out uniform)", rows, biased),
        ("6 inputs, 4 labels, raw label probabilities (each row sums to less than 1) and a content-free "
         "distribution summing to 0.5", raw, raw_cf),
        ("one input, 2 labels, float64", torch.tensor([[0.9, 0.1]], dtype=torch.float64),
         torch.tensor([0.95, 0.05], dtype=torch.float64)),
        ("8 inputs, 5 labels whose content-free probabilities are far from uniform", _softmax_rows(8, 5, 3),
         torch.tensor([0.6, 0.25, 0.1, 0.04, 0.01])),
    ]


def _calibration_hint(got: torch.Tensor, p: torch.Tensor, p_cf: torch.Tensor) -> str:
    p64, cf64 = p.double(), p_cf.double()

    def norm(q: torch.Tensor) -> torch.Tensor:
        return q / q.sum(dim=1, keepdim=True)

    candidates = {
        "Your rows do not sum to 1: after dividing by p_cf, renormalise each row (q / q.sum(dim=1, keepdim=True))":
            p64 / cf64,
        "You divided by the inputs' own mean distribution (label_probs.mean(0)), not by the content-free one: "
        "calibration estimates the prompt's bias from content-free inputs, which the test inputs cannot "
        "give (their labels are what is being predicted)": norm(p64 / p64.mean(0)),
        "You multiplied by p_cf instead of dividing: W = diag(p_cf)^-1": norm(p64 * cf64),
        "You subtracted p_cf: the calibration is a division, W = diag(p_cf)^-1, then renormalisation":
            p64 - cf64,
        "You renormalised each column (dim=0) instead of each row (dim=1): every input's distribution over "
        "the labels must sum to 1": (p64 / cf64) / (p64 / cf64).sum(dim=0, keepdim=True),
        "You renormalised before dividing by p_cf, not after": norm(p64) / cf64,
    }
    for hint, value in candidates.items():
        if got.shape == value.shape and torch.allclose(got.double(), value, rtol=1e-4, atol=1e-6):
            return " " + hint + "."
    return ""


def check_contextual_calibrate(fn: Callable) -> None:
    """contextual_calibrate(label_probs [N, L], content_free_probs [L]) -> [N, L]: each row divided by the
    content-free distribution, element by element, then renormalised to sum 1; the inputs' dtype kept."""
    cases = _calibration_cases()
    for what, p, p_cf in cases:
        call = f"contextual_calibrate({what})"
        got = _call(fn, call, p.clone(), p_cf.clone())
        expected = reference_calibrate(p, p_cf)
        if not isinstance(got, torch.Tensor):
            raise AssertionError(f"{call} should return a torch.Tensor [N, L], got {type(got).__name__}: "
                                 f"{_short(got)}")
        if tuple(got.shape) != tuple(expected.shape):
            raise AssertionError(f"{call} should return shape {list(expected.shape)} (one distribution per input), "
                                 f"got {list(got.shape)}")
        if got.dtype != p.dtype:
            raise AssertionError(f"{call}: keep the inputs' dtype {p.dtype}, got {got.dtype}")
        if not torch.allclose(got.double(), expected.double(), rtol=1e-5, atol=1e-7):
            i = int((got.double() - expected.double()).abs().amax(dim=1).argmax())
            raise AssertionError(f"{call}: row {i} should be {_short([round(x, 4) for x in expected[i].tolist()])}, "
                                 f"got {_short([round(x, 4) for x in got[i].tolist()])}."
                                 f"{_calibration_hint(got, p, p_cf)}")
    _passed("contextual_calibrate", len(cases))


# ----------------------------------------------------------------------------------------------------------
# the majority vote

def _vote_cases() -> list[tuple[str, list]]:
    rng = random.Random(10)
    sixteen = [rng.choice(["42", "41", "7", None]) for _ in range(16)]
    return [
        ("a clear winner", ["3", "5", "3"]),
        ("a two-way tie: both winners, sorted (not in the order they came)", ["5", "3", "3", "5"]),
        ("a tie where the first answer given is not the smallest", ["b", "a"]),
        ("None (a chain with no answer) casts no vote, even when it is the most frequent", [None, None, "7"]),
        ("a tie between two answers, and more Nones than either", [None, None, None, "7", "8"]),
        ("answers sorted as strings: '10' comes before '9'", ["9", "10", "10", "9", "2"]),
        ("no chain answered: no winner", [None, None]),
        ("no chains at all", []),
        ("one chain", ["12"]),
        ("16 seeded chains with Nones", sixteen),
        ("the same 16 chains reversed (the result must not depend on the order)", sixteen[::-1]),
    ]


def check_majority_vote(fn: Callable) -> None:
    """majority_vote(answers) -> list[str]: every answer with the most votes, sorted; None casts no vote; []
    when nothing answered."""
    cases = _vote_cases()
    for what, answers in cases:
        call = f"majority_vote({_short(answers, 120)}) ({what})"
        got = _call(fn, call, list(answers))
        expected = reference_vote(answers)
        if not isinstance(got, list):
            raise AssertionError(f"{call} should return a list of every tied winner, got {type(got).__name__}: "
                                 f"{_short(got)}" + (" (one winner alone cannot say that there was a tie)"
                                                     if isinstance(got, str) else ""))
        if got == expected:
            continue
        hint = ""
        if None in got:
            hint = " None is not an answer: a chain that gave none casts no vote."
        elif sorted(got, key=str) == expected:
            hint = " Right winners, wrong order: return them sorted (sorted(...)), whatever order the chains came in."
        elif len(got) == 1 and len(expected) > 1 and got[0] in expected:
            hint = (" There is a tie: return every answer with the top count, sorted. Counter.most_common(1) "
                    "breaks ties by the order the answers first appeared, so the vote would depend on which chain "
                    "happened to finish first.")
        raise AssertionError(f"{call}: expected {expected}, got {_short(got)}.{hint}")
    _passed("majority_vote", len(cases))
