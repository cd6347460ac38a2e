"""LoFiT (Yin et al. 2024, "LoFiT: Localized Fine-tuning on LLM Representations"): tune a few attention heads.

Each attention layer's output is o_proj applied to the 9 heads' outputs z_1..z_9 (each head_dim wide), laid
side by side. LoFiT edits those head outputs directly, in two steps:

    1. localise   give every head a trainable scaling a_h:  z_h <- (1 + a_h) * z_h   (elementwise, a_h = 0 at
                  the start), train briefly with an L1 penalty lam * sum |a_h|, and keep the K heads whose
                  scaling moved most (largest ||a_h||): the heads this task leans on
    2. fine-tune  throw the scalings away and learn an offset (a bias vector) v_h only on those K heads:
                  z_h <- z_h + v_h;  K * head_dim trainable numbers in the whole model

The paper finds a few percent of the heads enough to match LoRA on its tasks with far fewer parameters, and
that the heads chosen matter (a random choice does worse). Here the head outputs are edited where they enter
o_proj, which leaves the attention code of `labkit.llama` untouched: `HeadEdit` wraps o_proj.

    HeadEdit        o_proj with per-head scalings and/or offsets on its input
    add_scalings    step 1's model: a scaling on every head of every layer, everything else frozen
    l1_penalty      sum of |a_h| over every scaling (added to the loss in step 1)
    select_heads    the K (layer, head) pairs with the largest scaling norms
    add_offsets     step 2's model: offsets on the chosen heads only
    remove_edits    put the plain o_proj back (between the two steps)
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from labkit.llama import Llama, LlamaAttention


class HeadEdit(nn.Module):
    """o_proj, preceded by z_h <- (1 + scale_h) * z_h + offset_h on the heads in `heads` (the others pass as
    they are). scale and offset are [len(heads), head_dim]; either may be absent."""

    def __init__(self, o_proj: nn.Linear, n_heads: int, heads: Iterable[int], scale: bool, offset: bool) -> None:
        super().__init__()
        if not isinstance(o_proj, nn.Linear) or o_proj.in_features % n_heads:
            raise TypeError(f"HeadEdit wraps an nn.Linear whose input is n_heads={n_heads} heads side by side")
        heads = sorted(set(heads))
        if not heads or not all(0 <= h < n_heads for h in heads):
            raise ValueError(f"heads must be a non-empty set of head indices in [0, {n_heads}), got {heads}")
        self.o_proj, self.n_heads, self.head_dim = o_proj, n_heads, o_proj.in_features // n_heads
        self.register_buffer("heads", torch.tensor(heads), persistent=False)
        shape = (len(heads), self.head_dim)
        self.scale = nn.Parameter(torch.zeros(shape)) if scale else None   # zero: starts as the plain model
        self.offset = nn.Parameter(torch.zeros(shape)) if offset else None

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        z = y.unflatten(-1, (self.n_heads, self.head_dim))  # [..., heads, head_dim]
        zh = z[..., self.heads, :]
        if self.scale is not None:
            zh = zh * (1 + self.scale)
        if self.offset is not None:
            zh = zh + self.offset
        z = z.index_copy(-2, self.heads, zh)  # out of place: autograd sees the edit
        return self.o_proj(z.flatten(-2))


def _attentions(model: Llama) -> list[LlamaAttention]:
    if not isinstance(model, Llama):
        raise TypeError(f"model must be a labkit.llama.Llama, got {type(model).__name__}")
    return [block.self_attn for block in model.layers]


def _install(model: Llama, heads_of: dict[int, list[int]], scale: bool, offset: bool) -> None:
    attns = _attentions(model)
    if any(isinstance(a.o_proj, HeadEdit) for a in attns):
        raise ValueError("the model already has LoFiT edits; remove_edits(model) first")
    # build every edit before installing any: a bad head index leaves the model untouched
    edits = {layer: HeadEdit(attns[layer].o_proj, attns[layer].n_heads, heads, scale=scale, offset=offset)
             for layer, heads in heads_of.items()}
    for p in model.parameters():
        p.requires_grad_(False)
    for layer, edit in edits.items():
        attns[layer].o_proj = edit


def add_scalings(model: Llama) -> None:
    """Step 1: a trainable scaling (1 + a_h, a_h = 0) on every head of every layer; all else frozen."""
    attns = _attentions(model)
    _install(model, {i: list(range(a.n_heads)) for i, a in enumerate(attns)}, scale=True, offset=False)


def l1_penalty(model: Llama) -> torch.Tensor:
    """sum over heads of sum |a_h|: pushes the scalings of heads the task does not need to stay at zero."""
    edits = [a.o_proj for a in _attentions(model) if isinstance(a.o_proj, HeadEdit) and a.o_proj.scale is not None]
    if not edits:
        raise ValueError("the model has no LoFiT scalings; call add_scalings(model) first")
    return sum(e.scale.abs().sum() for e in edits)


def select_heads(model: Llama, k: int) -> list[tuple[int, int]]:
    """The k (layer, head) pairs whose learned scalings have the largest norms ||a_h||, sorted."""
    edits = {i: a.o_proj for i, a in enumerate(_attentions(model))
             if isinstance(a.o_proj, HeadEdit) and a.o_proj.scale is not None}
    if not edits:
        raise ValueError("the model has no LoFiT scalings; call add_scalings(model) and train it first")
    n_total = sum(len(e.heads) for e in edits.values())
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n_total:
        raise ValueError(f"k must be an int in [1, {n_total}] (the heads with scalings), got {k!r}")
    scored = [(e.scale[j].detach().norm().item(), layer, int(h))
              for layer, e in edits.items() for j, h in enumerate(e.heads)]
    scored.sort(key=lambda s: (-s[0], s[1], s[2]))  # largest norm first; ties by position, for determinism
    return sorted((layer, h) for _, layer, h in scored[:k])


def remove_edits(model: Llama) -> None:
    """Put every plain o_proj back (the learned scalings or offsets are dropped)."""
    for attn in _attentions(model):
        if isinstance(attn.o_proj, HeadEdit):
            attn.o_proj = attn.o_proj.o_proj


def add_offsets(model: Llama, heads: Iterable[tuple[int, int]]) -> None:
    """Step 2: a trainable offset v_h (zero at the start) on each chosen (layer, head); all else frozen."""
    heads_of: dict[int, list[int]] = {}
    n_layers = len(_attentions(model))
    for pair in heads:
        if not (isinstance(pair, tuple) and len(pair) == 2 and 0 <= pair[0] < n_layers):
            raise ValueError(f"heads must be (layer, head) pairs with layer in [0, {n_layers}), got {pair!r}")
        heads_of.setdefault(pair[0], []).append(pair[1])
    if not heads_of:
        raise ValueError("heads is empty: choose at least one (layer, head) pair, e.g. with select_heads")
    _install(model, heads_of, scale=False, offset=True)


__all__ = ["HeadEdit", "add_offsets", "add_scalings", "l1_penalty", "remove_edits", "select_heads"]
