"""Execute a notebook in place, the way its committed outputs are made: fresh kernel, no per-cell timestamps.

nbval later re-executes the same notebook and compares against these outputs. The notebook's metadata records
how long the whole run took and on which CPU (`metadata.labkit.execution`); tests/test_budget.py holds every
lesson and solution to the per-notebook budget with it, and conftest.py times nbval's own run the same way.
"""
from __future__ import annotations

import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from labkit.course.cpu import describe

BUDGET_S = 120  # shared/DESIGN.md: a lesson or solution notebook executes in at most 2 minutes on 2 cores


def coalesce_streams(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Merge each run of consecutive stdout (or stderr) outputs of a cell into one output.

    The kernel sends a stream in chunks as it flushes, and the book draws every chunk as its own box: a log
    falls apart line by line, and a label printed before a slow computation lands in one box, its value in the
    next. nbval compares streams coalesced the same way, so this changes no test, only what a reader sees.
    """
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        merged: list = []
        for out in cell.outputs:
            prev = merged[-1] if merged else None
            if (out.output_type == "stream" and prev is not None and prev.output_type == "stream"
                    and prev.name == out.name):
                prev.text += out.text
            else:
                merged.append(out)
        cell.outputs = merged
    return nb


def execute(path: Path | str, timeout: int = 600, allow_errors: bool = False) -> nbformat.NotebookNode:
    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    # record_timing=False: no timestamps in cell metadata, so re-running changes nothing that needn't change.
    NotebookClient(nb, timeout=timeout, kernel_name="python3", allow_errors=allow_errors, record_timing=False,
                   store_widget_state=True, resources={"metadata": {"path": str(path.parent)}}).execute()
    coalesce_streams(nb)
    nb.metadata.setdefault("labkit", {})["execution"] = {
        "seconds": round(time.perf_counter() - start, 1), "budget_seconds": BUDGET_S, "cpu": describe()}
    return nb


def execute_in_place(path: Path | str, timeout: int = 600) -> None:
    nb = execute(path, timeout)
    seconds = nb.metadata["labkit"]["execution"]["seconds"]
    nbformat.write(nb, Path(path))
    if seconds > BUDGET_S:
        print(f"warning: {path} took {seconds:.0f} s, over the {BUDGET_S} s budget (tests/test_budget.py fails)")
