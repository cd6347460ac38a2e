"""labkit.kernels.backend: the interpreter is on without a GPU, tile and dtype guards, tuning and timing."""
import os

import pytest
import torch

from labkit.kernels import backend

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def test_interpreter_is_on_exactly_when_there_is_no_gpu():
    if not torch.cuda.is_available():
        assert backend.INTERPRETER and os.environ["TRITON_INTERPRET"] == "1"
        assert backend.device() == torch.device("cpu")
        assert "interpreter" in backend.describe() and "not GPU timings" in backend.describe()
    else:
        assert backend.device() == torch.device("cuda") or backend.INTERPRETER


@pytest.mark.parametrize("kind", ["vector", "matmul", "attention"])
def test_block_sizes_are_powers_of_two_of_at_least_16(kind):
    cfg = backend.block_sizes(kind)
    tiles = {k: v for k, v in cfg.items() if k.startswith("BLOCK")}
    assert tiles
    backend.check_tile(**tiles)  # raises if not
    assert cfg["num_warps"] >= 1
    cfg["BLOCK" if kind == "vector" else "BLOCK_M"] = 3
    assert backend.block_sizes(kind) != cfg  # a copy: callers cannot change the table


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="kind must be one of"):
        backend.block_sizes("conv")


@pytest.mark.parametrize("size", [8, 24, 0, -16, 2.0, True])
def test_tiles_must_be_powers_of_two_of_at_least_16(size):
    with pytest.raises(ValueError, match="power of two >= 16"):
        backend.check_tile(BLOCK_M=size)


def test_dot_dtypes():
    backend.check_dot_dtype(torch.zeros(2), torch.zeros(2, dtype=torch.float16))
    with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
        backend.check_dot_dtype(torch.zeros(2, dtype=torch.int32))
    if backend.INTERPRETER:
        with pytest.raises(TypeError, match="bfloat16 tl.dot is wrong in Triton's CPU interpreter"):
            backend.check_dot_dtype(torch.zeros(2, dtype=torch.bfloat16))


def test_tune_takes_the_first_candidate_in_the_interpreter():
    calls = []
    cands = [{"BLOCK": 16}, {"BLOCK": 32}]
    got = backend.tune("test", (1,), cands, calls.append)
    if backend.INTERPRETER:
        assert got == {"BLOCK": 16} and not calls  # nothing timed: interpreter time measures Python
    with pytest.raises(ValueError, match="at least one candidate"):
        backend.tune("test", (1,), [], calls.append)


def test_bench_says_whether_it_measured_gpu_time():
    timing = backend.bench(lambda: sum(range(100)), repeat=2)
    assert timing.seconds > 0
    if backend.INTERPRETER:
        assert not timing.is_gpu_time and "NOT GPU time" in str(timing)


def test_kernels_work_when_triton_was_imported_before_labkit():
    # transformers' model code imports triton early; its tl.max/tl.sum were then made for the compiler
    import subprocess
    import sys

    code = ("import os; os.environ.pop('TRITON_INTERPRET', None)\n"
            "import triton, torch\n"
            "from labkit.kernels.basics import softmax\n"
            "x = torch.randn(3, 20)\n"
            "assert torch.allclose(softmax(x), x.softmax(-1), atol=1e-6)\n"
            "print('ok')\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    if torch.cuda.is_available():
        pytest.skip("on a GPU the interpreter is not used")
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-2000:]
