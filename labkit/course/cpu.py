"""Which CPU kernels compute the course's floats, and the settings that choose them.

torch (ATen's own dispatch, MKL for matrix products, oneDNN), numpy (OpenBLAS) and numba pick their kernels at run time
from the CPU's instruction set. An AVX-512 machine sums a row in another order than an AVX2 one, so the last
digits of a float differ between machines while every result is equally right.

**What the course pins, and why.** Thread counts, where a notebook's numbers or timings depend on them: torch
splits a reduction across threads, so such a notebook calls `torch.set_num_threads` in its first cell, and a
student's laptop then computes what CI computes. The instruction-set settings below are *not* pinned: a student in `make lab` gets the fastest kernels of their
CPU, the book shows what that default gives, and pinning them only under test would test something students
never run. Instead, every committed output prints what survives a change of kernels (bounds, honest
precision, exact counts), and the portability run (`make portability`) proves it: it re-executes the
notebooks under `PORTABLE`, a kernel path that differs from the default one on every x86-64 CPU.

**What is checked.** `import labkit` calls `check_settings()`: a setting the course does not support (an ATen
capability this CPU lacks crashes torch with "Illegal instruction" deep in a kernel) fails there, naming the
setting, before any kernel runs.
"""
from __future__ import annotations

import os
import platform
from collections.abc import Mapping
from pathlib import Path

# setting -> {accepted value (lower case) -> CPU flags it needs (as /proc/cpuinfo spells them)}
SUPPORTED: dict[str, dict[str, tuple[str, ...]]] = {
    # ATen's vectorised kernels (softmax, norms, reductions, random numbers). avx512 also needs avx512bw/vl/dq.
    "ATEN_CPU_CAPABILITY": {"default": (), "avx2": ("avx2", "fma"),
                            "avx512": ("avx512f", "avx512bw", "avx512vl", "avx512dq")},
    # MKL's code branch for fp32 matrix products. COMPATIBLE is the SSE2 baseline every x86-64 CPU has.
    "MKL_CBWR": {"auto": (), "compatible": (), "sse4_2": ("sse4_2",), "avx": ("avx",), "avx2": ("avx2", "fma"),
                 "avx512": ("avx512f",)},
    # oneDNN's ceiling: a maximum, so a level above the CPU's is harmless; only the name is checked.
    "ONEDNN_MAX_CPU_ISA": {v: () for v in ("all", "sse41", "avx", "avx2", "avx2_vnni", "avx512_core",
                                           "avx512_core_vnni", "avx512_core_bf16", "avx512_core_amx")},
    # numba compiles for the host; 'generic' is the portable baseline. Other LLVM CPU names are refused:
    # one newer than this CPU compiles code it cannot run.
    "NUMBA_CPU_NAME": {"host": (), "generic": ()},
    # numpy's BLAS (OpenBLAS built for many cores, picked at run time): numpy's float matrix products.
    # Prescott is the SSE3 kernel set every x86-64 CPU runs.
    "OPENBLAS_CORETYPE": {"prescott": (), "nehalem": ("sse4_2",), "sandybridge": ("avx",),
                          "haswell": ("avx2", "fma"), "zen": ("avx2", "fma"),
                          "skylakex": ("avx512f", "avx512bw", "avx512vl", "avx512dq")},
}

# The portability run's setting: scalar ATen kernels, MKL's SSE2 branch, numba's generic target, numpy's
# BLAS on its SSE3 kernels, one OpenMP thread where a notebook leaves the count to torch. Every machine the
# course runs on has AVX2 or better, so this path differs from each one's default path (tests/test_cpu.py
# checks that it changes the bits).
PORTABLE: dict[str, str] = {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE",
                            "ONEDNN_MAX_CPU_ISA": "SSE41", "NUMBA_CPU_NAME": "generic",
                            "OPENBLAS_CORETYPE": "Prescott", "OMP_NUM_THREADS": "1"}


class UnsupportedSetting(RuntimeError):
    """An environment variable asks for CPU kernels the course does not support on this machine."""


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str] | None:
    """The instruction-set flags of this CPU, or None where they cannot be read (not Linux)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return frozenset(line.split(":", 1)[1].split())
    return None


def check_settings(environ: Mapping[str, str] | None = None, flags: frozenset[str] | None = None) -> None:
    """Raise UnsupportedSetting, naming the variable, if a kernel-choosing setting is unknown or needs
    instructions this CPU lacks. Unset variables are fine: the libraries then choose for themselves."""
    environ = os.environ if environ is None else environ
    flags = cpu_flags() if flags is None else flags
    x86 = platform.machine().lower() in ("x86_64", "amd64")
    for name, accepted in SUPPORTED.items():
        value = environ.get(name)
        if value is None or value == "":
            continue
        key = value.lower().split(",")[0]  # MKL_CBWR may carry ",STRICT"
        if key not in accepted:
            raise UnsupportedSetting(
                f"{name}={value} is not a setting this course supports; use one of "
                f"{', '.join(sorted(accepted))} or leave it unset (see labkit/course/cpu.py).")
        missing = [f for f in accepted[key] if flags is not None and f not in flags]
        if missing or (accepted[key] and not x86):
            raise UnsupportedSetting(
                f"{name}={value} asks for kernels this CPU cannot run (it lacks {', '.join(missing) or 'x86-64'}); "
                f"torch would stop with 'Illegal instruction' inside a kernel. Unset {name} or lower it.")


def describe(flags: frozenset[str] | None = None) -> str:
    """A short description of this CPU for recorded results, e.g. 'AMD EPYC, AVX2 (no AVX-512), 2 cores'."""
    flags = cpu_flags() if flags is None else flags
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    if flags is None:
        isa = "instruction set unknown"
    elif "avx512f" in flags:
        isa = "AVX-512"
    elif "avx2" in flags:
        isa = "AVX2 (no AVX-512)"
    else:
        isa = "no AVX2"
    return f"{name}, {isa}, {os.cpu_count()} cores"
