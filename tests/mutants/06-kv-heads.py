"""Wrong implementations for labs/06-kv-heads.ipynb, and the checks each must fail."""
from mutants import Mutant

MUTANTS = [
    Mutant("cycles through the kv heads: query head h reads kv head h % H_kv instead of h // group",
           "kv_head_of_query",
           "def kv_head_of_query(n_heads, n_kv_heads):\n"
           "    return [h % n_kv_heads for h in range(n_heads)]",
           frozenset({"kv_head_of_query"})),
    Mutant("sums the heads of a group instead of averaging them", "pool_kv_heads",
           "def pool_kv_heads(weight, n_kv_heads, n_groups):\n"
           "    head_dim = weight.shape[0] // n_kv_heads\n"
           "    heads = weight.reshape(n_groups, n_kv_heads // n_groups, head_dim, weight.shape[1])\n"
           "    return heads.sum(dim=1).reshape(n_groups * head_dim, weight.shape[1])",
           frozenset({"pool_kv_heads", "pool_in_model"})),
    Mutant("interleaved groups: averages heads g, g + n_groups, ... instead of consecutive heads", "pool_kv_heads",
           "def pool_kv_heads(weight, n_kv_heads, n_groups):\n"
           "    head_dim = weight.shape[0] // n_kv_heads\n"
           "    heads = weight.reshape(n_kv_heads // n_groups, n_groups, head_dim, weight.shape[1])\n"
           "    return heads.mean(dim=0).reshape(n_groups * head_dim, weight.shape[1])",
           frozenset({"pool_kv_heads", "pool_in_model"})),
    Mutant("averages adjacent rows inside each head instead of whole heads", "pool_kv_heads",
           "def pool_kv_heads(weight, n_kv_heads, n_groups):\n"
           "    s = n_kv_heads // n_groups\n"
           "    return weight.reshape(-1, s, weight.shape[1]).mean(dim=1)",
           frozenset({"pool_kv_heads", "pool_in_model"})),
]
