"""Where Triton kernels run: a CUDA GPU if there is one, else Triton's interpreter on the CPU.

The same kernel source runs on both. On a GPU, Triton compiles it to machine code; on a CPU, the interpreter
(`TRITON_INTERPRET=1`) runs each program one after another with numpy, which is slow but lets us test
correctness anywhere. This module decides which, once, at import — before any kernel is defined, because
`@triton.jit` reads the variable when it is *applied* — and gives the kernels what differs per backend:

- `device()`: where to put tensors ("cuda" or "cpu").
- `block_sizes(kind)`: tile sizes per kernel kind: large tiles on a GPU (to feed the tensor cores), small ones
  in the interpreter (each program is Python work, and tests stay fast). Tiles are powers of two, >= 16.
- `tune(...)`: on a GPU, time a few candidate configs once per problem key and keep the fastest (what
  `triton.autotune` does); in the interpreter, take the first candidate (timing there measures Python).
- `bench(fn)`: `triton.testing.do_bench` on a GPU; a wall clock on the CPU, labelled as interpreter time,
  which says nothing about GPU speed.
- `check_dot_dtype`, `check_tile`: refuse what the interpreter gets silently wrong (bf16 `tl.dot` returns
  garbage there) or what a GPU would reject (`tl.dot` tiles smaller than 16).
"""
from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

HAS_CUDA: bool = torch.cuda.is_available()
_TRITON_WAS_IMPORTED = "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1"
if not HAS_CUDA:
    # Must happen before any @triton.jit is applied (here or in a module importing us): a kernel jitted
    # earlier would be compiled for a GPU that is not there. Importing labkit.kernels first guarantees it.
    os.environ["TRITON_INTERPRET"] = "1"

import triton  # noqa: E402


def _interpret_triton_language() -> int:
    """Make triton.language usable by the interpreter when something imported triton before us.

    Some libraries (transformers' model code, for one) import triton early. Its standard library (tl.max,
    tl.sum, tl.cdiv, ...) is itself written as @triton.jit functions, which were then made for the compiler,
    and an interpreted kernel calling them fails ("Cannot call @triton.jit'd outside of the scope of a
    kernel"). Re-wrap each as an interpreted function. Returns how many were re-wrapped.
    """
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    count = 0
    for name, module in list(sys.modules.items()):
        if not name.startswith("triton.language") or module is None:
            continue
        for attr, value in list(vars(module).items()):
            if isinstance(value, JITFunction):
                setattr(module, attr, InterpretedFunction(value.fn))
                count += 1
    return count


if not HAS_CUDA and _TRITON_WAS_IMPORTED:
    _interpret_triton_language()

INTERPRETER: bool = os.environ.get("TRITON_INTERPRET") == "1"
"""True when kernels run in Triton's interpreter (numpy on the CPU), False when compiled for a GPU."""

TF32_TOL = 1e-2  # on a GPU, tl.dot of fp32 inputs uses TF32 tensor cores (10-bit mantissa): compare at ~1e-2
MIN_DOT_TILE = 16  # the smallest M, N and K a GPU's tl.dot accepts (tensor-core fragments are 16 wide)


def device() -> torch.device:
    """Where kernel inputs must live: the GPU when compiled, the CPU in the interpreter."""
    return torch.device("cuda" if HAS_CUDA and not INTERPRETER else "cpu")


def describe() -> str:
    """One line: which backend runs the kernels."""
    if INTERPRETER:
        return (f"Triton {triton.__version__} interpreter on the CPU (TRITON_INTERPRET=1): kernels run as numpy, "
                "correct but slow; timings here are not GPU timings")
    return f"Triton {triton.__version__} compiled for {torch.cuda.get_device_name()}"


# Tile sizes per kind of kernel. GPU: big enough to keep tensor cores busy and reuse each loaded tile many
# times; interpreter: the smallest legal tiles, so tests on small shapes still have several programs.
BLOCK_SIZES = {
    "gpu": {"vector": dict(BLOCK=1024, num_warps=4),
            "matmul": dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=32, GROUP_M=8, num_warps=8, num_stages=3),
            "attention": dict(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=3)},
    "interpreter": {"vector": dict(BLOCK=64, num_warps=1),
                    "matmul": dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=16, GROUP_M=2, num_warps=1, num_stages=1),
                    "attention": dict(BLOCK_M=16, BLOCK_N=16, num_warps=1, num_stages=1)},
}


def block_sizes(kind: str) -> dict[str, int]:
    """The default launch parameters (tile sizes, num_warps, num_stages) for `kind` on this backend."""
    table = BLOCK_SIZES["interpreter" if INTERPRETER else "gpu"]
    if kind not in table:
        raise ValueError(f"kind must be one of {sorted(table)}, got {kind!r}")
    return dict(table[kind])


def check_tile(**sizes: int) -> None:
    """Every tile size must be a power of two >= 16 (tl.arange needs powers of two; tl.dot needs >= 16)."""
    for name, size in sizes.items():
        if isinstance(size, bool) or not isinstance(size, int) or size < MIN_DOT_TILE or size & (size - 1):
            raise ValueError(f"{name} must be a power of two >= {MIN_DOT_TILE} (a GPU's tl.dot rejects smaller "
                             f"tiles, even though the interpreter accepts them), got {size!r}")


def check_dot_dtype(*tensors: torch.Tensor) -> None:
    """Refuse dtypes tl.dot cannot handle here: bf16 in the interpreter returns garbage without an error."""
    for t in tensors:
        if t.dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise TypeError(f"tl.dot inputs must be float32, float16 or bfloat16, got {t.dtype}")
        if t.dtype == torch.bfloat16 and INTERPRETER:
            raise TypeError("bfloat16 tl.dot is wrong in Triton's CPU interpreter (it silently returns garbage); "
                            "use float16 or float32 here, bfloat16 on a GPU")


_TUNED: dict[tuple, dict] = {}


def _time_or_inf(fn: Callable[[], object]) -> float:
    """do_bench milliseconds, or inf for a config that needs more shared memory or registers than the GPU has."""
    from triton.runtime.errors import OutOfResources

    try:
        return triton.testing.do_bench(fn)
    except OutOfResources:
        return float("inf")


def tune(name: str, key: tuple, candidates: Sequence[dict], run: Callable[[dict], object]) -> dict:
    """The config to use for kernel `name` on problem `key` (e.g. its shapes and dtype).

    On a GPU: time `run(config)` for each candidate once per key (do_bench) and remember the fastest — the
    job `triton.autotune` does, written out so the interpreter path is the same code. In the interpreter:
    the first candidate, untimed (interpreter time measures Python, not the kernel; and triton.autotune with
    several configs fails without a GPU).
    """
    if not candidates:
        raise ValueError("tune needs at least one candidate config")
    if INTERPRETER or len(candidates) == 1:
        return dict(candidates[0])
    cache_key = (name, key)
    if cache_key not in _TUNED:
        times = [_time_or_inf(lambda c=c: run(c)) for c in candidates]
        if min(times) == float("inf"):
            raise RuntimeError(f"no candidate config of {name} fits this GPU: {list(candidates)}")
        _TUNED[cache_key] = dict(candidates[min(range(len(times)), key=times.__getitem__)])
    return dict(_TUNED[cache_key])


@dataclass(frozen=True)
class Timing:
    seconds: float
    method: str  # "do_bench (GPU)" or "wall clock (interpreter)"

    @property
    def is_gpu_time(self) -> bool:
        return not self.method.startswith("wall")

    def __str__(self) -> str:
        note = "" if self.is_gpu_time else " -- interpreter time on the CPU, NOT GPU time"
        return f"{self.seconds * 1e3:.3f} ms by {self.method}{note}"


def bench(fn: Callable[[], object], repeat: int = 3) -> Timing:
    """Time fn(): Triton's do_bench (median, GPU events, caches flushed) on a GPU; the best of `repeat` wall-clock
    runs in the interpreter, which measures numpy executing the program, useless as a GPU prediction."""
    if not INTERPRETER:
        return Timing(triton.testing.do_bench(fn) / 1e3, "do_bench (GPU)")
    from labkit.timing import best_of

    return Timing(best_of(fn, repeat=repeat, warmup=1), "wall clock (interpreter)")
