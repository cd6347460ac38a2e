"""Labs are generated from solutions, and their graded checks really check.

(a) labs/ is byte-for-byte what the generator makes; (b) every check cell fails on the blank lab, passes
on the solution, and fails on at least one plausible wrong implementation (tests/mutants/).
"""
import re

import nbformat
import pytest
from nbclient import NotebookClient

from labkit.course import labs, manifest
from mutants import mutants_for

PAIRS = manifest.load().lab_pairs()
ROOT = manifest.load().root


def test_labs_are_exactly_what_the_generator_makes():
    stale = [str(p.relative_to(ROOT)) for p, text in labs.expected_labs().items()
             if not p.is_file() or p.read_text(encoding="utf-8") != text]
    assert not stale, f"regenerate with `python -m labkit.course labs`: {stale}"


def test_stub_replaces_solution_and_keeps_indentation():
    src = "def f(x):\n    ### BEGIN SOLUTION hint: double it\n    return 2 * x\n    ### END SOLUTION\n\ny = 1"
    assert labs.stub_source(src) == "def f(x):\n    raise NotImplementedError('Exercise: double it')\n\ny = 1"


@pytest.mark.parametrize("src, message", [
    ("### BEGIN SOLUTION\nx = 1", "never closed"),
    ("x = 1\n### END SOLUTION", "END SOLUTION without a BEGIN"),
    ("### BEGIN SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION", "inside the block"),
])
def test_malformed_markers_are_reported(src, message):
    with pytest.raises(labs.LabMarkerError, match=message):
        labs.stub_source(src)


@pytest.mark.parametrize("solution, lab", PAIRS)
def test_lab_has_no_solution_code_or_outputs(solution, lab):
    nb = nbformat.read(ROOT / lab, as_version=4)
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in nb.cells if c.cell_type == "code")
    text = "".join(c.source for c in nb.cells)
    assert "BEGIN SOLUTION" not in text and "NotImplementedError" in text
    assert any(labs.check_name(c) for c in nb.cells), f"{lab} has no graded check cells"
    said = [i for i, c in enumerate(nb.cells) if re.search(r"this is the solution", c.source, re.I)]
    assert not said, f"{lab} cells {said} say it is the solution notebook: tag them solution-only in {solution}"


def _run(nb) -> dict[str, str | None]:
    NotebookClient(nb, timeout=300, kernel_name="python3", allow_errors=True, record_timing=False,
                   resources={"metadata": {"path": str(ROOT)}}).execute()
    return labs.check_outcomes(nb)


def _with_mutant(solution_nb, mutant):
    """The solution with the mutant's function swapped in, up to the last check the mutant must fail: later
    cells (demos that load and run SmolLM2) cannot change those checks' outcomes, and skipping them keeps the
    mutant runs within CI's budget."""
    nb = nbformat.from_dict(solution_nb)
    pattern = re.compile(rf"^def {re.escape(mutant.function)}\(", re.M)
    cells = [c for c in nb.cells if c.cell_type == "code" and pattern.search(c.source)]
    assert len(cells) == 1, f"expected one cell defining {mutant.function}, found {len(cells)}"
    cells[0].source = mutant.source
    last = max(i for i, c in enumerate(nb.cells) if labs.check_name(c) in mutant.fails)
    nb.cells = nb.cells[:last + 1]
    return nb


@pytest.mark.parametrize("solution, lab", PAIRS)
def test_checks_fail_on_blank_lab_pass_on_solution_and_catch_mutants(solution, lab):
    solution_nb = nbformat.read(ROOT / solution, as_version=4)
    mutants = mutants_for(solution)
    passed = _run(nbformat.read(ROOT / lab, as_version=4))
    assert passed and all(passed.values()), f"checks that pass on the blank lab check nothing: " \
        f"{[k for k, v in passed.items() if v is None]}"
    on_solution = _run(solution_nb)
    assert set(on_solution) == set(passed)
    assert not any(on_solution.values()), f"checks failing on the solution: {on_solution}"

    caught: set[str] = set()
    for mutant in mutants:
        outcome = _run(_with_mutant(solution_nb, mutant))
        missed = [name for name in mutant.fails if outcome[name] is None]
        assert not missed, f"{solution}: mutant '{mutant.why}' passes checks {missed}"
        caught |= {name for name, error in outcome.items() if error}
    uncaught = set(on_solution) - caught
    assert not uncaught, f"{solution}: no wrong implementation in tests/mutants/ fails checks {uncaught}"
