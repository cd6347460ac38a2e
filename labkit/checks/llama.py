"""Graded checks for lab 4 (SmolLM2 from scratch: grouped-query attention and nucleus sampling).

    from labkit.checks.llama import check_repeat_kv, check_repeat_kv_in_model, check_top_p_filter
    check_repeat_kv(repeat_kv)                    # your functions, defined in the lab
    check_repeat_kv_in_model(repeat_kv, model)    # model = labkit.llama.Llama.from_pretrained()
    check_top_p_filter(top_p_filter)

The references are `labkit.attention.repeat_kv` and `labkit.sampling.top_p_filter`.
"""
from __future__ import annotations

from collections.abc import Callable
from unittest import mock

import torch

from labkit import attention, llama
from labkit.llama import Llama
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
            if kept == want:
                continue
            everything = set(range(logits.shape[-1]))
            hint = ""
            if not kept:
                hint = " You removed every token: the most likely token must always survive."
            elif kept == everything - want:
                hint = " You kept the wrong side: the nucleus is the most likely tokens, the tail is what goes."
            elif kept < want and len(want - kept) == 1:
                hint = (" You dropped the token that crosses p: keep a token while the probability of the "
                        "tokens before it (in sorted order) is still < p.")
            elif kept > want:
                hint = " You kept too many tokens: stop as soon as the kept probability reaches p."
            raise AssertionError(f"{call}{where}: should keep tokens {sorted(want)}, kept {sorted(kept)}.{hint}")
        if not torch.allclose(got[finite], logits[finite]):
            raise AssertionError(f"{call}: the kept logits must be unchanged (the sampler renormalises them); "
                                 f"got {got[finite][:5].tolist()} where the input had {logits[finite][:5].tolist()}")
    _passed("top_p_filter", len(cases))
