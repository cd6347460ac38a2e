"""Wrong implementations for labs/03-attention.ipynb, and the checks each must fail."""
from mutants import Mutant

_ATTENTION = ("def causal_attention(q, k, v):\n"
              "    d, t = q.shape[-1], q.shape[-2]\n"
              "    scores = q @ k.transpose(-2, -1){scale}\n"
              "{mask}"
              "    return torch.softmax(scores, dim={axis}) @ v\n")
_MASK = "    scores = scores.masked_fill(torch.ones(t, t, dtype=torch.bool).triu({diagonal}), float('-inf'))\n"

MUTANTS = [
    Mutant("no causal mask: every position sees the future", "causal_attention",
           _ATTENTION.format(scale=" / math.sqrt(d)", mask="", axis=-1),
           frozenset({"causal_attention", "rope_attention"})),
    Mutant("mask off by one: triu(0) also hides the diagonal, so position 0 sees nothing", "causal_attention",
           _ATTENTION.format(scale=" / math.sqrt(d)", mask=_MASK.format(diagonal=0), axis=-1),
           frozenset({"causal_attention", "rope_attention"})),
    Mutant("no 1/sqrt(d) scaling of the scores", "causal_attention",
           _ATTENTION.format(scale="", mask=_MASK.format(diagonal=1), axis=-1),
           frozenset({"causal_attention", "rope_attention"})),
    Mutant("softmax over the queries (dim=-2) instead of the keys", "causal_attention",
           _ATTENTION.format(scale=" / math.sqrt(d)", mask=_MASK.format(diagonal=1), axis=-2),
           frozenset({"causal_attention", "rope_attention"})),
    Mutant("RoPE rotating the wrong halves: neighbouring pairs (2i, 2i+1), GPT-J style", "rotate_half",
           "def rotate_half(x):\n"
           "    return torch.stack((-x[..., 1::2], x[..., 0::2]), dim=-1).flatten(-2)\n",
           frozenset({"rotate_half", "apply_rope", "rope_attention"})),
    Mutant("rotate_half with the wrong sign: (x2, -x1)", "rotate_half",
           "def rotate_half(x):\n"
           "    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]\n"
           "    return torch.cat((x2, -x1), dim=-1)\n",
           frozenset({"rotate_half", "apply_rope", "rope_attention"})),
    Mutant("apply_rope turning the wrong way: x cos - rotate_half(x) sin", "apply_rope",
           "def apply_rope(x, cos, sin):\n"
           "    return x * cos - rotate_half(x) * sin\n",
           frozenset({"apply_rope", "rope_attention"})),
    Mutant("apply_rope that multiplies x by cos in place: the right value, and the caller's tensor corrupted",
           "apply_rope",
           "def apply_rope(x, cos, sin):\n"
           "    rotated = rotate_half(x) * sin\n"
           "    x *= cos\n"
           "    return x + rotated\n",
           frozenset({"apply_rope"})),
    # Beyond the first ones: a softmax written by hand, a dtype the layer after it cannot take, a layout assumed.
    Mutant("softmax by hand without subtracting the max: exp overflows float32 once scores reach ~88",
           "causal_attention",
           "def causal_attention(q, k, v):\n"
           "    d, t = q.shape[-1], q.shape[-2]\n"
           "    scores = q @ k.transpose(-2, -1) / math.sqrt(d)\n"
           "    scores = scores.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float('-inf'))\n"
           "    weights = torch.exp(scores)\n"
           "    return weights / weights.sum(dim=-1, keepdim=True) @ v\n",
           frozenset({"causal_attention"})),
    Mutant("computes in float64 for accuracy and returns float64: the float32 layer after it refuses it",
           "causal_attention",
           "def causal_attention(q, k, v):\n"
           "    q, k, v = q.double(), k.double(), v.double()\n"
           "    d, t = q.shape[-1], q.shape[-2]\n"
           "    scores = q @ k.transpose(-2, -1) / math.sqrt(d)\n"
           "    scores = scores.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float('-inf'))\n"
           "    return torch.softmax(scores, dim=-1) @ v\n",
           frozenset({"causal_attention", "rope_attention"})),
    Mutant("flattens the heads with .view: fails on the transposed (non-contiguous) heads the layer passes",
           "causal_attention",
           "def causal_attention(q, k, v):\n"
           "    d, t = q.shape[-1], q.shape[-2]\n"
           "    q2, k2, v2 = q.view(-1, t, d), k.view(-1, t, d), v.view(-1, t, v.shape[-1])\n"
           "    scores = torch.bmm(q2, k2.transpose(1, 2)) / math.sqrt(d)\n"
           "    scores = scores.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float('-inf'))\n"
           "    return torch.bmm(torch.softmax(scores, dim=-1), v2).view(*q.shape[:-1], v.shape[-1])\n",
           frozenset({"causal_attention", "rope_attention"})),
    Mutant("rotate_half with the halves taken along dim 1 instead of the last dim", "rotate_half",
           "def rotate_half(x):\n"
           "    half = x.shape[1] // 2\n"
           "    x1, x2 = x[:, :half], x[:, half:]\n"
           "    return torch.cat((-x2, x1), dim=1)\n",
           frozenset({"rotate_half", "apply_rope", "rope_attention"})),
]
