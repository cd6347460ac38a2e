"""labkit.checks.flash: the graded checks pass on the reference and fail, with a useful hint, on plausible
wrong tile updates."""
import pytest
import torch

from labkit.checks.flash import check_online_softmax_update, check_tiled_attention
from labkit.flash import online_softmax_update


# ------------------------------------------------------------------ plausible wrong implementations (mutants)

def no_rescale(m, l, acc, scores, v):  # forgets exp(m - m_new) everywhere
    m_new = torch.maximum(m, scores.amax(-1))
    p = torch.exp(scores - m_new[..., None])
    return m_new, l + p.sum(-1), acc + p @ v


def rescales_l_only(m, l, acc, scores, v):
    m_new = torch.maximum(m, scores.amax(-1))
    p = torch.exp(scores - m_new[..., None])
    return m_new, torch.exp(m - m_new) * l + p.sum(-1), acc + p @ v


def tile_max(m, l, acc, scores, v):  # consistent bookkeeping around the wrong maximum
    m_new = scores.amax(-1)
    alpha = torch.exp(m - m_new)
    p = torch.exp(scores - m_new[..., None])
    return m_new, alpha * l + p.sum(-1), alpha[..., None] * acc + p @ v


def normalises_inside(m, l, acc, scores, v):
    m_new, l_new, acc_new = online_softmax_update(m, l, acc, scores, v)
    return m_new, l_new, acc_new / l_new[..., None]


def forgets_the_tile_in_l(m, l, acc, scores, v):
    m_new, _, acc_new = online_softmax_update(m, l, acc, scores, v)
    return m_new, torch.exp(m - m_new) * l, acc_new


def returns_two(m, l, acc, scores, v):
    return online_softmax_update(m, l, acc, scores, v)[:2]


def blank(m, l, acc, scores, v):
    raise NotImplementedError("Exercise: ...")


def crashes(m, l, acc, scores, v):
    return m @ l @ acc


# ------------------------------------------------------------------ tests

def test_reference_passes(capsys):
    check_online_softmax_update(online_softmax_update)
    check_tiled_attention(online_softmax_update)
    out = capsys.readouterr().out
    assert "✓ online_softmax_update passes 5 checks" in out and "✓ tiled attention with your update" in out


@pytest.mark.parametrize("fn, message", [
    (no_rescale, "without rescaling it by exp"),
    (rescales_l_only, "You rescaled l but not acc"),
    (tile_max, "You returned this tile's max"),
    (normalises_inside, "You normalised acc by l inside the update"),
    (forgets_the_tile_in_l, "did not add this tile's"),
    (returns_two, r"should return a tuple \(m, l, acc\)"),
    (crashes, "raised RuntimeError"),
])
def test_update_check_catches(fn, message):
    with pytest.raises(AssertionError, match=message):
        check_online_softmax_update(fn)


@pytest.mark.parametrize("fn, message", [
    (no_rescale, "differs from naive attention"),
    (rescales_l_only, "differs from naive attention"),
    (tile_max, "inf or NaN"),
    (normalises_inside, "differs from naive attention"),
    (forgets_the_tile_in_l, "inf or NaN"),
    (crashes, "raised RuntimeError"),
])
def test_tiled_check_catches(fn, message):
    with pytest.raises(AssertionError, match=message):
        check_tiled_attention(fn)


@pytest.mark.parametrize("check", [check_online_softmax_update, check_tiled_attention])
def test_blank_lab_raises_not_implemented(check):
    with pytest.raises(NotImplementedError):
        check(blank)
