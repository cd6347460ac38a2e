"""labkit.checks.flash: the graded checks pass on the reference and fail, with a useful hint, on plausible
wrong tile updates."""
import math

import pytest
import torch

from labkit.checks.flash import (check_flash_forward, check_flash_padding, check_online_softmax_update,
                                 check_tiled_attention)
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


def no_masked_row_guard(m, l, acc, scores, v):  # exp(-inf - (-inf)) = NaN for a row that has seen nothing
    m_new = torch.maximum(m, scores.amax(-1))
    alpha = torch.exp(m - m_new)
    p = torch.exp(scores - m_new[..., None])
    return m_new, alpha * l + p.sum(-1), alpha[..., None] * acc + p @ v


def blank(m, l, acc, scores, v):
    raise NotImplementedError("Exercise: ...")


def crashes(m, l, acc, scores, v):
    return m @ l @ acc


# ------------------------------------------------------------------ tests

def test_reference_passes(capsys):
    check_online_softmax_update(online_softmax_update)
    check_tiled_attention(online_softmax_update)
    out = capsys.readouterr().out
    assert "✓ online_softmax_update passes 6 checks" in out and "✓ tiled attention with your update" in out


@pytest.mark.parametrize("fn, message", [
    (no_rescale, "without rescaling it by exp"),
    (rescales_l_only, "You rescaled l but not acc"),
    (tile_max, "You returned this tile's max"),
    (normalises_inside, "You normalised acc by l inside the update"),
    (forgets_the_tile_in_l, "did not add this tile's"),
    (returns_two, r"should return a tuple \(m, l, acc\)"),
    (crashes, "raised RuntimeError"),
    (no_masked_row_guard, r"got NaN\. A row whose scores are all -inf"),
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


# ------------------------------------------------------------------ the tiled loop

def tiled(q, k, v, causal=False, block_q=16, block_k=16, key_mask=None, *, update=online_softmax_update,
          offset=None, strict=False, use_mask=True, key_end=None, query_end=None, m0=-math.inf, skip=True,
          guard=True, lse_plus_m=True, whole=False):
    """A correct tiled loop, and with one argument changed, a plausible wrong one."""
    t_q, t_k = q.shape[-2], k.shape[-2]
    offset = t_k - t_q if offset is None else offset
    out, lse = q.new_zeros(*q.shape[:-1], v.shape[-1]), q.new_empty(q.shape[:-1])
    if whole:  # "tiles" of the full score matrix, sliced afterwards
        full = q @ k.transpose(-2, -1)
    for i0 in range(0, t_q if query_end is None else query_end(t_q, block_q), block_q):
        i1 = min(i0 + block_q, t_q)
        q_i = q[..., i0:i1, :] / math.sqrt(q.shape[-1])
        m, l = q.new_full(q_i.shape[:-1], m0), q.new_zeros(q_i.shape[:-1])
        acc = q.new_zeros(*q_i.shape[:-1], v.shape[-1])
        for j0 in range(0, t_k if key_end is None else key_end(t_k, block_k), block_k):
            if causal and skip and j0 > i1 - 1 + offset:
                break
            j1 = min(j0 + block_k, t_k)
            s = (full[..., i0:i1, j0:j1] / math.sqrt(q.shape[-1]) if whole
                 else q_i @ k[..., j0:j1, :].transpose(-2, -1))
            allowed = torch.ones(i1 - i0, j1 - j0, dtype=torch.bool)
            if causal:
                rows, cols = torch.arange(i0, i1)[:, None] + offset, torch.arange(j0, j1)[None, :]
                allowed = cols < rows if strict else cols <= rows
            if key_mask is not None and use_mask:
                allowed = allowed & key_mask[:, None, None, j0:j1]
            m, l, acc = update(m, l, acc, s.masked_fill(~allowed, -math.inf), v[..., j0:j1, :])
        seen = l > 0 if guard else torch.ones_like(l, dtype=torch.bool)
        out[..., i0:i1, :] = torch.where(seen[..., None], acc / torch.where(seen, l, 1.0)[..., None], 0.0)
        lse[..., i0:i1] = (m if lse_plus_m else 0) + torch.log(l)
    return out, lse


def variant(**kwargs):
    return lambda q, k, v, causal=False, block_q=16, block_k=16, key_mask=None: tiled(
        q, k, v, causal, block_q, block_k, key_mask, **kwargs)


def test_loop_checks_pass_on_a_correct_loop(capsys):
    check_flash_forward(tiled)
    check_flash_padding(tiled)
    out = capsys.readouterr().out
    assert "✓ flash_forward passes 7 checks" in out and "✓ flash_forward with padding passes 3 checks" in out


@pytest.mark.parametrize("fn, message", [
    (variant(offset=10 ** 6), "without the causal mask"),
    (variant(offset=0), "diagonal at the top-left corner"),
    (variant(strict=True), "hides the diagonal too"),
    (variant(key_end=lambda t, b: t - b + 1), "last, shorter key block"),
    (variant(query_end=lambda t, b: t - b + 1), "last, shorter query block"),
    (variant(m0=0.0), "running max started at 0"),
    (variant(skip=False), r"computed 40 score tiles where 26 are needed"),
    (variant(whole=True), r"built a \[50, 50\] tensor"),
    (variant(lse_plus_m=False), "lse is not"),
    (variant(update=tile_max), "inf or NaN"),
    (lambda q, k, v, causal, block_q, block_k: tiled(q, k, v, causal, q.shape[-2], block_k), "more than block_q = 8 query rows"),
    (lambda q, k, v, causal, block_q, block_k: tiled(q, k, v, causal, block_q, block_k)[0], r"tuple \(out, lse\)"),
    (lambda q, k, v, causal, block_q, block_k: tiled(q.mul_(2) / 2, k, v, causal, block_q, block_k), "in place"),
])
def test_loop_check_catches(fn, message, capsys):
    with pytest.raises(AssertionError, match=message):
        check_flash_forward(fn)
    assert "✓" not in capsys.readouterr().out


@pytest.mark.parametrize("fn, message", [
    (variant(use_mask=False), "ignores key_mask"),
    (variant(guard=False), r"may see no key at all .* divide by l only where l > 0"),
    (variant(update=no_masked_row_guard), "exercise 1's masked-row case"),
    (lambda q, k, v, causal=False, block_q=16, block_k=16, mask=None: tiled(q, k, v, causal, block_q, block_k, mask),
     "unexpected keyword argument 'key_mask'"),
])
def test_padding_check_catches(fn, message):
    with pytest.raises(AssertionError, match=message):
        check_flash_padding(fn)


def test_loop_checks_raise_not_implemented_on_the_blank_lab():
    def stub(*args, **kwargs):
        raise NotImplementedError("Exercise: ...")
    for check in (check_flash_forward, check_flash_padding):
        with pytest.raises(NotImplementedError):
            check(stub)
