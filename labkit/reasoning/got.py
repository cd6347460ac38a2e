"""Graph of Thoughts in miniature (Besta et al. 2023): sorting a list by split → sort → merge → refine.

A chain of thought (CoT) sorts the whole list in one go. A tree (ToT-style) samples k whole sorts, keeps the best
and refines it. A graph (GoT) also *aggregates*: it splits the list into chunks, sorts each chunk (a short list
is easier), merges sorted chunks pairwise (merging two sorted lists is easier than sorting) and refines the
result, keeping the best of k attempts at every node. Two thoughts feeding one (a merge) is what a tree cannot
express.

Every attempt is scored exactly without knowing the answer, only the input:

    errors(output | input) = inversions(output) + Σ_v |count_output(v) − count_input(v)|

(pairs out of order, plus elements missing or extra; 0 iff the output is the sorted input). Besta et al. count
adjacent pairs out of order instead of all inversions; both are 0 exactly on a correct sort.

A `Sorter` does the three operations. `NoisyOracleSorter` is NOT a model: it returns the right answer corrupted
at a rate that grows with the list's length (a stated assumption about how a model errs), to show what the
structure buys. `ModelSorter` asks a language model through labkit.llm, and its calls and tokens come from the
model's own `usage`.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np


def inversions(xs: Sequence[int]) -> int:
    """Pairs i < j with xs[i] > xs[j] (O(n²): the lists here are short)."""
    return sum(1 for i in range(len(xs)) for j in range(i + 1, len(xs)) if xs[i] > xs[j])


def sort_errors(output: Sequence[int], given: Sequence[int]) -> int:
    """Inversions of output plus elements missing from or extra in it, compared with the multiset `given`."""
    for name, xs in (("output", output), ("given", given)):
        if isinstance(xs, (str, bytes)) or not isinstance(xs, Sequence) or not all(
                isinstance(x, int) and not isinstance(x, bool) for x in xs):
            raise TypeError(f"{name} must be a sequence of ints, got {xs!r:.60}")
    have, want = Counter(output), Counter(given)
    return inversions(output) + sum(abs(have[v] - want[v]) for v in set(have) | set(want))


class Sorter(Protocol):
    """sort(xs), merge(a, b) and refine(given, attempt) each return a list (possibly wrong) and cost one call."""

    def sort(self, xs: list[int]) -> list[int]: ...

    def merge(self, a: list[int], b: list[int]) -> list[int]: ...

    def refine(self, given: list[int], attempt: list[int]) -> list[int]: ...


@dataclass
class Cost:
    calls: int = 0
    items: int = 0   # list elements read + written: the noisy oracle's stand-in for tokens


class NoisyOracleSorter:
    """A simulated sorter (not a model): the exact result, then corrupted. With q = rate · n for an operation on n
    elements, each adjacent pair is swapped with probability q, and with probability q/4 each an element is
    dropped or one is duplicated. Sorting and refining use `sort_rate`; merging two sorted lists is easier
    (`merge_rate`). Seeded: the same calls give the same answers."""

    def __init__(self, sort_rate: float = 0.01, merge_rate: float = 0.002, seed: int = 0) -> None:
        if not (0 <= merge_rate and 0 <= sort_rate):
            raise ValueError(f"rates must be >= 0, got sort_rate={sort_rate}, merge_rate={merge_rate}")
        self.sort_rate, self.merge_rate = sort_rate, merge_rate
        self.rng = np.random.default_rng(seed)
        self.cost = Cost()

    def _noisy(self, exact: list[int], rate: float, read: int) -> list[int]:
        self.cost.calls += 1
        q = min(1.0, rate * len(exact))
        out = list(exact)
        for i in range(len(out) - 1):
            if self.rng.random() < q:
                out[i], out[i + 1] = out[i + 1], out[i]
        if out and self.rng.random() < q / 4:
            del out[int(self.rng.integers(len(out)))]
        if out and self.rng.random() < q / 4:
            i = int(self.rng.integers(len(out)))
            out.insert(i, out[i])
        self.cost.items += read + len(out)
        return out

    def sort(self, xs: list[int]) -> list[int]:
        return self._noisy(sorted(xs), self.sort_rate, len(xs))

    def merge(self, a: list[int], b: list[int]) -> list[int]:
        return self._noisy(sorted(a + b), self.merge_rate, len(a) + len(b))

    def refine(self, given: list[int], attempt: list[int]) -> list[int]:
        return self._noisy(sorted(given), self.sort_rate, len(given) + len(attempt))


_INT = re.compile(r"-?\d+")


def parse_list(text: str) -> list[int] | None:
    """The integers of the first bracketed list in a model's reply ("[1, 2, 3]"), or None if there is none.
    Only digits are read (never eval)."""
    start = text.find("[")
    if start < 0:
        return None
    end = text.find("]", start)
    body = text[start + 1:end if end >= 0 else len(text)]
    return [int(t) for t in _INT.findall(body)]


class ModelSorter:
    """Sorting by a language model (few-shot, greedy), through the one interface; its cost is `llm.usage`.
    A reply with no list counts as `malformed` and is taken as the empty list."""

    SHOTS = ("Input: [5, 1, 4, 1]\nOutput: [1, 1, 4, 5]\n\n"
             "Input: [9, 0, 3, 7, 2]\nOutput: [0, 2, 3, 7, 9]\n\n")

    def __init__(self, llm, max_tokens: int = 120) -> None:
        self.llm, self.max_tokens, self.malformed = llm, max_tokens, 0

    def _ask(self, prompt: str, length: int) -> list[int]:
        # about two tokens per element ("7", ", "), plus slack: a reply that runs on is cut, not waited for
        budget = min(self.max_tokens, 2 * length + 8)
        text = self.llm.generate(prompt, max_tokens=budget, stop=["]"])[0].text
        out = parse_list("[" + text + "]")   # the prompt opened the bracket; the stop string closed it
        if out is None:
            self.malformed += 1
            return []
        return out

    @staticmethod
    def _fmt(xs: Sequence[int]) -> str:
        return "[" + ", ".join(map(str, xs)) + "]"

    def sort(self, xs: list[int]) -> list[int]:
        return self._ask("Sort the numbers in ascending order.\n\n" + self.SHOTS
                         + f"Input: {self._fmt(xs)}\nOutput: [", len(xs))

    def merge(self, a: list[int], b: list[int]) -> list[int]:
        return self._ask("Merge two sorted lists into one sorted list.\n\n"
                         "Input: [1, 4, 5] and [0, 4, 9]\nOutput: [0, 1, 4, 4, 5, 9]\n\n"
                         f"Input: {self._fmt(a)} and {self._fmt(b)}\nOutput: [", len(a) + len(b))

    def refine(self, given: list[int], attempt: list[int]) -> list[int]:
        return self._ask("Fix the sorted list: it must hold exactly the input's numbers, in ascending order.\n\n"
                         "Input: [3, 1, 2, 2]\nAttempt: [1, 2, 3]\nOutput: [1, 2, 2, 3]\n\n"
                         f"Input: {self._fmt(given)}\nAttempt: {self._fmt(attempt)}\nOutput: [", len(given))


def _best(given: list[int], attempts: list[list[int]]) -> list[int]:
    """The attempt with the fewest errors against the input (the first on ties)."""
    return min(attempts, key=lambda a: sort_errors(a, given))


def _check(xs: object, k: int) -> list[int]:
    if isinstance(xs, (str, bytes)) or not isinstance(xs, Sequence) or not xs or not all(
            isinstance(x, int) and not isinstance(x, bool) for x in xs):
        raise TypeError(f"xs must be a non-empty sequence of ints, got {xs!r:.60}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k (attempts per thought) must be an int >= 1, got {k!r}")
    return list(xs)


def cot_sort(xs: Sequence[int], sorter: Sorter) -> list[int]:
    """A chain: one call sorts everything."""
    return sorter.sort(_check(xs, 1))


def tot_sort(xs: Sequence[int], sorter: Sorter, k: int = 3) -> list[int]:
    """A tree: k whole sorts, keep the best; then k refinements of it, keep the best (the unrefined one too)."""
    xs = _check(xs, k)
    best = _best(xs, [sorter.sort(xs) for _ in range(k)])
    return _best(xs, [best] + [sorter.refine(xs, best) for _ in range(k)])


def got_sort(xs: Sequence[int], sorter: Sorter, chunks: int = 4, k: int = 3) -> list[int]:
    """A graph: split into `chunks` parts, sort each (best of k), merge pairwise until one list is left (best of
    k per merge), then refine it (best of k, the unrefined one too)."""
    xs = _check(xs, k)
    if isinstance(chunks, bool) or not isinstance(chunks, int) or not 1 <= chunks <= len(xs):
        raise ValueError(f"chunks must be an int in 1..len(xs) = {len(xs)}, got {chunks!r}")
    size = -(-len(xs) // chunks)
    parts = [xs[i:i + size] for i in range(0, len(xs), size)]
    lists = [_best(p, [sorter.sort(p) for _ in range(k)]) for p in parts]
    givens = parts
    while len(lists) > 1:   # aggregate: two thoughts become one
        nxt, nxt_given = [], []
        for i in range(0, len(lists) - 1, 2):
            g = givens[i] + givens[i + 1]
            nxt.append(_best(g, [sorter.merge(lists[i], lists[i + 1]) for _ in range(k)]))
            nxt_given.append(g)
        if len(lists) % 2:
            nxt.append(lists[-1])
            nxt_given.append(givens[-1])
        lists, givens = nxt, nxt_given
    return _best(xs, [lists[0]] + [sorter.refine(xs, lists[0]) for _ in range(k)])


def compare(lists: Sequence[Sequence[int]], make_sorter, plans: dict) -> dict:
    """Each plan {name: fn(xs, sorter)} on every list with a fresh sorter from make_sorter(): the errors per list,
    how many came out exactly sorted, and the cost (`sorter.cost` for the oracle; the model's usage for a
    ModelSorter, read before and after)."""
    out = {}
    for name, plan in plans.items():
        sorter = make_sorter()
        usage = getattr(getattr(sorter, "llm", None), "usage", None)
        before = (usage.calls, usage.prompt_tokens, usage.completion_tokens) if usage else None
        errors = [sort_errors(plan(list(xs), sorter), list(xs)) for xs in lists]
        row = {"errors": errors, "exact": sum(e == 0 for e in errors)}
        if usage is not None:
            row.update(calls=usage.calls - before[0], prompt_tokens=usage.prompt_tokens - before[1],
                       completion_tokens=usage.completion_tokens - before[2], malformed=sorter.malformed)
        else:
            row.update(calls=sorter.cost.calls, items=sorter.cost.items)
        out[name] = row
    return out


def digit_lists(count: int, length: int, seed: int = 0) -> list[list[int]]:
    """`count` seeded lists of `length` digits 0..9 (Besta et al. sort lists of digits too)."""
    rng = np.random.default_rng(seed)
    return [[int(v) for v in rng.integers(0, 10, length)] for _ in range(count)]
