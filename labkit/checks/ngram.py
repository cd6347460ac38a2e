"""Graded checks for lab 1 (n-gram language models).

    from labkit.checks.ngram import check_count_ngrams, check_add_k_prob, check_perplexity
    check_count_ngrams(count_ngrams)      # your functions, defined in the lab

The references are `labkit.ngram.count_ngrams`, `add_k_prob` and `perplexity_from_log_probs`.
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping
from numbers import Real

import numpy as np

from labkit.ngram import add_k_prob, count_ngrams, perplexity_from_log_probs
from labkit.checks import _call, _passed, _short


# ----------------------------------------------------------------------------------------------------------

def _counts_diff(expected: Mapping, got: Mapping) -> str:
    missing = [k for k in expected if k not in got]
    extra = [k for k in got if k not in expected]
    wrong = [k for k in expected if k in got and got[k] != expected[k]]
    parts = []
    if missing:
        parts.append(f"missing {len(missing)} n-gram(s), e.g. {_short(missing[:3])}")
    if extra:
        parts.append(f"{len(extra)} n-gram(s) that are not in the text, e.g. {_short(extra[:3])}")
    if wrong:
        parts.append("wrong counts, e.g. " + ", ".join(f"{k!r}: expected {expected[k]}, got {got[k]}"
                                                      for k in wrong[:3]))
    return "; ".join(parts)


def check_count_ngrams(fn: Callable) -> None:
    """count_ngrams(tokens, n) must return a collections.Counter mapping each n-gram, a tuple of n consecutive
    tokens, to how often it occurs: len(tokens) - n + 1 windows in all (none if n > len(tokens)). A Counter,
    not a plain dict: the lab's later cells call .most_common and read the count of an unseen n-gram as 0."""
    text = "the cat sat on the mat . the cat ate the rat .".split()
    cases = [
        (list("abcab"), 2),
        (text, 1),
        (text, 2),
        (text, 3),
        ([3, 1, 3, 1, 3], 2),          # integer ids work too
        (list("abc"), 3),              # n == len(tokens): exactly one n-gram
        (list("ab"), 3),               # n > len(tokens): no n-grams at all
    ]
    for tokens, n in cases:
        call = f"count_ngrams({_short(tokens)}, n={n})"
        got = _call(fn, call, list(tokens), n)  # a copy: a function that mutates its input can't fool us
        if not isinstance(got, Counter):
            kind = "a dict" if isinstance(got, Mapping) else f"a {type(got).__name__}"
            raise AssertionError(f"{call} should return a collections.Counter mapping n-gram -> count, got "
                                 f"{kind}: {_short(got)}. The cells after this one need a Counter: they call "
                                 f".most_common(), and look up n-grams that never occur, which a Counter "
                                 f"counts as 0 (a dict raises KeyError).")
        bad_keys = [k for k in got if not (isinstance(k, tuple) and len(k) == n)]
        if bad_keys:
            raise AssertionError(f"{call}: keys must be tuples of n={n} tokens, e.g. {tuple(tokens[:n])!r}; "
                                 f"got key {bad_keys[0]!r} ({type(bad_keys[0]).__name__})")
        got = {k: v for k, v in got.items() if v != 0}
        expected = dict(count_ngrams(tokens, n))
        windows = max(len(tokens) - n + 1, 0)
        if sum(got.values()) != windows:
            off_by_one = sum(got.values()) == windows - 1
            hint = " (off by one: the last window starts at index len(tokens) - n)" if off_by_one else ""
            raise AssertionError(f"{call}: there are len(tokens) - n + 1 = {windows} windows, but your counts "
                                 f"sum to {sum(got.values())}{hint}. {_counts_diff(expected, got)}")
        if got != expected:
            raise AssertionError(f"{call}: {_counts_diff(expected, got)}. Expected {_short(expected)}")
    _passed("count_ngrams", len(cases))


# ----------------------------------------------------------------------------------------------------------

def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def _number(value: object, call: str) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise AssertionError(f"{call} should return a number, got {type(value).__name__}: {_short(value)}")
    return float(value)


def check_add_k_prob(fn: Callable) -> None:
    """add_k_prob(ngram_count, context_count, vocab_size, k) = (c(h w) + k) / (c(h) + k V)."""
    cases = [
        (2, 10, 5, 1.0),      # the worked example: (2 + 1) / (10 + 5)
        (3, 10, 5, 0.0),      # k = 0 is the maximum-likelihood estimate 3/10
        (0, 10, 5, 1.0),      # an n-gram never seen after a seen context still gets probability
        (0, 0, 4, 1.0),       # a context never seen: uniform over the vocabulary
        (1, 4, 1000, 0.5),    # fractional k, large vocabulary
    ]
    for c, total, vocab_size, k in cases:
        call = f"add_k_prob(ngram_count={c}, context_count={total}, vocab_size={vocab_size}, k={k})"
        got = _number(_call(fn, call, c, total, vocab_size, k), call)
        expected = add_k_prob(c, total, vocab_size, k)
        if not _close(got, expected):
            raise AssertionError(f"{call}: expected (c + k) / (context_count + k * V) = {expected:.6g}, "
                                 f"got {got:.6g}")
    # Property: over the whole vocabulary the probabilities after one context sum to 1.
    followers = [5, 3, 2, 0, 0, 0]  # counts of each of the V=6 tokens after a context seen 10 times
    for k in (0.1, 1.0, 2.0):
        calls = [_number(_call(fn, f"add_k_prob({c}, 10, 6, {k})", c, 10, 6, k), f"add_k_prob({c}, 10, 6, {k})")
                 for c in followers]
        if not _close(sum(calls), 1.0):
            raise AssertionError(f"add-k probabilities must sum to 1 over the vocabulary: with follower counts "
                                 f"{followers} (context count 10, V=6, k={k}) yours sum to {sum(calls):.6g}. "
                                 "Did you add k * V to the denominator?")
    _passed("add_k_prob", len(cases) + 3)


# ----------------------------------------------------------------------------------------------------------

def _floats(values) -> str:
    shown = ", ".join(f"{float(v):.4g}" for v in list(values)[:4])
    return f"[{shown}{', ... ' + str(len(values)) + ' values' if len(values) > 4 else ''}]"


def check_perplexity(fn: Callable) -> None:
    """perplexity(log_probs) = exp(-mean(log_probs)), for natural-log token probabilities, as a list or an
    array, of any length: the lab scores tens of thousands of held-out characters, where a product of
    probabilities underflows to 0 (and exp of minus the sum overflows) long before the mean does anything."""
    rng = np.random.default_rng(0)
    long_text = list(np.log(rng.uniform(0.01, 0.9, size=20_000)))  # probabilities 0.01..0.9
    cases = [
        ("uniform over 4 tokens, 10 positions", [math.log(1 / 4)] * 10),
        ("uniform over 27 tokens, 3 positions", [math.log(1 / 27)] * 3),
        ("one token with probability 0.5", [math.log(0.5)]),
        ("probabilities 0.1, 0.2, 0.7", [math.log(0.1), math.log(0.2), math.log(0.7)]),
        ("a numpy array of log-probs", np.log(np.array([0.9, 0.05, 0.05, 0.5]))),
        ("perfect predictions (probability 1)", [0.0, 0.0]),
        ("a long text: 20,000 tokens, as the lab's held-out set", long_text),
        ("a token with probability 0", [math.log(0.5), -math.inf]),
    ]
    for what, log_probs in cases:
        call = f"perplexity({_floats(log_probs)})  [{what}]"
        expected = perplexity_from_log_probs(log_probs)
        long = len(log_probs) > 1000
        try:
            got = _number(_call(fn, call, log_probs.copy()), call)
        except AssertionError as e:
            if not long:
                raise
            raise AssertionError(f"{e}. {_long_hint(log_probs)}") from None
        if math.isinf(expected):
            if not (math.isinf(got) and got > 0):
                raise AssertionError(f"{call}: a token with probability 0 makes the perplexity infinite, got {got}")
            continue
        if not _close(got, expected):
            hint = ""
            if long and (got == 0 or math.isinf(got) or math.isnan(got)):
                hint = f". {_long_hint(log_probs)}"
            elif _close(got, 1 / expected):
                hint = " (that is 1/expected: check the minus sign)"
            elif len(log_probs) > 1 and _close(got, math.exp(-float(np.sum(log_probs)))):
                hint = " (that is exp of the sum: average over the tokens)"
            elif _close(got, 2 ** math.log(expected)):
                hint = " (log-probs are natural logs: use exp, not 2**)"
            raise AssertionError(f"{call}: expected exp(-mean(log_probs)) = {expected:.6g}, got {got:.6g}{hint}")
    _passed("perplexity", len(cases))


def _long_hint(log_probs) -> str:
    return (f"The short cases passed, so the length is what breaks it: over {len(log_probs):,} tokens the product "
            f"of the probabilities is e^{float(np.sum(log_probs)):.0f}, which underflows to 0 in floating point "
            f"(anything below ~1e-308 does), and exp(-sum) overflows to inf. Average the log-probabilities "
            f"first, then take one exp.")
