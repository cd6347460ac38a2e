"""Every lesson and solution notebook records how long it took to execute, and stays within the budget.

`python -m labkit.course execute` writes metadata.labkit.execution when it refreshes a notebook's outputs;
The root conftest.py also times nbval's own re-execution and fails the run if a notebook exceeds the budget there.
"""
import nbformat
import pytest

from labkit.course import manifest
from labkit.course.execute import BUDGET_S

NOTEBOOKS = manifest.load().verified_notebooks()


@pytest.mark.parametrize("path", NOTEBOOKS)
def test_notebook_records_its_execution_time_within_budget(path):
    nb = nbformat.read(manifest.ROOT / path, as_version=4)
    record = nb.metadata.get("labkit", {}).get("execution")
    assert record, f"{path} has no execution record: refresh it with `python -m labkit.course execute {path}`"
    assert record["seconds"] <= BUDGET_S, (
        f"{path} took {record['seconds']} s to execute on {record['cpu']}, over the {BUDGET_S} s budget")
