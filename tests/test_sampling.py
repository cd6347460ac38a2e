"""labkit.sampling: decoding rules, their invariants, the generation loop, and the explorer widget."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from ipywidgets.widgets.widget import _instances as widget_registry
from ipywidgets.widgets.widget_link import Link

from labkit.llama import Llama
from labkit.models import load_smollm2
from labkit.sampling import (apply_temperature, generate, greedy, next_token_explorer, probabilities, sample_next,
                             top_k_filter, top_p_filter)



def random_logits(*shape, seed=0, scale=3.0):
    return scale * torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def kept(logits):
    return set(torch.nonzero(torch.isfinite(logits)).flatten().tolist())


# ------------------------------------------------------------------------------------------------ the filters

def test_greedy_and_temperature():
    z = torch.tensor([[1.0, 3.0, 2.0], [0.5, 0.1, 0.2]])
    assert greedy(z).tolist() == [1, 0]
    assert torch.equal(apply_temperature(z, 2.0), z / 2)
    p = probabilities(z, temperature=0.5)
    assert torch.allclose(p, torch.softmax(2 * z, -1)) and torch.allclose(p.sum(-1), torch.ones(2))
    assert torch.equal(probabilities(z, temperature=0), torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]))


def test_top_k_keeps_the_k_largest():
    z = torch.tensor([0.3, 2.0, -1.0, 1.5, 0.9])
    assert kept(top_k_filter(z, 2)) == {1, 3}
    assert torch.equal(top_k_filter(z, 5), z) and torch.equal(top_k_filter(z, 50), z)
    out = top_k_filter(z, 3)
    assert torch.equal(out[[1, 3, 4]], z[[1, 3, 4]]) and torch.isneginf(out[[0, 2]]).all()
    assert kept(top_k_filter(torch.tensor([1.0, 2.0, 2.0, 0.0]), 1)) == {1, 2}  # ties with the k-th are kept
    rows = top_k_filter(torch.tensor([[3.0, 2.0, 1.0], [1.0, 2.0, 3.0]]), 1)  # each row on its own
    assert torch.isfinite(rows).tolist() == [[True, False, False], [False, False, True]]


def test_top_p_keeps_the_smallest_nucleus():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    z = probs.log()
    assert kept(top_p_filter(z, 0.5)) == {0}            # 0.5 alone reaches p
    assert kept(top_p_filter(z, 0.6)) == {0, 1}         # the token that crosses p is kept
    assert kept(top_p_filter(z, 0.8)) == {0, 1}
    assert kept(top_p_filter(z, 0.81)) == {0, 1, 2}
    assert kept(top_p_filter(z, 1.0)) == {0, 1, 2, 3}
    assert kept(top_p_filter(z, 1e-9)) == {0}
    shuffled = z[[2, 0, 3, 1]]  # the vocabulary order must not matter
    assert kept(top_p_filter(shuffled, 0.6)) == {1, 3}
    out = top_p_filter(z, 0.6)
    assert torch.equal(out[:2], z[:2]) and torch.isneginf(out[2:]).all()


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 40), st.floats(0.01, 0.99), st.integers(0, 10_000))
def test_top_p_property(vocab, p, seed):
    z = random_logits(vocab, seed=seed)
    probs = torch.softmax(z, -1)
    keep = kept(top_p_filter(z, p))
    mass = float(probs[list(keep)].sum())
    assert mass >= p - 1e-12                                           # enough mass...
    smallest = min(keep, key=lambda i: probs[i])
    assert mass - float(probs[smallest]) < p                           # ...and no token to spare
    assert all(probs[i] <= probs[smallest] for i in set(range(vocab)) - keep)  # the most likely ones


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 30), st.integers(1, 35), st.integers(0, 10_000))
def test_top_k_property(vocab, k, seed):
    z = random_logits(vocab, seed=seed)
    keep = kept(top_k_filter(z, k))
    assert len(keep) == min(k, vocab)
    assert keep == set(torch.argsort(z, descending=True)[:k].tolist())


# ------------------------------------------------------------------------------------------------ invariants

def test_top_k_one_and_tiny_top_p_equal_greedy():
    z = random_logits(64, 500, seed=1)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        assert torch.equal(sample_next(z, 1.0, top_k=1, generator=g), greedy(z))
        assert torch.equal(sample_next(z, 1.0, top_p=1e-9, generator=g), greedy(z))
        assert torch.equal(sample_next(z, 0.7, top_k=1, top_p=0.5, generator=g), greedy(z))


def test_temperature_to_zero_approaches_greedy():
    z = random_logits(32, 200, seed=2)
    z[torch.arange(32), z.argmax(-1)] += 1.0  # a clear winner in each row: logit gap >= 1
    errors = [float((probabilities(z, t) - probabilities(z, 0)).abs().max()) for t in (1.0, 0.3, 0.1, 0.01)]
    assert all(a > b for a, b in zip(errors, errors[1:])) and errors[-1] < 1e-6, errors
    draws = sample_next(z, 1e-3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(draws, greedy(z))
    assert torch.equal(sample_next(z, 0.0), greedy(z))  # temperature 0 is greedy, no generator needed


@pytest.mark.parametrize("settings_", [dict(temperature=1.0), dict(temperature=0.6), dict(temperature=1.5, top_k=4),
                                       dict(temperature=1.0, top_p=0.8), dict(temperature=0.8, top_k=5, top_p=0.9)])
def test_sampled_frequencies_match_the_distribution(settings_):
    # 40,000 seeded draws: each frequency has standard error <= 0.0025, so 0.015 is a 6-sigma margin (and the
    # seed makes the outcome fixed anyway).
    z = torch.tensor([2.0, 1.2, 0.9, 0.3, 0.0, -0.5, -1.0, -2.0], dtype=torch.float64)
    n = 40_000
    draws = sample_next(z.expand(n, -1), generator=torch.Generator().manual_seed(123), **settings_)
    freq = torch.bincount(draws, minlength=8).double() / n
    expected = probabilities(z, **settings_)
    assert (freq - expected).abs().max() < 0.015, (freq, expected)
    assert (freq[expected == 0] == 0).all()  # filtered tokens are never drawn
    if "top_k" not in settings_ and "top_p" not in settings_:
        assert torch.allclose(expected, torch.softmax(z / settings_["temperature"], -1))


def test_sampling_is_reproducible_and_seed_dependent():
    z = random_logits(16, 1000, seed=3, scale=1.0)
    a = sample_next(z, generator=torch.Generator().manual_seed(7))
    b = sample_next(z, generator=torch.Generator().manual_seed(7))
    c = sample_next(z, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c) and a.shape == (16,)


# ------------------------------------------------------------------------------------------------ errors

def test_clear_errors():
    z = torch.zeros(2, 5)
    with pytest.raises(ValueError, match=r"top_k must be >= 1"):
        top_k_filter(z, 0)
    with pytest.raises(TypeError, match="top_k must be an int"):
        top_k_filter(z, 2.5)
    for bad in (0.0, -0.1, 1.5, True):
        with pytest.raises(ValueError, match=r"top_p must be a number in \(0, 1\]"):
            top_p_filter(z, bad)
    with pytest.raises(ValueError, match=r"temperature must be a finite number >= 0"):
        probabilities(z, temperature=-1.0)
    with pytest.raises(ValueError, match="greedy"):
        apply_temperature(z, 0)
    with pytest.raises(TypeError, match="floating point"):
        greedy(torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="non-empty last"):
        greedy(torch.zeros(2, 0))
    with pytest.raises(TypeError, match="torch.Tensor"):
        top_p_filter([0.1, 0.2], 0.5)
    with pytest.raises(TypeError, match="seeded torch.Generator"):
        sample_next(z, 1.0)
    with pytest.raises(ValueError, match="top_k must be >= 1"):
        sample_next(z, 0.0, top_k=0)  # checked even when greedy ignores it


# ------------------------------------------------------------------------------------------------ generate

class CountingModel:
    """A stand-in model: after token t it strongly predicts t + 1 (mod V); counts its calls."""

    def __init__(self, vocab=10):
        self.vocab, self.calls = vocab, []

    def __call__(self, ids):
        self.calls.append(ids.shape[1])
        return 10 * torch.nn.functional.one_hot((ids + 1) % self.vocab, self.vocab).float()


def test_generate_loop_recomputes_the_prefix():
    model = CountingModel()
    out = generate(model, torch.tensor([[3], [7]]), 4)
    assert out.tolist() == [[3, 4, 5, 6, 7], [7, 8, 9, 0, 1]]
    assert model.calls == [1, 2, 3, 4]  # no cache: the whole sequence, every step
    assert torch.equal(generate(model, torch.tensor([[3]]), 0), torch.tensor([[3]]))


def test_generate_stops_at_eos_and_pads_finished_rows():
    model = CountingModel()
    out = generate(model, torch.tensor([[3], [6]]), 6, eos_id=8)
    assert out.tolist() == [[3, 4, 5, 6, 7, 8], [6, 7, 8, 8, 8, 8]]  # stops when both are done
    model = CountingModel()
    out = generate(model, torch.tensor([[6]]), 6, eos_id=8)
    assert out.tolist() == [[6, 7, 8]] and len(model.calls) == 2  # stops once every row is finished


def test_generate_errors():
    model = CountingModel()
    with pytest.raises(ValueError, match=r"ids must be an integer tensor \[batch, time\]"):
        generate(model, torch.tensor([1, 2]), 3)
    with pytest.raises(ValueError, match="max_new_tokens must be an int >= 0"):
        generate(model, torch.tensor([[1]]), -1)
    with pytest.raises(TypeError, match="seeded torch.Generator"):
        generate(model, torch.tensor([[1]]), 3, temperature=1.0)
    with pytest.raises(ValueError, match=r"model\(ids\) must return logits \[B, T, vocab\]"):
        generate(lambda ids: torch.zeros(3), torch.tensor([[1]]), 2)


@pytest.fixture(scope="module")
def smollm2():
    tokenizer, hf = load_smollm2()
    return tokenizer, hf, Llama.from_pretrained()


@pytest.mark.slow  # loads SmolLM2
def test_greedy_chat_reply_equals_transformers_generate(smollm2):
    tokenizer, hf, model = smollm2
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                         tokenize=False, add_generation_prompt=True)
    ids = tokenizer(chat, return_tensors="pt").input_ids
    ours = generate(model, ids, 16, eos_id=tokenizer.eos_token_id)
    theirs = hf.generate(ids, max_new_tokens=16, do_sample=False)
    assert torch.equal(ours, theirs), (tokenizer.decode(ours[0]), tokenizer.decode(theirs[0]))
    assert "Paris" in tokenizer.decode(ours[0, ids.shape[1]:])


@pytest.mark.slow  # loads SmolLM2
def test_seeded_sampling_from_the_model_is_reproducible(smollm2):
    tokenizer, _, model = smollm2
    ids = tokenizer("Once upon a time", return_tensors="pt").input_ids.repeat(2, 1)
    a = generate(model, ids, 5, temperature=1.0, top_p=0.9, generator=torch.Generator().manual_seed(0))
    b = generate(model, ids, 5, temperature=1.0, top_p=0.9, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.shape == (2, ids.shape[1] + 5)
    assert not torch.equal(a[0], a[1])  # two rows, two different draws


# ------------------------------------------------------------------------------------------------ explorer

def test_explorer_precomputes_every_view_and_links_them():
    logits = {"a": random_logits(30, seed=4), "b": random_logits(30, seed=5)}
    w = next_token_explorer(logits, decode=lambda i: f"tok{i}", temperatures=(0.5, 1.0), top_ks=(None, 3),
                            top_ps=(1.0, 0.5), top=5)
    (prompt_box, t_slider), (k_slider, p_slider) = w.children[0].children, w.children[1].children
    charts = w.children[2]
    assert len(charts.children) == 2 and t_slider.index == 1
    leaf = charts.children[1].children[0].children[1].children[1]  # prompt b, T=0.5, top-k 3, top-p 0.5
    assert "T=0.5, top-k=3, top-p=0.5" in leaf.value and "P(next | &#x27;b&#x27;)" in leaf.value
    z = apply_temperature(logits["b"], 0.5)
    n_kept = len(kept(top_p_filter(top_k_filter(z, 3), 0.5)))
    assert f"{n_kept:,} of 30 tokens can be drawn" in leaf.value
    links = [x for x in list(widget_registry.values()) if isinstance(x, Link)]
    targets = {(id(link.source[0]), id(link.target[0])) for link in links}
    assert (id(prompt_box), id(charts)) in targets
    for by_t in charts.children:
        assert (id(t_slider), id(by_t)) in targets
        for by_k in by_t.children:
            assert (id(k_slider), id(by_k)) in targets
            for by_p in by_k.children:
                assert (id(p_slider), id(by_p)) in targets
    again = next_token_explorer(logits, decode=lambda i: f"tok{i}", temperatures=(0.5, 1.0), top_ks=(None, 3),
                                top_ps=(1.0, 0.5), top=5)
    assert again.children[2].children[1].children[0].children[1].children[1].value == leaf.value


def test_explorer_errors():
    z = {"a": torch.zeros(5)}
    with pytest.raises(ValueError, match="non-empty mapping"):
        next_token_explorer({}, str)
    with pytest.raises(ValueError, match="must be 1-D"):
        next_token_explorer({"a": torch.zeros(2, 5)}, str)
    with pytest.raises(ValueError, match="temperatures"):
        next_token_explorer(z, str, temperatures=(0.0, 1.0))
    with pytest.raises(ValueError, match="top_p"):
        next_token_explorer(z, str, top_ps=(0.0,))
