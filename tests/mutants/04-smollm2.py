"""Wrong implementations for labs/04-smollm2.ipynb, and the checks each must fail."""
from mutants import Mutant

_ATTENTION = """def self_attention(attn, x, cos, sin):
    B, T, _ = x.shape
    H, H_kv, D = attn.n_heads, attn.n_kv_heads, attn.head_dim
    q = attn.q_proj(x).{split_q}
    k = attn.k_proj(x).view(B, T, H_kv, D).transpose(1, 2)
    v = attn.v_proj(x).view(B, T, H_kv, D).transpose(1, 2)
    q, k = {rope}
    k, v = repeat_kv(k, H // H_kv), repeat_kv(v, H // H_kv)
    scores = q @ k.transpose(-2, -1) / {scale}
    future = ~torch.ones(T, T, dtype=torch.bool).{tril}
    weights = torch.softmax(scores.masked_fill(future, float("-inf")), dim={dim})
    return attn.o_proj((weights @ v).transpose(1, 2).reshape(B, T, H * D))"""
_RIGHT = dict(split_q="view(B, T, H, D).transpose(1, 2)", rope="apply_rope(q, cos, sin), apply_rope(k, cos, sin)",
              scale="math.sqrt(D)", tril="tril()", dim="-1")


def _attention(**change):
    return _ATTENTION.format(**{**_RIGHT, **change})


_LAYER = frozenset({"self_attention", "model"})

MUTANTS = [
    Mutant("RMSNorm computed in the input's dtype: float16 squares of a few hundred overflow", "rms_norm",
           "def rms_norm(x, weight, eps):\n"
           "    return weight * x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps)",
           frozenset({"rms_norm"})),
    Mutant("eps outside the square root", "rms_norm",
           "def rms_norm(x, weight, eps):\n"
           "    xf = x.float()\n"
           "    return weight * (xf / (xf.pow(2).mean(dim=-1, keepdim=True).sqrt() + eps)).to(x.dtype)",
           frozenset({"rms_norm"})),
    Mutant("LayerNorm instead of RMSNorm (subtracts the mean)", "rms_norm",
           "def rms_norm(x, weight, eps):\n"
           "    xf = x.float()\n"
           "    xf = xf - xf.mean(dim=-1, keepdim=True)\n"
           "    return weight * (xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + eps)).to(x.dtype)",
           frozenset({"rms_norm", "model"})),
    Mutant("RoPE on neighbouring pairs (2i, 2i+1) with SmolLM2's half-split weights", "apply_rope",
           "def apply_rope(x, cos, sin):\n"
           "    c, s = cos[..., : x.shape[-1] // 2], sin[..., : x.shape[-1] // 2]\n"
           "    a, b = x[..., 0::2], x[..., 1::2]\n"
           "    return torch.stack((a * c - b * s, b * c + a * s), dim=-1).flatten(-2)",
           frozenset({"apply_rope", "self_attention", "model"})),
    Mutant("RoPE rotating the wrong way (rotate_half without the minus on the right half)", "apply_rope",
           "def apply_rope(x, cos, sin):\n"
           "    half = x.shape[-1] // 2\n"
           "    return x * cos + torch.cat((x[..., half:], -x[..., :half]), dim=-1) * sin",
           frozenset({"apply_rope", "self_attention", "model"})),
    Mutant("RoPE that multiplies the caller's x in place", "apply_rope",
           "def apply_rope(x, cos, sin):\n"
           "    half = x.shape[-1] // 2\n"
           "    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin\n"
           "    x *= cos\n"
           "    return x + rotated",
           frozenset({"apply_rope"})),
    Mutant("repeat instead of repeat_interleave: tiles the heads, so query head h reads kv head h % H_kv "
           "instead of h // n_rep", "repeat_kv",
           "def repeat_kv(x, n_rep):\n"
           "    return x.repeat(1, n_rep, 1, 1)",
           frozenset({"repeat_kv", "self_attention", "model"})),
    Mutant("repeats along the wrong dimension (the positions, not the heads)", "repeat_kv",
           "def repeat_kv(x, n_rep):\n"
           "    return x.repeat_interleave(n_rep, dim=2)",
           frozenset({"repeat_kv", "self_attention", "model"})),
    Mutant("attention without the causal mask", "self_attention", _attention(tril="tril().fill_(True)"), _LAYER),
    Mutant("attention hides the diagonal (a token cannot see itself)", "self_attention",
           _attention(tril="tril(-1)"), _LAYER),
    Mutant("scores scaled by sqrt(n_heads * head_dim) instead of sqrt(head_dim)", "self_attention",
           _attention(scale="math.sqrt(H * D)"), _LAYER),
    Mutant("heads split with view(B, H, T, D): positions and heads mixed", "self_attention",
           _attention(split_q="view(B, H, T, D)"), _LAYER),
    Mutant("softmax over the queries instead of the keys", "self_attention", _attention(dim="-2"), _LAYER),
    Mutant("softmax written by hand without subtracting the max: exp overflows for large activations",
           "self_attention", _ATTENTION.format(**_RIGHT).replace(
               'torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1)',
               '(lambda e: e / e.sum(-1, keepdim=True))(scores.masked_fill(future, float("-inf")).exp())'),
           frozenset({"self_attention"})),
    Mutant("RoPE on the queries only", "self_attention", _attention(rope="apply_rope(q, cos, sin), k"), _LAYER),
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
    Mutant("top-p removes a token only when the mass before it is > p: on an exact tie it keeps one too many",
           "top_p_filter",
           "def top_p_filter(logits, p):\n"
           "    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)\n"
           "    probs = torch.softmax(sorted_logits, dim=-1)\n"
           "    remove_sorted = torch.cumsum(probs, dim=-1) - probs > p\n"
           "    return logits.masked_fill(remove_sorted.scatter(-1, order, remove_sorted), float('-inf'))",
           frozenset({"top_p_filter"})),
]
