"""The CPU-kernel settings: clear errors for unsupported ones, and a portability setting that really changes
the kernels (otherwise the portability run would prove nothing)."""
import json
import os
import re
import subprocess
import sys

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from labkit.course import cpu, manifest

AVX2_ONLY = frozenset({"sse4_2", "avx", "avx2", "fma"})
AVX512 = AVX2_ONLY | {"avx512f", "avx512bw", "avx512vl", "avx512dq"}


def test_unset_and_supported_settings_pass():
    cpu.check_settings({}, AVX2_ONLY)
    cpu.check_settings({"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2,STRICT", "NUMBA_CPU_NAME": "generic",
                        "ONEDNN_MAX_CPU_ISA": "AVX512_CORE"}, AVX2_ONLY)  # oneDNN's is a ceiling
    cpu.check_settings({"ATEN_CPU_CAPABILITY": "avx512", "MKL_CBWR": "AVX512"}, AVX512)
    cpu.check_settings(cpu.PORTABLE, AVX2_ONLY)


@pytest.mark.parametrize("env, match", [
    ({"ATEN_CPU_CAPABILITY": "avx512"}, r"ATEN_CPU_CAPABILITY=avx512 asks for kernels this CPU cannot run "
                                        r"\(it lacks avx512f, avx512bw, avx512vl, avx512dq\)"),
    ({"MKL_CBWR": "AVX512"}, r"MKL_CBWR=AVX512 .*lacks avx512f"),
    ({"ATEN_CPU_CAPABILITY": "sse9"}, r"ATEN_CPU_CAPABILITY=sse9 is not a setting this course supports; use one "
                                      r"of avx2, avx512, default"),
    ({"NUMBA_CPU_NAME": "skylake-avx512"}, r"NUMBA_CPU_NAME=skylake-avx512 is not a setting"),
])
def test_unsupported_settings_are_refused_by_name(env, match):
    with pytest.raises(cpu.UnsupportedSetting, match=match):
        cpu.check_settings(env, AVX2_ONLY)


def test_describe_names_the_instruction_set():
    assert "AVX-512" in cpu.describe(AVX512)
    assert "AVX2 (no AVX-512)" in cpu.describe(AVX2_ONLY)


def _unsupported_here() -> dict[str, str]:
    """A setting this machine cannot run if there is one (AVX-512 on an AVX2 CPU), else an unknown value."""
    flags = cpu.cpu_flags() or frozenset()
    return {"ATEN_CPU_CAPABILITY": "avx512"} if "avx512f" not in flags else {"MKL_CBWR": "FASTEST"}


def test_import_labkit_fails_first_naming_the_setting():
    env = {**os.environ, **_unsupported_here()}
    run = subprocess.run([sys.executable, "-c", "import torch, labkit"], env=env, capture_output=True, text=True)
    assert run.returncode == 1, run.stderr  # an exception, not a signal (-4: Illegal instruction)
    assert f"UnsupportedSetting: {next(iter(_unsupported_here()))}=" in run.stderr


def test_every_verified_notebook_checks_the_settings_in_its_first_cell():
    """The check runs on `import labkit`; so the first code cell must import labkit, and a notebook run with
    an unsupported setting fails there (shown for real on chapter 1 below)."""
    for path in manifest.load().verified_notebooks():
        nb = nbformat.read(manifest.ROOT / path, as_version=4)
        first = next(c for c in nb.cells if c.cell_type == "code")
        assert "labkit" in first.source, f"{path}: the first code cell does not import labkit"


def test_notebook_with_unsupported_setting_fails_in_its_first_cell(monkeypatch):
    for name, value in _unsupported_here().items():
        monkeypatch.setenv(name, value)
    path = manifest.ROOT / "chapters" / "01-ngrams" / "ngrams.ipynb"
    nb = nbformat.read(path, as_version=4)
    nb.cells = [c for c in nb.cells if c.cell_type == "code"][:1]
    with pytest.raises(CellExecutionError) as failure:
        NotebookClient(nb, timeout=120, kernel_name="python3",
                       resources={"metadata": {"path": str(path.parent)}}).execute()
    message = re.sub(r"\x1b\[[0-9;]*m", "", str(failure.value))  # the traceback is coloured
    name, value = next(iter(_unsupported_here().items()))
    assert f"UnsupportedSetting: {name}={value}" in message, message[-800:]


PROBE = """
import hashlib, json, numpy as np, torch
torch.manual_seed(0)
x = torch.sin(torch.arange(300 * 257, dtype=torch.float64) * 0.7317).float().reshape(257, 300)
h = lambda t: hashlib.sha1(t.numpy().tobytes()).hexdigest()
print(json.dumps({"matmul": h(x @ x.T), "softmax": h(x.softmax(-1)), "randn": h(torch.randn(1000)),
                  "numpy_matmul": hashlib.sha1(x.numpy() @ x.numpy().T).hexdigest()}))
"""


def _probe(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in cpu.PORTABLE}
    out = subprocess.run([sys.executable, "-c", PROBE], env={**env, **extra}, capture_output=True, text=True,
                         check=True).stdout
    return json.loads(out)


def test_portable_setting_changes_the_kernels():
    """If the portability run computed the same bits as the default run, it would prove nothing."""
    default, portable = _probe({}), _probe(cpu.PORTABLE)
    changed = {k for k in default if default[k] != portable[k]}
    assert changed == {"matmul", "softmax", "randn", "numpy_matmul"}, f"only {sorted(changed)} changed under {cpu.PORTABLE}"
