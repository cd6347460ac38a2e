"""Wrong implementations for labs/05-kvcache.ipynb, and the checks each must fail."""
from mutants import Mutant

MUTANTS = [
    Mutant("writes the new keys at position 0 instead of at start: every step overwrites the prompt's first "
           "keys", "cache_update",
           "def cache_update(k_cache, v_cache, k_new, v_new, start):\n"
           "    t = k_new.shape[2]\n"
           "    k_cache[:, :, :t] = k_new\n"
           "    v_cache[:, :, :t] = v_new\n"
           "    return k_cache[:, :, :start + t], v_cache[:, :, :start + t]",
           frozenset({"cache_update", "cache_update_in_model"})),
    Mutant("stores correctly but returns only the new keys and values: attention never sees the past",
           "cache_update",
           "def cache_update(k_cache, v_cache, k_new, v_new, start):\n"
           "    end = start + k_new.shape[2]\n"
           "    k_cache[:, :, start:end] = k_new\n"
           "    v_cache[:, :, start:end] = v_new\n"
           "    return k_new, v_new",
           frozenset({"cache_update", "cache_update_in_model"})),
    Mutant("off by one: writes at start + 1, leaving a zero key in every gap", "cache_update",
           "def cache_update(k_cache, v_cache, k_new, v_new, start):\n"
           "    end = start + k_new.shape[2]\n"
           "    k_cache[:, :, start + 1:end + 1] = k_new\n"
           "    v_cache[:, :, start + 1:end + 1] = v_new\n"
           "    return k_cache[:, :, :end], v_cache[:, :, :end]",
           frozenset({"cache_update", "cache_update_in_model"})),
    Mutant("window attention: evicts the sinks too", "kept_positions",
           "def kept_positions(seen, n_sink, window):\n"
           "    return list(range(max(0, seen - (window - 1)), seen))",
           frozenset({"kept_positions", "kept_positions_in_model"})),
    Mutant("window one too long: keeps the last `window` positions, so the next query sees window + 1",
           "kept_positions",
           "def kept_positions(seen, n_sink, window):\n"
           "    return [*range(min(n_sink, seen)), *range(max(n_sink, seen - window), seen)]",
           frozenset({"kept_positions", "kept_positions_in_model"})),
    Mutant("window one too short: keeps the last window - 2 positions", "kept_positions",
           "def kept_positions(seen, n_sink, window):\n"
           "    return [*range(min(n_sink, seen)), *range(max(n_sink, seen - (window - 2)), seen)]",
           frozenset({"kept_positions", "kept_positions_in_model"})),
    # Beyond the first ones: right values at the wrong cost, a copy-paste slip, sinks that do not exist yet,
    # the wrong dimension.
    Mutant("stores in place but returns copies (torch.cat of the past and the new): every step copies the cache",
           "cache_update",
           "def cache_update(k_cache, v_cache, k_new, v_new, start):\n"
           "    end = start + k_new.shape[2]\n"
           "    k_cache[:, :, start:end] = k_new\n"
           "    v_cache[:, :, start:end] = v_new\n"
           "    return torch.cat([k_cache[:, :, :start], k_new], 2), torch.cat([v_cache[:, :, :start], v_new], 2)",
           frozenset({"cache_update"})),
    Mutant("copy-paste slip: the new keys are stored in the value cache too", "cache_update",
           "def cache_update(k_cache, v_cache, k_new, v_new, start):\n"
           "    end = start + k_new.shape[2]\n"
           "    k_cache[:, :, start:end] = k_new\n"
           "    v_cache[:, :, start:end] = k_new\n"
           "    return k_cache[:, :, :end], v_cache[:, :, :end]",
           frozenset({"cache_update", "cache_update_in_model"})),
    Mutant("slices the head dimension (dim 1) instead of the positions (dim 2)", "cache_update",
           "def cache_update(k_cache, v_cache, k_new, v_new, start):\n"
           "    end = start + k_new.shape[2]\n"
           "    k_cache[:, start:end] = k_new\n"
           "    v_cache[:, start:end] = v_new\n"
           "    return k_cache[:, :end], v_cache[:, :end]",
           frozenset({"cache_update", "cache_update_in_model"})),
    Mutant("keeps n_sink sinks even before n_sink tokens were seen", "kept_positions",
           "def kept_positions(seen, n_sink, window):\n"
           "    return [*range(n_sink), *range(max(n_sink, seen - (window - 1)), seen)]",
           frozenset({"kept_positions", "kept_positions_in_model"})),
]
