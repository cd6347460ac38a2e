"""Extractive context compression (labkit.rag.compress): order, budget, relevance, bad input."""
from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labkit.rag.chunking import split_sentences
from labkit.rag.compress import compress, sentence_scores

PASSAGES = ["The with statement wraps a block. It calls __enter__ on entry. Errors propagate as usual.",
            "A loop may end early. The break statement ends the nearest enclosing loop. Continue skips ahead.",
            "Functions are defined with def. Lambdas make small anonymous functions."]


def test_ratio_one_keeps_everything_in_order():
    c = compress("anything at all", PASSAGES, 1.0)
    assert c.passages == [" ".join(p.split()) for p in PASSAGES]
    assert c.words_after == c.words_before == sum(len(p.split()) for p in PASSAGES) and c.saved == 0.0


def test_the_relevant_sentence_survives_a_tight_budget():
    c = compress("Which statement ends the nearest enclosing loop?", PASSAGES, 0.25)
    assert any("break statement ends the nearest enclosing loop" in p for p in c.passages)
    assert c.words_after <= math.ceil(0.25 * c.words_before) and c.saved > 0.5
    assert all(p for p in c.passages)            # passages with nothing kept are dropped, none is left empty
    assert len(c.passages) == sum(1 for k in c.kept if k)


@settings(max_examples=40, deadline=None)
@given(st.floats(0.05, 1.0), st.sampled_from(["which statement ends a loop", "enter with block", "def lambda"]))
def test_kept_sentences_stay_in_order_within_budget(ratio, question):
    c = compress(question, PASSAGES, ratio)
    assert c.words_after <= math.ceil(ratio * c.words_before)
    out = iter(c.passages)
    for p, kept in zip(PASSAGES, c.kept):
        assert kept == sorted(kept) and len(set(kept)) == len(kept)
        if kept:
            sentences = split_sentences(p)
            assert next(out) == " ".join(" ".join(sentences[j].split()) for j in kept)
    assert c.words_after == sum(len(p.split()) for p in c.passages)


def test_bm25_and_dense_scores_rank_the_matching_sentence_first():
    sentences = ["Cats sleep all day.", "The break statement ends the loop.", "Rain is wet."]
    for method in ("bm25", "dense"):
        scores = sentence_scores("how do I end a loop with break", sentences, method)
        assert len(scores) == 3 and max(range(3), key=scores.__getitem__) == 1
    assert sentence_scores("q", [], "bm25") == []


@pytest.mark.parametrize("kwargs, error, match", [
    ({"ratio": 0}, ValueError, r"ratio must be a number in \(0, 1\]"),
    ({"ratio": 1.5}, ValueError, r"ratio must be a number in \(0, 1\]"),
    ({"ratio": True}, ValueError, "ratio must be a number"),
    ({"method": "tfidf"}, ValueError, "method must be one of"),
    ({"question": "  "}, ValueError, "question is empty"),
    ({"passages": "one string"}, TypeError, "passages must be a list of str"),
    ({"passages": ["ok", ""]}, ValueError, "passage 2 is empty"),
])
def test_compress_refuses_bad_input(kwargs, error, match):
    args = {"question": "q", "passages": PASSAGES, "ratio": 0.5, "method": "bm25", **kwargs}
    with pytest.raises(error, match=match):
        compress(**args)
