"""labkit.ngram (counting, smoothing, perplexity, sampling), labkit.viz and labkit.ngram_explorer."""
import math
from collections import Counter

import ipywidgets as widgets
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ipywidgets.widgets.widget import _instances as widget_registry  # every live widget, by model id
from ipywidgets.widgets.widget_link import Link

from labkit.corpus import Vocab, char_tokens, load_corpus, word_tokens
from labkit.ngram import (NgramCounts, NgramLM, add_k_prob, count_ngrams, count_ngrams_numba, fit_counts,
                          ngram_arrays_to_counter, perplexity_from_log_probs, unseen_share)
from labkit.ngram_explorer import ngram_explorer
from labkit.viz import html_bar_chart, visible_token

SMOOTHINGS = [("add-k", dict(k=0.5)), ("add-k", dict(k=0.01)), ("kneser-ney", dict(discount=0.75)),
              ("kneser-ney", dict(discount=1.0))]


# ------------------------------------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def char_data():
    c = load_corpus(strict=True)
    vocab = Vocab.build(char_tokens(c.train))
    train, heldout = vocab.encode(char_tokens(c.train)), vocab.encode(char_tokens(c.heldout))
    return vocab, train, heldout, fit_counts(train, 6, len(vocab))


@pytest.fixture(scope="module")
def word_data():
    c = load_corpus(strict=True)
    vocab = Vocab.build(word_tokens(c.train))
    train, heldout = vocab.encode(word_tokens(c.train)), vocab.encode(word_tokens(c.heldout))
    return vocab, train, heldout, fit_counts(train, 4, len(vocab))


# A small random corpus: every order has unseen contexts and unseen continuations.
SMALL_V = 6
SMALL_IDS = np.random.default_rng(0).integers(0, SMALL_V - 1, 300)  # id 5 never occurs in training
SMALL = fit_counts(SMALL_IDS, 4, SMALL_V)


# ------------------------------------------------------------------------------------------------ counting

def test_count_ngrams_reference():
    assert count_ngrams(list("abcab"), 2) == Counter({("a", "b"): 2, ("b", "c"): 1, ("c", "a"): 1})
    assert count_ngrams("aaa", 1) == Counter({("a",): 3})
    assert count_ngrams([1, 2], 3) == Counter()
    got = count_ngrams(np.array([1, 2, 1, 2]), 2)
    assert got == Counter({(1, 2): 2, (2, 1): 1}) and all(type(x) is int for k in got for x in k)


@pytest.mark.parametrize("bad, error", [(0, ValueError), (-1, ValueError), (1.5, TypeError), (True, TypeError)])
def test_count_ngrams_rejects_bad_n(bad, error):
    with pytest.raises(error, match="n must be"):
        count_ngrams(list("abc"), bad)
    with pytest.raises(error, match="n must be"):
        count_ngrams_numba(np.arange(3), bad, 3)


@st.composite
def id_arrays(draw):
    vocab_size = draw(st.integers(1, 12))
    ids = draw(st.lists(st.integers(0, vocab_size - 1), max_size=80))
    return np.array(ids, dtype=np.int64), vocab_size


@settings(max_examples=60, deadline=None)
@given(id_arrays(), st.integers(1, 5))
def test_numba_counts_equal_plain_counts(data, n):
    ids, vocab_size = data
    ngrams, counts = count_ngrams_numba(ids, n, vocab_size)
    assert ngrams.dtype == np.int64 and counts.dtype == np.int64 and ngrams.shape == (counts.size, n)
    assert ngram_arrays_to_counter(ngrams, counts) == count_ngrams(ids, n)
    assert counts.sum() == max(ids.size - n + 1, 0)
    rows = [tuple(r) for r in ngrams.tolist()]
    assert rows == sorted(rows)  # lexicographic
    assert len(set(rows)) == len(rows)


@pytest.mark.parametrize("level", ["char", "word"])
def test_numba_counts_equal_plain_counts_on_the_corpus(level, char_data, word_data):
    vocab, train, _, _ = char_data if level == "char" else word_data
    for n in (1, 3):
        assert ngram_arrays_to_counter(*count_ngrams_numba(train, n, len(vocab))) == count_ngrams(train, n)


@pytest.mark.parametrize("vocab_size", [1000, 46_341])
def test_numba_counts_with_32_and_64_bit_keys(vocab_size):
    # many distinct keys; 1000**2 fits in 32 bits, 46_341**2 is the first square that does not (2**31 - 1 < it)
    ids = np.random.default_rng(1).integers(0, vocab_size, 200_000)
    ids[:2] = vocab_size - 1  # the largest key of all
    ngrams, counts = count_ngrams_numba(ids, 2, vocab_size)
    assert ngram_arrays_to_counter(ngrams, counts) == count_ngrams(ids, 2)
    assert ngrams[-1].tolist() == [vocab_size - 1, vocab_size - 1]


def test_numba_counts_errors():
    with pytest.raises(ValueError, match="int64"):
        count_ngrams_numba(np.array([0, 1]), 2, 2**32)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        count_ngrams_numba(np.array([0, 3]), 1, 3)
    with pytest.raises(ValueError, match="1-D"):
        count_ngrams_numba(np.zeros((2, 2), np.int64), 1, 3)
    with pytest.raises(TypeError, match="integer"):
        count_ngrams_numba(np.array([0.0, 1.0]), 1, 3)
    with pytest.raises(ValueError, match="vocab_size"):
        count_ngrams_numba(np.array([0]), 1, 0)
    with pytest.raises(ValueError, match="shapes"):
        ngram_arrays_to_counter(np.zeros((2, 2)), np.zeros(3))


def test_numba_counts_empty():
    ngrams, counts = count_ngrams_numba(np.array([], np.int64), 2, 5)
    assert ngrams.shape == (0, 2) and counts.shape == (0,)


# ------------------------------------------------------------------------------------------------ fit_counts

def test_fit_counts_tables():
    for k in range(1, 5):
        ref = count_ngrams(SMALL_IDS, k)
        t = SMALL.order(k)
        assert t.counts.sum() == SMALL_IDS.size - k + 1
        for gram, c in list(ref.items())[:20]:
            assert SMALL.count(gram) == c
        assert SMALL.count([5] * k) == 0
        # context totals and follower counts, recomputed by brute force
        totals, followers = Counter(), Counter()
        for gram, c in ref.items():
            totals[gram[:-1]] += c
            followers[gram[:-1]] += 1
        assert len(t.ctx_keys) == len(totals)
        assert sorted(t.ctx_totals.tolist()) == sorted(totals.values())
        assert sorted(t.ctx_types.tolist()) == sorted(followers.values())
    # continuation counts N1+(. w) of unigrams: distinct left neighbours
    left = Counter(gram[1:] for gram in count_ngrams(SMALL_IDS, 2))
    assert dict(zip(SMALL.order(1).cont_keys.tolist(), SMALL.order(1).cont_counts.tolist())) == \
        {g[0]: c for g, c in left.items()}


def test_fit_counts_errors():
    with pytest.raises(ValueError, match="max_order"):
        fit_counts(SMALL_IDS, 0, SMALL_V)
    with pytest.raises(ValueError, match="int64"):
        fit_counts(SMALL_IDS, 5, 10**4)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        fit_counts(SMALL_IDS, 2, 3)
    with pytest.raises(ValueError, match="at least"):
        fit_counts(np.array([1, 2]), 3, SMALL_V)
    with pytest.raises(ValueError, match="exceeds max_order"):
        SMALL.order(5)
    assert "NgramCounts" in repr(SMALL)


# ------------------------------------------------------------------------------------------------ models

def naive_kn(ids, n, vocab_size, discount, context, token):
    """Interpolated Kneser-Ney straight from the formula, with dicts: the reference for the vectorised one."""
    counts = {k: count_ngrams(ids, k) for k in range(1, n + 2)}

    def cont(gram):  # N1+(. gram)
        return sum(1 for g in counts[len(gram) + 1] if g[1:] == gram)

    def p(j, w, highest):
        if j == 0:
            return 1 / vocab_size
        h = tuple(context[len(context) - (j - 1):]) if j > 1 else ()
        score = (lambda g: counts[j][g]) if highest else cont
        vals = {x: score(h + (x,)) for x in range(vocab_size)}
        total, types = sum(vals.values()), sum(v > 0 for v in vals.values())
        lower = p(j - 1, w, False)
        if total == 0:
            return lower
        return max(vals[w] - discount, 0) / total + discount * types / total * lower

    context = list(context)[max(len(context) - (n - 1), 0):] if n > 1 else []
    return p(len(context) + 1, token, True)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_kneser_ney_matches_the_formula(n):
    ids = SMALL_IDS[:120]
    counts = fit_counts(ids, 4, SMALL_V)
    lm = NgramLM(counts, n, "kneser-ney", discount=0.6)
    for context in ([], [0], [1, 2], [4, 4, 4], [5, 5], [0, 5]):
        dist = lm.distribution(context)
        for w in range(SMALL_V):
            assert dist[w] == pytest.approx(naive_kn(ids.tolist(), n, SMALL_V, 0.6, context, w), rel=1e-12)


contexts = st.lists(st.integers(0, SMALL_V - 1), max_size=5)


@settings(max_examples=40, deadline=None)
@given(contexts, st.integers(1, 4), st.sampled_from(SMOOTHINGS))
def test_distributions_sum_to_one(context, n, smoothing):
    name, params = smoothing
    dist = NgramLM(SMALL, n, name, **params).distribution(context)
    assert dist.shape == (SMALL_V,) and dist.dtype == np.float64
    assert dist.sum() == pytest.approx(1.0, abs=1e-12)
    assert (dist > 0).all()  # add-k with k > 0 and Kneser-Ney never give probability 0


@settings(max_examples=40, deadline=None)
@given(contexts, st.integers(1, 4))
def test_mle_sums_to_one_on_seen_contexts(context, n):
    lm = NgramLM(SMALL, n, "mle")
    ctx = context[max(len(context) - (n - 1), 0):] if n > 1 else []
    if ctx and sum(SMALL.count(ctx + [w]) for w in range(SMALL_V)) == 0:
        with pytest.raises(ValueError, match="never occurs in training"):
            lm.distribution(context)
    else:
        assert lm.distribution(context).sum() == pytest.approx(1.0, abs=1e-12)


def test_kneser_ney_is_nonzero_everywhere(word_data):
    vocab, _, heldout, counts = word_data
    for n in (1, 2, 3, 4):
        lm = NgramLM(counts, n, "kneser-ney")
        assert (lm.distribution(heldout[:10]) > 0).all()
        assert np.isfinite(lm.log_probs(heldout)).all()


def test_add_k_zero_is_mle_on_seen_contexts(char_data):
    vocab, train, _, counts = char_data
    for n in (1, 2, 4):
        context = train[100:100 + n - 1]
        np.testing.assert_allclose(NgramLM(counts, n, "add-k", k=0.0).distribution(context),
                                   NgramLM(counts, n, "mle").distribution(context), rtol=0, atol=1e-15)


def test_unseen_context():
    unseen = [5, 5, 5]  # id 5 never occurs in training
    uniform = np.full(SMALL_V, 1 / SMALL_V)
    np.testing.assert_allclose(NgramLM(SMALL, 4, "add-k", k=0.1).distribution(unseen), uniform)
    with pytest.raises(ValueError, match="MLE is undefined"):
        NgramLM(SMALL, 4, "mle").distribution(unseen)
    with pytest.raises(ValueError, match="MLE is undefined"):
        NgramLM(SMALL, 2, "mle").prob(unseen, 0)
    # Kneser-Ney backs off fully: after an unseen context every order predicts with the (continuation)
    # unigram level, whatever n is
    np.testing.assert_allclose(NgramLM(SMALL, 4, "kneser-ney").distribution(unseen),
                               NgramLM(SMALL, 2, "kneser-ney").distribution([5]), rtol=1e-12)


def test_uniform_model_has_perplexity_vocab_size():
    vocab_size = 7
    counts = fit_counts(np.tile(np.arange(vocab_size), 20), 3, vocab_size)
    anything = np.array([3, 1, 4, 1, 5, 6, 2, 6])
    for smoothing in ("mle", "add-k", "kneser-ney"):
        lm = NgramLM(counts, 1, smoothing)
        assert lm.perplexity(anything) == pytest.approx(vocab_size, rel=1e-12)
    assert perplexity_from_log_probs(np.full(10, -math.log(vocab_size))) == pytest.approx(vocab_size)


def test_log_probs_match_prob(char_data):
    vocab, _, heldout, counts = char_data
    ids = heldout[:40]
    for smoothing, params in SMOOTHINGS[:3]:
        lm = NgramLM(counts, 4, smoothing, **params)
        lp = lm.log_probs(ids)
        assert lp.shape == ids.shape
        for i in (0, 1, 2, 3, 17, 39):  # the first ones use shorter contexts
            assert lp[i] == pytest.approx(math.log(lm.prob(ids[:i], ids[i])), rel=1e-12)
        assert lm.perplexity(ids) == pytest.approx(math.exp(-lp.mean()))


def test_mle_perplexity_is_infinite_on_unseen_events(char_data):
    vocab, _, heldout, counts = char_data
    lm = NgramLM(counts, 5, "mle")
    assert lm.perplexity(heldout) == math.inf
    assert np.isneginf(lm.log_probs(heldout)).any()
    # a unigram MLE is finite exactly when every held-out character occurs in training (none is <unk>)
    unigram = NgramLM(counts, 1, "mle").perplexity(heldout)
    assert (unigram == math.inf) == bool((heldout == vocab.unk_id).any())
    seen = heldout[heldout != vocab.unk_id]
    assert NgramLM(counts, 1, "mle").perplexity(seen) < 40


def test_perplexity_improves_with_order_for_kneser_ney(char_data, word_data):
    for (_, _, heldout, counts), orders in ((char_data, range(1, 7)), (word_data, range(1, 4))):
        ppl = [NgramLM(counts, n, "kneser-ney").perplexity(heldout) for n in orders]
        assert all(a > b for a, b in zip(ppl, ppl[1:])), ppl


def test_sampling_is_reproducible(char_data):
    vocab, _, _, counts = char_data
    lm = NgramLM(counts, 4, "kneser-ney")
    context = vocab.encode(char_tokens("The "))
    a = lm.sample(np.random.default_rng(7), context, 50)
    b = lm.sample(np.random.default_rng(7), context, 50)
    assert a == b and len(a) == 50 and all(type(t) is int and 0 <= t < len(vocab) for t in a)
    assert a != lm.sample(np.random.default_rng(8), context, 50)
    assert lm.sample(np.random.default_rng(7), context, 0) == []


def test_low_temperature_approaches_argmax(char_data):
    vocab, _, _, counts = char_data
    lm = NgramLM(counts, 5, "kneser-ney")
    history = list(vocab.encode(char_tokens("def ")))
    greedy = []
    for _ in range(30):
        token = int(np.argmax(lm.distribution(history)))
        greedy.append(token)
        history.append(token)
    sampled = lm.sample(np.random.default_rng(0), vocab.encode(char_tokens("def ")), 30, temperature=1e-3)
    assert sampled == greedy


def test_high_temperature_flattens():
    lm = NgramLM(SMALL, 2, "add-k", k=0.01)
    rng = np.random.default_rng(0)
    hot = lm.sample(rng, [0], 600, temperature=100.0)
    # near-uniform: even the id never seen in training (5) turns up
    assert set(hot) == set(range(SMALL_V))


def test_model_argument_errors():
    with pytest.raises(TypeError, match="NgramCounts"):
        NgramLM({}, 2)
    with pytest.raises(ValueError, match="exceeds the counts' max_order"):
        NgramLM(SMALL, 5)
    with pytest.raises(ValueError, match="n must be >= 1"):
        NgramLM(SMALL, 0)
    with pytest.raises(ValueError, match="smoothing must be one of"):
        NgramLM(SMALL, 2, "laplace")
    with pytest.raises(ValueError, match="k must be"):
        NgramLM(SMALL, 2, "add-k", k=-1)
    with pytest.raises(ValueError, match="discount"):
        NgramLM(SMALL, 2, "kneser-ney", discount=0)
    with pytest.raises(ValueError, match="discount"):
        NgramLM(SMALL, 2, "kneser-ney", discount=1.5)
    lm = NgramLM(SMALL, 3, "kneser-ney")
    assert "kneser-ney" in repr(lm)
    with pytest.raises(ValueError, match=r"context must lie in \[0, 6\)"):
        lm.distribution([0, 6])
    with pytest.raises(ValueError, match="1-D"):
        lm.log_probs([[0, 1]])
    with pytest.raises(ValueError, match=r"token must lie"):
        lm.prob([0], 9)
    with pytest.raises(ValueError, match="at least one token"):
        lm.perplexity([])
    rng = np.random.default_rng(0)
    for bad in (0, -1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="temperature must be"):
            lm.sample(rng, [0], 5, temperature=bad)
    with pytest.raises(TypeError, match="Generator"):
        lm.sample(np.random.RandomState(0), [0], 5)
    with pytest.raises(ValueError, match="length"):
        lm.sample(rng, [0], -1)


# ------------------------------------------------------------------------------------------------ small formulas

def test_add_k_prob():
    assert add_k_prob(2, 10, 5, 1.0) == pytest.approx(0.2)
    assert add_k_prob(3, 10, 5, 0.0) == pytest.approx(0.3)
    assert add_k_prob(0, 0, 4, 1.0) == pytest.approx(0.25)
    assert sum(add_k_prob(c, 10, 5, 0.3) for c in (4, 3, 3, 0, 0)) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="0/0"):
        add_k_prob(0, 0, 4, 0.0)
    with pytest.raises(ValueError, match="k must be >= 0"):
        add_k_prob(1, 2, 4, -0.1)
    with pytest.raises(ValueError, match="cannot exceed"):
        add_k_prob(3, 2, 4, 1.0)
    with pytest.raises(ValueError, match="counts must be >= 0"):
        add_k_prob(-1, 2, 4, 1.0)


def test_perplexity_from_log_probs():
    assert perplexity_from_log_probs([math.log(0.5)] * 3) == pytest.approx(2.0)
    assert perplexity_from_log_probs([0.0]) == 1.0
    assert perplexity_from_log_probs([-math.inf, 0.0]) == math.inf
    for bad in ([], [[0.0]]):
        with pytest.raises(ValueError, match="non-empty 1-D"):
            perplexity_from_log_probs(bad)
    with pytest.raises(ValueError, match="natural-log probabilities"):
        perplexity_from_log_probs([0.5])


def test_unseen_share(char_data):
    _, train, heldout, _ = char_data
    shares = [unseen_share(train, heldout, n) for n in range(1, 7)]
    assert all(0 <= s <= 1 for s in shares)
    assert shares == sorted(shares) and shares[0] < 0.01 and shares[-1] > 0.1
    assert unseen_share(train, train[:1000], 4) == 0.0
    assert unseen_share(np.array([0, 1, 0, 1]), np.array([0, 1, 1, 0]), 2) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="fewer than n"):
        unseen_share(train, heldout[:2], 3)


# ------------------------------------------------------------------------------------------------ viz, explorer

def test_html_bar_chart():
    out = html_bar_chart([" ", "\n", "<b>"], [0.5, 0.25, 0.0], title="P & Q")
    assert "␣" in out and "⏎" in out and "&lt;b&gt;" in out and "<b>" not in out and "P &amp; Q" in out
    assert "width:100.0%" in out and "width:50.0%" in out and "width:0.0%" in out
    assert out == html_bar_chart([" ", "\n", "<b>"], [0.5, 0.25, 0.0], title="P & Q")
    assert visible_token("a b\t") == "a␣b⇥"
    with pytest.raises(ValueError, match="same length"):
        html_bar_chart(["a"], [0.1, 0.2])
    with pytest.raises(ValueError, match="finite"):
        html_bar_chart(["a"], [math.nan])


def _canonical(w):
    """A widget tree as plain data, without the random model ids."""
    if isinstance(w, widgets.Box) or isinstance(w, widgets.Stack):
        kids = [_canonical(c) for c in w.children]
    else:
        kids = []
    state = {k: v for k, v in w.get_state().items() if k not in ("children", "layout", "style")}
    return type(w).__name__, sorted(state.items(), key=lambda kv: kv[0]).__repr__(), kids


def test_explorer_structure_and_determinism(char_data):
    vocab, _, _, counts = char_data
    presets = ["the ", "def ", "import "]
    w = ngram_explorer(counts, vocab, presets, ns=(1, 2, 3), ks=(0.01, 1.0))
    controls, charts, own, note, live = w.children
    dropdown, n_slider, k_slider = controls.children
    assert isinstance(charts, widgets.Stack) and len(charts.children) == 3
    assert all(len(by_n.children) == 3 and all(len(by_k.children) == 2 for by_k in by_n.children)
               for by_n in charts.children)
    leaf = charts.children[1].children[2].children[1]
    assert isinstance(leaf, widgets.HTML) and 'P(next | &quot;f␣&quot;)' in leaf.value and "k=1" in leaf.value
    # every Stack is driven from the browser by a jslink from its control
    links = [x for x in list(widget_registry.values()) if isinstance(x, Link)]
    targets = {(id(l.source[0]), id(l.target[0])) for l in links}
    assert (id(dropdown), id(charts)) in targets
    for by_n in charts.children:
        assert (id(n_slider), id(by_n)) in targets and by_n.selected_index == n_slider.index
        for by_k in by_n.children:
            assert (id(k_slider), id(by_k)) in targets and by_k.selected_index == k_slider.index
    assert "kernel" in note.value
    # the live box recomputes in Python
    own.value = "clas"
    assert "&quot;as&quot;" in live.value
    n_slider.value = 1
    assert "P(next)" in live.value
    # same inputs, same widget state
    a = ngram_explorer(counts, vocab, presets, ns=(1, 2, 3), ks=(0.01, 1.0))
    b = ngram_explorer(counts, vocab, presets, ns=(1, 2, 3), ks=(0.01, 1.0))
    assert _canonical(a) == _canonical(b)


def test_explorer_word_level_and_mle(word_data):
    vocab, _, _, counts = word_data
    w = ngram_explorer(counts, vocab, ["the value of", "zzqx qqzx"], ns=(1, 2, 3), smoothing="mle",
                       tokenize=word_tokens)
    charts = w.children[1]
    assert len(charts.children[0].children[0].children) == 1  # MLE has no parameter
    assert "MLE is undefined" in charts.children[1].children[2].children[0].value
    kn = ngram_explorer(counts, vocab, ["if the"], ns=(2, 3), ks=(0.5, 1.0), smoothing="kneser-ney",
                        tokenize=word_tokens)
    assert "D=0.5" in kn.children[1].children[0].children[0].children[0].value


def test_explorer_errors(char_data):
    vocab, _, _, counts = char_data
    with pytest.raises(ValueError, match="ns must be"):
        ngram_explorer(counts, vocab, ["a"], ns=(1, 7))
    with pytest.raises(ValueError, match="presets"):
        ngram_explorer(counts, vocab, [])
    with pytest.raises(ValueError, match="Vocab"):
        ngram_explorer(counts, Vocab.build(list("ab")), ["a"])
    with pytest.raises(ValueError, match="discount"):
        ngram_explorer(counts, vocab, ["a"], ks=(0.5, 2.0), smoothing="kneser-ney")
    with pytest.raises(ValueError, match="smoothing"):
        ngram_explorer(counts, vocab, ["a"], smoothing="good-turing")
    with pytest.raises(TypeError, match="NgramCounts"):
        ngram_explorer(None, vocab, ["a"])
    assert isinstance(counts, NgramCounts)
