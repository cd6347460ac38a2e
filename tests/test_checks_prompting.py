"""labkit.checks.prompting: the lab-10 checks pass labkit's own functions and catch plausible wrong ones, each
with a message that says what is wrong."""
from collections import Counter

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from labkit.checks.prompting import (INT_VOCAB, KEYWORD_VOCAB, check_contextual_calibrate, check_majority_vote,
                                     check_mask_step, int_list_advance, keyword_advance)
from labkit.prompting.constrained import mask_step
from labkit.prompting.cot import majority_vote
from labkit.prompting.icl import contextual_calibrate


def test_labkit_itself_passes(capsys):
    check_mask_step(mask_step)
    check_contextual_calibrate(contextual_calibrate)
    check_majority_vote(majority_vote)
    out = capsys.readouterr().out
    for name in ("mask_step", "contextual_calibrate", "majority_vote"):
        assert f"✓ {name} passes" in out


def test_stubs_raise_not_implemented():
    def stub(*args, **kwargs):
        raise NotImplementedError("Exercise")
    for check in (check_mask_step, check_contextual_calibrate, check_majority_vote):
        with pytest.raises(NotImplementedError):
            check(stub)


# ------------------------------------------------------------------------------------------------- automata

def _walk(advance, state, text):
    for ch in text:
        if state is None:
            return None
        state = advance(state, ch)
    return state


@pytest.mark.parametrize("text, ok", [("[]", True), ("[7]", True), ("[-12,3,0]", True), ("[1,]", False),
                                      ("[-]", False), ("[1]]", False), ("[ 1]", False), ("1", False),
                                      ("[1,-2", True), ("[٣]", False)])
def test_int_list_automaton(text, ok):
    end = _walk(int_list_advance, "start", text)
    assert (end is not None) == ok
    if ok and text.endswith("]"):
        assert end == "done"


def test_keyword_automaton_and_one_character_rule():
    assert _walk(keyword_advance, "", "false") == "false"
    assert _walk(keyword_advance, "", "nulll") is None and _walk(keyword_advance, "", "tx") is None
    with pytest.raises(TypeError, match="ONE character"):
        int_list_advance("start", "[1")
    with pytest.raises(TypeError, match="ONE character"):
        keyword_advance("", "")


def test_the_vocabularies_hold_the_awkward_tokens():
    for vocab in (INT_VOCAB, KEYWORD_VOCAB):
        assert "" in vocab and any(len(t) > 2 for t in vocab)
    # a token whose first character fits but a later one does not, at the start
    assert int_list_advance("start", "[") and _walk(int_list_advance, "start", "[a") is None


# ------------------------------------------------------------------------------------------------- the mask

def _mask(walk="carry", empty=False, result="tensor"):
    def fn(advance, state, vocab):
        out = []
        for token in vocab:
            if walk == "first":
                ok = len(token) > 0 and advance(state, token[0]) is not None
            elif walk == "same":
                ok = all(advance(state, ch) is not None for ch in token)
            elif walk == "last":
                ok = len(token) > 0 and advance(state, token[-1]) is not None
            else:
                ok = _walk(advance, state, token) is not None
            out.append(ok and (empty or len(token) > 0))
        if result == "list":
            return out
        if result == "int":
            return torch.tensor(out, dtype=torch.int64)
        return torch.tensor(out, dtype=torch.bool)
    return fn


def _whole_token(advance, state, vocab):
    return torch.tensor([len(t) > 0 and advance(state, t) is not None for t in vocab])


def _sorts_vocab(advance, state, vocab):
    vocab.sort()
    return mask_step(advance, state, vocab)


@pytest.mark.parametrize("fn, message", [
    (_mask(), None),
    (_mask(walk="first"), "first character"),
    (_mask(walk="last"), "should be"),
    (_mask(walk="same", empty=True), "carry the state"),
    (_mask(empty=True), "empty token"),
    (_mask(result="list"), "should return a torch.Tensor"),
    (_mask(result="int"), "bool tensor"),
    (lambda a, s, v: mask_step(a, s, v)[:-1], r"shape \[33\]"),
    (_whole_token, "ONE character"),
    (_sorts_vocab, "in place"),
])
def test_mask_check_catches(fn, message, capsys):
    if message is None:
        check_mask_step(fn)
        return
    with pytest.raises(AssertionError, match=message):
        check_mask_step(fn)
    assert "✓" not in capsys.readouterr().out


@settings(max_examples=50, deadline=None)
@given(st.lists(st.text(alphabet="[]-,0123x", max_size=5), max_size=12),
       st.sampled_from(["start", "open", "sign", "int", "comma", "done"]))
def test_reference_mask_is_the_walk(vocab, state):
    """The property the check relies on: allowed iff non-empty and the whole walk never fails."""
    m = mask_step(int_list_advance, state, vocab)
    assert m.tolist() == [len(t) > 0 and _walk(int_list_advance, state, t) is not None for t in vocab]


# ------------------------------------------------------------------------------------------------- calibration

def _norm(q):
    return q / q.sum(dim=1, keepdim=True)


@pytest.mark.parametrize("fn, message", [
    (lambda p, cf: _norm(p / cf), None),
    (lambda p, cf: _norm(p / (cf / cf.sum())), None),  # normalising p_cf first changes nothing
    (lambda p, cf: p / cf, "do not sum to 1"),
    (lambda p, cf: _norm(p / p.mean(0)), "inputs' own mean"),
    (lambda p, cf: _norm(p * cf), "multiplied"),
    (lambda p, cf: p - cf, "subtracted"),
    (lambda p, cf: (p / cf) / (p / cf).sum(dim=0, keepdim=True), "each column"),
    (lambda p, cf: _norm(p) / cf, "do not sum to 1|renormalised before dividing"),
    (lambda p, cf: _norm(p / cf).double(), "dtype"),
    (lambda p, cf: _norm(p / cf).tolist(), "should return a torch.Tensor"),
    (lambda p, cf: _norm(p / cf)[0], "shape"),
    (lambda p, cf: p.div_(cf).div_(p.sum(dim=1, keepdim=True)), "in place"),
])
def test_calibration_check_catches(fn, message, capsys):
    if message is None:
        check_contextual_calibrate(fn)
        return
    with pytest.raises(AssertionError, match=message):
        check_contextual_calibrate(fn)
    assert "✓" not in capsys.readouterr().out


def test_content_free_input_comes_out_uniform():
    cf = torch.tensor([0.7, 0.2, 0.1])
    assert torch.allclose(contextual_calibrate(cf[None], cf), torch.full((1, 3), 1 / 3))


# ------------------------------------------------------------------------------------------------- the vote

def _vote_by_order(answers):
    votes = Counter(a for a in answers if a is not None)
    return [votes.most_common(1)[0][0]] if votes else []


def _vote_counts_none(answers):
    votes = Counter(answers)
    top = max(votes.values(), default=0)
    return sorted((a for a, n in votes.items() if n == top), key=str)


def _vote_unsorted(answers):
    votes = Counter(a for a in answers if a is not None)
    top = max(votes.values(), default=0)
    return [a for a, n in votes.items() if n == top]


def _vote_numeric_sort(answers):
    return sorted(majority_vote(answers), key=lambda a: (len(a), a))  # "9" before "10"


def _vote_pops(answers):
    while None in answers:
        answers.remove(None)
    return majority_vote(answers)


@pytest.mark.parametrize("fn, message", [
    (majority_vote, None),
    (_vote_by_order, "breaks ties by the order"),
    (_vote_counts_none, "casts no vote"),
    (_vote_unsorted, "wrong order"),
    (_vote_numeric_sort, "wrong order"),
    (lambda a: tuple(majority_vote(a)), "should return a list"),
    (lambda a: (majority_vote(a) or [""])[0], "one winner alone"),
    (lambda a: majority_vote(a) or [None], "expected"),
    (_vote_pops, "in place"),
])
def test_vote_check_catches(fn, message, capsys):
    if message is None:
        check_majority_vote(fn)
        return
    with pytest.raises(AssertionError, match=message):
        check_majority_vote(fn)
    assert "✓" not in capsys.readouterr().out
