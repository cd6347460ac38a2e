"""Wrong implementations for labs/07-flash-attention.ipynb, and the checks each must fail."""
from mutants import Mutant

_BOTH = frozenset({"online_softmax_update", "tiled_attention"})

# the solution's loop, with {placeholders} where a mutant changes one thing
_LOOP = """def flash_forward(q, k, v, causal=False, block_q=16, block_k=16, key_mask=None):
    t_q, t_k = q.shape[-2], k.shape[-2]
    offset = {offset}
    out = q.new_zeros(*q.shape[:-1], v.shape[-1])
    lse = q.new_empty(q.shape[:-1])
    for i0 in range(0, {q_end}, block_q):
        i1 = min(i0 + block_q, t_q)
        q_i = q[..., i0:i1, :] / math.sqrt(q.shape[-1])
        m = q.new_full(q_i.shape[:-1], {m0})
        l = q.new_zeros(q_i.shape[:-1])
        acc = q.new_zeros(*q_i.shape[:-1], v.shape[-1])
        for j0 in range(0, {k_end}, block_k):
            if {skip} and causal and j0 > i1 - 1 + offset:
                break
            j1 = min(j0 + block_k, t_k)
            scores = q_i @ k[..., j0:j1, :].transpose(-2, -1)
            allowed = torch.ones(i1 - i0, j1 - j0, dtype=torch.bool)
            if causal:
                allowed = torch.arange(j0, j1)[None, :] {cmp} torch.arange(i0, i1)[:, None] + offset
            if key_mask is not None and {use_mask}:
                allowed = allowed & key_mask[:, None, None, j0:j1]
            m, l, acc = online_softmax_update(m, l, acc, scores.masked_fill(~allowed, -math.inf), v[..., j0:j1, :])
        {finish}
        lse[..., i0:i1] = {lse}
    return out, lse"""
_RIGHT = dict(offset="t_k - t_q", q_end="t_q", k_end="t_k", m0="-math.inf", skip="True", cmp="<=", use_mask="True",
              finish="seen = l > 0\n        out[..., i0:i1, :] = torch.where(seen[..., None], "
                     "acc / torch.where(seen, l, 1.0)[..., None], 0.0)",
              lse="m + torch.log(l)")


def _loop(**change):
    return _LOOP.format(**{**_RIGHT, **change})


_LOOP_ONLY = frozenset({"flash_forward"})
_PADDING = frozenset({"flash_padding"})

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
    Mutant("no guard for a row with no key yet: exp(-inf - (-inf)) = NaN when a first tile is fully masked",
           "online_softmax_update",
           "def online_softmax_update(m, l, acc, scores, v):\n"
           "    m_new = torch.maximum(m, scores.amax(dim=-1))\n"
           "    alpha = torch.exp(m - m_new)\n"
           "    p = torch.exp(scores - m_new[..., None])\n"
           "    return m_new, alpha * l + p.sum(dim=-1), alpha[..., None] * acc + p @ v",
           frozenset({"online_softmax_update", "flash_padding"})),
    Mutant("causal mask aligned at the top-left corner (ignores Tk - Tq with a KV cache)", "flash_forward",
           _loop(offset="0"), _LOOP_ONLY),
    Mutant("causal mask hides the diagonal (j < i)", "flash_forward", _loop(cmp="<"),
           frozenset({"flash_forward", "flash_padding"})),
    Mutant("drops the last, shorter key block", "flash_forward", _loop(k_end="t_k - block_k + 1"),
           frozenset({"flash_forward", "flash_padding"})),
    Mutant("drops the last, shorter query block", "flash_forward", _loop(q_end="t_q - block_q + 1"),
           frozenset({"flash_forward", "flash_padding"})),
    Mutant("starts the running max at 0 instead of -inf: every exp underflows when all scores are very negative",
           "flash_forward", _loop(m0="0.0"), _LOOP_ONLY),
    Mutant("never skips the tiles above the diagonal (right output, twice the work)", "flash_forward",
           _loop(skip="False"), _LOOP_ONLY),
    Mutant("lse = log(l), forgetting the running max", "flash_forward", _loop(lse="torch.log(l)"),
           frozenset({"flash_forward", "flash_padding"})),
    Mutant("ignores key_mask", "flash_forward", _loop(use_mask="False"), _PADDING),
    Mutant("divides by l everywhere: rows that see no key become 0 / 0 = NaN", "flash_forward",
           _loop(finish="out[..., i0:i1, :] = acc / l[..., None]"), _PADDING),
    Mutant("builds the whole score matrix and slices tiles out of it", "flash_forward",
           _loop().replace("    for i0 in range", "    full = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])\n"
                           "    for i0 in range").replace(
               "scores = q_i @ k[..., j0:j1, :].transpose(-2, -1)", "scores = full[..., i0:i1, j0:j1]"),
           _LOOP_ONLY),
]
