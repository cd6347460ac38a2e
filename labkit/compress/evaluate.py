"""Measuring what compression costs: perplexity and KL divergence to the uncompressed model, on the same tokens.

A perplexity alone says little across papers (another text, another tokenizer, another number), and two models'
perplexities on the same text differ by less than either one's window-to-window spread. Two measures are read
on *the same scored tokens* for every variant:

    perplexity      exp(mean next-token loss) over the held-out windows, with exp(mean -/+ 2 standard errors)
                    across windows (`labkit.gqa.loss_spread`), and the paired loss difference to the reference
    KL divergence   KL(p_ref || p) = sum_v p_ref(v) (log p_ref(v) - log p(v)) per position, averaged: how far
                    the compressed model's whole next-token distribution moved, not only the probability of the
                    one token that happened to follow. 0 only if the distributions are equal.

    reference_logprobs   score the reference (uncompressed) model once: its log-probabilities at every position
    evaluate             score a variant against it -> {ppl, ppl_spread, kl, ...} (plain numbers, JSON-able)

The reference keeps every log-probability in float32: windows x (T - 1) x vocab x 4 bytes (16 windows of 257
tokens with SmolLM2's 49,152-token vocabulary: 0.8 GB). Score fewer windows if memory is short.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from ..gqa import loss_spread


@dataclass(frozen=True)
class Reference:
    """The reference model's scores of some windows: what every variant is compared with."""

    windows: torch.Tensor    # [B, T] token ids
    logprobs: torch.Tensor   # [B, T - 1, V] float32 log-probabilities of each next token
    losses: torch.Tensor     # [B] float64 mean next-token loss of each window


def _check_windows(windows: torch.Tensor) -> None:
    if not isinstance(windows, torch.Tensor) or windows.ndim != 2 or windows.shape[1] < 2 \
            or windows.dtype not in (torch.int64, torch.int32):
        what = f"shape {tuple(windows.shape)}, dtype {windows.dtype}" if isinstance(windows, torch.Tensor) \
            else type(windows).__name__
        raise ValueError(f"windows must be an integer token-id tensor [batch, T] with T >= 2, got {what}")


def _logprobs(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """float32 log-probabilities [b, T - 1, V] of the next token after each of ids[:, :-1]."""
    out = model(ids[:, :-1])
    logits = out if isinstance(out, torch.Tensor) else out.logits  # a labkit Llama, or a transformers model
    return F.log_softmax(logits.float(), dim=-1)


def _losses(logprobs: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Mean next-token loss (float64) of each window."""
    picked = logprobs.gather(-1, ids[:, 1:, None]).squeeze(-1)
    return -picked.double().mean(dim=1)


@torch.no_grad()
def reference_logprobs(model: nn.Module, windows: torch.Tensor, batch_size: int = 4) -> Reference:
    """Score `windows` [B, T] with the reference model, keeping its log-probabilities for `evaluate`."""
    _check_windows(windows)
    chunks = [_logprobs(model, windows[i:i + batch_size]) for i in range(0, windows.shape[0], batch_size)]
    logprobs = torch.cat(chunks)
    return Reference(windows.clone(), logprobs, _losses(logprobs, windows))


@torch.no_grad()
def evaluate(model: nn.Module, windows: torch.Tensor, reference: Reference, batch_size: int = 4) -> dict:
    """Perplexity and KL to the reference of `model` on the reference's windows.

    Returns plain numbers: ppl = exp(mean loss); ppl_spread = [exp(mean - 2 se), exp(mean + 2 se)] over the
    windows; loss and loss_se (nats); delta_loss and delta_loss_se, the paired difference to the reference's
    loss on the same windows; kl and kl_se (nats per token, mean over windows and its standard error); the
    per-window `losses` and `kls`; and the number of windows and scored tokens.
    """
    _check_windows(windows)
    if not isinstance(reference, Reference):
        raise TypeError(f"reference must be a Reference from reference_logprobs, got {type(reference).__name__}")
    if windows.shape != reference.windows.shape or not torch.equal(windows, reference.windows):
        raise ValueError("windows must be the very windows the reference scored (same tokens): KL and paired "
                         f"differences compare position by position; got shape {tuple(windows.shape)}, "
                         f"reference has {tuple(reference.windows.shape)}")
    losses, kls = [], []
    for i in range(0, windows.shape[0], batch_size):
        ids = windows[i:i + batch_size]
        logq = _logprobs(model, ids)
        losses.append(_losses(logq, ids))
        for logp, lq in zip(reference.logprobs[i:i + batch_size], logq):   # one window at a time, in float64
            logp = logp.double()
            kls.append(float((logp.exp() * (logp - lq.double())).sum(-1).mean()))
    losses = torch.cat(losses)
    kl = torch.tensor(kls, dtype=torch.float64)
    mean, se = loss_spread(losses) if len(losses) > 1 else (float(losses.mean()), float("nan"))
    delta, delta_se = loss_spread(losses, reference.losses) if len(losses) > 1 else \
        (float(losses.mean() - reference.losses.mean()), float("nan"))
    kl_se = float(kl.std(correction=1) / math.sqrt(len(kl))) if len(kl) > 1 else float("nan")
    return {"ppl": math.exp(mean), "ppl_spread": [math.exp(mean - 2 * se), math.exp(mean + 2 * se)],
            "loss": mean, "loss_se": se, "delta_loss": delta, "delta_loss_se": delta_se,
            "kl": float(kl.mean()), "kl_se": kl_se, "losses": losses.tolist(), "kls": kls,
            "windows": int(windows.shape[0]), "tokens": int(windows.shape[0] * (windows.shape[1] - 1))}
