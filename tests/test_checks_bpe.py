"""labkit.checks.bpe: the graded checks pass on the references and fail on plausible wrong answers."""
from collections import Counter

import pytest

from labkit.bpe import BPETokenizer, merge_pair, most_frequent_pair, train_bpe_naive
from labkit.checks.bpe import (NO_SPLIT, check_bpe_training, check_encode, check_merge_pair,
                               check_most_frequent_pair)


def encode_reference(text, merges):
    return BPETokenizer(tuple(merges), NO_SPLIT).encode(text)


# ------------------------------------------------------------------ plausible wrong implementations (mutants)

def merge_no_skip(ids, pair, new_id):  # forgets to jump past the second half of the pair
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == tuple(pair):
            out.append(new_id)
        else:
            out.append(ids[i])
        i += 1
    return out


def merge_first_only(ids, pair, new_id):  # merges only the first occurrence
    for i in range(len(ids) - 1):
        if (ids[i], ids[i + 1]) == tuple(pair):
            return list(ids[:i]) + [new_id] + list(ids[i + 2:])
    return list(ids)


def merge_right_to_left(ids, pair, new_id):  # scans from the right: [a, a, a] -> [a, X]
    return merge_pair(ids[::-1], pair[::-1], new_id)[::-1]


def merge_drops_last(ids, pair, new_id):  # loop stops one early and loses an unpaired last token
    out, i = [], 0
    while i < len(ids) - 1:
        if (ids[i], ids[i + 1]) == tuple(pair):
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def merge_in_place(ids, pair, new_id):  # right answer, but destroys the caller's list
    result = merge_pair(ids, pair, new_id)
    ids[:] = result
    return ids


def pair_first_seen(ids):  # Counter.most_common: ties go to the first pair seen, not the smallest
    counts = Counter(zip(ids, ids[1:]))
    return counts.most_common(1)[0][0] if counts else None


def pair_skip_overlaps(ids):  # counts non-overlapping windows (steps of 2)
    counts = Counter(zip(ids[::2], ids[1::2]))
    return min(counts, key=lambda p: (-counts[p], p)) if counts else None


def pair_least_frequent(ids):
    counts = Counter(zip(ids, ids[1:]))
    return min(counts, key=lambda p: (counts[p], p)) if counts else None


def pair_crashes_on_short(ids):
    counts = Counter(zip(ids, ids[1:]))
    return min(counts, key=lambda p: (-counts[p], p))


def encode_reversed(text, merges):  # applies the merges last-learned first
    ids = list(text.encode("utf-8"))
    for k in reversed(range(len(merges))):
        ids = merge_pair(ids, tuple(merges[k]), 256 + k)
    return ids


def encode_smallest_pair_first(text, merges):  # rank-based loop that picks min(pair) instead of the lowest rank
    ids = list(text.encode("utf-8"))
    while True:
        present = [p for p in set(zip(ids, ids[1:])) if p in merges]
        if not present:
            return ids
        pair = min(present)
        ids = merge_pair(ids, pair, 256 + merges.index(pair))


def encode_stops_at_first_miss(text, merges):  # "a merge that does not apply means no later one will"
    ids = list(text.encode("utf-8"))
    for k, pair in enumerate(merges):
        merged = merge_pair(ids, tuple(pair), 256 + k)
        if merged == ids:
            break
        ids = merged
    return ids


def encode_wrong_ids(text, merges):  # numbers new tokens from 255
    ids = list(text.encode("utf-8"))
    for k, pair in enumerate(merges):
        ids = merge_pair(ids, tuple(pair), 255 + k)
    return ids


def encode_chars(text, merges):  # Unicode code points instead of UTF-8 bytes
    ids = [ord(c) for c in text]
    for k, pair in enumerate(merges):
        ids = merge_pair(ids, tuple(pair), 256 + k)
    return ids


def stub(*args):
    raise NotImplementedError("your code here")


# ------------------------------------------------------------------ tests

@pytest.mark.parametrize("check, reference, name, checks", [
    (check_merge_pair, merge_pair, "merge_pair", 11),
    (check_most_frequent_pair, most_frequent_pair, "most_frequent_pair", 10),
    (check_encode, encode_reference, "encode", 8),
])
def test_checks_pass_on_the_references(check, reference, name, checks, capsys):
    check(reference)
    assert capsys.readouterr().out == f"✓ {name} passes {checks} checks\n"


def test_checks_accept_other_correct_answers(capsys):
    def merge_tuple(ids, pair, new_id):  # returns a tuple, built with a for loop and a flag
        out, skip = [], False
        for i, t in enumerate(ids):
            if skip:
                skip = False
            elif i + 1 < len(ids) and ids[i] == pair[0] and ids[i + 1] == pair[1]:
                out.append(new_id)
                skip = True
            else:
                out.append(t)
        return tuple(out)

    def pair_as_list(ids):
        counts = Counter(zip(ids, ids[1:]))
        if not counts:
            return None
        top = max(counts.values())
        return list(min(p for p, c in counts.items() if c == top))

    check_merge_pair(merge_tuple)
    check_most_frequent_pair(pair_as_list)
    assert capsys.readouterr().out.count("✓") == 2


@pytest.mark.parametrize("check, mutant, message", [
    (check_merge_pair, merge_no_skip, r"continue at i \+ 2"),
    (check_merge_pair, merge_first_only, "some occurrences were not merged"),
    (check_merge_pair, merge_right_to_left, r"overlapping occurrences.*expected \[99, 1\], got \[1, 99\]"),
    (check_merge_pair, merge_drops_last, "is the last token kept"),
    (check_merge_pair, merge_in_place, "changed its argument 1 \\(list\\) in place"),
    (check_most_frequent_pair, pair_first_seen, "ties go to the smaller tuple"),
    (check_most_frequent_pair, pair_skip_overlaps, r"\(7, 7\).*expected \(7, 7\)|expected"),
    (check_most_frequent_pair, pair_least_frequent, "occurs"),
    (check_most_frequent_pair, pair_crashes_on_short, "raised ValueError"),
    (check_encode, encode_reversed, "On every case here, you apply the merges last-learned first"),
    (check_encode, encode_smallest_pair_first, r"On every case here, you merge the smallest pair present first.*"
                                               r"The right steps.*merge 0 \(98, 99\) -> 256: \[97, 256\]"),
    (check_encode, encode_chars, "On every case here, your ids are the Unicode code points"),
    (check_encode, encode_stops_at_first_miss, r"expected \[258\], got \[97, 256\]\. The right steps"),
    (check_encode, encode_wrong_ids, "expected"),
    (check_encode, encode_chars, "two-byte character"),
])
def test_checks_fail_on_plausible_wrong_answers(check, mutant, message, capsys):
    with pytest.raises(AssertionError, match=message):
        check(mutant)
    assert "✓" not in capsys.readouterr().out


@pytest.mark.parametrize("check", [check_merge_pair, check_most_frequent_pair, check_encode])
def test_blank_lab_raises_not_implemented(check):
    with pytest.raises(NotImplementedError):
        check(stub)


def test_wrong_return_types_are_named():
    with pytest.raises(AssertionError, match="should return a list of int token ids"):
        check_merge_pair(lambda ids, pair, new_id: "".join(map(str, ids)))
    with pytest.raises(AssertionError, match="should return a pair"):
        check_most_frequent_pair(lambda ids: 3)


TEXT = "the cat sat on the mat; the cat ate the rat. " * 4


def _loop(text, num_merges, most_frequent, merge):
    ids, merges = list(text.encode("utf-8")), []
    for k in range(num_merges):
        pair = most_frequent(ids)
        if pair is None:
            break
        merges.append(pair)
        ids = merge(ids, pair, 256 + k)
    return merges


def test_training_check_passes_on_the_reference_loop(capsys):
    merges = _loop(TEXT, 20, most_frequent_pair, merge_pair)
    assert merges == list(train_bpe_naive(TEXT, 20, pattern=NO_SPLIT).merges)
    check_bpe_training(merges, TEXT)
    assert "✓ your 20 merges equal" in capsys.readouterr().out


@pytest.mark.parametrize("merge, pair", [(merge_first_only, most_frequent_pair), (merge_no_skip, most_frequent_pair),
                                         (merge_pair, pair_first_seen)])
def test_training_check_catches_wrong_pieces(merge, pair):
    with pytest.raises(AssertionError, match=r"merge \d+ \(new id \d+\): expected"):
        check_bpe_training(_loop(TEXT, 20, pair, merge), TEXT)


def test_training_check_rejects_empty_and_too_many():
    with pytest.raises(AssertionError, match="no merges"):
        check_bpe_training([], TEXT)
    with pytest.raises(AssertionError, match="only allows"):
        check_bpe_training([(97, 97)] * 5, "aa")
