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
]
