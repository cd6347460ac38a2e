"""Structured output: decode only what a JSON Schema allows, by masking the logits token by token.

(Chapter 10.) A schema is compiled to an automaton over the text; at every decoding step the mask says which
vocabulary tokens keep the text a prefix of some schema-valid document.
"""
from __future__ import annotations

from typing import Callable, Hashable, Sequence

import torch

State = Hashable


def mask_step(advance: Callable[[State, object], State | None], state: State, vocab: Sequence[str]) -> torch.Tensor:
    """bool [len(vocab)]: token i is allowed iff walking ALL its symbols from `state` with
    `advance(state, symbol) -> new state | None` never returns None (None: that symbol cannot come next).

    The plain reference: one loop over the vocabulary, one over each token's characters (or bytes, if the
    tokens are `bytes`). The empty token is never allowed: it would let the decoder loop without progress."""
    allowed = torch.zeros(len(vocab), dtype=torch.bool)
    for i, token in enumerate(vocab):
        if len(token) == 0:
            continue
        s = state
        for symbol in token:
            s = advance(s, symbol)
            if s is None:
                break
        else:  # every symbol was accepted, the last one included
            allowed[i] = True
    return allowed
