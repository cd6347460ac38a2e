"""Lost in the middle (labkit.rag.lost_middle): placing the gold passage, clipping, distractors, naming the shape."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from labkit.rag import lost_middle as L


@given(st.integers(0, 8), st.data())
def test_place_puts_gold_at_each_position_and_keeps_the_distractors_in_order(n, data):
    distractors = [f"d{i}" for i in range(n)]
    pos = data.draw(st.integers(1, n + 1))
    out = L.place("GOLD", distractors, pos)
    assert len(out) == n + 1 and out[pos - 1] == "GOLD"
    assert [p for p in out if p != "GOLD"] == distractors


def test_place_first_and_last():
    assert L.place("g", ["a", "b"], 1) == ["g", "a", "b"]
    assert L.place("g", ["a", "b"], 3) == ["a", "b", "g"]


@pytest.mark.parametrize("args, error, match", [
    (("g", ["a"], 0), ValueError, r"position must be an int in 1..2"),
    (("g", ["a"], 3), ValueError, r"position must be an int in 1..2"),
    (("g", ["a"], 1.0), ValueError, "position must be an int"),
    (("g", ["a"], True), ValueError, "position must be an int"),
    ((None, ["a"], 1), TypeError, "gold must be a str"),
    (("g", "ab", 1), TypeError, "distractors must be a list of str"),
])
def test_place_refuses_bad_input(args, error, match):
    with pytest.raises(error, match=match):
        L.place(*args)


def test_clip_around_keeps_the_answer_and_the_length():
    words = [f"w{i}" for i in range(100)]
    words[70:73] = ["evaluated", "only", "once."]
    text = " ".join(words)
    clipped = L.clip_around(text, ["only evaluated once", "evaluated only once"], 20)
    assert len(clipped.split()) == 20 and "evaluated only once." in clipped
    assert L.clip_around(text, None, 5) == "w0 w1 w2 w3 w4"
    assert L.clip_around(text, ["absent answer"], 5) == "w0 w1 w2 w3 w4"
    assert L.clip_around("a  b\n c", None, 10) == "a b c"
    end = L.clip_around(text + " __aenter__", ["__aenter__"], 10)
    assert end.split()[-1] == "__aenter__" and len(end.split()) == 10
    with pytest.raises(ValueError, match="words must be an int >= 1"):
        L.clip_around(text, None, 0)


def test_distractors_skip_passages_with_the_answer():
    ps = ["break ends a loop", "continue skips", "a break here", "pass does nothing", "def"]
    assert L.distractors(ps, ["break"], 2) == ["continue skips", "pass does nothing"]
    with pytest.raises(ValueError, match="only 3 of the 5 passages hold no answer"):
        L.distractors(ps, ["break"], 4)


@pytest.mark.parametrize("acc, name", [
    ({1: 0.6, 2: 0.3, 3: 0.2, 4: 0.3, 5: 0.5}, "U-shaped"),
    ({1: 0.1, 2: 0.2, 3: 0.2, 4: 0.3, 5: 0.5}, "recency"),
    ({1: 0.5, 2: 0.2, 3: 0.2, 4: 0.2, 5: 0.1}, "primacy"),
    ({1: 0.2, 2: 0.2, 3: 0.2, 4: 0.2, 5: 0.2}, "flat"),
])
def test_shape_names_the_curve(acc, name):
    assert L.shape(acc) == name


def test_shape_tolerance_and_bad_input():
    assert L.shape({1: 0.21, 2: 0.2, 3: 0.22}, tolerance=0.05) == "flat"
    with pytest.raises(ValueError, match="at least 3 positions"):
        L.shape({1: 0.2, 2: 0.3})


def test_accuracy_by_position_averages_rows():
    rows = [{"by_position": {"1": {"contains": 1.0}, "2": {"contains": 0.0}}},
            {"by_position": {"1": {"contains": 0.0}, "2": {"contains": 0.0}}}]
    assert L.accuracy_by_position(rows) == {1: 0.5, 2: 0.0}
    with pytest.raises(ValueError, match="no rows"):
        L.accuracy_by_position([])
