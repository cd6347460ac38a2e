"""labkit.checks.kernels: the graded checks pass on correct kernels and fail, with a useful message, on the
plausible wrong ones in tests/mutants/08-gpu-triton.py (and a stub's NotImplementedError propagates)."""
import pytest
import torch

import labkit.kernels  # noqa: F401  (before triton: without a GPU it switches on the interpreter)
import triton
import triton.language as tl
from labkit.checks import kernels as checks
from labkit.kernels.basics import add_kernel
from mutants import mutants_for

pytestmark = pytest.mark.usefixtures("torch_one_thread")
MUTANTS = mutants_for("solutions/08-gpu-triton.ipynb")


def _compile(source: str, name: str):
    namespace = {"triton": triton, "tl": tl, "torch": torch}
    exec(source, namespace)  # noqa: S102  (our own mutant sources)
    return namespace[name]


@triton.jit
def softmax_ok(x_ptr, out_ptr, n_cols, row_stride, BLOCK: tl.constexpr):
    cols = tl.arange(0, BLOCK)
    x = tl.load(x_ptr + tl.program_id(0) * row_stride + cols, mask=cols < n_cols, other=-float("inf"))
    e = tl.exp(x.to(tl.float32) - tl.max(x.to(tl.float32), axis=0))
    tl.store(out_ptr + tl.program_id(0) * row_stride + cols, (e / tl.sum(e, axis=0)).to(out_ptr.dtype.element_ty),
             mask=cols < n_cols)


@triton.jit
def stub(x_ptr, y_ptr, out_ptr, n, BLOCK: tl.constexpr):
    raise NotImplementedError("Exercise: write the kernel")


def _correct(name: str):
    """The correct kernel: a mutant's source with its bug undone is not available, so build it from the
    attention mutant generator (both knobs on) or use labkit's own kernels where the signature matches."""
    import importlib.util
    from pathlib import Path

    if name == "add_kernel":
        return add_kernel
    if name == "softmax_kernel":
        return softmax_ok
    path = Path(__file__).parent / "mutants" / "08-gpu-triton.py"
    spec = importlib.util.spec_from_file_location("mutants_08", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if name == "attention_kernel":
        return _compile(module._attention(), name)
    loop = ("    for k0 in range(0, K, BLOCK_K):\n"
            "        kk = k0 + rk\n"
            "        a = tl.load(a_ptr + rm[:, None] * stride_am + kk[None, :] * stride_ak,\n"
            "                    mask=(rm[:, None] < M) & (kk[None, :] < K), other=0.0)\n"
            "        b = tl.load(b_ptr + kk[:, None] * stride_bk + rn[None, :] * stride_bn,\n"
            "                    mask=(kk[:, None] < K) & (rn[None, :] < N), other=0.0)\n"
            "        acc += tl.dot(a, b)\n")
    return _compile(module._MATMUL + loop + module._MATMUL_STORE, name)


@pytest.mark.parametrize("name", ["add_kernel", "softmax_kernel", "matmul_kernel", "attention_kernel"])
def test_checks_pass_on_correct_kernels(name, capsys):
    getattr(checks, f"check_{name}")(_correct(name))
    cases = {"matmul_kernel": 8}.get(name, 5)  # matmul: 5 row-major cases and 3 with column-major inputs
    assert f"passes {cases} checks" in capsys.readouterr().out


@pytest.mark.parametrize("mutant", MUTANTS, ids=[m.why[:40] for m in MUTANTS])
def test_checks_fail_on_each_mutant(mutant):
    kernel = _compile(mutant.source, mutant.function)
    for name in mutant.fails:
        with pytest.raises(AssertionError, match=r"\w+_kernel\["):  # the message names the launch
            getattr(checks, f"check_{name}")(kernel)


@pytest.mark.parametrize("mutant, hint", [
    (0, "outside the out tensor"), (1, "never written"), (2, "other=-float"), (3, "Subtract the row max"),
    (4, "loaded past the end"), (5, "Loop over K"), (6, "use all four strides"), (7, "rescale both"),
    (8, "score 0 instead of -inf")])
def test_messages_point_at_the_bug(mutant, hint):
    m = MUTANTS[mutant]
    with pytest.raises(AssertionError, match=hint):
        getattr(checks, f"check_{m.function}")(_compile(m.source, m.function))


def test_a_stub_raises_not_implemented():
    with pytest.raises(NotImplementedError, match="Exercise"):
        checks.check_add_kernel(stub)


def test_a_plain_function_is_refused():
    with pytest.raises(AssertionError, match="pass the @triton.jit kernel"):
        checks.check_add_kernel(lambda *a: None)


def test_guard_bands():
    buffer, view = checks.guarded((3, 4), fill=checks.SENTINEL, pad=2)
    assert buffer.shape == (7, 8) and view.shape == (3, 4) and view.stride() == (8, 1)
    view.fill_(1.0)
    assert checks.band_changed(buffer, (3, 4), checks.SENTINEL, pad=2) == 0
    buffer[0, 0] = 5.0
    assert checks.band_changed(buffer, (3, 4), checks.SENTINEL, pad=2) == 1
    nan_buffer, x = checks.guarded_input(torch.ones(5), pad=3)
    assert torch.isnan(nan_buffer[:3]).all() and torch.equal(x, torch.ones(5))
