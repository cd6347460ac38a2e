"""Benchmark: labkit's Triton FlashAttention-2 forward vs PyTorch's scaled_dot_product_attention, on a GPU.

    python benchmarks/triton_attention.py

On a CUDA GPU: for a few (batch, heads, N, head dim, causal) settings in fp16, checks the kernel against SDPA,
times both with triton.testing.do_bench (median of many runs, same process) and prints TFLOP/s, counting
4·B·H·N²·D FLOPs (two matmuls of 2·N²·D each per head), halved for causal, and the ratio ours / SDPA.
Without a GPU it prints that it skipped and exits 0: timing Triton's CPU interpreter says nothing about
GPU speed. It reports, never asserts.
"""
from __future__ import annotations

import sys

import torch


def main() -> int:
    if not torch.cuda.is_available():
        print("triton_attention: skipped: no CUDA GPU (Triton's CPU interpreter runs the kernel correctly but its "
              "timings say nothing about GPU speed)")
        return 0
    import torch.nn.functional as F

    from labkit.kernels.backend import bench, describe
    from labkit.kernels.flash import attention_flops, flash_attention

    print(describe())
    print(f"{'B':>2} {'H':>3} {'H_kv':>4} {'N':>6} {'D':>4} {'causal':>6} {'ours TFLOP/s':>12} "
          f"{'SDPA TFLOP/s':>12} {'ours/SDPA':>9} {'max |diff|':>10}")
    for b, h, h_kv, n, d, causal in [(4, 16, 16, 1024, 64, False), (4, 16, 16, 4096, 64, False),
                                     (4, 16, 16, 4096, 64, True), (2, 32, 8, 4096, 128, True),
                                     (1, 16, 16, 16384, 128, True)]:
        g = torch.Generator(device="cuda").manual_seed(0)
        q = torch.randn(b, h, n, d, device="cuda", dtype=torch.float16, generator=g)
        k = torch.randn(b, h_kv, n, d, device="cuda", dtype=torch.float16, generator=g)
        v = torch.randn(b, h_kv, n, d, device="cuda", dtype=torch.float16, generator=g)
        kr, vr = k.repeat_interleave(h // h_kv, 1), v.repeat_interleave(h // h_kv, 1)
        ours, _ = flash_attention(q, k, v, causal=causal)   # also tunes the launch config for this shape
        ref = F.scaled_dot_product_attention(q, kr, vr, is_causal=causal)
        diff = float((ours.float() - ref.float()).abs().max())
        t_ours = bench(lambda: flash_attention(q, k, v, causal=causal)).seconds
        t_ref = bench(lambda: F.scaled_dot_product_attention(q, kr, vr, is_causal=causal)).seconds
        flops = attention_flops(b, h, n, n, d, causal)
        print(f"{b:>2} {h:>3} {h_kv:>4} {n:>6} {d:>4} {str(causal):>6} {flops / t_ours / 1e12:>12.1f} "
              f"{flops / t_ref / 1e12:>12.1f} {t_ref / t_ours:>8.2f}x {diff:>10.2e}")
    print("ours/SDPA = our TFLOP/s / SDPA's (> 1: ours is faster); SDPA gets K/V pre-repeated for GQA, untimed.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
