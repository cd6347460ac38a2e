"""PagedAttention (Kwon et al. 2023, vLLM): the KV-cache in fixed-size blocks from one shared pool.

A server that preallocates each request's cache for the longest answer it might give (`labkit.kvcache.KVCache`
with max_len) reserves memory the request mostly never uses, so few requests fit at once. PagedAttention
manages cache memory like an operating system manages RAM: it is cut into blocks ("pages") of `block_size`
tokens; a request gets a block only when its last one is full, and a per-request *block table* maps its
logical blocks 0, 1, 2, ... to physical blocks anywhere in the pool. Attention gathers keys and values through
the table. At most block_size - 1 slots per request are wasted, and a finished request's blocks go straight
back to the free list for the next one: that is what lets continuous batching admit many more requests.

    BlockAllocator     a pool of n_blocks physical blocks: allocate / free, a free list, owners checked
    gather             a sequence's keys (or values) from the pool through its block table, in order
    paged_attention    one decode query per sequence, attending over its paged keys and values
    PagedKVCache       the cache for `labkit.llama.Llama.forward(cache=...)`: update / advance / seen
    make_requests, simulate_serving, serving_explorer   continuous batching with paged vs contiguous memory
"""
from __future__ import annotations

import html
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from .attention import repeat_kv, scaled_dot_product_attention
from .llama import LlamaConfig


def _positive_int(name: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


# ----------------------------------------------------------------------------------------------------------
# the block allocator

class BlockAllocator:
    """Hands out physical block ids 0..n_blocks-1 from a free list; each block has at most one owner."""

    def __init__(self, n_blocks: int):
        self.n_blocks = _positive_int("n_blocks", n_blocks)
        self._free: deque[int] = deque(range(n_blocks))  # FIFO: freed blocks are reused after the untouched ones
        self.owner: dict[int, object] = {}               # block id -> the sequence that holds it

    @property
    def n_free(self) -> int:
        return len(self._free)

    def allocate(self, owner: object) -> int:
        """One free block for `owner`. RuntimeError when the pool is exhausted (the scheduler must wait or
        preempt a request, as vLLM does)."""
        if not self._free:
            raise RuntimeError(f"out of KV-cache blocks: all {self.n_blocks} are in use")
        block = self._free.popleft()
        self.owner[block] = owner
        return block

    def free(self, blocks: Sequence[int]) -> None:
        """Give blocks back to the pool. ValueError for a block that is not allocated (a double free)."""
        for block in blocks:
            if block not in self.owner:
                raise ValueError(f"block {block} is not allocated (freed twice, or never handed out)")
            del self.owner[block]
            self._free.append(block)


def blocks_needed(n_tokens: int, block_size: int) -> int:
    """Blocks that hold n_tokens: ceil(n_tokens / block_size)."""
    return math.ceil(_positive_int("n_tokens", n_tokens, 0) / _positive_int("block_size", block_size))


# ----------------------------------------------------------------------------------------------------------
# attention through a block table

def gather(pool: torch.Tensor, block_table: Sequence[int], length: int) -> torch.Tensor:
    """The first `length` tokens of a sequence from pool [n_blocks, block_size, H, D]: logical token t lives in
    physical block block_table[t // block_size], slot t % block_size. Returns [H, length, D]."""
    if not isinstance(pool, torch.Tensor) or pool.ndim != 4:
        raise ValueError(f"pool must be a tensor [n_blocks, block_size, heads, head_dim], got "
                         f"{tuple(pool.shape) if isinstance(pool, torch.Tensor) else type(pool).__name__}")
    block_size = pool.shape[1]
    if length < 0 or blocks_needed(length, block_size) > len(block_table):
        raise ValueError(f"{length} tokens need {blocks_needed(max(length, 0), block_size)} blocks of {block_size},"
                         f" the block table has {len(block_table)}")
    blocks = pool[torch.as_tensor(list(block_table), dtype=torch.long)]   # [n, block_size, H, D], in logical order
    return blocks.reshape(-1, *pool.shape[2:])[:length].transpose(0, 1)   # [H, length, D]


def paged_attention(q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor,
                    block_tables: Sequence[Sequence[int]], lengths: Sequence[int]) -> torch.Tensor:
    """Decode attention for a batch of sequences of different lengths: q [B, H_q, D] is each sequence's newest
    query; its keys and values are the first lengths[b] tokens behind block_tables[b] in k_pool, v_pool
    [n_blocks, block_size, H_kv, D]. Query head h reads kv head h // (H_q // H_kv). Returns [B, H_q, D].

    vLLM's kernel reads the blocks in place; this gathers them and calls the plain attention, one sequence at
    a time, so it computes exactly what contiguous attention computes."""
    if q.ndim != 3 or k_pool.ndim != 4 or k_pool.shape != v_pool.shape or q.shape[-1] != k_pool.shape[-1]:
        raise ValueError(f"need q [B, H_q, D] and k_pool, v_pool [n_blocks, block_size, H_kv, D], got "
                         f"{tuple(q.shape)}, {tuple(k_pool.shape)}, {tuple(v_pool.shape)}")
    if not len(block_tables) == len(lengths) == q.shape[0]:
        raise ValueError(f"need one block table and one length per query, got {len(block_tables)} tables, "
                         f"{len(lengths)} lengths, {q.shape[0]} queries")
    if q.shape[1] % k_pool.shape[2]:
        raise ValueError(f"query heads ({q.shape[1]}) must be a multiple of kv heads ({k_pool.shape[2]})")
    n_rep = q.shape[1] // k_pool.shape[2]
    out = []
    for b, (table, length) in enumerate(zip(block_tables, lengths)):
        if length < 1:
            raise ValueError(f"sequence {b} has length {length}: a query needs at least one key (itself)")
        k = repeat_kv(gather(k_pool, table, length)[None], n_rep)  # [1, H_q, length, D]
        v = repeat_kv(gather(v_pool, table, length)[None], n_rep)
        out.append(scaled_dot_product_attention(q[b, None, :, None], k, v)[0, :, 0])  # no mask: all are past
    return torch.stack(out)


class PagedKVCache:
    """A KV-cache for `batch` sequences decoded together, stored in blocks of a shared pool.

    Pools k, v [n_layers, n_blocks, block_size, H_kv, D] (each layer has its own pool; one block table per
    sequence serves every layer). Blocks are allocated as tokens arrive, so memory follows the tokens actually
    stored. `update` writes through the block table and returns the gathered keys and values, so labkit's
    Llama attends over exactly what `labkit.kvcache.KVCache` would give it.
    """

    def __init__(self, cfg: LlamaConfig, n_blocks: int, block_size: int = 16, batch: int = 1,
                 dtype: torch.dtype = torch.float32):
        if not isinstance(cfg, LlamaConfig):
            raise TypeError(f"cfg must be a LlamaConfig (model.cfg), got {type(cfg).__name__}")
        self.block_size = _positive_int("block_size", block_size)
        self.batch = _positive_int("batch", batch)
        self.allocator = BlockAllocator(n_blocks)
        shape = (cfg.n_layers, n_blocks, block_size, cfg.n_kv_heads, cfg.head_dim)
        self.k = torch.zeros(shape, dtype=dtype)
        self.v = torch.zeros(shape, dtype=dtype)
        self.block_tables: list[list[int]] = [[] for _ in range(batch)]
        self.seen = 0

    def _reserve(self, n_tokens: int) -> None:
        """Give every sequence enough blocks for n_tokens (idempotent: every layer calls it)."""
        for b, table in enumerate(self.block_tables):
            while len(table) < blocks_needed(n_tokens, self.block_size):
                table.append(self.allocator.allocate(owner=b))

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v [batch, kv_heads, T, head_dim] of `layer` at positions seen..seen+T-1; return every stored
        key and value of that layer, gathered: [batch, kv_heads, seen + T, head_dim]."""
        if not 0 <= layer < self.k.shape[0]:
            raise ValueError(f"layer must lie in [0, {self.k.shape[0]}), got {layer}")
        expected = (self.batch, self.k.shape[3], self.k.shape[4])
        if k.shape != v.shape or k.ndim != 4 or (k.shape[0], k.shape[1], k.shape[3]) != expected:
            raise ValueError(f"k and v must both be [batch, kv_heads, T, head_dim] with (batch, kv_heads, head_dim)"
                             f" = {expected}, got {tuple(k.shape)} and {tuple(v.shape)}")
        end = self.seen + k.shape[2]
        self._reserve(end)
        t = torch.arange(self.seen, end)
        for b, table in enumerate(self.block_tables):
            blocks = torch.tensor(table, dtype=torch.long)[t // self.block_size]
            self.k[layer, blocks, t % self.block_size] = k[b].transpose(0, 1)  # [T, H_kv, D] into their slots
            self.v[layer, blocks, t % self.block_size] = v[b].transpose(0, 1)
        ks = torch.stack([gather(self.k[layer], table, end) for table in self.block_tables])
        vs = torch.stack([gather(self.v[layer], table, end) for table in self.block_tables])
        return ks, vs

    def advance(self, n: int) -> None:
        self.seen += n

    def free(self) -> None:
        """Give every block back to the pool (the sequences are finished)."""
        for table in self.block_tables:
            self.allocator.free(table)
            table.clear()
        self.seen = 0


# ----------------------------------------------------------------------------------------------------------
# continuous batching: a serving simulation

@dataclass(frozen=True)
class Request:
    arrival: int   # decode step at which it arrives
    prompt: int    # prompt tokens
    output: int    # tokens it will generate (unknown to the server in advance)


def make_requests(n: int, seed: int = 0, mean_gap: float = 1.0, prompt_range: tuple[int, int] = (16, 256),
                  output_range: tuple[int, int] = (8, 512)) -> list[Request]:
    """n requests with exponential gaps between arrivals and uniform prompt/output lengths, seeded."""
    _positive_int("n", n)
    rng = np.random.default_rng(seed)
    arrivals = np.floor(np.cumsum(rng.exponential(mean_gap, n))).astype(int)
    prompts = rng.integers(prompt_range[0], prompt_range[1] + 1, n)
    outputs = rng.integers(output_range[0], output_range[1] + 1, n)
    return [Request(int(a), int(p), int(o)) for a, p, o in zip(arrivals, prompts, outputs)]


@dataclass
class ServingTrace:
    """What the simulation saw at every step (lists indexed by step)."""
    policy: str
    used: list[int] = field(default_factory=list)      # token slots holding a real key/value
    reserved: list[int] = field(default_factory=list)  # token slots set aside for running requests
    running: list[int] = field(default_factory=list)   # requests decoding this step
    finished: list[int] = field(default_factory=list)  # requests done so far
    preempted: int = 0                                 # paged: requests evicted when blocks ran out
    recomputed: int = 0                                # tokens whose keys/values were dropped by preemption
    layout: list[list[tuple[int, int, int]]] = field(default_factory=list)  # per step: (request, used, reserved)

    @property
    def steps(self) -> int:
        return len(self.used)

    def utilisation(self) -> float:
        """Used ÷ reserved slots, summed over the whole run."""
        return sum(self.used) / max(sum(self.reserved), 1)


def simulate_serving(requests: Sequence[Request], capacity: int, policy: str = "paged", block_size: int = 16,
                     max_len: int = 1024, max_steps: int = 100_000) -> ServingTrace:
    """Continuous batching over a KV-cache of `capacity` token slots, first come first served.

    Each step, waiting requests are admitted in arrival order while memory allows; an admitted request stores
    its prompt and then adds one token per step until it has generated `output` tokens, when its memory is
    freed at once (no waiting for the rest of a batch: that is continuous batching).
      "contiguous"  each request reserves max_len slots (prompt + the longest allowed answer) on admission;
      "paged"       blocks of block_size slots as needed; when a running request needs a block and none is
                    free, the latest admitted request is preempted (its blocks freed, it is queued again
                    first and recomputed later), as vLLM does by default.
    """
    if policy not in ("paged", "contiguous"):
        raise ValueError(f"policy must be 'paged' or 'contiguous', got {policy!r}")
    _positive_int("capacity", capacity)
    _positive_int("block_size", block_size)
    _positive_int("max_len", max_len)
    too_long = [r for r in requests if r.prompt + r.output > max_len]
    if too_long:
        raise ValueError(f"{len(too_long)} request(s) exceed max_len={max_len}, e.g. {too_long[0]}")
    slot = block_size if policy == "paged" else max_len  # the unit memory is reserved in
    total_units = capacity // slot
    if total_units < (blocks_needed(max_len, block_size) if policy == "paged" else 1):
        raise ValueError(f"capacity {capacity} cannot hold even one request of max_len {max_len}")

    trace = ServingTrace(policy)
    pending = deque(sorted(range(len(requests)), key=lambda i: (requests[i].arrival, i)))
    waiting: deque[int] = deque()
    running: dict[int, list[int]] = {}   # request -> [tokens stored, units reserved]
    generated = [0] * len(requests)
    free_units, done, step = total_units, 0, 0
    while done < len(requests):
        if step >= max_steps:
            raise RuntimeError(f"the simulation did not finish in {max_steps} steps")
        while pending and requests[pending[0]].arrival <= step:
            waiting.append(pending.popleft())
        # admit, in order: the prompt (plus any tokens to recompute) and this step's new token must fit
        while waiting:
            i = waiting[0]
            tokens = requests[i].prompt + generated[i]
            need = blocks_needed(tokens + 1, block_size) if policy == "paged" else 1
            if need > free_units:
                break
            waiting.popleft()
            running[i] = [tokens, need]
            free_units -= need
        # decode: every running request adds one token; a paged one may need a new block first
        for i in list(running):
            if i not in running:
                continue  # preempted earlier in this step
            state = running[i]
            if state[0] > 0 and policy == "paged" and state[0] + 1 > state[1] * block_size:
                while free_units == 0:
                    victim = next(reversed(running))  # the latest admitted (dicts keep insertion order)
                    tokens_lost, units = running.pop(victim)
                    free_units += units
                    waiting.appendleft(victim)
                    trace.preempted += 1
                    trace.recomputed += tokens_lost  # its prefill must redo them on readmission
                    if victim == i:
                        break
                if i not in running:
                    continue
                state[1] += 1
                free_units -= 1
            state[0] += 1
            generated[i] += 1
        trace.used.append(sum(s[0] for s in running.values()))
        trace.reserved.append(sum(s[1] for s in running.values()) * slot)
        trace.running.append(len(running))
        trace.layout.append([(i, s[0], s[1] * slot) for i, s in running.items()])
        for i in [i for i in running if generated[i] == requests[i].output]:
            free_units += running.pop(i)[1]
            done += 1
        trace.finished.append(done)
        step += 1
    return trace


_COLOURS = ["#4878a8", "#e4874a", "#5aa05a", "#c94f4f", "#8e6bb8", "#8c6d5a", "#d77bbd", "#7f7f7f",
            "#b5b34a", "#4ab5c4"]


def _memory_bar(layout: list[tuple[int, int, int]], capacity: int, title: str) -> str:
    """One horizontal bar of `capacity` slots: each running request's reserved run, the used part solid."""
    parts = []
    for i, used, reserved in layout:  # one div per request: solid up to `used`, then the same colour, pale
        colour, fill = _COLOURS[i % len(_COLOURS)], 100 * used / max(reserved, 1)
        parts.append(f'<div style="flex:0 0 {100 * reserved / capacity:.2f}%;border-right:1px solid #fff;'
                     f'background:linear-gradient(90deg,{colour} {fill:.1f}%,{colour}44 {fill:.1f}%)"></div>')
    used = sum(u for _, u, _ in layout)
    reserved = sum(r for _, _, r in layout)
    caption = (f"{title}: {len(layout)} running, {used:,} slots used of {reserved:,} reserved "
               f"({100 * used / max(reserved, 1):.0f}%), {capacity - reserved:,} free")
    return (f'<div style="font-size:13px;margin:2px 0">{html.escape(caption)}</div>'
            f'<div style="display:flex;height:22px;background:#eee;max-width:44em">{"".join(parts)}</div>')


def serving_explorer(traces: Sequence[ServingTrace], capacity: int, steps: Sequence[int]):
    """A widget: a slider over the given steps; for each, every trace's memory as a bar (solid = used slots,
    pale = reserved but empty). Precomputed HTML in a Stack switched by jslink: works without a kernel."""
    import ipywidgets as widgets

    steps = list(steps)
    if not steps or any(not 0 <= s < min(t.steps for t in traces) for s in steps):
        raise ValueError("steps must be a non-empty list of steps every trace reached")
    views = [widgets.HTML(f"<div><b>step {s}</b></div>" + "".join(_memory_bar(t.layout[s], capacity, t.policy)
                                                                  for t in traces)) for s in steps]
    stack = widgets.Stack(views, selected_index=0)
    slider = widgets.IntSlider(value=0, min=0, max=len(steps) - 1, description="snapshot")
    widgets.jslink((slider, "value"), (stack, "selected_index"))
    return widgets.VBox([slider, stack])
