"""Test-wide setup, for every run (tests/, and nbval over notebooks anywhere in the repository): offline model
hubs, a network guard in this process and every kernel it starts, and each notebook's execution time.

It sits at the repository root so that it also applies when pytest is given only notebooks (the portability
run); tests/conftest.py holds the fixtures of the unit tests.
"""
import os
import sys
from pathlib import Path

OFFLINE = Path(__file__).parent / "tests" / "offline"
# Set before anything imports transformers/huggingface_hub; inherited by nbval's kernels.
os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1",
                  HF_HUB_DISABLE_TELEMETRY="1", PYTHONHASHSEED="0")
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(OFFLINE), os.environ.get("PYTHONPATH")]))
sys.path.insert(0, str(OFFLINE))
import sitecustomize  # noqa: E402,F401  (the guard, for this process; children import it themselves)

import pytest  # noqa: E402

try:
    import nbval.kernel as _nbval_kernel
except ImportError:  # nbval is a test dependency; without it there are no notebook items to start kernels for
    _nbval_kernel = None

if _nbval_kernel is not None:
    # A kernel can lose a port race at start: jupyter_client picks free TCP ports, then the kernel binds them, and
    # with two xdist workers starting kernels (and notebooks that open sockets) another process can take one in
    # between. The kernel then dies before its first reply ("Kernel died before replying to kernel_info"; zmq's
    # "Address already in use": a known race, e.g. treebeardtech/nbmake#129) and every cell of that notebook
    # errors. Seen once in CI (2026-12-05, on an unchanged chapter-10 notebook). Start it again, up to 3 times;
    # a kernel that cannot start for a real reason still fails, on the third try.
    _start_new_kernel = _nbval_kernel.start_new_kernel

    def _start_new_kernel_with_retries(*args, **kwargs):
        for attempt in range(3):
            try:
                return _start_new_kernel(*args, **kwargs)
            except RuntimeError:
                if attempt == 2:
                    raise

    _nbval_kernel.start_new_kernel = _start_new_kernel_with_retries


# Each notebook's execution time under nbval: setup (kernel start), every cell, teardown, summed per file.
# Under xdist the controller receives every worker's reports, so it alone sees the whole picture.
_NOTEBOOK_SECONDS: dict[str, float] = {}


def pytest_runtest_logreport(report):
    path = report.nodeid.split("::", 1)[0]
    if path.endswith(".ipynb"):
        _NOTEBOOK_SECONDS[path] = _NOTEBOOK_SECONDS.get(path, 0.0) + report.duration


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session, exitstatus):
    """Print every notebook's time and fail the run when one exceeds the per-notebook budget (DESIGN.md).
    The portability run (slower kernels on purpose) prints the table but is not held to the budget."""
    if hasattr(session.config, "workerinput") or not _NOTEBOOK_SECONDS:
        return
    from labkit.course.execute import BUDGET_S

    portable = os.environ.get("LABKIT_PORTABILITY") == "1"
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    lines = [f"{s:7.1f} s  {p}" for p, s in sorted(_NOTEBOOK_SECONDS.items(), key=lambda kv: -kv[1])]
    over = [p for p, s in _NOTEBOOK_SECONDS.items() if s > BUDGET_S]
    if reporter is not None:
        reporter.write_line("")
        reporter.write_sep("=", f"notebook execution times (budget {BUDGET_S} s each"
                                + (", not enforced in the portability run)" if portable else ")"))
        for line in lines:
            reporter.write_line(line)
    if over and not portable:
        if reporter is not None:
            reporter.write_line(f"FAILED: over the {BUDGET_S} s per-notebook budget: {', '.join(sorted(over))}",
                                red=True, bold=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
