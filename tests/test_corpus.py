"""labkit.corpus: the pinned offline corpus, its split, the tokenizers and the vocabulary."""
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import labkit.corpus as corpus_mod
from labkit.corpus import (PYDOC_TOPICS_SHA256, Corpus, CorpusDriftWarning, Vocab, char_tokens, fingerprint,
                           load_corpus, word_tokens)


@pytest.fixture(scope="module")
def corpus() -> Corpus:
    return load_corpus(strict=True)


def test_fingerprint_matches_the_pinned_snapshot(corpus):
    from pydoc_data.topics import topics
    assert fingerprint(topics) == PYDOC_TOPICS_SHA256
    assert corpus.sha256 == PYDOC_TOPICS_SHA256


def test_fingerprint_ignores_dict_order_but_not_content():
    a = {"x": "one", "y": "two"}
    assert fingerprint(a) == fingerprint({"y": "two", "x": "one"})
    assert fingerprint(a) != fingerprint({"x": "one", "y": "two!"})
    # no separator can be forged: moving text between name and body changes the hash
    assert fingerprint({"ab": "c"}) != fingerprint({"a": "bc"})


def test_fingerprint_rejects_non_str_dicts():
    with pytest.raises(TypeError, match=r"dict\[str, str\]"):
        fingerprint({"a": 1})
    with pytest.raises(TypeError, match=r"dict\[str, str\]"):
        fingerprint([("a", "b")])


def test_split_is_by_whole_topics(corpus):
    from pydoc_data.topics import topics
    names = sorted(topics)
    assert set(corpus.train_topics).isdisjoint(corpus.heldout_topics)
    assert sorted(corpus.train_topics + corpus.heldout_topics) == names
    assert corpus.heldout_topics == tuple(names[0::6])
    assert corpus.train == "\n\n".join(topics[t] for t in corpus.train_topics)
    assert corpus.heldout == "\n\n".join(topics[t] for t in corpus.heldout_topics)
    assert 0.05 < len(corpus.heldout) / (len(corpus.train) + len(corpus.heldout)) < 0.15  # about 10% held out


def test_split_respects_heldout_every():
    c = load_corpus(heldout_every=4, strict=True)
    assert len(c.heldout_topics) == -(-len(c.train_topics + c.heldout_topics) // 4)  # 1st, 5th, 9th, ...


@pytest.mark.parametrize("bad, error, match", [(1, ValueError, ">= 2"), (0, ValueError, ">= 2"),
                                               (2.5, TypeError, "int"), ("10", TypeError, "int")])
def test_load_corpus_rejects_bad_heldout_every(bad, error, match):
    with pytest.raises(error, match=match):
        load_corpus(heldout_every=bad)


def test_drift_warns_or_raises(monkeypatch):
    monkeypatch.setattr(corpus_mod, "PYDOC_TOPICS_SHA256", "0" * 64)
    with pytest.warns(CorpusDriftWarning, match="differs from the course's pinned snapshot"):
        c = load_corpus()
    assert c.sha256 == PYDOC_TOPICS_SHA256  # the fingerprint of what was actually loaded
    with pytest.raises(ValueError, match=r"Python 3\.11\.7"):
        load_corpus(strict=True)


def test_no_warning_on_the_pinned_python():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_corpus()


def test_char_tokens_round_trip(corpus):
    assert "".join(char_tokens(corpus.heldout)) == corpus.heldout
    assert char_tokens("a b\n") == ["a", " ", "b", "\n"]


def test_word_tokens():
    assert word_tokens("Call f(x, 42) -- don't!") == \
        ["call", "f", "(", "x", ",", "42", ")", "--", "don", "'", "t", "!"]
    assert word_tokens("+-----+ a == b ...") == ["+", "-----", "+", "a", "==", "b", "..."]
    assert word_tokens("The __init__ method, utf8 and 3.14") == \
        ["the", "__init__", "method", ",", "utf8", "and", "3", ".", "14"]
    assert word_tokens("  \n\t ") == []


@pytest.mark.parametrize("fn", [char_tokens, word_tokens])
def test_tokenizers_reject_non_str(fn):
    with pytest.raises(TypeError, match="expects a str"):
        fn(["not", "a", "str"])


def test_vocab_order_is_deterministic():
    v = Vocab.build(list("banana bread"))
    assert v.itos[0] == "<unk>" and v.unk_id == 0
    assert v.itos[1:] == ("a", "b", "n", " ", "d", "e", "r")  # by count, then token
    assert v.stoi["a"] == 1 and len(v) == 8
    assert Vocab.build(list("banana bread")).itos == v.itos


def test_vocab_encode_decode(corpus):
    v = Vocab.build(word_tokens(corpus.train))
    ids = v.encode(word_tokens("the class statement zzqx"))
    assert ids.dtype == np.int64 and ids.ndim == 1
    assert ids[-1] == v.unk_id and (ids[:-1] != v.unk_id).all()
    assert v.decode(ids) == ["the", "class", "statement", "<unk>"]
    assert v.decode([]) == [] and v.encode([]).shape == (0,)


def test_vocab_min_count_and_literal_unk():
    v = Vocab.build(["a", "a", "b", "<unk>", "<unk>"], min_count=2)
    assert v.itos == ("<unk>", "a")
    assert list(v.encode(["b", "<unk>", "a"])) == [0, 0, 1]


def test_vocab_errors():
    v = Vocab.build(list("abc"))
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        v.decode([0, 4])
    with pytest.raises(ValueError, match="1-D"):
        v.decode([[0, 1]])
    with pytest.raises(TypeError, match="integer"):
        v.decode([0.5])
    with pytest.raises(TypeError, match="tokenize it first"):
        v.encode("abc")
    with pytest.raises(ValueError, match="min_count"):
        Vocab.build(list("abc"), min_count=0)
    with pytest.raises(ValueError, match="<unk>"):
        Vocab(["a", "b"])
    with pytest.raises(ValueError, match="duplicate"):
        Vocab(["<unk>", "a", "a"])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from(list("abcde ")), min_size=1, max_size=50))
def test_vocab_round_trip_property(tokens):
    v = Vocab.build(tokens)
    ids = v.encode(tokens)
    assert v.decode(ids) == tokens
    assert ids.min() >= 1  # every training token is known
    assert len(v) == len(set(tokens)) + 1
