"""Wrong implementations for labs/07-flash-attention.ipynb, and the checks each must fail."""
from mutants import Mutant

_BOTH = frozenset({"online_softmax_update", "tiled_attention"})

MUTANTS = [
    Mutant("forgets to rescale: adds the new tile to l and acc without exp(m - m_new)", "online_softmax_update",
           "def online_softmax_update(m, l, acc, scores, v):\n"
           "    m_new = torch.maximum(m, scores.amax(dim=-1))\n"
           "    p = torch.exp(scores - m_new[..., None])\n"
           "    return m_new, l + p.sum(dim=-1), acc + p @ v",
           _BOTH),
    Mutant("rescales l but not the accumulator", "online_softmax_update",
           "def online_softmax_update(m, l, acc, scores, v):\n"
           "    m_new = torch.maximum(m, scores.amax(dim=-1))\n"
           "    alpha = torch.exp(m - m_new)\n"
           "    p = torch.exp(scores - m_new[..., None])\n"
           "    return m_new, alpha * l + p.sum(dim=-1), acc + p @ v",
           _BOTH),
    Mutant("uses the tile's max instead of the running max (consistent, but exp(m - m_new) overflows)",
           "online_softmax_update",
           "def online_softmax_update(m, l, acc, scores, v):\n"
           "    m_new = scores.amax(dim=-1)\n"
           "    alpha = torch.exp(m - m_new)\n"
           "    p = torch.exp(scores - m_new[..., None])\n"
           "    return m_new, alpha * l + p.sum(dim=-1), alpha[..., None] * acc + p @ v",
           _BOTH),
    Mutant("normalises inside the loop: returns acc / l, which the loop divides by l again", "online_softmax_update",
           "def online_softmax_update(m, l, acc, scores, v):\n"
           "    m_new = torch.maximum(m, scores.amax(dim=-1))\n"
           "    alpha = torch.exp(m - m_new)\n"
           "    p = torch.exp(scores - m_new[..., None])\n"
           "    l_new = alpha * l + p.sum(dim=-1)\n"
           "    return m_new, l_new, (alpha[..., None] * acc + p @ v) / l_new[..., None]",
           _BOTH),
]
