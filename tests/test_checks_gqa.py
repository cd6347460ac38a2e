"""labkit.checks.gqa: the lab's checks pass the reference and fail plausible mistakes with a useful message."""
import pytest
import torch

from labkit import gqa
from labkit.checks.gqa import check_kv_head_of_query, check_pool_in_model, check_pool_kv_heads

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def test_reference_passes(capsys):
    check_kv_head_of_query(gqa.kv_head_of_query)
    check_pool_kv_heads(gqa.pool_kv_heads)
    assert "✓ kv_head_of_query passes" in capsys.readouterr().out


def test_stub_raises_not_implemented():
    def stub(*args):
        raise NotImplementedError("Exercise")
    with pytest.raises(NotImplementedError):
        check_kv_head_of_query(stub)
    with pytest.raises(NotImplementedError):
        check_pool_kv_heads(stub)


def test_cyclic_head_map_is_explained():
    with pytest.raises(AssertionError, match="cycles through the kv heads"):
        check_kv_head_of_query(lambda n, k: [h % k for h in range(n)])
    with pytest.raises(AssertionError, match="list of 9 ints"):
        check_kv_head_of_query(lambda n, k: None)


def test_sum_interleave_and_shape_mistakes_are_explained():
    def summed(w, n_kv, g):
        return gqa.pool_kv_heads(w, n_kv, g) * (n_kv // g)

    def interleaved(w, n_kv, g):
        d = w.shape[0] // n_kv
        return w.reshape(n_kv // g, g, d, -1).mean(0).reshape(g * d, -1)

    def columns(w, n_kv, g):
        return w.reshape(w.shape[0], g, -1).mean(2)

    with pytest.raises(AssertionError, match="times too large"):
        check_pool_kv_heads(summed)
    with pytest.raises(AssertionError, match="interleaved"):
        check_pool_kv_heads(interleaved)
    with pytest.raises(AssertionError, match="expected shape"):
        check_pool_kv_heads(columns)
    with pytest.raises(AssertionError, match="raised RuntimeError"):
        check_pool_kv_heads(lambda w, n, g: w.reshape(7, -1, 3))


@pytest.mark.slow  # loads SmolLM2
def test_pool_in_model():
    from labkit.llama import Llama

    model = Llama.from_pretrained()
    check_pool_in_model(gqa.pool_kv_heads, model)

    def interleaved(w, n_kv, g):
        d = w.shape[0] // n_kv
        return w.reshape(n_kv // g, g, d, -1).mean(0).reshape(g * d, -1)

    with pytest.raises(AssertionError, match="SmolLM2 again"):
        check_pool_in_model(interleaved, model)
    with pytest.raises(AssertionError, match="labkit's conversion"):
        check_pool_in_model(lambda w, n, g: gqa.pool_kv_heads(w, n, g) * (1 + (n == 3)), model)
    with pytest.raises(AssertionError, match="labkit's model"):
        check_pool_in_model(gqa.pool_kv_heads, torch.nn.Linear(2, 2))


# ------------------------------------------------------------------ grouped-query attention and MLA's absorbed form

import math  # noqa: E402

from labkit.attention import grouped_query_attention  # noqa: E402
from labkit.checks.gqa import check_absorbed_attention, check_gqa_attention  # noqa: E402


def grouped(q, k, v, causal=True, *, cycle=False, offset=None, scale=None, naive_softmax=False):
    """Grouped attention without copying k and v; with one argument changed, a plausible wrong one."""
    B, H, Tq, D = q.shape
    H_kv, Tk = k.shape[1], k.shape[2]
    g = H // H_kv
    qg = q.reshape(B, g, H_kv, Tq, D).transpose(1, 2) if cycle else q.reshape(B, H_kv, g, Tq, D)
    scores = qg @ k[:, :, None].transpose(-2, -1) / (math.sqrt(D) if scale is None else scale)
    if causal:
        allowed = torch.ones(Tq, Tk, dtype=torch.bool).tril(Tk - Tq if offset is None else offset)
        scores = scores.masked_fill(~allowed, -math.inf)
    weights = scores.exp() / scores.exp().sum(-1, keepdim=True) if naive_softmax else scores.softmax(-1)
    out = weights @ v[:, :, None]
    return (out.transpose(1, 2) if cycle else out).reshape(B, H, Tq, D)


def absorbed(q, c, w_uk, w_uv, causal=True, *, scale=None, rebuild=False, values_from_uk=False):
    B, H, Tq, D = q.shape
    Tk, r = c.shape[1], c.shape[2]
    H_kv = w_uk.shape[0] // D
    if rebuild:
        k = (c @ w_uk.T).view(B, Tk, H_kv, D).transpose(1, 2)
        v = (c @ w_uv.T).view(B, Tk, H_kv, D).transpose(1, 2)
        return grouped_query_attention(q, k, v, causal=causal)
    uk = w_uk.view(H_kv, D, r).repeat_interleave(H // H_kv, dim=0)
    uv = (w_uk if values_from_uk else w_uv).view(H_kv, D, r).repeat_interleave(H // H_kv, dim=0)
    scores = (q @ uk) @ c[:, None].transpose(-2, -1) / (math.sqrt(D) if scale is None else scale)
    if causal:
        scores = scores.masked_fill(~torch.ones(Tq, Tk, dtype=torch.bool).tril(Tk - Tq), -math.inf)
    return (scores.softmax(-1) @ c[:, None]) @ uv.transpose(-2, -1)


def test_attention_checks_pass_on_correct_answers(capsys):
    check_gqa_attention(grouped)
    check_absorbed_attention(absorbed)
    out = capsys.readouterr().out
    assert "✓ gqa_attention passes 6 checks" in out and "✓ absorbed_attention passes 4 checks" in out


@pytest.mark.parametrize("fn, message", [
    (lambda q, k, v, causal: grouped(q, k, v, causal, cycle=True), r"h % n_kv_heads"),
    (lambda q, k, v, causal: grouped(q, k, v, causal, offset=0), "top-left corner"),
    (lambda q, k, v, causal: grouped(q, k, v, False), "no causal mask"),
    (lambda q, k, v, causal: grouped(q, k, v, causal, offset=-1), "hides the diagonal"),
    (lambda q, k, v, causal: grouped(q, k, v, causal, scale=1.0), "not scaled"),
    (lambda q, k, v, causal: grouped(q, k, v, causal, scale=math.sqrt(q.shape[1] * q.shape[-1])),
     r"1/sqrt\(n_heads \* head_dim\)"),
    (lambda q, k, v, causal: grouped(q, k, v, causal, naive_softmax=True), "exp overflows float32"),
    (lambda q, k, v, causal: grouped_query_attention(q, k, v, causal), "repeated for every query head"),
    (lambda q, k, v, causal: grouped(q, k, v, causal)[:, :, :, :1], "expected shape"),
    (lambda q, k, v, is_causal: grouped(q, k, v, is_causal), "unexpected keyword argument 'causal'"),
    (lambda q, k, v, causal: grouped(q.mul_(1.5) / 1.5, k, v, causal), "in place"),
])
def test_gqa_check_catches(fn, message, capsys):
    with pytest.raises(AssertionError, match=message):
        check_gqa_attention(fn)
    assert "✓" not in capsys.readouterr().out


@pytest.mark.parametrize("fn, message", [
    (lambda q, c, uk, uv, causal: absorbed(q, c, uk, uv, causal, rebuild=True), "rebuilt the keys or values"),
    (lambda q, c, uk, uv, causal: absorbed(q, c, uk, uv, causal, scale=math.sqrt(c.shape[-1])), r"1/sqrt\(r\)"),
    (lambda q, c, uk, uv, causal: absorbed(q, c, uk, uv, causal, values_from_uk=True), "w_uk for the values"),
    (lambda q, c, uk, uv, causal: absorbed(q, c, uk, uv, False), "no causal mask"),
    (lambda q, c, uk, uv, causal: absorbed(q, c, uk, uv, causal) * 1.1, "differs from attention over the rebuilt"),
])
def test_absorbed_check_catches(fn, message, capsys):
    with pytest.raises(AssertionError, match=message):
        check_absorbed_attention(fn)
    assert "✓" not in capsys.readouterr().out


def test_attention_checks_raise_not_implemented_on_the_blank_lab():
    def stub(*args, **kwargs):
        raise NotImplementedError("Exercise")
    for check in (check_gqa_attention, check_absorbed_attention):
        with pytest.raises(NotImplementedError):
            check(stub)
