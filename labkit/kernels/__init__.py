"""Triton tile kernels (chapter 8). `backend` is imported first: without a CUDA GPU it switches on Triton's
interpreter, which must happen before any `@triton.jit` is applied, so every kernel module goes through it."""
from . import backend  # noqa: F401  (first, for TRITON_INTERPRET)
