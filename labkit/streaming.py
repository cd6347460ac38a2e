"""StreamingLLM: a KV-cache of fixed size that keeps the first few tokens ("attention sinks") and a recent window.

A plain KV-cache grows with the text. To stream text of any length in fixed memory, keep only the last
`window` tokens ("window attention"). Xiao et al. (2023, "Efficient Streaming Language Models with Attention
Sinks", arXiv:2309.17453) found that this breaks a model as soon as the first tokens leave the cache:
trained models park a large share of every query's attention on the first tokens, whatever they say (a
softmax must put its weight somewhere), and without them the attention scores redistribute and perplexity
explodes. Keeping those few "sink" tokens, plus the window, restores it:

    query at position i attends to keys j <= i with  j < n_sink  or  i - window < j

    kept_positions    which stored positions survive eviction once `seen` tokens were stored
    SinkCache         the cache for `labkit.llama.Llama.forward(cache=...)`: update / advance / seen, evicting
    sink_window_mask  the same attention pattern as one [T, T] mask, for a single forward over a whole text
    token_nll         per-token next-token loss of a forward, and binned_perplexity to average it by position
    sink_attention    how much attention each layer puts on the first tokens (why they matter)

Positions: labkit's attention rotates keys with RoPE *before* they are stored, so a cached key keeps the
position of its token in the text, and token-by-token decoding through a SinkCache equals one forward with
`sink_window_mask` (a test checks it). The paper instead stores keys before rotation and numbers them by their
slot in the cache, so positions never exceed the cache size; that matters for text longer than the trained
context (SmolLM2: 8192 positions), which labkit's Llama refuses.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from unittest import mock

import numpy as np
import torch
from torch.nn import functional as F

from . import llama
from .attention import scaled_dot_product_attention
from .llama import Llama, LlamaConfig


def _check_sizes(n_sink: object, window: object) -> tuple[int, int]:
    if isinstance(n_sink, bool) or not isinstance(n_sink, int) or n_sink < 0:
        raise ValueError(f"n_sink must be an int >= 0, got {n_sink!r}")
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be an int >= 1 (the token itself), got {window!r}")
    return n_sink, window


def kept_positions(seen: int, n_sink: int, window: int) -> list[int]:
    """Positions still cached after `seen` tokens (0..seen-1) were stored: the first `n_sink` and the last
    `window - 1`, so that the next token (position `seen`) attends to at most n_sink + window keys, itself
    included. Ascending, without repeats."""
    n_sink, window = _check_sizes(n_sink, window)
    if isinstance(seen, bool) or not isinstance(seen, int) or seen < 0:
        raise ValueError(f"seen must be an int >= 0, got {seen!r}")
    sinks = range(min(n_sink, seen))
    recent = range(max(n_sink, seen - (window - 1)), seen)  # never a sink twice
    return [*sinks, *recent]


def sink_window_mask(n: int, n_sink: int, window: int) -> torch.Tensor:
    """Bool [n, n], True where query i may attend key j: causal, and j is a sink or among the last `window`
    positions up to i. n_sink=0 is window attention; window >= n is the full causal mask."""
    n_sink, window = _check_sizes(n_sink, window)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    i = torch.arange(n)[:, None]
    j = torch.arange(n)[None, :]
    return (j <= i) & ((j < n_sink) | (i - j < window))


class SinkCache:
    """A KV-cache that holds at most n_sink + window - 1 tokens between calls (n_sink + window while attending).

    `update` appends the new keys and values of a layer and returns all held ones; `advance` (after every
    layer) moves `seen` on and evicts all but `keep(seen, n_sink, window)` positions, `kept_positions` by
    default (the lab plugs its own in). Feed one token per call for exact StreamingLLM attention: a call
    with T > 1 new tokens attends causally over everything held, evicting only afterwards, so a prompt longer
    than `window` sees more than the window while it is processed.
    """

    def __init__(self, cfg: LlamaConfig, n_sink: int, window: int, batch: int = 1,
                 dtype: torch.dtype = torch.float32, keep: Callable[[int, int, int], Sequence[int]] = kept_positions):
        if not isinstance(cfg, LlamaConfig):
            raise TypeError(f"cfg must be a LlamaConfig (model.cfg), got {type(cfg).__name__}")
        self.n_sink, self.window = _check_sizes(n_sink, window)
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ValueError(f"batch must be an int >= 1, got {batch!r}")
        if not callable(keep):
            raise TypeError(f"keep must be a function (seen, n_sink, window) -> positions, got {type(keep).__name__}")
        self.keep = keep
        empty = torch.zeros(batch, cfg.n_kv_heads, 0, cfg.head_dim, dtype=dtype)
        self.k = [empty] * cfg.n_layers
        self.v = [empty] * cfg.n_layers
        self.positions: list[int] = []  # the absolute position of each held token, oldest first
        self.seen = 0

    @property
    def nbytes(self) -> int:
        """Memory the held keys and values take now."""
        return sum(t.nbytes for t in (*self.k, *self.v))

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append k, v [batch, kv_heads, T, head_dim] to `layer`; return every held key and value of it."""
        if not 0 <= layer < len(self.k):
            raise ValueError(f"layer must lie in [0, {len(self.k)}), got {layer}")
        held = self.k[layer]
        if k.shape != v.shape or k.ndim != 4 or (k.shape[0], k.shape[1], k.shape[3]) != (
                held.shape[0], held.shape[1], held.shape[3]):
            raise ValueError(f"k and v must both be [batch, kv_heads, T, head_dim] with (batch, kv_heads, head_dim)"
                             f" = {(held.shape[0], held.shape[1], held.shape[3])}, got {tuple(k.shape)} and "
                             f"{tuple(v.shape)}")
        self.k[layer] = torch.cat([held, k.to(held.dtype)], dim=2)
        self.v[layer] = torch.cat([self.v[layer], v.to(held.dtype)], dim=2)
        return self.k[layer], self.v[layer]

    def advance(self, n: int) -> None:
        """Every layer stored n more tokens: record their positions, then evict down to the kept ones."""
        self.positions += range(self.seen, self.seen + n)
        self.seen += n
        kept = [int(p) for p in self.keep(self.seen, self.n_sink, self.window)]
        slot = {p: i for i, p in enumerate(self.positions)}
        missing = [p for p in kept if p not in slot]
        if missing or len(set(kept)) != len(kept):
            raise ValueError(f"keep({self.seen}, {self.n_sink}, {self.window}) must return distinct positions the "
                             f"cache holds ({self.positions[:3]}...{self.positions[-3:]}), got {kept}")
        index = torch.tensor([slot[p] for p in kept], dtype=torch.long)
        self.k = [t.index_select(2, index) for t in self.k]  # a copy: the evicted entries are freed
        self.v = [t.index_select(2, index) for t in self.v]
        self.positions = kept

    def reset(self) -> None:
        """Forget everything."""
        self.k = [t[:, :, :0] for t in self.k]
        self.v = [t[:, :, :0] for t in self.v]
        self.positions, self.seen = [], 0


@torch.no_grad()
def token_nll(model: Llama, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Next-token loss (nats, float64) at every position of one forward: entry t is -log P(ids[t+1] | ...),
    where the context allowed is `mask`'s row t (default: causal, all of ids[:t+1]). ids [T] or [1, T]."""
    if not isinstance(model, Llama):
        raise TypeError(f"model must be labkit's Llama, got {type(model).__name__}")
    if not isinstance(ids, torch.Tensor):
        raise TypeError(f"ids must be a torch.Tensor of token ids, got {type(ids).__name__}")
    if ids.ndim == 2 and ids.shape[0] == 1:
        ids = ids[0]
    if ids.ndim != 1 or ids.numel() < 2:
        raise ValueError(f"ids must be [T] or [1, T] with T >= 2, got shape {tuple(ids.shape)}")
    T = ids.numel()
    if mask is not None and tuple(mask.shape) != (T - 1, T - 1):
        raise ValueError(f"mask must be [T - 1, T - 1] = [{T - 1}, {T - 1}] (the inputs ids[:-1]), "
                         f"got {tuple(mask.shape)}")
    logits = model(ids[None, :-1], mask=mask)[0].double()
    return F.cross_entropy(logits, ids[1:], reduction="none")


def binned_perplexity(nll: torch.Tensor | np.ndarray, bin_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Perplexity exp(mean loss) over consecutive bins of `bin_size` positions (a shorter last bin is dropped).
    Returns (first position of each bin, perplexity of each bin)."""
    nll = np.asarray(nll, dtype=np.float64)
    if nll.ndim != 1:
        raise ValueError(f"nll must be 1-D, got shape {nll.shape}")
    if isinstance(bin_size, bool) or not isinstance(bin_size, int) or not 1 <= bin_size <= len(nll):
        raise ValueError(f"bin_size must be an int in [1, len(nll) = {len(nll)}], got {bin_size!r}")
    n_bins = len(nll) // bin_size
    means = nll[:n_bins * bin_size].reshape(n_bins, bin_size).mean(axis=1)
    return np.arange(n_bins) * bin_size, np.exp(means)


@torch.no_grad()
def sink_attention(model: Llama, ids: torch.Tensor, n_first: int = 1) -> tuple[np.ndarray, float]:
    """Share of attention on the first `n_first` positions, per layer: the weight every query (at position
    >= n_first) puts on keys 0..n_first-1, averaged over heads and queries. Also returns what uniform causal
    attention would give (query i spreading 1/(i+1) on each key), for comparison. ids [1, T]."""
    if not isinstance(model, Llama):
        raise TypeError(f"model must be labkit's Llama, got {type(model).__name__}")
    if not isinstance(ids, torch.Tensor) or ids.ndim != 2 or ids.shape[1] <= n_first:
        raise ValueError(f"ids must be [batch, T] with T > n_first = {n_first}, got "
                         f"{tuple(ids.shape) if isinstance(ids, torch.Tensor) else type(ids).__name__}")
    shares: list[float] = []

    def recording(q, k, v, causal=False, mask=None):  # labkit's attention, also keeping the weights
        out, weights = scaled_dot_product_attention(q, k, v, causal=causal, mask=mask, return_weights=True)
        shares.append(float(weights[..., n_first:, :n_first].sum(-1).mean()))
        return out

    with mock.patch.object(llama, "scaled_dot_product_attention", recording):  # the name LlamaAttention calls
        model(ids)
    uniform = float(np.mean([n_first / (i + 1) for i in range(n_first, ids.shape[1])]))
    return np.array(shares), uniform
