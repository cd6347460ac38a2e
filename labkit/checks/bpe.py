"""Graded checks for lab 2 (byte-pair encoding).

    from labkit.checks.bpe import check_merge_pair, check_most_frequent_pair, check_encode, check_bpe_training
    check_merge_pair(merge_pair)            # your functions, defined in the lab

The references are `labkit.bpe.merge_pair`, `most_frequent_pair`, `BPETokenizer.encode` and `train_bpe_naive`.
The lab works on one id sequence (no pre-tokenizer): `NO_SPLIT` is the pattern that keeps a text in one chunk.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

from labkit.bpe import BPETokenizer, merge_pair, most_frequent_pair, train_bpe_naive
from labkit.checks import _call, _passed, _short

NO_SPLIT = r"(?s).+"  # one chunk: the whole text (what the lab's plain loop over one id list does)


def _id_list(value: object, call: str) -> list[int]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(i, int) and not isinstance(i, bool)
                                                       for i in value):
        raise AssertionError(f"{call} should return a list of int token ids, got {type(value).__name__}: "
                             f"{_short(value)}")
    return list(value)


# ----------------------------------------------------------------------------------------------------------

def check_merge_pair(fn: Callable) -> None:
    """merge_pair(ids, pair, new_id) replaces every occurrence of pair, left to right, without overlaps."""
    cases = [
        ([1, 2, 3, 1, 2], (1, 2), 99, "two occurrences"),
        ([5, 1, 2, 7], (1, 2), 99, "one occurrence in the middle"),
        ([1, 1, 1], (1, 1), 99, "overlapping occurrences: take the leftmost first, then skip both tokens"),
        ([1, 1, 1, 1], (1, 1), 99, "four equal tokens make two pairs"),
        ([3, 4, 3, 4, 3, 4], (3, 4), 99, "back-to-back occurrences"),
        ([2, 1], (1, 2), 99, "the pair in the other order is a different pair"),
        ([7, 1, 2], (1, 2), 99, "the pair at the very end"),
        ([1, 2, 7], (1, 2), 99, "the pair at the very start, one token after it"),
        ([4], (4, 4), 99, "a single token: nothing to merge"),
        ([], (1, 2), 99, "an empty list"),
        (list("the cat".encode()), (ord("t"), ord("h")), 256, "bytes of 'the cat', merging t+h"),
    ]
    for ids, pair, new_id, what in cases:
        call = f"merge_pair({ids}, pair={pair}, new_id={new_id})  [{what}]"
        got = _id_list(_call(fn, call, list(ids), pair, new_id), call)  # _call fails a function that edits the list
        expected = merge_pair(ids, pair, new_id)
        if got != expected:
            hint = ""
            if len(got) > len(expected) and got.count(new_id) == expected.count(new_id):
                hint = (" (too long: after merging a pair at position i, continue at i + 2, not i + 1, "
                        "and keep every token you did not merge exactly once)")
            elif got.count(new_id) < expected.count(new_id):
                hint = " (some occurrences were not merged: scan the whole list)"
            elif len(got) < len(expected):
                hint = " (tokens went missing: is the last token kept when it is not part of a pair?)"
            raise AssertionError(f"{call}: expected {expected}, got {got}{hint}")
    _passed("merge_pair", len(cases))


# ----------------------------------------------------------------------------------------------------------

def check_most_frequent_pair(fn: Callable) -> None:
    """most_frequent_pair(ids) -> the adjacent pair seen most often; ties go to the smallest pair; None if none."""
    cases = [
        ([1, 2, 3, 1, 2], "(1, 2) occurs twice"),
        ([9, 8, 7, 9, 8, 7, 8, 7], "(8, 7) three times, (9, 8) twice"),
        ([5, 4, 5, 4, 4, 5], "(4, 5) and (5, 4) both occur twice: the smaller tuple wins"),
        ([3, 2, 1, 0], "every pair once: the smallest tuple wins"),
        ([7, 7, 7], "overlapping pairs count: (7, 7) occurs twice"),
        ([6, 2], "a single pair"),
        ([3], "a single token: no pair, return None"),
        ([], "no tokens: return None"),
        (list("abracadabra".encode()), "bytes of 'abracadabra'"),
        ([2, 1, 9, 9, 1, 2, 2, 1, 3, 4, 3, 4], "the most frequent pair is not the first one seen"),
    ]
    for ids, what in cases:
        call = f"most_frequent_pair({ids})  [{what}]"
        got = _call(fn, call, list(ids))
        expected = most_frequent_pair(ids)
        if expected is None:
            if got is not None:
                raise AssertionError(f"{call}: a list with fewer than 2 tokens has no pairs: expected None, "
                                     f"got {_short(got)}")
            continue
        if isinstance(got, list):
            got = tuple(got)
        if not (isinstance(got, tuple) and len(got) == 2):
            raise AssertionError(f"{call} should return a pair (a tuple of two ids), got "
                                 f"{type(got).__name__}: {_short(got)}")
        if got != expected:
            counts = {p: sum(1 for q in zip(ids, ids[1:]) if q == p) for p in set(zip(ids, ids[1:]))}
            hint = ""
            if got not in counts:
                hint = " — that pair is not adjacent anywhere in the list"
            elif counts[got] == counts[expected]:
                hint = f" — both occur {counts[got]} times; ties go to the smaller tuple"
            else:
                hint = f" — yours occurs {counts[got]} times, {expected} occurs {counts[expected]} times"
            raise AssertionError(f"{call}: expected {expected}, got {got}{hint}")
    _passed("most_frequent_pair", len(cases))


# ----------------------------------------------------------------------------------------------------------

def check_encode(fn: Callable) -> None:
    """encode(text, merges) -> the UTF-8 bytes of text with merge k (making id 256 + k) applied in order."""
    merges_ab = [(97, 98), (256, 99), (257, 257)]          # a+b, ab+c, abc+abc
    merges_order = [(98, 99), (97, 98), (97, 256)]          # b+c first: 'abc' must become a + bc
    cases = [
        ("abcabc", merges_ab, "three merges that build on each other"),
        ("abcab", merges_ab, "a leftover 'ab'"),
        ("abc", merges_order, "order matters: b+c was learned before a+b"),
        ("xyz", merges_ab, "no merge applies"),
        ("", merges_ab, "empty text"),
        ("héllo", [(195, 169)], "a two-byte character merged into one token"),
        ("aaaa", [(97, 97), (256, 256)], "aa, then aa+aa"),
        ("abc", [], "no merges: plain bytes"),
    ]
    for text, merges, what in cases:
        call = f"encode({text!r}, merges={merges})  [{what}]"
        got = _id_list(_call(fn, call, text, list(merges)), call)
        expected = BPETokenizer(tuple(merges), NO_SPLIT).encode(text)
        if got != expected:
            raise AssertionError(f"{call}: expected {expected}, got {got}.{_encode_hint(fn, cases, text, merges, got)}")
    _passed("encode", len(cases))


def _smallest_pair_first(text: str, merges: Sequence) -> list[int]:
    """Repeatedly merge the smallest (as a tuple) learned pair present, not the earliest learned."""
    ids, rank = list(text.encode("utf-8")), {tuple(p): k for k, p in enumerate(merges)}
    while present := [p for p in set(zip(ids, ids[1:])) if p in rank]:
        pair = min(present)
        ids = merge_pair(ids, pair, 256 + rank[pair])
    return ids


_ENCODE_VARIANTS = {  # what a wrong encoding may be doing, and how to compute what it gives
    "you apply the merges last-learned first; apply them in the order they were learned":
        lambda text, merges: _apply(text, merges[::-1], reverse_ids=True),
    "you merge the smallest pair present first; merge the earliest-learned pair first (merge k before k + 1)":
        _smallest_pair_first,
    "your ids are the Unicode code points (ord): start from the UTF-8 bytes, text.encode('utf-8')":
        lambda text, merges: _apply(text, merges, start=[ord(ch) for ch in text]),
    "no merge was applied: your ids are the plain UTF-8 bytes":
        lambda text, merges: list(text.encode("utf-8")),
}


def _encode_hint(fn: Callable, cases: list, text: str, merges: Sequence, got: list[int]) -> str:
    """Name a mistake only when `fn` agrees with it on every case of the check (one case can agree by
    chance); always show the right steps, so the reader can find where theirs went elsewhere."""
    outputs = []
    for case_text, case_merges, _ in cases:
        try:
            outputs.append(fn(case_text, list(case_merges)))
        except Exception:  # noqa: BLE001  (a crash on another case just means no variant matches)
            outputs.append(None)
    named = [why for why, variant in _ENCODE_VARIANTS.items()
             if all(out == variant(t, list(m)) for out, (t, m, _) in zip(outputs, cases))]
    steps, ids = [f"bytes {list(text.encode('utf-8'))}"], list(text.encode("utf-8"))
    for k, pair in enumerate(merges):
        merged = merge_pair(ids, tuple(pair), 256 + k)
        steps.append(f"merge {k} {tuple(pair)} -> {256 + k}: " + (f"{merged}" if merged != ids else "no occurrence"))
        ids = merged
    return (f"{' On every case here, ' + named[0] + '.' if named else ''} The right steps, each merge applied "
            f"to every occurrence, in the order learned: {'; '.join(steps)}.")


def _apply(text: str, merges: Sequence, reverse_ids: bool = False, start: list[int] | None = None) -> list[int]:
    ids, n = list(text.encode("utf-8")) if start is None else start, len(merges)
    for k, pair in enumerate(merges):
        ids = merge_pair(ids, tuple(pair), 256 + (n - 1 - k if reverse_ids else k))
    return ids


# ----------------------------------------------------------------------------------------------------------

def check_bpe_training(merges: Sequence, text: str) -> None:
    """The merges your loop learned from `text` (one chunk, no pre-tokenizer) equal labkit's, in order."""
    got = [tuple(m) for m in merges]
    expected = train_bpe_naive(text, len(got), pattern=NO_SPLIT).merges
    if len(expected) < len(got):
        raise AssertionError(f"you learned {len(got)} merges, but the text only allows {len(expected)}")
    for k, (g, e) in enumerate(zip(got, expected)):
        if g != e:
            raise AssertionError(f"merge {k} (new id {256 + k}): expected {e}, got {g}; the first {k} merges "
                                 "agree")
    if not got:
        raise AssertionError("no merges learned")
    print(f"✓ your {len(got)} merges equal labkit's train_bpe_naive, in the same order")
