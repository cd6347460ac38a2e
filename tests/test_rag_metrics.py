"""labkit.rag.metrics: hand-computed cases, the conventions (duplicates, missing queries), errors, and equality
with pytrec_eval (trec_eval) on random runs."""
import math

import pytest
import pytrec_eval
from hypothesis import given, settings
from hypothesis import strategies as st

from labkit.rag.metrics import (dcg, dedupe, exact_match, mean, mrr, ndcg_at_k, normalize_answer, precision_at_k,
                                recall_at_k, token_f1)

QRELS = {"q1": {"a": 2, "b": 0, "c": 1}, "q2": {"x": 1}}
RUN = {"q1": ["b", "a", "z"], "q2": ["y", "z", "w", "x"]}


# ---------------------------------------------------------------- hand-computed cases

def test_recall_hand_computed():
    # q1: relevant {a, c}; a is in the top 3, c is not -> 1/2. q2: x at rank 4 -> 0 at k=3, 1 at k=4
    assert recall_at_k(RUN, QRELS, k=3) == {"q1": 0.5, "q2": 0.0}
    assert recall_at_k(RUN, QRELS, k=4) == {"q1": 0.5, "q2": 1.0}
    assert recall_at_k(RUN, QRELS, k=1) == {"q1": 0.0, "q2": 0.0}


def test_precision_divides_by_k_even_when_fewer_were_retrieved():
    assert precision_at_k(RUN, QRELS, k=2) == {"q1": 0.5, "q2": 0.0}
    assert precision_at_k(RUN, QRELS, k=10) == {"q1": 0.1, "q2": 0.1}


def test_mrr_hand_computed():
    assert mrr(RUN, QRELS) == {"q1": 0.5, "q2": 0.25}
    assert mrr(RUN, QRELS, k=3) == {"q1": 0.5, "q2": 0.0}
    assert mean(mrr(RUN, QRELS)) == pytest.approx(0.375)


def test_ndcg_hand_computed_with_graded_gain():
    # q1: gains in rank order [0, 2, 0] -> DCG = 2/log2(3); ideal [2, 1] -> 2/1 + 1/log2(3)
    expected = (2 / math.log2(3)) / (2 + 1 / math.log2(3))
    assert ndcg_at_k(RUN, QRELS, k=10)["q1"] == pytest.approx(expected, abs=1e-15)
    assert ndcg_at_k(RUN, QRELS, k=10)["q2"] == pytest.approx(1 / math.log2(5), abs=1e-15)
    # the perfect ranking scores exactly 1
    assert ndcg_at_k({"q1": ["a", "c", "b"]}, {"q1": QRELS["q1"]}, k=10) == {"q1": 1.0}


def test_ndcg_catches_a_missing_discount():
    # a single relevant document at rank 2: with the log2(rank+1) discount 1/log2(3) ~ 0.63; without it, 1.0
    assert ndcg_at_k({"q": ["n", "r"]}, {"q": {"r": 1}}, k=10)["q"] == pytest.approx(1 / math.log2(3))
    assert dcg([1, 1, 1]) == pytest.approx(1 + 1 / math.log2(3) + 1 / math.log2(4))


def test_ndcg_gain_is_the_relevance_value_not_exponential():
    # rel 3 at rank 2, rel 1 at rank 1: linear gain gives (1 + 3/log2 3) / (3 + 1/log2 3); 2**rel - 1 would not
    got = ndcg_at_k({"q": ["lo", "hi"]}, {"q": {"hi": 3, "lo": 1}}, k=10)["q"]
    assert got == pytest.approx((1 + 3 / math.log2(3)) / (3 + 1 / math.log2(3)))
    assert got != pytest.approx((1 + 7 / math.log2(3)) / (7 + 1 / math.log2(3)))


def test_ideal_dcg_is_cut_at_k():
    # three relevant documents, k = 1: the ideal top-1 is the best one alone
    qrels = {"q": {"a": 1, "b": 1, "c": 1}}
    assert ndcg_at_k({"q": ["a"]}, qrels, k=1) == {"q": 1.0}


# ---------------------------------------------------------------- conventions

def test_duplicates_count_once_at_their_first_position():
    qrels = {"q": {"a": 1, "c": 1}}
    run = {"q": ["a", "a", "b", "c"]}
    assert dedupe(run["q"]) == ["a", "b", "c"]
    # counting the copies would give Recall@2 = 2/2 = 1.0 and P@2 = 1.0
    assert recall_at_k(run, qrels, k=2) == {"q": 0.5}
    assert precision_at_k(run, qrels, k=2) == {"q": 0.5}
    # the copy is dropped, so c moves up to rank 3 and is inside the cutoff
    assert recall_at_k(run, qrels, k=3) == {"q": 1.0}
    assert ndcg_at_k({"q": ["a", "a"]}, {"q": {"a": 1}}, k=10) == {"q": 1.0}  # not (1 + 1/log2 3)
    assert recall_at_k({"q": ["a", "a", "a"]}, {"q": {"a": 1, "b": 1}}, k=3) == {"q": 0.5}


def test_a_query_the_run_lacks_scores_zero():
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}}
    run = {"q1": ["a"]}
    for metric in (recall_at_k, precision_at_k, ndcg_at_k):
        assert metric(run, qrels, k=5)["q2"] == 0.0
    assert mrr(run, qrels) == {"q1": 1.0, "q2": 0.0}


def test_a_query_without_relevant_documents_scores_zero():
    qrels = {"q": {"a": 0}}
    for metric in (recall_at_k, precision_at_k, ndcg_at_k, mrr):
        assert metric({"q": ["a"]}, qrels) == {"q": 0.0}


# ---------------------------------------------------------------- errors

@pytest.mark.parametrize("metric", [recall_at_k, precision_at_k, ndcg_at_k, mrr])
def test_bad_k(metric):
    with pytest.raises(ValueError, match=r"k must be >= 1.*got 0"):
        metric(RUN, QRELS, k=0)
    with pytest.raises(TypeError, match="k must be an int, got float"):
        metric(RUN, QRELS, k=2.0)
    with pytest.raises(TypeError, match="k must be an int, got bool"):
        metric(RUN, QRELS, k=True)


@pytest.mark.parametrize("metric", [recall_at_k, precision_at_k, ndcg_at_k, mrr])
def test_bad_inputs(metric):
    with pytest.raises(TypeError, match=r"run must be a dict.*got list"):
        metric([["a"]], QRELS)
    with pytest.raises(TypeError, match=r"qrels must be a dict.*got list"):
        metric(RUN, [("q1", {})])
    with pytest.raises(TypeError, match=r"run\['q1'\] must be a list of doc ids.*got str"):
        metric({"q1": "abc"}, QRELS)
    with pytest.raises(TypeError, match=r"run\['q1'\] must hold str doc ids"):
        metric({"q1": [1, 2]}, QRELS)
    with pytest.raises(ValueError, match="run has query 'q9', which qrels does not judge"):
        metric({"q9": ["a"]}, QRELS)
    with pytest.raises(ValueError, match=r"qrels\['q'\]\['a'\] must be an int relevance >= 0, got -1"):
        metric({}, {"q": {"a": -1}})
    with pytest.raises(ValueError, match=r"must be an int relevance >= 0, got 0.5"):
        metric({}, {"q": {"a": 0.5}})
    with pytest.raises(TypeError, match=r"qrels\['q'\] must be a dict"):
        metric({}, {"q": ["a"]})


def test_mean_of_nothing():
    with pytest.raises(ValueError, match="mean of no queries"):
        mean({})


# ---------------------------------------------------------------- equality with pytrec_eval

DOCS = [f"d{i}" for i in range(15)]


@st.composite
def runs_and_qrels(draw):
    qrels, run = {}, {}
    for q in range(draw(st.integers(1, 5))):
        judged = draw(st.dictionaries(st.sampled_from(DOCS), st.integers(0, 3), min_size=1, max_size=10))
        qrels[f"q{q}"] = judged
        # a ranking with repeats, which both sides must treat as one document at its first position
        run[f"q{q}"] = draw(st.lists(st.sampled_from(DOCS), min_size=1, max_size=20))
    return run, qrels


def _trec_run(run):
    """Scores that reproduce our rank order for trec_eval (which sorts by score, then doc id): score = -rank of
    the first occurrence, all distinct, so no tie breaking by id can reorder them."""
    return {q: {d: -float(r) for r, d in reversed(list(enumerate(ranking, start=1)))} for q, ranking in run.items()}


@settings(max_examples=200, deadline=None)
@given(runs_and_qrels())
def test_equal_to_pytrec_eval(case):
    run, qrels = case
    evaluator = pytrec_eval.RelevanceEvaluator(qrels, {"recall.10", "recip_rank", "ndcg_cut.10", "P.10"})
    ref = evaluator.evaluate(_trec_run(run))
    ours = {"recall_10": recall_at_k(run, qrels, 10), "recip_rank": mrr(run, qrels),
            "ndcg_cut_10": ndcg_at_k(run, qrels, 10), "P_10": precision_at_k(run, qrels, 10)}
    assert set(ref) == set(qrels)
    for q, measures in ref.items():
        for name, value in measures.items():
            assert ours[name][q] == pytest.approx(value, abs=1e-9), (name, q, run[q], qrels[q])


def test_trec_run_keeps_the_first_position():
    assert _trec_run({"q": ["a", "b", "a"]}) == {"q": {"a": -1.0, "b": -2.0}}


# ---------------------------------------------------------------- answer metrics

def test_normalize_answer():
    assert normalize_answer("  The Quick,  brown FOX! ") == "quick brown fox"
    assert normalize_answer("an apple a day") == "apple day"
    assert normalize_answer("theory") == "theory"  # articles only as whole words


def test_exact_match():
    assert exact_match("The list.", "list") == 1.0
    assert exact_match("a list", ["tuple", "List"]) == 1.0
    assert exact_match("lists", "list") == 0.0


def test_token_f1_hand_computed():
    # pred {x, y, z}, gold {x, y}: P = 2/3, R = 1, F1 = 0.8
    assert token_f1("x y z", "x y") == pytest.approx(0.8)
    assert token_f1("the x", "x") == 1.0
    assert token_f1("x x", "x") == pytest.approx(2 * 0.5 * 1 / 1.5)  # a repeated token is matched once
    assert token_f1("w", "x") == 0.0
    assert token_f1("x y z", ["q", "x y"]) == pytest.approx(0.8)  # best over golds
    assert token_f1("", "") == 1.0 and token_f1("the", "x") == 0.0


@given(st.text(max_size=30), st.text(max_size=30))
def test_f1_bounds_and_em_implies_f1(pred, gold):
    f1 = token_f1(pred, gold)
    assert 0.0 <= f1 <= 1.0
    if exact_match(pred, gold):
        assert f1 == 1.0
    assert token_f1(pred, gold) == pytest.approx(token_f1(gold, pred))


def test_answer_errors():
    with pytest.raises(TypeError, match="an answer must be a str, got int"):
        exact_match(3, "x")
    with pytest.raises(TypeError, match="gold must be a str or a non-empty list of str"):
        token_f1("x", [])
    with pytest.raises(TypeError, match="gold must be a str or a non-empty list of str"):
        exact_match("x", None)
