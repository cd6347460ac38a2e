"""n-gram language models: counting, smoothing (MLE, add-k, interpolated Kneser-Ney), perplexity, sampling.

Two ways to count n-grams:
  * `count_ngrams`: the plain-Python reference, one line over a Counter. Read this one.
  * `count_ngrams_numba`: the same counts with no Python objects. Each window of n ids is packed into one
    integer key (mixed radix: key = sum_j ids[i+j] * V**(n-1-j), so sorting keys sorts n-grams
    lexicographically); the N keys are sorted, which puts equal n-grams side by side, and one pass counts
    the runs. Its cost is about the same per window whether windows repeat (characters) or are mostly new
    (words). A hash table, the other way to count, is cheaper per window when the distinct keys fit in the
    processor's cache (characters) but pays a cache miss for every new key, and then still has to sort the
    distinct keys: on the word corpus it is the slower of the two. `benchmarks/ngram_counting.py` measures
    both ways against the plain-Python reference, and where the time goes.

`fit_counts` counts every order 1..max_order once; an `NgramLM` is then a cheap view on those counts for any
n <= max_order and any smoothing parameter, so a notebook can sweep n and k without refitting. All lookups
are vectorised (`np.searchsorted` into the sorted keys), so scoring a held-out set takes milliseconds.
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numba
import numpy as np

Smoothing = Literal["mle", "add-k", "kneser-ney"]
SMOOTHINGS: tuple[str, ...] = ("mle", "add-k", "kneser-ney")
_INT64_MAX = np.iinfo(np.int64).max


# ----------------------------------------------------------------------------------------------------------
# argument checks shared by the public functions

def _check_order(n: object, name: str = "n") -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(n).__name__}")
    if n < 1:
        raise ValueError(f"{name} must be >= 1 (an n-gram has at least one token), got {n}")
    return int(n)


def _check_ids(ids: object, vocab_size: int | None = None, name: str = "ids") -> np.ndarray:
    """Validate and return ids as a 1-D int64 array (values in [0, vocab_size) if given)."""
    arr = np.asarray(ids)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D sequence of token ids, got shape {arr.shape}")
    if arr.size == 0:
        return arr.astype(np.int64)
    if not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{name} must hold integer token ids, got dtype {arr.dtype}")
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or (vocab_size is not None and hi >= vocab_size):
        bound = f"[0, {vocab_size})" if vocab_size is not None else ">= 0"
        raise ValueError(f"{name} must lie in {bound}, got values in [{lo}, {hi}]")
    return arr.astype(np.int64, copy=False)


def _check_vocab_size(vocab_size: object) -> int:
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, (int, np.integer)):
        raise TypeError(f"vocab_size must be an int, got {type(vocab_size).__name__}")
    if vocab_size < 1:
        raise ValueError(f"vocab_size must be >= 1, got {vocab_size}")
    return int(vocab_size)


def _check_radix(vocab_size: int, n: int) -> None:
    # Python ints are exact, so this is the honest overflow test for the mixed-radix keys.
    if vocab_size ** n > _INT64_MAX:
        raise ValueError(f"vocab_size**n = {vocab_size}**{n} does not fit in int64, so {n}-grams cannot be "
                         f"packed into one int64 key; use a smaller n or a smaller vocabulary")


# ----------------------------------------------------------------------------------------------------------
# counting

def count_ngrams(tokens: Sequence, n: int) -> Counter[tuple]:
    """Count the n-grams (tuples of n consecutive tokens) of a sequence. The plain-Python reference.

    zip over n shifted views yields every window: zip(t[0:], t[1:], t[2:]) -> (t0,t1,t2), (t1,t2,t3), ...
    and stops at the shortest view, so there are exactly len(tokens) - n + 1 windows (none if shorter).
    """
    n = _check_order(n)
    if isinstance(tokens, np.ndarray):
        tokens = tokens.tolist()  # plain ints: numpy scalars as keys would print as np.int64(3)
    return Counter(zip(*(tokens[i:] for i in range(n))))


@numba.njit(cache=False)
def _window_keys(ids, n, vocab_size, keys):  # pragma: no cover
    """keys[i] = the mixed-radix key of the window ids[i:i+n] (the first id is the most significant digit)."""
    for i in range(keys.size):
        key = 0
        for j in range(n):
            key = key * vocab_size + ids[i + j]
        keys[i] = key
    return keys


@numba.njit(cache=False)
def _run_lengths(sorted_keys):  # pragma: no cover
    """The distinct values of a sorted array and how often each occurs. Equal keys are neighbours, so a run
    starts wherever a key differs from the one before."""
    n = sorted_keys.size
    starts = np.empty(n, np.int64)
    m = 0
    for i in range(n):
        starts[m] = i  # kept only if a run starts here (m moves on); no branch for the processor to mispredict
        m += i == 0 or sorted_keys[i] != sorted_keys[i - 1]
    distinct, counts = np.empty(m, np.int64), np.empty(m, np.int64)
    for u in range(m):
        end = starts[u + 1] if u + 1 < m else n
        distinct[u], counts[u] = sorted_keys[starts[u]], end - starts[u]
    return distinct, counts


def _count_codes(ids: np.ndarray, n: int, vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct mixed-radix keys of the n-gram windows of ids (int64, contiguous), and their counts."""
    n_windows = max(ids.size - n + 1, 0)
    # 32-bit keys when every key fits (characters, word bigrams): the sort then moves half the bytes
    dtype = np.int32 if vocab_size ** n <= np.iinfo(np.int32).max else np.int64
    keys = _window_keys(ids, n, vocab_size, np.empty(n_windows, dtype))
    keys.sort()  # numpy's sort (SIMD quicksort): equal n-grams become neighbours
    return _run_lengths(keys)


def _decode_keys(keys: np.ndarray, n: int, vocab_size: int) -> np.ndarray:
    """Mixed-radix keys -> [m, n] int64 array of ids (the first id is the most significant digit)."""
    out = np.empty((keys.size, n), np.int64)
    for j in range(n - 1, 0, -1):  # the last digit first: key = rest * V + digit (numpy divides by a constant fast)
        rest = keys // vocab_size
        out[:, j] = keys - rest * vocab_size
        keys = rest
    out[:, 0] = keys  # what is left after n - 1 digits is the first one
    return out


def _encode_windows(windows: np.ndarray, vocab_size: int) -> np.ndarray:
    """[B, L] ids -> [B] mixed-radix int64 keys (0 for L = 0, the empty context)."""
    if windows.shape[1] == 0:
        return np.zeros(windows.shape[0], np.int64)
    weights = vocab_size ** np.arange(windows.shape[1] - 1, -1, -1, dtype=np.int64)
    return windows @ weights


def count_ngrams_numba(ids: np.ndarray, n: int, vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Count the n-grams of an id array: pack, sort, count runs (compiles on the first call).

    Returns (ngrams, counts): ngrams is an int64 array [m, n] of the distinct n-grams sorted
    lexicographically, counts an int64 array [m]. `ngram_arrays_to_counter` turns it into the Counter
    that `count_ngrams` returns, for comparison.
    """
    n = _check_order(n)
    vocab_size = _check_vocab_size(vocab_size)
    _check_radix(vocab_size, n)
    ids = _check_ids(ids, vocab_size)
    keys, counts = _count_codes(np.ascontiguousarray(ids), n, vocab_size)
    return _decode_keys(keys, n, vocab_size), counts


def ngram_arrays_to_counter(ngrams: np.ndarray, counts: np.ndarray) -> Counter[tuple[int, ...]]:
    """`count_ngrams_numba`'s arrays as a Counter of int tuples, comparable with `count_ngrams(ids, n)`."""
    ngrams, counts = np.asarray(ngrams), np.asarray(counts)
    if ngrams.ndim != 2 or counts.shape != (ngrams.shape[0],):
        raise ValueError(f"expected ngrams [m, n] and counts [m], got shapes {ngrams.shape} and {counts.shape}")
    return Counter(dict(zip(map(tuple, ngrams.tolist()), counts.tolist())))


# ----------------------------------------------------------------------------------------------------------
# counts of every order, fitted once

@dataclass(frozen=True, eq=False)
class OrderCounts:
    """Everything an n-gram model of one order needs, as sorted int64 key arrays for vectorised lookup.

    Keys are mixed-radix codes: an n-gram (h, w) has key code(h) * V + w, its context h has code(h).
    """
    n: int
    keys: np.ndarray        # distinct n-grams (h, w), sorted
    counts: np.ndarray      # c(h w)
    ctx_keys: np.ndarray    # distinct contexts h (the first n-1 tokens), sorted
    ctx_totals: np.ndarray  # c(h) = sum_w c(h w)  (summed over followers, so distributions normalise)
    ctx_types: np.ndarray   # N1+(h .) = number of distinct followers w of h
    # Kneser-Ney continuation counts, used when this order is a *lower* order (empty at the max order):
    cont_keys: np.ndarray        # n-grams (h, w) that follow at least one token
    cont_counts: np.ndarray      # N1+(. h w) = number of distinct tokens seen before (h, w)
    cont_ctx_keys: np.ndarray    # contexts h of those
    cont_ctx_totals: np.ndarray  # N1+(. h .) = sum_w N1+(. h w)
    cont_ctx_types: np.ndarray   # number of w with N1+(. h w) > 0


def _group_by_context(keys: np.ndarray, values: np.ndarray, vocab_size: int):
    """Group sorted n-gram keys by context (key // V): (context keys, sum of values, number of n-grams)."""
    if keys.size == 0:
        empty = np.empty(0, np.int64)
        return empty, empty, empty
    ctx = keys // vocab_size  # still sorted, so each context is one run
    starts = np.flatnonzero(np.r_[True, ctx[1:] != ctx[:-1]])
    return ctx[starts], np.add.reduceat(values, starts), np.diff(np.r_[starts, keys.size])


@dataclass(frozen=True, eq=False)
class NgramCounts:
    """Counts of all orders 1..max_order of one training id sequence. Build with `fit_counts`."""
    vocab_size: int
    max_order: int
    n_tokens: int
    orders: tuple[OrderCounts, ...]  # orders[k - 1] holds the k-grams

    def order(self, n: int) -> OrderCounts:
        """The tables of order n (1 <= n <= max_order)."""
        n = _check_order(n)
        if n > self.max_order:
            raise ValueError(f"n = {n} exceeds max_order = {self.max_order} these counts were fitted with")
        return self.orders[n - 1]

    def count(self, ngram: Sequence[int]) -> int:
        """Training count of one n-gram (a sequence of ids; 1 <= len <= max_order)."""
        ngram = _check_ids(ngram, self.vocab_size, name="ngram")
        if ngram.size == 0:
            raise ValueError("ngram must hold at least one id")
        table = self.order(ngram.size)
        key = _encode_windows(ngram[None, :], self.vocab_size)
        return int(_lookup(table.keys, table.counts, key)[0])

    def __repr__(self) -> str:
        sizes = ", ".join(f"{t.n}:{t.keys.size}" for t in self.orders)
        return f"NgramCounts(vocab_size={self.vocab_size}, n_tokens={self.n_tokens}, distinct={{{sizes}}})"


def fit_counts(ids: np.ndarray, max_order: int, vocab_size: int) -> NgramCounts:
    """Count every order 1..max_order of a training id sequence, with the context and KN tables."""
    max_order = _check_order(max_order, "max_order")
    vocab_size = _check_vocab_size(vocab_size)
    _check_radix(vocab_size, max_order)
    ids = np.ascontiguousarray(_check_ids(ids, vocab_size))
    if ids.size < max_order:
        raise ValueError(f"need at least max_order = {max_order} training tokens, got {ids.size}")
    raw = [_count_codes(ids, k, vocab_size) for k in range(1, max_order + 1)]
    orders = []
    for k, (keys, counts) in enumerate(raw, start=1):
        ctx_keys, ctx_totals, ctx_types = _group_by_context(keys, counts, vocab_size)
        if k < max_order:
            # Each distinct (k+1)-gram (u, h, w) contributes one distinct left neighbour u to (h, w).
            suffixes = raw[k][0] % (vocab_size ** k)
            cont_keys, cont_counts = np.unique(suffixes, return_counts=True)
            cont_counts = cont_counts.astype(np.int64)
        else:
            cont_keys = cont_counts = np.empty(0, np.int64)
        cont_ctx = _group_by_context(cont_keys, cont_counts, vocab_size)
        orders.append(OrderCounts(k, keys, counts, ctx_keys, ctx_totals, ctx_types,
                                  cont_keys, cont_counts, *cont_ctx))
    return NgramCounts(vocab_size, max_order, int(ids.size), tuple(orders))


def _lookup(sorted_keys: np.ndarray, values: np.ndarray, query: np.ndarray) -> np.ndarray:
    """values[key] for each query key, 0 where the key is absent. Vectorised binary search."""
    if sorted_keys.size == 0:
        return np.zeros(query.shape, np.int64)
    idx = np.minimum(np.searchsorted(sorted_keys, query), sorted_keys.size - 1)
    return np.where(sorted_keys[idx] == query, values[idx], 0)


# ----------------------------------------------------------------------------------------------------------
# the model

class NgramLM:
    """An n-gram language model: a view on fitted counts with one order n and one smoothing.

    smoothing:
      "mle"         P(w|h) = c(hw) / c(h). Undefined (0/0) on a context never seen in training.
      "add-k"       P(w|h) = (c(hw) + k) / (c(h) + kV). Uniform on an unseen context.
      "kneser-ney"  interpolated Kneser-Ney (Chen & Goodman 1998) with absolute discount D:
                    P(w|h) = max(c(hw) - D, 0) / c(h) + D * N1+(h.) / c(h) * P_lower(w|h'),
                    where h' drops h's first token and lower orders use continuation counts N1+(.h'w)
                    in place of c(h'w); the unigram level interpolates with the uniform 1/V, so no token
                    ever has probability 0. A context never seen backs off fully to the lower order.
    Contexts longer than n-1 are truncated to their last n-1 ids; shorter ones (the start of a text) use the
    order they can fill, len(context) + 1.
    """

    def __init__(self, counts: NgramCounts, n: int, smoothing: Smoothing = "kneser-ney",
                 k: float = 1.0, discount: float = 0.75):
        if not isinstance(counts, NgramCounts):
            raise TypeError(f"counts must be NgramCounts (from fit_counts), got {type(counts).__name__}")
        n = _check_order(n)
        if n > counts.max_order:
            raise ValueError(f"n = {n} exceeds the counts' max_order = {counts.max_order}: refit with "
                             f"fit_counts(..., max_order={n}, ...)")
        if smoothing not in SMOOTHINGS:
            raise ValueError(f"smoothing must be one of {SMOOTHINGS}, got {smoothing!r}")
        if not isinstance(k, (int, float, np.number)) or not math.isfinite(k) or k < 0:
            raise ValueError(f"k must be a finite number >= 0, got {k!r}")
        if not isinstance(discount, (int, float, np.number)) or not 0 < discount <= 1:
            raise ValueError(f"discount must lie in (0, 1], got {discount!r}")
        self.counts, self.n, self.smoothing = counts, n, smoothing
        self.k, self.discount = float(k), float(discount)
        self.vocab_size = counts.vocab_size

    def __repr__(self) -> str:
        param = {"mle": "", "add-k": f", k={self.k:g}", "kneser-ney": f", discount={self.discount:g}"}
        return f"NgramLM(n={self.n}, smoothing={self.smoothing!r}{param[self.smoothing]}, V={self.vocab_size})"

    def _probs(self, ctx: np.ndarray, w: np.ndarray) -> np.ndarray:
        """P(w[b] | ctx[b]) for a batch [B, L] of contexts of one length L <= n-1; NaN where MLE is 0/0."""
        V, L = self.vocab_size, ctx.shape[1]
        m = L + 1  # the order this context can fill
        if self.smoothing != "kneser-ney":
            table = self.counts.order(m)
            h = _encode_windows(ctx, V)
            c = _lookup(table.keys, table.counts, h * V + w).astype(np.float64)
            total = _lookup(table.ctx_keys, table.ctx_totals, h).astype(np.float64)
            seen = total > 0
            safe = np.where(seen, total, 1.0)
            if self.smoothing == "mle":
                return np.where(seen, c / safe, np.nan)
            return np.where(seen, (c + self.k) / (safe + self.k * V), 1.0 / V)
        # Kneser-Ney, bottom-up: start from uniform, then each order j = 1..m interpolates with the one below.
        D = self.discount
        p = np.full(w.shape, 1.0 / V)
        for j in range(1, m + 1):
            t = self.counts.order(j)
            h = _encode_windows(ctx[:, L - (j - 1):], V)
            if j == m:  # the highest order uses raw counts ...
                c = _lookup(t.keys, t.counts, h * V + w)
                total, types = _lookup(t.ctx_keys, t.ctx_totals, h), _lookup(t.ctx_keys, t.ctx_types, h)
            else:       # ... lower orders use continuation counts: in how many contexts did (h, w) appear?
                c = _lookup(t.cont_keys, t.cont_counts, h * V + w)
                total = _lookup(t.cont_ctx_keys, t.cont_ctx_totals, h)
                types = _lookup(t.cont_ctx_keys, t.cont_ctx_types, h)
            seen = total > 0
            safe = np.where(seen, total, 1).astype(np.float64)
            p = np.where(seen, (np.maximum(c - D, 0.0) + D * types * p) / safe, p)  # unseen: back off fully
        return p

    def _context(self, context: Sequence[int]) -> np.ndarray:
        ctx = _check_ids(context, self.vocab_size, name="context")
        return ctx[max(ctx.size - (self.n - 1), 0):]

    def distribution(self, context: Sequence[int]) -> np.ndarray:
        """P(. | context) over the whole vocabulary: float64 [V], sums to 1."""
        ctx = self._context(context)
        V = self.vocab_size
        p = self._probs(np.broadcast_to(ctx, (V, ctx.size)), np.arange(V, dtype=np.int64))
        if np.isnan(p[0]):
            raise ValueError(f"MLE is undefined (0/0) after the context {ctx.tolist()}: it never occurs in "
                             "training. Use smoothing='add-k' or 'kneser-ney'")
        return p

    def prob(self, context: Sequence[int], token: int) -> float:
        """P(token | context)."""
        ctx = self._context(context)
        (tok,) = _check_ids([token], self.vocab_size, name="token")
        p = float(self._probs(ctx[None, :], np.array([tok]))[0])
        if math.isnan(p):
            raise ValueError(f"MLE is undefined (0/0) after the context {ctx.tolist()}: it never occurs in "
                             "training. Use smoothing='add-k' or 'kneser-ney'")
        return p

    def log_probs(self, ids: Sequence[int]) -> np.ndarray:
        """Natural-log probability of each ids[i] given ids[:i] (truncated to the last n-1 ids).

        The first n-1 tokens use the shorter contexts available. Under MLE a token with probability 0, or
        after a context never seen in training (0/0), gets -inf: the model gives it no probability.
        """
        ids = _check_ids(ids, self.vocab_size)
        out = np.empty(ids.size, np.float64)
        head = min(self.n - 1, ids.size)
        p = np.empty(ids.size, np.float64)
        for i in range(head):  # the start: context ids[:i], shorter than n-1
            p[i] = self._probs(ids[None, :i], ids[i:i + 1])[0]
        if ids.size > head:    # everything else at once: all windows of n ids
            windows = np.lib.stride_tricks.sliding_window_view(ids, self.n)
            p[head:] = self._probs(windows[:, :-1], windows[:, -1])
        with np.errstate(divide="ignore"):
            out[:] = np.log(np.nan_to_num(p, nan=0.0))
        return out

    def perplexity(self, ids: Sequence[int]) -> float:
        """exp(-mean log P(ids[i] | ids[:i])). float('inf') if some token has probability 0 (MLE)."""
        ids = _check_ids(ids, self.vocab_size)
        if ids.size == 0:
            raise ValueError("perplexity needs at least one token")
        return perplexity_from_log_probs(self.log_probs(ids))

    def sample(self, rng: np.random.Generator, context: Sequence[int], length: int,
               temperature: float = 1.0) -> list[int]:
        """Sample `length` ids after `context`. Temperature T reshapes P to P**(1/T), renormalised:
        T < 1 sharpens (T -> 0 approaches argmax), T > 1 flattens."""
        if not isinstance(rng, np.random.Generator):
            raise TypeError(f"rng must be a numpy.random.Generator (np.random.default_rng(seed)), "
                            f"got {type(rng).__name__}")
        if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < 0:
            raise ValueError(f"length must be an int >= 0, got {length!r}")
        if not isinstance(temperature, (int, float, np.number)) or not (0 < temperature < math.inf):
            raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
        history = _check_ids(context, self.vocab_size, name="context").tolist()
        out: list[int] = []
        for _ in range(length):
            p = self.distribution(history[len(history) - (self.n - 1):] if self.n > 1 else [])
            with np.errstate(divide="ignore"):
                logits = np.log(p) / temperature
            q = np.exp(logits - logits.max())  # the max maps to 1: no overflow, even at tiny T
            cdf = np.cumsum(q)
            token = int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"))
            token = min(token, self.vocab_size - 1)
            out.append(token)
            history.append(token)
        return out


# ----------------------------------------------------------------------------------------------------------
# the small formulas the lab asks for (references for labkit.checks.ngram)

def add_k_prob(ngram_count: float, context_count: float, vocab_size: int, k: float) -> float:
    """Add-k estimate (c(hw) + k) / (c(h) + k V): every one of the V tokens gets k pseudo-counts."""
    if ngram_count < 0 or context_count < 0:
        raise ValueError(f"counts must be >= 0, got ngram_count={ngram_count}, context_count={context_count}")
    if ngram_count > context_count:
        raise ValueError(f"ngram_count ({ngram_count}) cannot exceed context_count ({context_count})")
    vocab_size = _check_vocab_size(vocab_size)
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    denominator = context_count + k * vocab_size
    if denominator == 0:
        raise ValueError("context_count = 0 and k = 0: the estimate is 0/0 (MLE on an unseen context)")
    return (ngram_count + k) / denominator


def perplexity_from_log_probs(log_probs: Sequence[float] | np.ndarray) -> float:
    """exp(-mean(log_probs)) for natural-log probabilities: the 'effective branching factor'."""
    lp = np.asarray(log_probs, dtype=np.float64)
    if lp.ndim != 1 or lp.size == 0:
        raise ValueError(f"log_probs must be a non-empty 1-D sequence, got shape {lp.shape}")
    if np.any(lp > 1e-9) or np.any(np.isnan(lp)):  # (a hair above 0 is float rounding of log 1)
        raise ValueError("log_probs must be natural-log probabilities (<= 0, not NaN)")
    return float(np.exp(-lp.mean()))


def unseen_share(train_ids: np.ndarray, heldout_ids: np.ndarray, n: int) -> float:
    """Share of held-out n-gram windows that never occur in training: how sparse the counts get as n grows."""
    n = _check_order(n)
    train_ids = _check_ids(train_ids, name="train_ids")
    heldout_ids = _check_ids(heldout_ids, name="heldout_ids")
    if heldout_ids.size < n:
        raise ValueError(f"heldout_ids has {heldout_ids.size} tokens: fewer than n = {n}, so no windows")
    vocab_size = int(max(train_ids.max(initial=0), heldout_ids.max())) + 1
    _check_radix(vocab_size, n)
    seen, _ = _count_codes(np.ascontiguousarray(train_ids), n, vocab_size)
    queries = _encode_windows(np.lib.stride_tricks.sliding_window_view(heldout_ids, n), vocab_size)
    return float(1.0 - np.isin(queries, seen, assume_unique=False).mean())
