"""Wrong implementations for labs/08-gpu-triton.ipynb, and the checks each must fail.

Each source replaces the whole solution cell that defines the kernel, so it carries its own @triton.jit.
"""
from mutants import Mutant

_ADD = ("@triton.jit\n"
        "def add_kernel(x_ptr, y_ptr, out_ptr, n, BLOCK: tl.constexpr):\n"
        "    pid = tl.program_id(0)\n")
_SOFTMAX = ("@triton.jit\n"
            "def softmax_kernel(x_ptr, out_ptr, n_cols, row_stride, BLOCK: tl.constexpr):\n"
            "    row = tl.program_id(0)\n"
            "    cols = tl.arange(0, BLOCK)\n"
            "    mask = cols < n_cols\n")
_MATMUL = ("@triton.jit\n"
           "def matmul_kernel(a_ptr, b_ptr, c_ptr, M, N, K, stride_am, stride_ak, stride_bk, stride_bn,\n"
           "                  stride_cm, stride_cn, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,\n"
           "                  BLOCK_K: tl.constexpr):\n"
           "    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)\n"
           "    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)\n"
           "    rk = tl.arange(0, BLOCK_K)\n"
           "    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)\n")
_MATMUL_STORE = ("    tl.store(c_ptr + rm[:, None] * stride_cm + rn[None, :] * stride_cn, acc.to(c_ptr.dtype.element_ty),\n"
                 "             mask=(rm[:, None] < M) & (rn[None, :] < N))\n")


def _attention(rescale_acc: bool = True, mask_keys: bool = True, m_start: str = "-float('inf')",
               q_row_mask: bool = True, k_row_mask: bool = True) -> str:
    return ("@triton.jit\n"
            "def attention_kernel(q_ptr, k_ptr, v_ptr, o_ptr, N, row_stride, HEAD_DIM, scale,\n"
            "                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):\n"
            "    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)\n"
            "    dims = tl.arange(0, BLOCK_D)\n"
            "    dmask = dims < HEAD_DIM\n"
            "    q = tl.load(q_ptr + rows[:, None] * row_stride + dims[None, :],\n"
            + ("                mask=(rows[:, None] < N) & dmask[None, :], other=0.0)\n" if q_row_mask else
               "                mask=dmask[None, :], other=0.0)\n")
            + f"    m_i = tl.full((BLOCK_M,), {m_start}, dtype=tl.float32)\n"
            "    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)\n"
            "    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)\n"
            "    for start in range(0, N, BLOCK_N):\n"
            "        keys = start + tl.arange(0, BLOCK_N)\n"
            "        kv_mask = (keys[:, None] < N) & dmask[None, :]\n"
            + ("        k = tl.load(k_ptr + keys[:, None] * row_stride + dims[None, :], mask=kv_mask, other=0.0)\n"
               if k_row_mask else
               "        k = tl.load(k_ptr + keys[:, None] * row_stride + dims[None, :], mask=dmask[None, :],"
               " other=0.0)\n")
            + "        v = tl.load(v_ptr + keys[:, None] * row_stride + dims[None, :], mask=kv_mask, other=0.0)\n"
            "        s = tl.dot(q, tl.trans(k)) * scale\n"
            + ("        s = tl.where(keys[None, :] < N, s, -float('inf'))\n" if mask_keys else "")
            + "        m_new = tl.maximum(m_i, tl.max(s, axis=1))\n"
            "        alpha = tl.exp(m_i - m_new)\n"
            "        p = tl.exp(s - m_new[:, None])\n"
            "        l_i = l_i * alpha + tl.sum(p, axis=1)\n"
            + ("        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)\n" if rescale_acc else
               "        acc = acc + tl.dot(p.to(v.dtype), v)\n")
            + "        m_i = m_new\n"
            "    tl.store(o_ptr + rows[:, None] * row_stride + dims[None, :],\n"
            "             (acc / l_i[:, None]).to(o_ptr.dtype.element_ty), mask=(rows[:, None] < N) & dmask[None, :])\n")


MUTANTS = [
    Mutant("no mask: the last, partial block reads and writes past the end of the tensors", "add_kernel",
           _ADD + "    offs = pid * BLOCK + tl.arange(0, BLOCK)\n"
                  "    tl.store(out_ptr + offs, tl.load(x_ptr + offs) + tl.load(y_ptr + offs))\n",
           frozenset({"add_kernel"})),
    Mutant("wrong program-id offset: pid + arange instead of pid * BLOCK + arange (blocks overlap)", "add_kernel",
           _ADD + "    offs = pid + tl.arange(0, BLOCK)\n"
                  "    mask = offs < n\n"
                  "    tl.store(out_ptr + offs, tl.load(x_ptr + offs, mask=mask) + tl.load(y_ptr + offs, mask=mask),"
                  " mask=mask)\n",
           frozenset({"add_kernel"})),
    Mutant("softmax pads with 0 instead of -inf: every padding lane adds exp(0 - max) to the sum", "softmax_kernel",
           _SOFTMAX + "    x = tl.load(x_ptr + row * row_stride + cols, mask=mask, other=0.0).to(tl.float32)\n"
                      "    e = tl.exp(x - tl.max(x, axis=0))\n"
                      "    tl.store(out_ptr + row * row_stride + cols, (e / tl.sum(e, axis=0))"
                      ".to(out_ptr.dtype.element_ty), mask=mask)\n",
           frozenset({"softmax_kernel"})),
    Mutant("softmax without subtracting the max: exp overflows on large scores", "softmax_kernel",
           _SOFTMAX + "    x = tl.load(x_ptr + row * row_stride + cols, mask=mask, other=-float('inf')).to(tl.float32)\n"
                      "    e = tl.exp(x)\n"
                      "    tl.store(out_ptr + row * row_stride + cols, (e / tl.sum(e, axis=0))"
                      ".to(out_ptr.dtype.element_ty), mask=mask)\n",
           frozenset({"softmax_kernel"})),
    Mutant("matmul without the K mask: the last K tile reads past the end of a's rows and b's columns",
           "matmul_kernel",
           _MATMUL + "    for k0 in range(0, K, BLOCK_K):\n"
                     "        kk = k0 + rk\n"
                     "        a = tl.load(a_ptr + rm[:, None] * stride_am + kk[None, :] * stride_ak,\n"
                     "                    mask=rm[:, None] < M, other=0.0)\n"
                     "        b = tl.load(b_ptr + kk[:, None] * stride_bk + rn[None, :] * stride_bn,\n"
                     "                    mask=rn[None, :] < N, other=0.0)\n"
                     "        acc += tl.dot(a, b)\n" + _MATMUL_STORE,
           frozenset({"matmul_kernel"})),
    Mutant("matmul that multiplies only the first K tile (no loop over K)", "matmul_kernel",
           _MATMUL + "    a = tl.load(a_ptr + rm[:, None] * stride_am + rk[None, :] * stride_ak,\n"
                     "                mask=(rm[:, None] < M) & (rk[None, :] < K), other=0.0)\n"
                     "    b = tl.load(b_ptr + rk[:, None] * stride_bk + rn[None, :] * stride_bn,\n"
                     "                mask=(rk[:, None] < K) & (rn[None, :] < N), other=0.0)\n"
                     "    acc += tl.dot(a, b)\n" + _MATMUL_STORE,
           frozenset({"matmul_kernel"})),
    Mutant("matmul that assumes an inner stride of 1 (uses stride_am and stride_bk, ignores stride_ak and "
           "stride_bn): right on row-major inputs only", "matmul_kernel",
           _MATMUL + "    for k0 in range(0, K, BLOCK_K):\n"
                     "        kk = k0 + rk\n"
                     "        a = tl.load(a_ptr + rm[:, None] * stride_am + kk[None, :],\n"
                     "                    mask=(rm[:, None] < M) & (kk[None, :] < K), other=0.0)\n"
                     "        b = tl.load(b_ptr + kk[:, None] * stride_bk + rn[None, :],\n"
                     "                    mask=(kk[:, None] < K) & (rn[None, :] < N), other=0.0)\n"
                     "        acc += tl.dot(a, b)\n" + _MATMUL_STORE,
           frozenset({"matmul_kernel"})),
    Mutant("attention tile loop that forgets to rescale acc when the running max grows", "attention_kernel",
           _attention(rescale_acc=False), frozenset({"attention_kernel"})),
    Mutant("attention tile loop that does not mask the padding keys of the last tile (scores 0, not -inf)",
           "attention_kernel", _attention(mask_keys=False), frozenset({"attention_kernel"})),
    # Bugs beyond the first committed ones: reads whose values are discarded later, a running max that starts
    # at 0, rows addressed by their length, a hand-made max without the padding handled.
    Mutant("matmul that masks the K edge but not the rows of a: the last row tile reads past a's end, and the "
           "masked store drops those rows", "matmul_kernel",
           _MATMUL + "    for k0 in range(0, K, BLOCK_K):\n"
                     "        kk = k0 + rk\n"
                     "        a = tl.load(a_ptr + rm[:, None] * stride_am + kk[None, :] * stride_ak,\n"
                     "                    mask=kk[None, :] < K, other=0.0)\n"
                     "        b = tl.load(b_ptr + kk[:, None] * stride_bk + rn[None, :] * stride_bn,\n"
                     "                    mask=(kk[:, None] < K) & (rn[None, :] < N), other=0.0)\n"
                     "        acc += tl.dot(a, b)\n" + _MATMUL_STORE,
           frozenset({"matmul_kernel"})),
    Mutant("attention that loads the query tile without its row mask: the padding rows are dropped by the "
           "masked store", "attention_kernel", _attention(q_row_mask=False), frozenset({"attention_kernel"})),
    Mutant("attention that loads the last key tile without its row mask, then sets those scores to -inf with "
           "tl.where", "attention_kernel", _attention(k_row_mask=False), frozenset({"attention_kernel"})),
    Mutant("attention whose running max starts at 0 instead of -inf: right until every score is very negative",
           "attention_kernel", _attention(m_start="0.0"), frozenset({"attention_kernel"})),
    Mutant("softmax that finds row r at r * n_cols (rows packed) instead of r * row_stride", "softmax_kernel",
           _SOFTMAX + "    x = tl.load(x_ptr + row * n_cols + cols, mask=mask, other=-float('inf')).to(tl.float32)\n"
                      "    e = tl.exp(x - tl.max(x, axis=0))\n"
                      "    tl.store(out_ptr + row * n_cols + cols, (e / tl.sum(e, axis=0))"
                      ".to(out_ptr.dtype.element_ty), mask=mask)\n",
           frozenset({"softmax_kernel"})),
    Mutant("softmax that loads the whole BLOCK without a mask and discards the padding lanes with tl.where",
           "softmax_kernel",
           _SOFTMAX + "    x = tl.load(x_ptr + row * row_stride + cols).to(tl.float32)\n"
                      "    x = tl.where(mask, x, -float('inf'))\n"
                      "    e = tl.exp(x - tl.max(x, axis=0))\n"
                      "    tl.store(out_ptr + row * row_stride + cols, (e / tl.sum(e, axis=0))"
                      ".to(out_ptr.dtype.element_ty), mask=mask)\n",
           frozenset({"softmax_kernel"})),
    Mutant("add kernel that masks the store but not the loads: the last block reads past the end of x and y, "
           "and the masked store drops those lanes", "add_kernel",
           _ADD + "    offs = pid * BLOCK + tl.arange(0, BLOCK)\n"
                  "    tl.store(out_ptr + offs, tl.load(x_ptr + offs) + tl.load(y_ptr + offs), mask=offs < n)\n",
           frozenset({"add_kernel"})),
]

# Mutants whose only symptom is a read that a masked store or tl.where discards: the interpreter's access
# watch (labkit.checks.kernels.watch_memory) sees them; compiled on a GPU, no check can.
INTERPRETER_ONLY = {m.why for m in MUTANTS if "masked store" in m.why or "tl.where" in m.why}
