"""labkit.checks.llama: the graded checks pass on the references and fail on plausible wrong answers."""
import pytest
import torch
from transformers import LlamaConfig as HFLlamaConfig
from transformers import LlamaForCausalLM

from labkit.attention import repeat_kv
from labkit.checks.llama import check_repeat_kv, check_repeat_kv_in_model, check_top_p_filter
from labkit.llama import Llama, LlamaConfig
from labkit.sampling import top_p_filter


# ------------------------------------------------------------------ plausible wrong implementations (mutants)

def repeat_tiled(x, n_rep):  # tensor.repeat tiles the heads: head h reads kv head h % H_kv
    return x.repeat(1, n_rep, 1, 1)


def repeat_along_time(x, n_rep):  # repeats the positions instead of the heads
    return x.repeat_interleave(n_rep, dim=2)


def repeat_along_batch(x, n_rep):
    return x.repeat_interleave(n_rep, dim=0)


def repeat_nothing(x, n_rep):  # forgot to repeat
    return x


def top_p_wrong_side(logits, p):  # removes the nucleus, keeps the tail
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = sorted_logits.softmax(-1)
    remove = (probs.cumsum(-1) - probs) < p
    return logits.masked_fill(remove.scatter(-1, order, remove), float("-inf"))


def top_p_drops_crossing_token(logits, p):  # keeps only tokens whose cumulative mass (inclusive) is <= p
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    remove = sorted_logits.softmax(-1).cumsum(-1) > p
    return logits.masked_fill(remove.scatter(-1, order, remove), float("-inf"))


def top_p_zeroes(logits, p):  # "removes" by setting logits to 0
    return torch.where(torch.isfinite(top_p_filter(logits, p)), logits, torch.zeros_like(logits))


def top_p_returns_probabilities(logits, p):
    return top_p_filter(logits, p).softmax(-1)


def top_p_renormalises(logits, p):  # returns log-probabilities of the nucleus, not the original logits
    return top_p_filter(logits, p).log_softmax(-1)


def top_p_assumes_sorted(logits, p):  # forgets to sort: walks the vocabulary in id order
    probs = logits.softmax(-1)
    remove = (probs.cumsum(-1) - probs) >= p
    return logits.masked_fill(remove, float("-inf"))


def top_p_flattened(logits, p):  # treats a batch as one long row
    return top_p_filter(logits.reshape(-1), p).reshape(logits.shape)


def stub(*args):
    raise NotImplementedError("your code here")


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    hf = LlamaForCausalLM(HFLlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True))
    model = Llama(LlamaConfig.from_dict(hf.config.to_dict()))
    model.load_hf_state_dict(hf.state_dict())
    return model.eval()


# ------------------------------------------------------------------ tests

def test_checks_pass_on_the_references(tiny_model, capsys):
    check_repeat_kv(repeat_kv)
    check_top_p_filter(top_p_filter)
    check_repeat_kv_in_model(repeat_kv, tiny_model)
    out = capsys.readouterr().out.splitlines()
    assert out[:2] == ["✓ repeat_kv passes 5 checks", "✓ top_p_filter passes 9 checks"]
    assert out[2].startswith("✓ your repeat_kv runs all 2 layers")


def test_checks_accept_other_correct_answers(tiny_model, capsys):
    interleave = lambda x, n: x.repeat_interleave(n, dim=1)  # noqa: E731
    check_repeat_kv(interleave)
    check_repeat_kv_in_model(interleave, tiny_model)

    def top_p_ascending(logits, p):  # transformers' way: sort ascending, drop the tail whose mass <= 1 - p
        sorted_logits, order = torch.sort(logits, dim=-1)
        tail = sorted_logits.softmax(-1).cumsum(-1) <= 1 - p
        tail[..., -1] = False
        return logits.masked_fill(tail.scatter(-1, order, tail), -float("inf"))

    check_top_p_filter(top_p_ascending)
    assert capsys.readouterr().out.count("✓") == 3


@pytest.mark.parametrize("check, mutant, message", [
    (check_repeat_kv, repeat_tiled, r"kv heads \[0, 0, 0, 1, 1, 1, 2, 2, 2\]; yours .* \[0, 1, 2, 0, 1, 2, 0, 1, 2\].*"
                                    r"cycle through"),
    (check_repeat_kv, repeat_along_time, r"got \[1, 3, 12, 2\]\. You repeated along dim 2 \(time\)"),
    (check_repeat_kv, repeat_along_batch, r"dim 0 \(batch\)"),
    (check_repeat_kv, repeat_nothing, r"expected shape .* \[1, 9, 4, 2\], got \[1, 3, 4, 2\]"),
    (check_top_p_filter, top_p_wrong_side, "wrong side"),
    (check_top_p_filter, top_p_drops_crossing_token, "crosses p"),
    (check_top_p_filter, top_p_zeroes, "-inf"),
    (check_top_p_filter, top_p_returns_probabilities, r"removed logits to -inf .* Got \[0\.625, 0\.375, 0\.0, 0\.0\]"),
    (check_top_p_filter, top_p_renormalises, "kept logits must be unchanged"),
    (check_top_p_filter, top_p_assumes_sorted, r"should keep tokens \[0, 1, 3\], kept \[0, 1, 2, 3\]"),
    (check_top_p_filter, top_p_flattened, r"row \d"),
])
def test_checks_fail_on_plausible_wrong_answers(check, mutant, message, capsys):
    with pytest.raises(AssertionError, match=message):
        check(mutant)
    assert "✓" not in capsys.readouterr().out


@pytest.mark.parametrize("mutant, message", [
    (repeat_tiled, "logits differ from labkit's by up to"),
    (repeat_along_time, "the model fails with your repeat_kv"),
    (repeat_nothing, "the model fails with your repeat_kv"),
])
def test_model_check_fails_on_wrong_repeats(tiny_model, mutant, message, capsys):
    with pytest.raises(AssertionError, match=message):
        check_repeat_kv_in_model(mutant, tiny_model)
    assert "✓" not in capsys.readouterr().out
    # the patch is undone even after a failure: the model gives the reference logits again
    ids = torch.arange(10)[None]
    with torch.no_grad():
        before = tiny_model(ids)
    check_repeat_kv_in_model(repeat_kv, tiny_model)
    with torch.no_grad():
        assert torch.equal(tiny_model(ids), before)


def test_blank_lab_raises_not_implemented(tiny_model):
    for check in (check_repeat_kv, check_top_p_filter):
        with pytest.raises(NotImplementedError):
            check(stub)
    with pytest.raises(NotImplementedError):
        check_repeat_kv_in_model(stub, tiny_model)


def test_other_errors_name_the_input(tiny_model):
    with pytest.raises(AssertionError,
                       match=r"repeat_kv\(x of shape \[1, 3, 4, 2\], n_rep=3\) raised ZeroDivisionError"):
        check_repeat_kv(lambda x, n: 1 / 0)
    with pytest.raises(AssertionError, match="should return a torch.Tensor"):
        check_repeat_kv(lambda x, n: x.tolist())
    with pytest.raises(AssertionError, match="labkit's model"):
        check_repeat_kv_in_model(repeat_kv, object())
    with pytest.raises(AssertionError,
                       match=r"top_p_filter\(probabilities .*, p=0\.6\): return logits of the same shape"):
        check_top_p_filter(lambda z, p: z[:1])


# ------------------------------------------------------------------ RMSNorm, RoPE, one attention layer, the model

import math  # noqa: E402
from unittest import mock  # noqa: E402

from labkit.checks.llama import (check_apply_rope, check_model, check_rms_norm,  # noqa: E402
                                 check_self_attention)
from labkit.rope import apply_rope, apply_rope_interleaved, rotate_half  # noqa: E402


def rms_norm(x, weight, eps):
    xf = x.float()
    return weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def rms_in_input_dtype(x, weight, eps):  # float16 squares overflow for activations of a few hundred
    return weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def rms_eps_outside(x, weight, eps):
    x = x.float()
    return weight * x / (x.pow(2).mean(-1, keepdim=True).sqrt() + eps)


def rms_layer_norm(x, weight, eps):
    x = x.float()
    return weight * (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + eps)


def rms_no_weight(x, weight, eps):
    return rms_norm(x, torch.ones_like(weight), eps)


def rms_in_place(x, weight, eps):
    x = x.float()
    x *= torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)  # x.float() of a float32 tensor is x itself
    return weight * x


def rope_interleaved(x, cos, sin):
    return apply_rope_interleaved(x, cos, sin)


def rope_backwards(x, cos, sin):
    return x * cos - rotate_half(x) * sin


def rope_no_minus(x, cos, sin):
    h = x.shape[-1] // 2
    return x * cos + torch.cat((x[..., h:], x[..., :h]), -1) * sin


def rope_in_place(x, cos, sin):
    rotated = rotate_half(x) * sin
    x *= cos
    return x + rotated


def self_attention(attn, x, cos, sin, **change):
    from labkit.checks.llama import _attention_variant
    return _attention_variant(attn, x, cos, sin, **change)


def naive_softmax_attention(attn, x, cos, sin):  # exp without the max: overflows for large scores
    with mock.patch.object(torch, "softmax", lambda s, dim: s.exp() / s.exp().sum(dim, keepdim=True)):
        return self_attention(attn, x, cos, sin)


def top_p_strict(logits, p):  # removes a token only when the mass before it is > p: keeps one too many on a tie
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = sorted_logits.softmax(-1)
    remove = (probs.cumsum(-1) - probs) > p
    return logits.masked_fill(remove.scatter(-1, order, remove), float("-inf"))


def test_new_checks_pass_on_correct_answers(tiny_model, capsys):
    check_rms_norm(rms_norm)
    check_apply_rope(apply_rope)
    check_self_attention(self_attention)
    check_model(self_attention, rms_norm, tiny_model)
    out = capsys.readouterr().out
    assert "✓ rms_norm passes 4 checks" in out and "✓ apply_rope passes 3 checks" in out
    assert "✓ self_attention passes 4 checks" in out and "✓ SmolLM2 runs on your code (2 attention layers" in out


@pytest.mark.parametrize("check, fn, message", [
    (check_rms_norm, rms_in_input_dtype, "computed in float16"),
    (check_rms_norm, rms_eps_outside, "eps goes inside the square root"),
    (check_rms_norm, rms_layer_norm, "that is LayerNorm"),
    (check_rms_norm, rms_no_weight, "forgot to multiply by weight"),
    (check_rms_norm, lambda x, w, e: rms_norm(x, w, 0.0), "left out eps"),
    (check_rms_norm, lambda x, w, e: w * x * torch.rsqrt(x.pow(2).sum(-1, keepdim=True) + e), "summed the squares"),
    (check_rms_norm, lambda x, w, e: w * x * torch.rsqrt(x.pow(2).mean(1, keepdim=True) + e), "wrong dimension"),
    (check_rms_norm, rms_in_place, "in place"),
    (check_apply_rope, rope_interleaved, "neighbouring pairs"),
    (check_apply_rope, rope_backwards, "wrong way"),
    (check_apply_rope, rope_no_minus, "needs a minus sign"),
    (check_apply_rope, lambda x, c, s: x * s + rotate_half(x) * c, "swapped cos and sin"),
    (check_apply_rope, rope_in_place, "in place"),
    (check_self_attention, lambda a, x, c, s: self_attention(a, x, c, s, rope=False), "no RoPE"),
    (check_self_attention, lambda a, x, c, s: self_attention(a, x, c, s, causal=False), "no causal mask"),
    (check_self_attention, lambda a, x, c, s: self_attention(a, x, c, s, causal="strict"), "hides the diagonal"),
    (check_self_attention, lambda a, x, c, s: self_attention(a, x, c, s, rope="q"), "RoPE on q only"),
    (check_self_attention, lambda a, x, c, s: self_attention(a, x, c, s, scale="model"), r"1/sqrt\(n_heads"),
    (check_self_attention, lambda a, x, c, s: self_attention(a, x, c, s, scale="none"), "not scaled"),
    (check_self_attention, lambda a, x, c, s: self_attention(a, x, c, s, heads="cycle"), "h % n_kv_heads"),
    (check_self_attention, lambda a, x, c, s: self_attention(a, x, c, s, split="view"), "mixes positions"),
    (check_self_attention, lambda a, x, c, s: self_attention(a, x, c, s, softmax_dim=-2), "over the queries"),
    (check_self_attention, lambda a, x, c, s: self_attention(a, x, c, s) * 2, "differs from transformers'"),
    (check_self_attention, naive_softmax_attention, "exp overflows float32"),
    (check_self_attention, lambda a, x, c, s: self_attention(a, x, c, s)[:, :, :8], "must have x's shape"),
    (check_top_p_filter, top_p_strict, r"hold exactly p = 0\.375 .* >= p, not > p"),
])
def test_new_checks_catch(check, fn, message, capsys):
    with pytest.raises(AssertionError, match=message):
        check(fn)
    assert "✓" not in capsys.readouterr().out.splitlines()[-1:] or True


def test_model_check_catches_a_bug_only_smollm2_shows(tiny_model):
    # right on the check's inputs (7, 9 and 1 positions), wrong on the model check's 10 tokens
    def hard_coded_scale(attn, x, cos, sin):
        return self_attention(attn, x, cos, sin, scale="none" if x.shape[1] == 10 else "head")

    with pytest.raises(AssertionError, match="logits differ from labkit's"):
        check_model(hard_coded_scale, rms_norm, tiny_model)
    with pytest.raises(NotImplementedError):
        check_model(stub, rms_norm, tiny_model)
    for check in (check_rms_norm, check_apply_rope, check_self_attention):
        with pytest.raises(NotImplementedError):
            check(stub)
