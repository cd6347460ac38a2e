"""Graded checks for lab 4 (SmolLM2 from scratch: RMSNorm, RoPE, grouped-query attention, nucleus sampling).

    from labkit.checks.llama import (check_rms_norm, check_apply_rope, check_repeat_kv, check_self_attention,
                                     check_model, check_top_p_filter)
    check_rms_norm(rms_norm)                      # your functions, defined in the lab
    check_apply_rope(apply_rope)
    check_repeat_kv(repeat_kv)
    check_self_attention(self_attention)          # one attention layer against transformers' LlamaAttention
    check_model(self_attention, rms_norm, model)  # model = labkit.llama.Llama.from_pretrained()
    check_top_p_filter(top_p_filter)

The oracles are transformers' own Llama pieces (LlamaRMSNorm, apply_rotary_pos_emb, LlamaAttention with a small
random config) where they exist, and `labkit.attention.repeat_kv` and `labkit.sampling.top_p_filter`.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from unittest import mock

import torch

from labkit import attention, llama, transformer
from labkit.llama import Llama, LlamaAttention
from labkit.rope import apply_rope_interleaved, rotate_half
from labkit.sampling import top_p_filter as reference_top_p
from labkit.checks import _call, _passed


def _tensor(value: object, call: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise AssertionError(f"{call} should return a torch.Tensor, got {type(value).__name__}")
    return value


# ----------------------------------------------------------------------------------------------------------
# repeat_kv

def _head_sources(got: torch.Tensor, x: torch.Tensor) -> list[int | None]:
    """For each output head, the input kv head it is a copy of (None if it is none of them)."""
    return [next((j for j in range(x.shape[1]) if torch.equal(got[:, h], x[:, j])), None)
            for h in range(got.shape[1])]


def check_repeat_kv(fn: Callable) -> None:
    """repeat_kv(x, n_rep): [B, H_kv, T, D] -> [B, H_kv * n_rep, T, D], where output head h is a copy of
    kv head h // n_rep (each kv head repeated n_rep times in a row, as transformers does)."""
    cases = [((1, 3, 4, 2), 3),   # SmolLM2's ratio: 3 kv heads, 9 query heads
             ((2, 2, 5, 3), 2),   # a batch of 2
             ((1, 1, 3, 4), 4),   # multi-query attention: one kv head for every query head
             ((2, 3, 2, 2), 1),   # n_rep = 1: plain multi-head attention, nothing to repeat
             ((1, 4, 1, 8), 2)]   # a single position
    for shape, n_rep in cases:
        # distinct values everywhere, so every head can be told apart
        x = torch.arange(torch.Size(shape).numel(), dtype=torch.float32).reshape(shape) / 10
        call = f"repeat_kv(x of shape {list(shape)}, n_rep={n_rep})"
        got = _tensor(_call(fn, call, x.clone(), n_rep), call)
        expected = attention.repeat_kv(x, n_rep)
        b, h_kv, t, d = shape
        if tuple(got.shape) != tuple(expected.shape):
            hint = ""
            for dim, name in ((0, "batch"), (2, "time"), (3, "head_dim")):
                wrong = list(shape)
                wrong[dim] *= n_rep
                if list(got.shape) == wrong:
                    hint = f" You repeated along dim {dim} ({name}); the heads are dim 1."
            raise AssertionError(f"{call}: expected shape [B, H_kv * n_rep, T, D] = {list(expected.shape)}, "
                                 f"got {list(got.shape)}.{hint}")
        if not torch.equal(got, expected):
            sources = _head_sources(got, x)
            want = [h // n_rep for h in range(h_kv * n_rep)]
            hint = ""
            if sources == [h % h_kv for h in range(h_kv * n_rep)]:
                hint = (" Your heads cycle through the kv heads (0, 1, 2, 0, 1, 2, ...), as tensor.repeat does; "
                        "each kv head must be repeated in a row (0, 0, 0, 1, 1, 1, ...), as repeat_interleave "
                        "or expand + reshape do.")
            raise AssertionError(f"{call}: output head h must be a copy of kv head h // n_rep, i.e. kv heads "
                                 f"{want}; yours are copies of {['?' if s is None else s for s in sources]}.{hint}")
    _passed("repeat_kv", len(cases))


def check_repeat_kv_in_model(fn: Callable, model: Llama) -> None:
    """With `fn` in place of labkit's repeat_kv inside every attention layer, labkit's Llama must give the
    same logits as with the reference."""
    if not isinstance(model, Llama):
        raise AssertionError(f"pass labkit's model (labkit.llama.Llama.from_pretrained()), got {type(model).__name__}")
    ids = torch.tensor([[504, 3458, 282, 4649, 314, 253, 1345, 30, 378, 3458]]) % model.cfg.vocab_size
    calls = []

    def student_repeat_kv(x, n_rep):
        calls.append((tuple(x.shape), n_rep))
        return _call(fn, f"repeat_kv(x of shape {list(x.shape)}, n_rep={n_rep}) inside the model", x, n_rep)

    with torch.no_grad():
        expected = model(ids)
        # LlamaAttention.forward looks repeat_kv up in labkit.llama's namespace at each call: swap it there
        with mock.patch.object(llama, "repeat_kv", student_repeat_kv):
            try:
                got = model(ids)
            except (AssertionError, NotImplementedError):
                raise
            except Exception as e:
                raise AssertionError(f"the model fails with your repeat_kv: {type(e).__name__}: {e}") from e
    if not calls:
        raise AssertionError("the model never called your repeat_kv: is `model` labkit's Llama?")
    diff = float((got - expected).abs().max())
    if diff > 1e-5:
        top_expected, top_got = int(expected[0, -1].argmax()), int(got[0, -1].argmax())
        change = (f"; the most likely next token changes from id {top_expected} to id {top_got}"
                  if top_expected != top_got else "")
        raise AssertionError(f"with your repeat_kv ({len(calls)} calls, e.g. x {list(calls[0][0])}, "
                             f"n_rep={calls[0][1]}) the model's logits differ from labkit's by up to {diff:.3g}"
                             f"{change}. Each query head must read its own group's key/value head.")
    print(f"✓ your repeat_kv runs all {len(calls) // 2} layers of SmolLM2: logits equal labkit's "
          f"(max |Δ| = {diff:.1g})")


# ----------------------------------------------------------------------------------------------------------
# top-p

def _kept(logits: torch.Tensor) -> set[int]:
    return set(torch.nonzero(torch.isfinite(logits.reshape(-1))).flatten().tolist())


def check_top_p_filter(fn: Callable) -> None:
    """top_p_filter(logits, p): keep the smallest set of most likely tokens whose probability sums to >= p,
    leave their logits unchanged, set every other logit to -inf. Works on [..., vocab], row by row."""
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    shuffled = probs[[2, 0, 3, 1]]
    generator = torch.Generator().manual_seed(0)
    cases = [
        ("probabilities [0.5, 0.3, 0.15, 0.05]", probs.log(), 0.6),     # keeps 2: the crossing token counts
        ("probabilities [0.5, 0.3, 0.15, 0.05]", probs.log(), 0.4),     # the top token alone is enough
        ("probabilities [0.15, 0.5, 0.05, 0.3]", shuffled.log(), 0.9),  # vocabulary order is not sorted
        ("probabilities [0.15, 0.5, 0.05, 0.3]", shuffled.log(), 1e-6),  # p -> 0 is greedy: one token
        ("probabilities [0.5, 0.3, 0.15, 0.05]", probs.log(), 1.0),     # p = 1 keeps everything
        ("logits [2.0, 1.0, 0.5, -1.0, 0.0] (not normalised)", torch.tensor([2.0, 1.0, 0.5, -1.0, 0.0]), 0.7),
        ("a batch of 3 rows of 50 random logits", 2 * torch.randn(3, 50, generator=generator), 0.9),
        # exact ties at the threshold: 1/8 and 1/4 are exact in binary, so the mass before a token equals p exactly
        ("8 equal logits (probabilities exactly 1/8 each)", torch.zeros(8), 0.375),
        ("logits [0, 0, 0, 0, -inf, -inf] (probabilities exactly 1/4 or 0)",
         torch.tensor([0.0, 0.0, 0.0, 0.0, -math.inf, -math.inf]), 0.5),
    ]
    for what, logits, p in cases:
        call = f"top_p_filter({what}, p={p:g})"
        got = _tensor(_call(fn, call, logits.clone(), p), call)
        expected = reference_top_p(logits, p)
        if got.shape != logits.shape:
            raise AssertionError(f"{call}: return logits of the same shape {list(logits.shape)}, got {list(got.shape)}")
        finite = torch.isfinite(got)
        zeroed = finite & torch.isneginf(expected) & (got == 0) & (logits != 0)
        if (~finite & ~torch.isneginf(got)).any() or zeroed.any():
            raise AssertionError(f"{call}: set the removed logits to -inf (a logit of 0 or NaN is not 'removed': "
                                 f"softmax would still give it probability). Got {got.tolist()}")
        for row in range(logits.reshape(-1, logits.shape[-1]).shape[0]):
            g, e = got.reshape(-1, logits.shape[-1])[row], expected.reshape(-1, logits.shape[-1])[row]
            kept, want = _kept(g), _kept(e)
            where = f" (row {row})" if logits.ndim > 1 else ""
            tied = len(set(logits.reshape(-1, logits.shape[-1])[row][sorted(want)].tolist())) == 1
            if kept == want or (tied and len(kept) == len(want) and kept <= _kept(logits)):
                continue  # with equal logits any of the tied tokens may be the ones kept
            everything = set(range(logits.shape[-1]))
            hint = ""
            if not kept:
                hint = " You removed every token: the most likely token must always survive."
            elif kept == everything - want:
                hint = " You kept the wrong side: the nucleus is the most likely tokens, the tail is what goes."
            elif kept < want and len(want - kept) == 1:
                hint = (" You dropped the token that crosses p: keep a token while the probability of the "
                        "tokens before it (in sorted order) is still < p.")
            elif tied and len(kept) == len(want) + 1:
                hint = (f" The tokens before the last one you kept already hold exactly p = {p:g} of the "
                        "probability, so it is not needed: remove a token when the mass before it is >= p, "
                        "not > p.")
            elif kept > want:
                hint = " You kept too many tokens: stop as soon as the kept probability reaches p."
            raise AssertionError(f"{call}{where}: should keep tokens {sorted(want)}, kept {sorted(kept)}.{hint}")
        if not torch.allclose(got[finite], logits[finite]):
            raise AssertionError(f"{call}: the kept logits must be unchanged (the sampler renormalises them); "
                                 f"got {got[finite][:5].tolist()} where the input had {logits[finite][:5].tolist()}")
    _passed("top_p_filter", len(cases))


# ----------------------------------------------------------------------------------------------------------
# RMSNorm

def _matches(got: torch.Tensor, other: torch.Tensor, tol: float = 1e-5) -> bool:
    """Equal up to float rounding (NaN where the other has NaN: a bug's answer may have them)."""
    return got.shape == other.shape and bool(torch.allclose(got.float(), other.float(), rtol=1e-4, atol=tol,
                                                            equal_nan=True))


def check_rms_norm(fn: Callable) -> None:
    """rms_norm(x, weight, eps) -> weight * x / sqrt(mean(x^2 over the last dim) + eps), computed in float32
    whatever x's dtype (as transformers' LlamaRMSNorm, the oracle here, does): float16 activations of a few
    hundred, which real models have, overflow when squared in float16."""
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    g = torch.Generator().manual_seed(4)
    cases = [("x [2, 5, 16] ~ N(0, 1), eps 1e-6", torch.randn(2, 5, 16, generator=g), 1e-6),
             ("x [3, 576] (SmolLM2's width) with a large mean, eps 1e-5", 2 + torch.randn(3, 576, generator=g), 1e-5),
             ("small activations: x [4, 8] of size 1e-3, where eps = 1e-5 matters",
              1e-3 * torch.randn(4, 8, generator=g), 1e-5),
             ("float16 activations of size ~300 (outliers as real models have), x [2, 3, 64]",
              (300 * torch.randn(2, 3, 64, generator=g)).half(), 1e-5)]
    for what, x, eps in cases:
        dim = x.shape[-1]
        weight = 1 + 0.5 * torch.randn(dim, generator=g)
        norm = LlamaRMSNorm(dim, eps=eps)
        with torch.no_grad():
            norm.weight.copy_(weight)
            expected = norm(x)
        call = f"rms_norm({what})"
        got = _tensor(_call(fn, call, x.clone(), weight.clone(), eps), call)
        if tuple(got.shape) != tuple(x.shape):
            raise AssertionError(f"{call}: the output must have x's shape {list(x.shape)}, got {list(got.shape)}")
        if _matches(got, expected, 1e-5 if x.dtype == torch.float32 else 2e-3):
            continue
        xf = x.float()
        ms = xf.pow(2).mean(-1, keepdim=True)
        variants = [
            ("you computed in float16: x ** 2 overflows float16 (max 65504) for values of a few hundred, so the "
             "mean is inf and the output 0. Convert x to float32 first (x.float()), as Llama does",
             weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)).float()),
            ("eps goes inside the square root: x / sqrt(mean(x^2) + eps), not x / (sqrt(mean(x^2)) + eps)",
             weight * xf / (ms.sqrt() + eps)),
            ("you left out eps (it matters for small activations): x / sqrt(mean(x^2) + eps)",
             weight * xf / ms.sqrt()),
            ("you subtracted the mean: that is LayerNorm; RMSNorm only divides by the root mean square",
             weight * (xf - xf.mean(-1, keepdim=True)) * torch.rsqrt(xf.var(-1, unbiased=False, keepdim=True) + eps)),
            ("you forgot to multiply by weight", xf * torch.rsqrt(ms + eps)),
            ("you summed the squares instead of averaging them (mean over the last dim)",
             weight * xf * torch.rsqrt(xf.pow(2).sum(-1, keepdim=True) + eps)),
        ]
        if x.ndim > 1:
            variants.append(("you averaged over the wrong dimension: normalise each vector over the LAST dim",
                             weight * xf * torch.rsqrt(xf.pow(2).mean(-2, keepdim=True) + eps)))
        hint = next((h for h, v in variants if _matches(got, v, 1e-5 if x.dtype == torch.float32 else 2e-3)), "")
        if not hint and not torch.isfinite(got.float()).all():
            hint = "your output has inf or NaN"
        diff = float((got.float() - expected.float()).abs().max())
        raise AssertionError(f"{call}: differs from transformers' LlamaRMSNorm by up to {diff:.3g}"
                             f"{': ' + hint if hint else ''}.")
    _passed("rms_norm", len(cases))


# ----------------------------------------------------------------------------------------------------------
# RoPE

def _hf_cos_sin(head_dim: int, theta: float, positions: torch.Tensor):
    """cos, sin [T, head_dim] from transformers' LlamaRotaryEmbedding for these positions."""
    from transformers import LlamaConfig as HFConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    config = HFConfig(hidden_size=head_dim, num_attention_heads=1, head_dim=head_dim, rope_theta=theta,
                      max_position_embeddings=8192)
    rotary = LlamaRotaryEmbedding(config)
    cos, sin = rotary(torch.zeros(1, len(positions), head_dim), positions[None])
    return cos[0], sin[0]


def check_apply_rope(fn: Callable) -> None:
    """apply_rope(x, cos, sin) for x [B, H, T, D], cos/sin [T, D] (D/2 angles written twice): Llama's
    rotate-half RoPE, pairing coordinate i with i + D/2, equal to transformers' apply_rotary_pos_emb."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    g = torch.Generator().manual_seed(5)
    cases = [("x [2, 3, 6, 8], positions 0..5, theta 10000", (2, 3, 6, 8), torch.arange(6), 1e4),
             ("x [1, 9, 5, 64] (SmolLM2's heads), positions 1000..1004, theta 1e5", (1, 9, 5, 64),
              torch.arange(1000, 1005), 1e5),
             ("x [1, 2, 1, 4], the single position 7", (1, 2, 1, 4), torch.tensor([7]), 1e4)]
    for what, shape, positions, theta in cases:
        x = torch.randn(*shape, generator=g)
        cos, sin = _hf_cos_sin(shape[-1], theta, positions)
        expected = apply_rotary_pos_emb(x, x, cos, sin, unsqueeze_dim=0)[0]
        call = f"apply_rope({what})"
        got = _tensor(_call(fn, call, x.clone(), cos.clone(), sin.clone()), call)
        if tuple(got.shape) != tuple(x.shape):
            raise AssertionError(f"{call}: the output must have x's shape {list(x.shape)}, got {list(got.shape)}")
        if _matches(got, expected):
            continue
        half = shape[-1] // 2
        x1, x2 = x[..., :half], x[..., half:]
        variants = [
            ("you rotated neighbouring pairs (x[2i], x[2i+1]), the layout of the RoPE paper and Meta's code. Both "
             "layouts are right with matching weights, but SmolLM2's weights (Hugging Face's Llama) pair coordinate "
             "i with i + D/2: x * cos + rotate_half(x) * sin", apply_rope_interleaved(x, cos, sin)),
            ("you rotate the wrong way (by -angle): rotate_half(x) is (-x2, x1), so the sin term is "
             "(-x2 sin, x1 sin)", x * cos - rotate_half(x) * sin),
            ("rotate_half needs a minus sign: (x1, x2) -> (-x2, x1), not (x2, x1)",
             x * cos + torch.cat((x2, x1), -1) * sin),
            ("you swapped cos and sin", x * sin + rotate_half(x) * cos),
        ]
        hint = next((h for h, v in variants if _matches(got, v)), "")
        diff = float((got - expected).abs().max())
        raise AssertionError(f"{call}: differs from transformers' apply_rotary_pos_emb by up to {diff:.3g}"
                             f"{': ' + hint if hint else ''}.")
    _passed("apply_rope", len(cases))


# ----------------------------------------------------------------------------------------------------------
# one attention layer

def _attention_variant(attn, x, cos, sin, rope=True, scale="head", causal=True, heads="consecutive",
                       split="transpose", softmax_dim=-1):
    """Llama attention, and with one setting changed, the answer of a common bug (for the hints)."""
    B, T, _ = x.shape
    H, Hkv, D = attn.n_heads, attn.n_kv_heads, attn.head_dim

    def heads_of(t, n):
        return t.view(B, T, n, D).transpose(1, 2) if split == "transpose" else t.view(B, n, T, D)

    q, k, v = heads_of(attn.q_proj(x), H), heads_of(attn.k_proj(x), Hkv), heads_of(attn.v_proj(x), Hkv)
    if rope:
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin if rope != "q" else k
    if heads == "consecutive":
        k, v = attention.repeat_kv(k, H // Hkv), attention.repeat_kv(v, H // Hkv)
    else:  # tensor.repeat: query head h reads kv head h % Hkv
        k, v = k.repeat(1, H // Hkv, 1, 1), v.repeat(1, H // Hkv, 1, 1)
    scores = q @ k.transpose(-2, -1) / {"head": math.sqrt(D), "model": math.sqrt(H * D), "none": 1.0}[scale]
    if causal:
        scores = scores.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(-1 if causal == "strict" else 0),
                                    -math.inf)
    y = torch.softmax(scores, dim=softmax_dim) @ v
    return attn.o_proj(y.transpose(1, 2).reshape(B, T, H * D))


_ATTENTION_BUGS = [
    ("no RoPE: rotate q and k (not v) with your apply_rope before the scores", dict(rope=False)),
    ("RoPE on q only: rotate k too, so that q . k depends on the offset between the two positions",
     dict(rope="q")),
    ("the mask hides the diagonal: position t may attend to itself (keys <= t), and the first position, which "
     "sees nothing else, gets NaN", dict(causal="strict")),
    ("no causal mask: position t may only attend to positions <= t (set the scores above the diagonal to -inf "
     "before the softmax)", dict(causal=False)),
    ("scores scaled by 1/sqrt(n_heads * head_dim); the scale is 1/sqrt(head_dim), the size of one head",
     dict(scale="model")),
    ("scores not scaled: divide q @ k^T by sqrt(head_dim)", dict(scale="none")),
    ("query head h reads kv head h % n_kv_heads (tensor.repeat order); it must read h // n_rep: use repeat_kv",
     dict(heads="cycle")),
    ("heads split with .view(B, n_heads, T, head_dim): that mixes positions and heads. Split the last dim: "
     ".view(B, T, n_heads, head_dim), then .transpose(1, 2)", dict(split="view")),
    ("softmax over the queries (dim -2); each query's weights over the keys must sum to 1 (dim -1)",
     dict(softmax_dim=-2)),
]


def _hf_layer(hidden: int, n_heads: int, n_kv: int, seed: int):
    """A transformers LlamaAttention with a small random config, and labkit's LlamaAttention with its weights."""
    from transformers import LlamaConfig as HFConfig
    from transformers.models.llama.modeling_llama import LlamaAttention as HFAttention

    config = HFConfig(hidden_size=hidden, num_attention_heads=n_heads, num_key_value_heads=n_kv,
                      intermediate_size=2 * hidden, rope_theta=1e4, max_position_embeddings=512)
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    hf = HFAttention(config, layer_idx=0).eval()
    ours = LlamaAttention(hidden, n_heads, n_kv)
    ours.load_state_dict(hf.state_dict())
    return hf, ours.eval()


def check_self_attention(fn: Callable) -> None:
    """self_attention(attn, x, cos, sin) -> [B, T, dim]: one Llama self-attention layer (project, split heads, RoPE on
    q and k, repeat the kv heads, causal softmax(q k^T / sqrt(head_dim)) v, merge heads, o_proj), where `attn` is
    a labkit LlamaAttention (q_proj, k_proj, v_proj, o_proj, n_heads, n_kv_heads, head_dim). Compared with
    transformers' LlamaAttention holding the same random weights."""
    g = torch.Generator().manual_seed(6)
    cases = [("GQA: 6 query heads, 2 kv heads, head_dim 8; x [2, 7, 48], positions 0..6", (48, 6, 2), 2, 7, 0),
             ("MHA: 4 query heads, 4 kv heads, head_dim 8; x [1, 9, 32], positions 20..28", (32, 4, 4), 1, 9, 20),
             ("MQA: 4 query heads, 1 kv head, head_dim 4; x [1, 1, 16], a single position", (16, 4, 1), 1, 1, 3),
             ("large activations (x ~ 30 N(0, 1), scores of a few hundred): 6 query heads, 3 kv heads; x [1, 6, 48]",
              (48, 6, 3), 1, 6, 0)]
    for i, (what, (hidden, n_heads, n_kv), batch, t, start) in enumerate(cases):
        hf, ours = _hf_layer(hidden, n_heads, n_kv, seed=i)
        x = torch.randn(batch, t, hidden, generator=g) * (30.0 if what.startswith("large") else 1.0)
        positions = torch.arange(start, start + t)
        cos, sin = _hf_cos_sin(hidden // n_heads, 1e4, positions)
        causal = torch.zeros(t, t).masked_fill(~torch.ones(t, t, dtype=torch.bool).tril(), -math.inf)
        with torch.no_grad():
            expected = hf(x, position_embeddings=(cos[None], sin[None]), attention_mask=causal[None, None])[0]
            call = f"self_attention on {what}"
            got = _tensor(_call(fn, call, ours, x.clone(), cos.clone(), sin.clone()), call)
        if tuple(got.shape) != tuple(x.shape):
            raise AssertionError(f"{call}: the output must have x's shape [B, T, dim] = {list(x.shape)}, got "
                                 f"{list(got.shape)} (merge the heads and apply o_proj)")
        if _matches(got, expected):
            continue
        with torch.no_grad():
            hint = next((h for h, change in _ATTENTION_BUGS
                         if _matches(got, _attention_variant(ours, x, cos, sin, **change))), "")
            if not hint and not torch.isfinite(got).all():
                hint = ("the output has inf or NaN: with scores of a few hundred exp overflows float32 unless each "
                        "row's max is subtracted first (torch.softmax does)")
            if not hint and t > 1:
                x2 = x.clone()
                x2[:, -1] += 1.0
                later = _call(fn, call, ours, x2, cos, sin)
                if not torch.allclose(later[:, :-1], got[:, :-1], atol=1e-6, equal_nan=True):
                    hint = ("changing the last token changed the outputs at earlier positions: information flows "
                            "from the future. Either the causal mask is missing or wrong, or the heads were split "
                            "so that positions got mixed (split the last dim: .view(B, T, heads, head_dim), then "
                            ".transpose(1, 2))")
        if not hint and t == 1:
            hint = ("with a single position every weight is 1, so the output is o_proj of the (repeated) value "
                    "heads: the bug is in the projections, the head split/merge or o_proj")
        diff = float((got - expected).abs().max())
        raise AssertionError(f"{call}: differs from transformers' LlamaAttention by up to {diff:.3g}"
                             f"{': ' + hint if hint else ''}.")
    _passed("self_attention", len(cases))


def check_model(attention_fn: Callable, rms_norm_fn: Callable, model: Llama) -> None:
    """SmolLM2 with your attention in every layer and your rms_norm in every norm (61 of them) must give
    labkit's logits (labkit's Llama equals transformers' LlamaForCausalLM: tests/test_llama.py)."""
    if not isinstance(model, Llama):
        raise AssertionError(f"pass labkit's model (labkit.llama.Llama.from_pretrained()), got {type(model).__name__}")
    ids = torch.tensor([[504, 3458, 282, 4649, 314, 253, 1345, 30, 378, 3458]]) % model.cfg.vocab_size
    calls = {"attention": 0, "rms_norm": 0}

    def student_attention(self, x, cos, sin, cache=None, layer=0, mask=None):
        calls["attention"] += 1
        return _call(attention_fn, f"self_attention in layer {layer} of SmolLM2", self, x, cos, sin)

    def student_norm(self, x):
        calls["rms_norm"] += 1
        return _call(rms_norm_fn, f"rms_norm(x {list(x.shape)}) in SmolLM2", x, self.weight, self.eps)

    with torch.no_grad():
        expected = model(ids)
        with mock.patch.object(LlamaAttention, "forward", student_attention), \
                mock.patch.object(transformer.RMSNorm, "forward", student_norm):
            try:
                got = model(ids)
            except (AssertionError, NotImplementedError):
                raise
            except Exception as e:
                raise AssertionError(f"SmolLM2 fails with your functions: {type(e).__name__}: {e}") from e
    got = _tensor(got, "SmolLM2 with your functions")
    diff = float((got - expected).abs().max())
    if not diff <= 1e-3:
        top_expected, top_got = int(expected[0, -1].argmax()), int(got[0, -1].argmax())
        change = (f"; the most likely next token changes from id {top_expected} to id {top_got}"
                  if top_expected != top_got else "")
        raise AssertionError(f"SmolLM2 with your self_attention ({calls['attention']} calls) and rms_norm "
                             f"({calls['rms_norm']} calls): logits differ from labkit's by up to {diff:.3g}{change}. "
                             "Make the checks above pass first; if they do, look at what SmolLM2 has that their "
                             "small inputs did not (30 layers, 9 heads of 64, 576 wide, rope_theta 1e5).")
    from labkit.report import below

    print(f"✓ SmolLM2 runs on your code ({calls['attention']} attention layers, {calls['rms_norm']} RMSNorms): "
          f"logits equal labkit's, max |Δ| {below(diff, 1e-3)}")
