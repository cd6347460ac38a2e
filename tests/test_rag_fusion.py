"""Reciprocal rank fusion: hand-computed cases, the bugs other libraries shipped, and properties."""
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labkit.rag.fusion import DEFAULT_K, reciprocal_rank_fusion as rrf


def as_dict(fused):
    return dict(fused)


def test_default_k_is_the_papers_60():
    assert DEFAULT_K == 60


def test_hand_computed_two_lists():
    # bm25: a, b, c   dense: c, a, d   (k = 60, ranks 1-based)
    fused = rrf([["a", "b", "c"], ["c", "a", "d"]])
    expected = {"a": 1 / 61 + 1 / 62, "b": 1 / 62, "c": 1 / 63 + 1 / 61, "d": 1 / 63}
    assert as_dict(fused) == pytest.approx(expected, rel=1e-15)
    assert [doc for doc, _ in fused] == ["a", "c", "b", "d"]


def test_hand_computed_with_small_k():
    fused = as_dict(rrf([[1, 2], [2, 3]], k=2))
    assert fused == pytest.approx({1: 1 / 3, 2: 1 / 4 + 1 / 3, 3: 1 / 4})


def test_single_list_keeps_its_order_and_scores_1_over_k_plus_rank():
    fused = rrf([["x", "y", "z"]])
    assert fused == [("x", 1 / 61), ("y", 1 / 62), ("z", 1 / 63)]


def test_regression_ranks_are_one_based_not_zero_based():
    # A 0-based fusion would give the top document 1/60.
    (top, score), = rrf([["only"]])
    assert score == 1 / 61 and score != 1 / 60


def test_regression_k_is_the_k_asked_for_not_1():
    # With k = 1 (a shipped bug) the top document would score 1/2; with the default it scores 1/61.
    assert rrf([["a", "b"]])[0][1] == 1 / 61
    assert rrf([["a", "b"]], k=1)[0][1] == 1 / 2
    assert rrf([["a", "b"]], k=10)[0][1] == 1 / 11


def test_regression_k_changes_the_winner():
    # "b" is third in two lists, "a" and "y" first in one each: b scores 2/(k+3), a 1/(k+1); b wins iff k > 1.
    # So a fusion hard-wired to k = 1 (a shipped bug) ranks "a" first (a tie broken by id) where k = 60 ranks "b".
    lists = [["a", "x", "b"], ["y", "z", "b"]]
    assert rrf(lists)[0][0] == "b"
    assert rrf(lists, k=1)[0][0] == "a"
    assert rrf(lists, k=0.5)[0][0] == "a"


def test_regression_fusion_is_keyed_by_id_not_position():
    # Two retrievers ranking different documents: a fusion that zips positions would add list1[0]'s and
    # list2[0]'s scores to one entry. Keyed by id, "a" gets one term and "z" the other.
    fused = as_dict(rrf([["a", "b"], ["z", "a"]]))
    assert fused["a"] == pytest.approx(1 / 61 + 1 / 62)
    assert fused["z"] == pytest.approx(1 / 61)
    assert fused["b"] == pytest.approx(1 / 62)
    assert set(fused) == {"a", "b", "z"}


def test_regression_missing_document_gets_no_synthetic_rank():
    # "c" is absent from the second list: it scores 1/(60+3) only, not plus 1/(60 + len + 1).
    fused = as_dict(rrf([["a", "b", "c"], ["a", "b"]]))
    assert fused["c"] == 1 / 63


def test_empty_lists_and_no_lists():
    assert rrf([]) == []
    assert rrf([[], []]) == []
    assert rrf([[], ["a"]]) == [("a", 1 / 61)]


def test_duplicate_in_one_list_counts_once_at_its_first_rank():
    fused = as_dict(rrf([["a", "b", "a"]]))
    assert fused == {"a": 1 / 61, "b": 1 / 62}


def test_ties_broken_by_id():
    fused = rrf([["b", "a"], ["a", "b"]])
    assert [doc for doc, _ in fused] == ["a", "b"]
    assert fused[0][1] == fused[1][1]


def test_integer_ids_work():
    assert [d for d, _ in rrf([[3, 1], [1, 2]])] == [1, 3, 2]


@pytest.mark.parametrize("k", [0, -1, -60, float("nan"), float("inf")])
def test_bad_k_is_refused(k):
    with pytest.raises(ValueError, match="k must be a finite number > 0"):
        rrf([["a"]], k=k)


@pytest.mark.parametrize("k", ["60", None, True])
def test_non_number_k_is_refused(k):
    with pytest.raises(TypeError, match="k must be a number"):
        rrf([["a"]], k=k)


@pytest.mark.parametrize("bad", ["abc", None, 3, {"a": 1}])
def test_non_list_rankings_are_refused(bad):
    with pytest.raises(TypeError, match="rankings must be a list"):
        rrf(bad)


@pytest.mark.parametrize("bad", ["abc", None, 3])
def test_non_list_inner_ranking_is_refused(bad):
    with pytest.raises(TypeError, match=r"rankings\[1\] must be a list"):
        rrf([["a"], bad])


def test_score_pairs_instead_of_ids_are_refused():
    with pytest.raises(TypeError, match="not \\(id, score\\) pairs"):
        rrf([[("a", 3.2), ("b", 1.0)]])


def test_incomparable_ids_are_refused_clearly():
    with pytest.raises(TypeError, match="mutually comparable"):
        rrf([["a"], [1]])


def exact_rrf(rankings, k):
    """The definition in exact rational arithmetic, for the properties."""
    scores = {}
    for ranking in rankings:
        firsts = {}
        for rank, doc in enumerate(ranking, start=1):
            firsts.setdefault(doc, rank)
        for doc, rank in firsts.items():
            scores[doc] = scores.get(doc, Fraction(0)) + Fraction(1, k + rank)
    return scores


lists_of_rankings = st.lists(st.lists(st.integers(0, 15), max_size=12), max_size=5)


@settings(max_examples=200, deadline=None)
@given(lists_of_rankings, st.integers(1, 100))
def test_property_equals_exact_definition(rankings, k):
    fused = rrf(rankings, k=k)
    exact = exact_rrf(rankings, k)
    assert {d for d, _ in fused} == set(exact)
    for doc, score in fused:
        assert score == pytest.approx(float(exact[doc]), rel=1e-14)  # each 1/(k+rank) is rounded once
    keys = [(-score, d) for d, score in fused]
    assert keys == sorted(keys)


@settings(max_examples=200, deadline=None)
@given(lists_of_rankings, st.randoms(use_true_random=False))
def test_property_order_of_lists_does_not_matter(rankings, rnd):
    shuffled = list(rankings)
    rnd.shuffle(shuffled)
    assert rrf(shuffled) == rrf(rankings)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.integers(1, 15), max_size=10), min_size=1, max_size=5), st.integers(1, 100))
def test_property_first_in_every_list_wins(tails, k):
    rankings = [[0] + tail for tail in tails]
    fused = rrf(rankings, k=k)
    assert fused[0][0] == 0
    assert all(score < fused[0][1] for _, score in fused[1:])
