"""labkit.paged: the block allocator, attention through block tables == contiguous attention, PagedKVCache in
SmolLM2's architecture == KVCache, and the continuous-batching simulation's invariants."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from labkit.attention import repeat_kv, scaled_dot_product_attention
from labkit.kvcache import KVCache, generate
from labkit.paged import (BlockAllocator, PagedKVCache, Request, blocks_needed, gather, make_requests,
                          paged_attention, serving_explorer, simulate_serving)
from tiny_llama import random_llama

pytestmark = pytest.mark.usefixtures("torch_one_thread")


# ----------------------------------------------------------------------------------------------------------
# the allocator

def test_allocator_exhaustion_reuse_and_double_free():
    alloc = BlockAllocator(3)
    blocks = [alloc.allocate("a"), alloc.allocate("a"), alloc.allocate("b")]
    assert sorted(blocks) == [0, 1, 2] and alloc.n_free == 0
    with pytest.raises(RuntimeError, match="out of KV-cache blocks: all 3 are in use"):
        alloc.allocate("c")
    alloc.free([blocks[1]])
    assert alloc.allocate("c") == blocks[1]      # a freed block is handed out again
    with pytest.raises(ValueError, match="is not allocated"):
        alloc.free([blocks[0], blocks[0]])
    with pytest.raises(ValueError, match="n_blocks must be an int >= 1"):
        BlockAllocator(0)


@settings(max_examples=60, deadline=None)
@given(ops=st.lists(st.tuples(st.booleans(), st.integers(0, 4)), max_size=60))
def test_allocator_never_hands_a_block_to_two_owners(ops):
    alloc, held = BlockAllocator(8), {o: [] for o in range(5)}
    for allocate, owner in ops:
        if allocate and alloc.n_free:
            held[owner].append(alloc.allocate(owner))
        elif held[owner]:
            alloc.free([held[owner].pop(0)])
        owned = [b for blocks in held.values() for b in blocks]
        assert len(owned) == len(set(owned)) == 8 - alloc.n_free          # no block owned twice, none lost
        assert all(alloc.owner[b] == o for o, blocks in held.items() for b in blocks)


def test_blocks_needed():
    assert [blocks_needed(n, 4) for n in (0, 1, 4, 5, 8, 9)] == [0, 1, 1, 2, 2, 3]


# ----------------------------------------------------------------------------------------------------------
# attention through block tables

@settings(max_examples=40, deadline=None)
@given(lengths=st.lists(st.integers(1, 40), min_size=1, max_size=4), block_size=st.integers(1, 9),
       seed=st.integers(0, 2**16))
def test_paged_attention_equals_contiguous_attention(lengths, block_size, seed):
    g = torch.Generator().manual_seed(seed)
    h_q, h_kv, d = 6, 2, 8
    keys = [torch.randn(h_kv, n, d, generator=g) for n in lengths]
    values = [torch.randn(h_kv, n, d, generator=g) for n in lengths]
    q = torch.randn(len(lengths), h_q, d, generator=g)
    # scatter each sequence into randomly chosen physical blocks of one pool
    n_blocks = sum(blocks_needed(n, block_size) for n in lengths) + 3
    order = torch.randperm(n_blocks, generator=g).tolist()
    k_pool, v_pool = torch.zeros(n_blocks, block_size, h_kv, d), torch.zeros(n_blocks, block_size, h_kv, d)
    tables = []
    for k, v, n in zip(keys, values, lengths):
        table = [order.pop() for _ in range(blocks_needed(n, block_size))]
        for t in range(n):
            k_pool[table[t // block_size], t % block_size] = k[:, t]
            v_pool[table[t // block_size], t % block_size] = v[:, t]
        tables.append(table)
        assert torch.equal(gather(k_pool, table, n), k)                  # the gather is exact
    got = paged_attention(q, k_pool, v_pool, tables, lengths)
    for b, (k, v) in enumerate(zip(keys, values)):
        expected = scaled_dot_product_attention(q[b, :, None], repeat_kv(k[None], 3)[0], repeat_kv(v[None], 3)[0])
        torch.testing.assert_close(got[b], expected[:, 0], atol=1e-6, rtol=1e-6)  # same numbers, same arithmetic


def test_paged_attention_errors():
    pool = torch.zeros(4, 2, 1, 8)
    with pytest.raises(ValueError, match="the block table has 1"):
        gather(pool, [0], 3)
    with pytest.raises(ValueError, match="one block table and one length per query"):
        paged_attention(torch.zeros(2, 2, 8), pool, pool, [[0]], [1])
    with pytest.raises(ValueError, match="has length 0"):
        paged_attention(torch.zeros(1, 2, 8), pool, pool, [[0]], [0])


# ----------------------------------------------------------------------------------------------------------
# PagedKVCache inside the model

@pytest.fixture(scope="module")
def tiny():
    return random_llama()


def test_paged_cache_generates_the_tokens_of_kvcache(tiny):
    ids = torch.randint(0, 97, (2, 7), generator=torch.Generator().manual_seed(1))
    paged = PagedKVCache(tiny.cfg, n_blocks=16, block_size=4, batch=2)
    expected = generate(tiny, ids, 20, cache=KVCache(tiny.cfg, batch=2, max_len=27))
    assert torch.equal(generate(tiny, ids, 20, cache=paged), expected)
    # 7 + 20 tokens were fed (the last chosen one is never fed back): ceil(26 / 4) = 7 blocks per sequence
    assert paged.seen == 26 and [len(t) for t in paged.block_tables] == [7, 7]
    assert paged.allocator.n_free == 16 - 14
    paged.free()
    assert paged.allocator.n_free == 16 and paged.seen == 0


def test_paged_cache_logits_match_kvcache(tiny):
    ids = torch.randint(0, 97, (1, 12), generator=torch.Generator().manual_seed(2))
    paged, plain = PagedKVCache(tiny.cfg, 8, 3), KVCache(tiny.cfg, max_len=12)
    with torch.no_grad():
        for chunk in (ids[:, :5], ids[:, 5:6], ids[:, 6:12]):
            torch.testing.assert_close(tiny(chunk, cache=paged), tiny(chunk, cache=plain), atol=1e-6, rtol=1e-6)


def test_paged_cache_runs_out_of_blocks(tiny):
    paged = PagedKVCache(tiny.cfg, n_blocks=2, block_size=4)
    with pytest.raises(RuntimeError, match="out of KV-cache blocks"):
        with torch.no_grad():
            tiny(torch.arange(9)[None], cache=paged)


# ----------------------------------------------------------------------------------------------------------
# the serving simulation

@pytest.fixture(scope="module")
def requests():
    return make_requests(60, seed=0, mean_gap=2.0, prompt_range=(8, 64), output_range=(4, 128))


@pytest.mark.parametrize("policy", ["paged", "contiguous"])
def test_simulation_invariants(requests, policy):
    trace = simulate_serving(requests, capacity=2048, policy=policy, block_size=16, max_len=256)
    assert trace.finished[-1] == len(requests)
    assert all(u <= r <= 2048 for u, r in zip(trace.used, trace.reserved))
    for layout in trace.layout:
        assert all(0 < used <= reserved for _, used, reserved in layout)
        if policy == "contiguous":
            assert all(reserved == 256 for _, _, reserved in layout) and len(layout) <= 2048 // 256
        else:
            assert all(reserved - used < 16 for _, used, reserved in layout)  # under a block wasted each
    assert trace == simulate_serving(requests, capacity=2048, policy=policy, block_size=16, max_len=256)


def test_paged_runs_more_requests_at_higher_utilisation(requests):
    paged = simulate_serving(requests, 2048, "paged", 16, 256)
    contiguous = simulate_serving(requests, 2048, "contiguous", 16, 256)
    assert paged.utilisation() > contiguous.utilisation()
    assert max(paged.running) > max(contiguous.running) and paged.steps < contiguous.steps


def test_one_block_of_max_len_is_contiguous_preallocation(requests):
    paged = simulate_serving(requests, 2048, "paged", block_size=256, max_len=256)
    contiguous = simulate_serving(requests, 2048, "contiguous", max_len=256)
    assert (paged.used, paged.reserved, paged.running, paged.preempted) == \
        (contiguous.used, contiguous.reserved, contiguous.running, 0)


def test_preemption_recomputes_and_still_finishes():
    reqs = [Request(0, 8, 60), Request(0, 8, 60), Request(0, 8, 60)]
    trace = simulate_serving(reqs, capacity=128, policy="paged", block_size=8, max_len=128)
    assert trace.preempted > 0 and trace.recomputed > 0 and trace.finished[-1] == 3


def test_simulation_errors(requests):
    with pytest.raises(ValueError, match="policy must be 'paged' or 'contiguous'"):
        simulate_serving(requests, 2048, "lazy")
    with pytest.raises(ValueError, match="exceed max_len=64"):
        simulate_serving(requests, 2048, "paged", max_len=64)
    with pytest.raises(ValueError, match="cannot hold even one request"):
        simulate_serving(requests, 100, "contiguous", max_len=256)


def test_explorer_builds(requests):
    traces = [simulate_serving(requests, 2048, p, 16, 256) for p in ("contiguous", "paged")]
    box = serving_explorer(traces, 2048, steps=[0, 10, 20])
    assert len(box.children[1].children) == 3
    assert "paged" in box.children[1].children[2].value
