"""Execute a notebook in place, the way its committed outputs are made: fresh kernel, no timing metadata.

nbval later re-executes the same notebook and compares against these outputs.
"""
from __future__ import annotations

from pathlib import Path

import nbformat
from nbclient import NotebookClient


def execute(path: Path | str, timeout: int = 600, allow_errors: bool = False) -> nbformat.NotebookNode:
    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    # record_timing=False: no timestamps in cell metadata, so re-running changes nothing that needn't change.
    NotebookClient(nb, timeout=timeout, kernel_name="python3", allow_errors=allow_errors, record_timing=False,
                   store_widget_state=True, resources={"metadata": {"path": str(path.parent)}}).execute()
    return nb


def execute_in_place(path: Path | str, timeout: int = 600) -> None:
    nb = execute(path, timeout)
    nbformat.write(nb, Path(path))
