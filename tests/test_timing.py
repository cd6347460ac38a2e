"""labkit.timing: what it returns and its clear errors (never how fast anything is: timing is for benchmarks)."""
import pytest

from labkit.timing import best_of, median_of, times_of


def test_times_of_calls_warmup_then_repeat_and_best_and_median_pick_from_them():
    calls = []
    seconds = times_of(lambda: calls.append(1), repeat=4, warmup=2)
    assert len(calls) == 6 and len(seconds) == 4 and all(s >= 0 for s in seconds)
    assert best_of(lambda: None, 3) >= 0 and median_of(lambda: None, 3) >= 0


@pytest.mark.parametrize("repeat, warmup", [(0, 1), (2, -1), (1.5, 0), (True, 0)])
def test_times_of_rejects_bad_counts(repeat, warmup):
    for fn in (times_of, best_of, median_of):
        with pytest.raises(ValueError, match="need int repeat >= 1 and int warmup >= 0"):
            fn(lambda: None, repeat, warmup)


def test_interleaved_medians_calls_each_side_in_turn():
    from labkit.timing import interleaved_medians
    calls = []
    out = interleaved_medians({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeat=3)
    assert calls == ["a", "b"] * 4  # one warm-up round, then 3 alternating rounds
    assert set(out) == {"a", "b"} and all(s >= 0 for s in out.values())
    with pytest.raises(ValueError, match="at least one"):
        interleaved_medians({})
