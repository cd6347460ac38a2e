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


def _interpreter_only() -> set[str]:
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("mutants_08", Path(__file__).parent / "mutants" / "08-gpu-triton.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.INTERPRETER_ONLY


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
    # matmul: 5 row-major cases, 3 with column-major inputs, 2 with sliced ones
    cases = {"add_kernel": 5, "softmax_kernel": 7, "matmul_kernel": 10, "attention_kernel": 7}[name]
    assert f"passes {cases} checks" in capsys.readouterr().out


@pytest.mark.parametrize("mutant", MUTANTS, ids=[m.why[:40] for m in MUTANTS])
def test_checks_fail_on_each_mutant(mutant):
    if mutant.why in _interpreter_only() and not labkit.kernels.backend.INTERPRETER:
        pytest.skip("only the interpreter's access watch sees a read whose value is discarded")
    kernel = _compile(mutant.source, mutant.function)
    for name in mutant.fails:
        with pytest.raises(AssertionError, match=r"\w+_kernel\["):  # the message names the launch
            getattr(checks, f"check_{name}")(kernel)


@pytest.mark.parametrize("mutant, hint", [
    (0, r"tl.load read .* x\[100\] \(x is 100: index 100 is outside 0..99\)"), (1, "never written"),
    (2, "other=-float"), (3, "Subtract the row max"),
    (4, r"tl.load read .* a\[0, 40\] \(a is 20 x 40: column 40 is outside 0..39\). Mask every load"),
    (5, "Loop over K"), (6, "row-major inputs passes, so the layout is what breaks it.*use all four strides"),
    (7, "Yours equals a tile loop that does not rescale the accumulator acc"), (8, "score 0 instead of -inf"),
    (9, r"a\[20, 0\] \(a is 20 x 40: row 20 is outside 0..19\). Mask every load .* masking the store"),
    (10, r"q\[40, 0\] \(q is 40 x 16: row 40 is outside 0..39\)"),
    (11, r"k\[40, 0\] \(k is 40 x 16: row 40 is outside 0..39\).* tl.where"),
    (12, r"start m at -inf, not 0"),
    (13, r"x\[0, 16\] .*where x\[1, 0\] would be if its rows were packed 16 apart, but they are 144 apart"),
    (14, r"tl.load read 12 address.* x\[0, 20\]"),
    (15, r"tl.load read 28 address.* x\[100\] .* masking the store")])
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


@triton.jit
def _copy_rows(x_ptr, out_ptr, n_cols, row_stride, BLOCK: tl.constexpr, MASK_LOAD: tl.constexpr):
    cols = tl.arange(0, BLOCK)
    base = tl.program_id(0) * row_stride
    x = tl.load(x_ptr + base + cols, mask=cols < n_cols) if MASK_LOAD else tl.load(x_ptr + base + cols)
    tl.store(out_ptr + base + cols, x, mask=cols < n_cols)


@pytest.mark.skipif(not labkit.kernels.backend.INTERPRETER, reason="the access watch needs the interpreter")
def test_watch_memory_rejects_an_unmasked_read_whose_value_is_discarded():
    _, x = checks.guarded_input(torch.randn(3, 10), step=(2, 1))
    out_buf, out = checks.guarded((3, 10), fill=checks.SENTINEL, step=(2, 1))
    with checks.watch_memory({"out"}, x=x, out=out):  # masked lanes are not accesses
        _copy_rows[(3,)](x, out, 10, x.stride(0), BLOCK=16, MASK_LOAD=True)
    assert torch.equal(out, x) and checks.band_changed(out_buf, (3, 10), checks.SENTINEL, step=(2, 1)) == 0
    with pytest.raises(Exception) as caught, checks.watch_memory({"out"}, x=x, out=out):
        _copy_rows[(3,)](x, out, 10, x.stride(0), BLOCK=16, MASK_LOAD=False)
    cause = caught.value
    while not isinstance(cause, checks.OutOfBounds):
        cause = cause.__cause__
    assert "tl.load read 6 address(es)" in str(cause) and "x[0, 10] (x is 3 x 10: column 10" in str(cause)
    # the masked store hid it: out is still right, so only the watch sees the read
    assert torch.equal(out, x)


def test_index_of_maps_addresses_back_through_slices_and_transposes():
    _, a = checks.guarded_input(torch.zeros(4, 6), pad=3, transposed=True, step=(1, 2))
    region = checks._Region("a", a, writable=False)
    assert a.stride() == (1, 2 * (4 + 6))
    element = lambda i, j: a.data_ptr() + (i * a.stride(0) + j * a.stride(1)) * a.element_size()
    assert region.index_of(element(2, 5)) == (2, 5)
    assert region.index_of(element(4, 0)) == (4, 0)       # one row past the end, still inside the buffer
    assert region.index_of(element(0, -1)) == (0, -1)
    assert isinstance(region.index_of(element(0, 0) + a.element_size() * a.stride(1) // 2)[1], float)  # a gap
    assert region.index_of(element(0, 0) + 10**9) is None
