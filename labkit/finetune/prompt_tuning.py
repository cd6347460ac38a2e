"""Prompt tuning and prefix tuning: adapt a frozen model by learning what it reads, not how it computes.

Prompt tuning (Lester et al. 2021) prepends n trainable vectors to the token embeddings: a "soft prompt" of
n x dim numbers that need not be the embedding of any word. Every weight of the model stays frozen; only the
prompt trains (n * 576 numbers for SmolLM2).

Prefix tuning (Li & Liang 2021) goes one level deeper: at every layer it prepends n trainable keys and values
to those the tokens make, so each layer's attention reads a learned prefix (layers x 2 x kv_heads x n x
head_dim numbers). That is exactly what a KV-cache holds after reading n tokens of a prompt (chapter 5), so
the prefix enters through the cache seam of `labkit.llama.Llama.forward`: `PrefixCache.update(layer, k, v)`
hands back [prefix keys, new keys]. RoPE: a cache that has "seen" n tokens puts the real tokens at positions
n, n+1, ...; the prefix keys are stored as if already rotated at positions 0..n-1, as a cached prompt's are.

Both start from real text (Lester et al. initialise from vocabulary embeddings, Li & Liang from the
activations of real words): at step 0 the soft prompt is the embedding of `init_ids` and the prefix is the
cache the model builds reading them, so before training each method equals the model reading that text.

    forward_embeddings  Llama.forward from the embedding layer on: input vectors [B, T, dim] -> logits
    SoftPrompt          n trainable input vectors before the tokens; forward(ids) -> logits of the tokens
    PrefixCache         a KV-cache that already holds n trainable keys and values in every layer
    PrefixTuning        the frozen model reading through a PrefixCache; forward(ids) -> logits of the tokens
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from labkit.kvcache import KVCache
from labkit.llama import Llama
from labkit.rope import rope_cos_sin, rope_inv_freq


def _check_model(model: object) -> Llama:
    if not isinstance(model, Llama):
        raise TypeError(f"model must be a labkit.llama.Llama, got {type(model).__name__}")
    return model


def _check_init_ids(init_ids: object, vocab_size: int) -> torch.Tensor:
    if not isinstance(init_ids, torch.Tensor) or init_ids.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"init_ids must be an integer tensor of token ids [n], got {type(init_ids).__name__}")
    if init_ids.ndim != 1 or len(init_ids) == 0:
        raise ValueError(f"init_ids must have shape [n] with n >= 1 (the prompt's length), "
                         f"got shape {tuple(init_ids.shape)}")
    if init_ids.min() < 0 or init_ids.max() >= vocab_size:
        raise ValueError(f"init_ids must lie in [0, {vocab_size})")
    return init_ids.long()


def _freeze(model: nn.Module) -> None:
    for p in model.parameters():
        p.requires_grad_(False)


def forward_embeddings(model: Llama, x: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
    """`Llama.forward` starting after the embedding lookup: vectors x [B, T, dim] -> logits [B, T, vocab].
    Positions 0..T-1 unless given. (The lookup is the only step a soft prompt needs to skip.)"""
    _check_model(model)
    if not isinstance(x, torch.Tensor) or x.ndim != 3 or x.shape[2] != model.cfg.dim:
        raise ValueError(f"x must be input vectors [B, T, {model.cfg.dim}], got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    T = x.shape[1]
    positions = torch.arange(T) if positions is None else model._check_positions(positions, T)
    cos, sin = rope_cos_sin(positions, rope_inv_freq(model.cfg.head_dim, model.cfg.rope_theta))
    for i, layer in enumerate(model.layers):
        x = layer(x, cos, sin, None, i)
    x = model.norm(x)
    head = model.embed_tokens.weight if model.lm_head is None else model.lm_head.weight
    return F.linear(x, head).float()


class SoftPrompt(nn.Module):
    """Prompt tuning: a frozen Llama reading n trainable vectors, then the tokens. Only `prompt` trains."""

    def __init__(self, model: Llama, init_ids: torch.Tensor) -> None:
        super().__init__()
        self.model = _check_model(model)
        init_ids = _check_init_ids(init_ids, model.cfg.vocab_size)
        _freeze(model)
        # start at the embeddings of real words: a random vector is far from anything the model has read
        self.prompt = nn.Parameter(model.embed_tokens.weight[init_ids].detach().clone())

    @property
    def n_tokens(self) -> int:
        return self.prompt.shape[0]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Logits [B, T, vocab] at the T token positions (the prompt's own positions are dropped)."""
        ids = self.model._check_ids(ids)
        if self.n_tokens + ids.shape[1] > self.model.cfg.max_seq_len:
            raise ValueError(f"prompt ({self.n_tokens}) + tokens ({ids.shape[1]}) exceed the model's context "
                             f"of {self.model.cfg.max_seq_len}")
        x = torch.cat([self.prompt.expand(ids.shape[0], -1, -1), self.model.embed_tokens(ids)], dim=1)
        return forward_embeddings(self.model, x)[:, self.n_tokens:]


class PrefixCache(nn.Module):
    """A KV-cache (the interface of `labkit.kvcache.KVCache`) whose first n positions in every layer are
    trainable: k, v [layers, kv_heads, n, head_dim], shared by every sequence of a batch. It stores nothing
    new: each call to the model sees the prefix and its own tokens only."""

    def __init__(self, k: torch.Tensor, v: torch.Tensor) -> None:
        super().__init__()
        if k.shape != v.shape or k.ndim != 4:
            raise ValueError(f"k and v must both be [layers, kv_heads, n, head_dim], got {tuple(k.shape)} "
                             f"and {tuple(v.shape)}")
        self.k, self.v = nn.Parameter(k.clone()), nn.Parameter(v.clone())

    @property
    def seen(self) -> int:
        """The prefix counts as n tokens already read: the real tokens' RoPE positions start at n."""
        return self.k.shape[2]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B = k.shape[0]
        return (torch.cat([self.k[layer].expand(B, -1, -1, -1), k], dim=2),
                torch.cat([self.v[layer].expand(B, -1, -1, -1), v], dim=2))

    def advance(self, n: int) -> None:
        pass  # nothing is stored: the next call starts from the prefix again


class PrefixTuning(nn.Module):
    """Prefix tuning: a frozen Llama whose every attention layer also reads n trainable keys and values."""

    def __init__(self, model: Llama, init_ids: torch.Tensor) -> None:
        super().__init__()
        self.model = _check_model(model)
        init_ids = _check_init_ids(init_ids, model.cfg.vocab_size)
        _freeze(model)
        # the prefix starts as the cache the model builds reading real text (the rotated keys at 0..n-1)
        cache = KVCache(model.cfg, batch=1, max_len=len(init_ids))
        with torch.no_grad():
            model(init_ids[None], cache=cache)
        self.prefix = PrefixCache(cache.k[:, 0], cache.v[:, 0])

    @property
    def n_tokens(self) -> int:
        return self.prefix.seen

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Logits [B, T, vocab] of the tokens, every layer attending to the prefix first."""
        return self.model(ids, cache=self.prefix)


__all__ = ["PrefixCache", "PrefixTuning", "SoftPrompt", "forward_embeddings"]
