"""labkit.rag.bm25 against bm25s 0.3.16 (the oracle), on random corpora and on the pydoc paragraphs, and the corners.

Tolerances: bm25s built with dtype="float64" computes the same float64 formulas, so scores agree to rtol 1e-9
(in practice they are bit-identical); bm25s' default float32 index agrees to rtol 1e-5 of the largest score.
"""
from __future__ import annotations

import doctest
import math

import bm25s
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labkit.corpus import word_tokens
from labkit.rag import bm25 as bm25_module
from labkit.rag.bm25 import BM25, VARIANTS, TopK, idf

ALPHABET = list("abcdefg")


def oracle(docs: list[list[str]], variant: str, k1: float = 1.5, b: float = 0.75, delta: float | None = None,
           dtype: str = "float64") -> bm25s.BM25:
    extra = {} if delta is None else dict(delta=delta)
    r = bm25s.BM25(method=variant, k1=k1, b=b, dtype=dtype, **extra)
    r.index(docs, show_progress=False)  # a list of str-token lists: bm25s builds its vocabulary from our tokens
    return r


def oracle_scores(r: bm25s.BM25, query: list[str]) -> np.ndarray:
    # bm25s.get_scores indexes query[0], so it cannot take an empty query; its retrieve scores that as zeros
    return r.get_scores(query) if query else np.zeros(r.scores["num_docs"])


def assert_same(ours: np.ndarray, theirs: np.ndarray, float32: bool = False) -> None:
    assert ours.dtype == np.float64 and ours.shape == theirs.shape
    if float32:
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5 * max(1.0, float(np.abs(theirs).max())))
    else:
        np.testing.assert_allclose(ours, theirs, rtol=1e-9, atol=1e-12)


def pydoc_paragraphs() -> list[list[str]]:
    """Chapter 1's pydoc topics, split at blank lines, as lowercased words and numbers (punctuation dropped)."""
    from pydoc_data.topics import topics
    paragraphs = (p for name in sorted(topics) for p in topics[name].split("\n\n"))
    docs = ([t for t in word_tokens(p) if t[0].isalnum() or t[0] == "_"] for p in paragraphs)
    return [d for d in docs if d]


@pytest.fixture(scope="module")
def pydoc() -> list[list[str]]:
    return pydoc_paragraphs()


corpora = st.lists(st.lists(st.sampled_from(ALPHABET), max_size=12), min_size=1, max_size=8).filter(
    lambda docs: any(docs))  # bm25s cannot index a corpus without a single token
queries = st.lists(st.sampled_from(ALPHABET + ["zz"]), min_size=1, max_size=6)


@pytest.mark.parametrize("variant", VARIANTS)
@settings(max_examples=40, deadline=None)
@given(docs=corpora, query=queries, k1=st.floats(0.1, 3.0), b=st.floats(0.0, 1.0), delta=st.floats(0.0, 2.0))
def test_scores_equal_bm25s_on_random_corpora(variant, docs, query, k1, b, delta):
    delta = delta if variant in ("bm25l", "bm25+") else None
    ours = BM25(variant, k1=k1, b=b, delta=delta).index(docs).scores(query)
    assert_same(ours, oracle_scores(oracle(docs, variant, k1, b, delta), query))
    assert_same(ours, oracle_scores(oracle(docs, variant, k1, b, delta, dtype="float32"), query), float32=True)


@pytest.mark.parametrize("variant", VARIANTS)
def test_scores_equal_bm25s_on_pydoc_paragraphs(variant, pydoc):
    assert len(pydoc) > 2000
    ours = BM25(variant).index(pydoc)
    theirs, theirs32 = oracle(pydoc, variant), oracle(pydoc, variant, dtype="float32")
    rng = np.random.default_rng(0)
    for i in range(0, len(pydoc), 97):  # a paragraph's first words, plus random vocabulary words
        query = pydoc[i][:4] + rng.choice(ours.vocabulary, 2).tolist()
        s = ours.scores(query)
        assert_same(s, theirs.get_scores(query))
        assert_same(s, theirs32.get_scores(query), float32=True)
    assert ours.vocabulary.size == len(theirs.vocab_dict) - 1  # bm25s adds the empty token "" to its vocabulary


def test_idf_formulas_by_hand():
    # N = 4 documents; df = 1, 2 (exactly half), 3 (more than half), 4 (every document)
    n, df = 4, np.array([1, 2, 3, 4])
    expected = {
        "robertson": [math.log(3.5 / 1.5), 0.0, 0.0, 0.0],  # log((N - df + .5) / (df + .5)), clipped at 0
        "lucene": [math.log(1 + 3.5 / 1.5), math.log(2), math.log(1 + 1.5 / 3.5), math.log(1 + 0.5 / 4.5)],
        "atire": [math.log(4), math.log(2), math.log(4 / 3), 0.0],
        "bm25l": [math.log(5 / 1.5), math.log(5 / 2.5), math.log(5 / 3.5), math.log(5 / 4.5)],
        "bm25+": [math.log(5), math.log(5 / 2), math.log(5 / 3), math.log(5 / 4)],
    }
    check_idf_by_hand(idf)
    for variant, values in expected.items():
        np.testing.assert_allclose(idf(df, n, variant), values, rtol=1e-15, atol=1e-15)


def check_idf_by_hand(fn) -> None:
    """Lucene's IDF of a term in 1 of 10 documents and in every one of them, computed by hand."""
    np.testing.assert_allclose(fn(np.array([1, 10]), 10, "lucene"),
                               [math.log(1 + 9.5 / 1.5), math.log(1 + 0.5 / 10.5)], rtol=1e-12)


def test_idf_without_its_smoothing_terms_fails_the_check():
    """The lab's mutant: Lucene's IDF without the +1 and the 0.5s, log((N - df) / df); the check catches it."""
    def mutant(df, n_docs, variant):
        df = np.asarray(df, dtype=np.float64)
        with np.errstate(divide="ignore"):
            return np.log((n_docs - df) / df)
    with pytest.raises(AssertionError):
        check_idf_by_hand(mutant)
    docs = [["a", "b"], ["a"], ["c"]]
    with pytest.raises(AssertionError):  # and the oracle comparison catches it too
        assert_same(mutant([2], 3, "lucene") * np.ones(1), np.array([BM25().index(docs).idf[0]]))


def corner(variant: str, docs: list[list[str]], term: str, expected_idf: float) -> BM25:
    ours = BM25(variant).index(docs)
    assert ours.idf[ours.term_id[term]] == pytest.approx(expected_idf, abs=1e-15)
    assert_same(ours.scores([term]), oracle(docs, variant).get_scores([term]))
    return ours


HALF = [["x", "a"], ["x", "b", "b"], ["c"], ["d", "c"]]  # x in 2 of 4 documents
MOST = [["x", "a"], ["x", "b", "b"], ["x", "c"], ["d"]]  # x in 3 of 4
EVERY = [["x", "a"], ["x", "b", "x"], ["x"], ["d", "x"]]  # x in 4 of 4


@pytest.mark.parametrize("variant,expected", [("robertson", 0.0), ("lucene", math.log(2)), ("atire", math.log(2)),
                                              ("bm25l", math.log(2)), ("bm25+", math.log(2.5))])
def test_term_in_exactly_half_of_the_documents(variant, expected):
    """Robertson's IDF is log(1) = 0 here: the term no longer tells documents apart; the others stay positive."""
    ours = corner(variant, HALF, "x", expected)
    s = ours.scores(["x"])
    if variant == "robertson":
        assert not s.any()
    else:
        assert (s[:2] > s[2:]).all()


@pytest.mark.parametrize("variant,expected", [("robertson", 0.0), ("lucene", math.log(1 + 1.5 / 3.5)),
                                              ("atire", math.log(4 / 3)), ("bm25l", math.log(5 / 3.5)),
                                              ("bm25+", math.log(5 / 3))])
def test_term_in_more_than_half_of_the_documents(variant, expected):
    """Robertson's raw IDF, log(1.5 / 3.5), is negative: a match would LOWER a score; it is clipped to 0."""
    assert math.log(1.5 / 3.5) < 0
    corner(variant, MOST, "x", expected)


@pytest.mark.parametrize("variant,expected", [("robertson", 0.0), ("lucene", math.log(1 + 0.5 / 4.5)),
                                              ("atire", 0.0), ("bm25l", math.log(5 / 4.5)), ("bm25+", math.log(5 / 4))])
def test_term_in_every_document(variant, expected):
    """Robertson and ATIRE give such a term no weight at all; Lucene, BM25L and BM25+ a small positive one."""
    ours = corner(variant, EVERY, "x", expected)
    if expected == 0:  # a known term of zero weight still ranks every document (all tied: index order)
        hits = ours.top_k(["x"], 3)
        assert hits.reason is None and hits.indices.tolist() == [0, 1, 2] and not hits.scores.any()


@pytest.mark.parametrize("variant", VARIANTS)
def test_two_document_corpus(variant):
    """With N = 2 a term in one document is in exactly half: Robertson scores every query 0 (a bug report in
    several BM25 libraries); the other variants rank the matching document first."""
    docs = [["the", "cat", "sat"], ["the", "dog", "ran", "far"]]
    ours = BM25(variant).index(docs)
    for query in (["cat"], ["dog", "far"], ["the"], ["the", "cat"]):
        assert_same(ours.scores(query), oracle(docs, variant).get_scores(query))
    s = ours.scores(["cat"])
    assert (not s.any()) if variant == "robertson" else s[0] > s[1]


@pytest.mark.parametrize("variant", VARIANTS)
def test_repeated_query_tokens_count_each_time(variant):
    """As in bm25s (and Lucene, which sums a repeated clause), ["cat", "cat"] weighs cat twice."""
    docs = [["cat", "dog"], ["cat", "cat", "bird"], ["dog"], ["fish", "bird", "eel"]]
    ours = BM25(variant).index(docs)
    once, twice = ours.scores(["cat", "dog"]), ours.scores(["cat", "cat", "dog"])
    np.testing.assert_allclose(twice - once, ours.scores(["cat"]), rtol=1e-12, atol=1e-12)
    assert_same(twice, oracle(docs, variant).get_scores(["cat", "cat", "dog"]))


@pytest.mark.parametrize("variant", VARIANTS)
def test_empty_documents(variant):
    """Empty documents count in N and in the average length, and match nothing (BM25L/BM25+ still give them
    the absent-term weight every non-matching document gets)."""
    docs = [[], ["a", "b"], [], ["b", "c", "c"], []]
    ours = BM25(variant).index(docs)
    assert ours.n_docs == 5 and ours.avg_len == pytest.approx(1.0)
    s = ours.scores(["c", "a"])
    assert_same(s, oracle(docs, variant).get_scores(["c", "a"]))
    assert s[0] == s[2] == s[4] and (s[0] == 0) == (variant not in ("bm25l", "bm25+"))


def test_corpus_of_only_empty_documents_scores_zero():
    ours = BM25().index([[], []])
    assert ours.vocabulary.size == 0 and not ours.scores(["a"]).any()
    assert ours.top_k(["a"], 1).reason is not None


@pytest.mark.parametrize("variant", VARIANTS)
def test_empty_query_is_an_empty_result_with_a_reason(variant):
    ours = BM25(variant).index(HALF)
    assert_same(ours.scores([]), np.zeros(4))
    hits = ours.top_k([], 3)
    assert isinstance(hits, TopK) and len(hits) == 0 and "empty" in hits.reason
    indices, scores = hits
    assert indices.dtype == np.int64 and scores.dtype == np.float64


@pytest.mark.parametrize("variant", VARIANTS)
def test_query_of_unseen_terms(variant):
    """All zeros, as bm25s gives; top_k returns nothing (with a reason) rather than k arbitrary zero-score
    documents, which bm25s' retrieve returns."""
    ours = BM25(variant).index(HALF)
    assert_same(ours.scores(["zebra", "yak"]), oracle(HALF, variant).get_scores(["zebra", "yak"]))
    assert not ours.scores(["zebra", "yak"]).any()
    hits = ours.top_k(["zebra", "yak", "zebra"], 2)
    assert len(hits) == 0 and "zebra" in hits.reason and "occurs" in hits.reason
    theirs, _ = oracle(HALF, variant).retrieve([["zebra"]], k=2, show_progress=False)
    assert theirs.shape == (1, 2)  # the deliberate difference


@settings(max_examples=60, deadline=None)
@given(docs=corpora, query=st.lists(st.sampled_from(ALPHABET), min_size=1, max_size=4), k=st.integers(1, 10),
       variant=st.sampled_from(VARIANTS))
def test_top_k_is_the_stable_sort_of_the_scores(docs, query, k, variant):
    """Highest score first, ties in index order, at most n_docs results (a k beyond the corpus is clipped)."""
    ours = BM25(variant).index(docs)
    s = ours.scores(query)
    indices, scores = hits = ours.top_k(query, k)
    if not set(query) & set(ours.term_id):  # no query token in the corpus: nothing to rank
        assert len(hits) == 0 and hits.reason is not None
        return
    expected = np.argsort(-s, kind="stable")[:k]
    np.testing.assert_array_equal(indices, expected)
    np.testing.assert_array_equal(scores, s[expected])
    assert len(indices) == min(k, len(docs))


def test_top_k_ties_at_the_cut_go_to_the_lower_index():
    docs = [["b"], ["a"], ["b"], ["a"], ["a"], ["c"]]
    assert BM25().index(docs).top_k(["a"], 2).indices.tolist() == [1, 3]
    assert BM25().index(docs).top_k(["a", "c"], 4).indices.tolist() == [5, 1, 3, 4]


def test_bad_input_is_refused_with_clear_errors():
    ours = BM25().index(HALF)
    with pytest.raises(ValueError, match=r"k must be >= 1, got 0"):
        ours.top_k(["x"], 0)
    with pytest.raises(TypeError, match=r"k must be an int, got float"):
        ours.top_k(["x"], 2.0)
    with pytest.raises(ValueError, match="empty corpus"):
        BM25().index([])
    with pytest.raises(TypeError, match=r"str tokens only, got 3 of type int"):
        BM25().index([["a", 3]])
    with pytest.raises(TypeError, match=r"str tokens only, got None of type NoneType"):
        ours.scores(["x", None])
    with pytest.raises(TypeError, match=r"document 1 must be a list of str tokens, got str \(tokenize it first\)"):
        BM25().index([["a"], "a b"])
    with pytest.raises(TypeError, match=r"query_tokens must be a list of str tokens, got str \(tokenize it"):
        ours.top_k("x b", 2)
    with pytest.raises(ValueError, match=r"variant must be one of .*got 'okapi'"):
        BM25("okapi")
    with pytest.raises(ValueError, match=r"delta is a parameter of 'bm25l' and 'bm25\+' only"):
        BM25("lucene", delta=1.0)
    with pytest.raises(ValueError, match=r"b must lie in \[0, 1\], got 1.5"):
        BM25(b=1.5)
    with pytest.raises(ValueError, match=r"k1 must be >= 0"):
        BM25(k1=-1)
    with pytest.raises(TypeError, match=r"k1 must be a number, got str"):
        BM25(k1="1.2")
    with pytest.raises(RuntimeError, match=r"call index"):
        BM25().scores(["x"])


def test_docstring_example():
    assert doctest.testmod(bm25_module).failed == 0
