"""labkit.checks.kvcache: the lab's checks pass the references and catch plausible wrong implementations."""
import pytest
import torch

from labkit.checks.kvcache import (check_cache_update, check_cache_update_in_model, check_kept_positions,
                                   check_kept_positions_in_model)
from labkit.streaming import kept_positions
from tiny_llama import random_llama

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def tiny():
    return random_llama()


def update_right(k_cache, v_cache, k_new, v_new, start):
    end = start + k_new.shape[2]
    k_cache[:, :, start:end], v_cache[:, :, start:end] = k_new, v_new
    return k_cache[:, :, :end], v_cache[:, :, :end]


def update_at_zero(k_cache, v_cache, k_new, v_new, start):      # ignores the offset
    t = k_new.shape[2]
    k_cache[:, :, :t], v_cache[:, :, :t] = k_new, v_new
    return k_cache[:, :, :start + t], v_cache[:, :, :start + t]


def update_only_new(k_cache, v_cache, k_new, v_new, start):     # forgets the past
    update_right(k_cache, v_cache, k_new, v_new, start)
    return k_new, v_new


def update_not_in_place(k_cache, v_cache, k_new, v_new, start):  # returns the right thing, stores nothing
    return torch.cat([k_cache[:, :, :start], k_new], 2), torch.cat([v_cache[:, :, :start], v_new], 2)


def update_returns_copies(k_cache, v_cache, k_new, v_new, start):  # stores, then returns fresh copies
    end = start + k_new.shape[2]
    k_cache[:, :, start:end], v_cache[:, :, start:end] = k_new, v_new
    return k_cache[:, :, :end].clone(), v_cache[:, :, :end].clone()


def update_v_gets_k(k_cache, v_cache, k_new, v_new, start):  # copy-paste: the keys stored as values too
    end = start + k_new.shape[2]
    k_cache[:, :, start:end], v_cache[:, :, start:end] = k_new, k_new
    return k_cache[:, :, :end], v_cache[:, :, :end]


def kept_unclipped_sinks(seen, n_sink, window):  # keeps n_sink sinks even before n_sink tokens exist
    return [*range(n_sink), *range(max(n_sink, seen - (window - 1)), seen)]


def kept_no_sinks(seen, n_sink, window):
    return list(range(max(0, seen - window + 1), seen))


def kept_window_too_long(seen, n_sink, window):
    return [*range(min(n_sink, seen)), *range(max(n_sink, seen - window), seen)]


def kept_duplicates(seen, n_sink, window):
    return [*range(min(n_sink, seen)), *range(max(0, seen - window + 1), seen)]


def test_references_pass(tiny, capsys):
    check_cache_update(update_right)
    check_cache_update_in_model(update_right, tiny)
    check_kept_positions(kept_positions)
    check_kept_positions_in_model(kept_positions, tiny)
    assert capsys.readouterr().out.count("✓") == 4


@pytest.mark.parametrize("fn, message", [
    (update_at_zero, "must be the 3 keys/values stored before"),
    (update_only_new, "You returned only the new keys"),
    (update_not_in_place, "write in place"),
    (update_returns_copies, "k_all has the right values but is a copy"),
    (update_v_gets_k, r"v_all\[:, :, start:start \+ T\] must be v_new"),
])
def test_cache_update_catches(fn, message):
    with pytest.raises(AssertionError, match=message):
        check_cache_update(fn)


@pytest.mark.parametrize("fn", [update_at_zero, update_only_new, update_not_in_place])
def test_cache_update_in_model_catches(tiny, fn):
    with pytest.raises(AssertionError, match="cached generation differs from uncached"):
        check_cache_update_in_model(fn, tiny, n_new=12)


@pytest.mark.parametrize("fn, message", [
    (kept_no_sinks, "attention sinks\\) must never be evicted"),
    (kept_window_too_long, "keep window - 1"),
    (kept_duplicates, "appear twice"),
    (kept_unclipped_sinks, r"kept_positions\(seen=0, n_sink=4, window=16\).*Position\(s\) \[0, 1, 2, 3\] are not "
                           r"in the cache: after seen=0 tokens it holds none yet"),
])
def test_kept_positions_catches(fn, message):
    with pytest.raises(AssertionError, match=message):
        check_kept_positions(fn)


@pytest.mark.parametrize("fn, message", [(kept_no_sinks, "differ from the masked forward"),
                                         (kept_window_too_long, "differ from the masked forward"),
                                         (kept_duplicates, "refused your positions")])
def test_kept_positions_in_model_catches(tiny, fn, message):
    with pytest.raises(AssertionError, match=message):
        check_kept_positions_in_model(fn, tiny)


def test_blank_stub_is_not_swallowed(tiny):
    def stub(*args):
        raise NotImplementedError("Exercise")
    for check in (check_cache_update, check_kept_positions):
        with pytest.raises(NotImplementedError):
            check(stub)
    with pytest.raises(NotImplementedError):
        check_cache_update_in_model(stub, tiny)


def test_model_must_be_labkits():
    with pytest.raises(AssertionError, match="pass labkit's model"):
        check_kept_positions_in_model(kept_positions, object())
