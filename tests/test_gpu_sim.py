"""labkit.gpu_sim: the simulated CUDA kernels compute what numpy computes, and the read counters count.

The simulator runs every thread as a Python thread, so sizes are tiny. It must be on before numba.cuda is
imported: tested in subprocesses, with chapter 1's numba JIT (labkit.ngram) imported first.
"""
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labkit import gpu_sim


@pytest.mark.parametrize("n, tpb", [(1, 8), (8, 8), (13, 8), (10, 4)])
def test_map_and_zip_guard_the_last_block(n, tpb):
    a = np.arange(n, dtype=np.float32)
    np.testing.assert_array_equal(gpu_sim.map_add10(a, tpb), a + 10)
    np.testing.assert_array_equal(gpu_sim.zip_add(a, 2 * a, tpb), 3 * a)


def test_map2d_with_partial_blocks_in_both_directions():
    a = np.arange(35, dtype=np.float32).reshape(5, 7)
    np.testing.assert_array_equal(gpu_sim.map2d_add10(a, (4, 4)), a + 10)


@settings(max_examples=5, deadline=None)
@given(n=st.integers(1, 30), seed=st.integers(0, 2**16))
def test_block_sums_and_prefix_sums(n, seed):
    a = np.random.default_rng(seed).standard_normal(n).astype(np.float32)
    tpb = gpu_sim.TPB
    np.testing.assert_allclose(gpu_sim.block_sums(a), [a[i:i + tpb].sum() for i in range(0, n, tpb)], atol=1e-5)
    np.testing.assert_allclose(gpu_sim.block_prefix_sums(a),
                               np.concatenate([np.cumsum(a[i:i + tpb]) for i in range(0, n, tpb)]), atol=1e-5)
    np.testing.assert_allclose(gpu_sim.prefix_sum(a), np.cumsum(a), atol=1e-4)


@pytest.mark.parametrize("m, k, n", [(4, 4, 4), (5, 9, 6), (8, 12, 3)])
def test_matmuls_agree_with_numpy_and_count_reads(m, k, n):
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((m, k)).astype(np.float32), rng.standard_normal((k, n)).astype(np.float32)
    expected = gpu_sim.reads_per_thread(k)
    for tiled, name in ((False, "naive"), (True, "tiled")):
        c, reads = gpu_sim.matmul(a, b, tiled=tiled)
        np.testing.assert_allclose(c, a @ b, atol=1e-5)
        assert (reads[..., gpu_sim.GLOBAL] == expected[name]["global"]).all()
        assert (reads[..., gpu_sim.SHARED] == expected[name]["shared"]).all()
    assert expected["tiled"]["global"] * gpu_sim.TILE >= expected["naive"]["global"]  # tiling: TILE x fewer


def test_errors():
    with pytest.raises(ValueError, match="same length"):
        gpu_sim.zip_add([1, 2], [1])
    with pytest.raises(ValueError, match="non-empty 1-D"):
        gpu_sim.map_add10(np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"\[M, K\] @ \[K, N\]"):
        gpu_sim.matmul(np.zeros((2, 3)), np.zeros((2, 3)), tiled=True)
    with pytest.raises(ValueError, match="threads_per_block >= 1"):
        gpu_sim.blocks_for(5, 0)


def _run(code: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in __import__("os").environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)


def test_simulator_switches_on_after_chapter_1_imported_numba():
    result = _run("import labkit.ngram, numba\n"
                  "from labkit import gpu_sim\n"
                  "import numpy as np\n"
                  "assert (gpu_sim.map_add10(np.arange(3)) == [10, 11, 12]).all()\n"
                  "print('ok')")
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-2000:]


def test_clear_error_when_numba_cuda_was_imported_first():
    result = _run("import numba.cuda\nfrom labkit import gpu_sim")
    assert result.returncode != 0 and "must be switched on before numba.cuda is first imported" in result.stderr


def test_whoami_maps_elements_to_block_and_thread():
    block_of, thread_of = gpu_sim.whoami(10, 4)
    assert block_of.tolist() == [0] * 4 + [1] * 4 + [2] * 2
    assert thread_of.tolist() == [0, 1, 2, 3] * 2 + [0, 1]
