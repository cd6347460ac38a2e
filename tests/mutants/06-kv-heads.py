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

_GQA = """def gqa_attention(q, k, v, causal=True):
    B, H, Tq, D = q.shape
    H_kv, Tk = k.shape[1], k.shape[2]
    q_groups = {group}
    scores = q_groups @ k[:, :, None].transpose(-2, -1) / {scale}
    if causal:
        allowed = torch.ones(Tq, Tk, dtype=torch.bool).tril({diag})
        scores = scores.masked_fill(~allowed, float("-inf"))
    out = {softmax} @ v[:, :, None]
    return {back}"""
_GQA_RIGHT = dict(group="q.reshape(B, H_kv, H // H_kv, Tq, D)", scale="math.sqrt(D)", diag="Tk - Tq",
                  softmax="torch.softmax(scores, dim=-1)", back="out.reshape(B, H, Tq, D)")


def _gqa(**change):
    return _GQA.format(**{**_GQA_RIGHT, **change})


_ABSORBED = """def absorbed_attention(q, c, w_uk, w_uv, causal=True):
    B, H, Tq, D = q.shape
    Tk, r = c.shape[1], c.shape[2]
    H_kv = w_uk.shape[0] // D
    w_uk_heads = w_uk.view(H_kv, D, r).{expand}
    w_uv_heads = {uv}.view(H_kv, D, r).{expand}
    scores = (q @ w_uk_heads) @ c[:, None].transpose(-2, -1) / {scale}
    if causal:
        allowed = torch.ones(Tq, Tk, dtype=torch.bool).tril(Tk - Tq)
        scores = scores.masked_fill(~allowed, float("-inf"))
    return (torch.softmax(scores, dim=-1) @ c[:, None]) @ w_uv_heads.transpose(-2, -1)"""
_ABSORBED_RIGHT = dict(expand="repeat_interleave(H // H_kv, dim=0)", uv="w_uv", scale="math.sqrt(D)")


def _absorbed(**change):
    return _ABSORBED.format(**{**_ABSORBED_RIGHT, **change})


MUTANTS += [
    Mutant("GQA: groups query heads h, h + H_kv, ... (h % H_kv) instead of consecutive heads", "gqa_attention",
           _gqa(group="q.reshape(B, H // H_kv, H_kv, Tq, D).transpose(1, 2)",
                back="out.transpose(1, 2).reshape(B, H, Tq, D)"), frozenset({"gqa_attention"})),
    Mutant("GQA: causal diagonal at the top-left corner (wrong with a KV cache)", "gqa_attention",
           _gqa(diag="0"), frozenset({"gqa_attention"})),
    Mutant("GQA: softmax without subtracting the max: exp overflows for scores of a few hundred",
           "gqa_attention", _gqa(softmax="(scores.exp() / scores.exp().sum(-1, keepdim=True))"),
           frozenset({"gqa_attention"})),
    Mutant("GQA: scaled by sqrt(H * D) instead of sqrt(D)", "gqa_attention", _gqa(scale="math.sqrt(H * D)"),
           frozenset({"gqa_attention"})),
    Mutant("GQA through repeat_interleave: right numbers, but the keys and values are copied for every query head",
           "gqa_attention",
           "def gqa_attention(q, k, v, causal=True):\n"
           "    g = q.shape[1] // k.shape[1]\n"
           "    k, v = k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1)\n"
           "    Tq, Tk = q.shape[-2], k.shape[-2]\n"
           "    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])\n"
           "    if causal:\n"
           "        scores = scores.masked_fill(~torch.ones(Tq, Tk, dtype=torch.bool).tril(Tk - Tq), float('-inf'))\n"
           "    return torch.softmax(scores, dim=-1) @ v",
           frozenset({"gqa_attention"})),
    Mutant("MLA: scores scaled by sqrt(r), the latent's size, instead of sqrt(D)", "absorbed_attention",
           _absorbed(scale="math.sqrt(r)"), frozenset({"absorbed_attention"})),
    Mutant("MLA: kv heads tiled (query head h uses kv head h % H_kv)", "absorbed_attention",
           _absorbed(expand="repeat(H // H_kv, 1, 1)"), frozenset({"absorbed_attention"})),
    Mutant("MLA: values made with w_uk", "absorbed_attention", _absorbed(uv="w_uk"),
           frozenset({"absorbed_attention"})),
    Mutant("MLA: rebuilds the keys and values from the latents instead of absorbing the projections",
           "absorbed_attention",
           "def absorbed_attention(q, c, w_uk, w_uv, causal=True):\n"
           "    B, H, Tq, D = q.shape\n"
           "    Tk, H_kv = c.shape[1], w_uk.shape[0] // D\n"
           "    k = (c @ w_uk.T).view(B, Tk, H_kv, D).transpose(1, 2)\n"
           "    v = (c @ w_uv.T).view(B, Tk, H_kv, D).transpose(1, 2)\n"
           "    return grouped_query_attention(q, k, v, causal=causal)",
           frozenset({"absorbed_attention"})),
]
