"""Wrong implementations for labs/04-smollm2.ipynb, and the checks each must fail."""
from mutants import Mutant

MUTANTS = [
    Mutant("repeat instead of repeat_interleave: tiles the heads, so query head h reads kv head h % H_kv "
           "instead of h // n_rep", "repeat_kv",
           "def repeat_kv(x, n_rep):\n"
           "    return x.repeat(1, n_rep, 1, 1)",
           frozenset({"repeat_kv", "repeat_kv_in_model"})),
    Mutant("repeats along the wrong dimension (the positions, not the heads)", "repeat_kv",
           "def repeat_kv(x, n_rep):\n"
           "    return x.repeat_interleave(n_rep, dim=2)",
           frozenset({"repeat_kv", "repeat_kv_in_model"})),
    Mutant("top-p keeps the wrong side: removes the nucleus and keeps the tail", "top_p_filter",
           "def top_p_filter(logits, p):\n"
           "    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)\n"
           "    probs = torch.softmax(sorted_logits, dim=-1)\n"
           "    remove_sorted = torch.cumsum(probs, dim=-1) - probs < p\n"
           "    return logits.masked_fill(remove_sorted.scatter(-1, order, remove_sorted), float('-inf'))",
           frozenset({"top_p_filter"})),
    Mutant("top-p drops the token that crosses p (keeps cumulative mass <= p)", "top_p_filter",
           "def top_p_filter(logits, p):\n"
           "    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)\n"
           "    remove_sorted = torch.cumsum(torch.softmax(sorted_logits, dim=-1), dim=-1) > p\n"
           "    return logits.masked_fill(remove_sorted.scatter(-1, order, remove_sorted), float('-inf'))",
           frozenset({"top_p_filter"})),
]
