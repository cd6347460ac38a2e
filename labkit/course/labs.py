"""Generate labs/ from solutions/: the solution notebook is the single source of each lab.

Markers in a solution notebook:
- In a code cell, the lines between `### BEGIN SOLUTION` and `### END SOLUTION` become
  `raise NotImplementedError("...")` at the marker's indentation. Text after BEGIN SOLUTION is the hint:
  `### BEGIN SOLUTION hint: slide a window of n tokens along the list`.
- A cell tagged `solution-only` is left out of the lab (e.g. a note that this is the solution).
- A code cell tagged `check` is a graded check: it stays in the lab, and its first line names it,
  `# CHECK: count_ngrams`. tests/test_labs.py proves every check fails on the blank lab, fails on a
  plausible wrong implementation and passes on the solution.
Labs carry no outputs. They are written byte-for-byte deterministically, so a test can compare them.
The same markers make each solution an nbgrader source notebook: `write_labs` first stamps nbgrader's cell
metadata into the solutions (labkit/course/nbgrader_cells.py), and the labs carry it too.
"""
from __future__ import annotations

import copy
import re
from pathlib import Path

import nbformat

from . import manifest as manifest_mod, nbgrader_cells

BEGIN = re.compile(r"^(?P<indent>[ \t]*)### BEGIN SOLUTION(?:\s+hint:\s*(?P<hint>.*\S))?\s*$")
END = re.compile(r"^[ \t]*### END SOLUTION\s*$")
CHECK_NAME = re.compile(r"^# CHECK: (?P<name>[\w.-]+)\s*$")


class LabMarkerError(ValueError):
    """A solution notebook's markers are malformed."""


def stub_source(source: str, where: str = "cell") -> str:
    """Replace every BEGIN/END SOLUTION block of one code cell by a NotImplementedError stub."""
    out: list[str] = []
    open_at: int | None = None
    for lineno, line in enumerate(source.splitlines(), 1):
        begin, end = BEGIN.match(line), END.match(line)
        if begin:
            if open_at is not None:
                raise LabMarkerError(f"{where}, line {lineno}: BEGIN SOLUTION inside the block opened at line {open_at}")
            open_at = lineno
            hint = begin["hint"] or "write this part"
            out.append(f'{begin["indent"]}raise NotImplementedError({("Exercise: " + hint)!r})')
        elif end:
            if open_at is None:
                raise LabMarkerError(f"{where}, line {lineno}: END SOLUTION without a BEGIN SOLUTION")
            open_at = None
        elif open_at is None:
            out.append(line)
    if open_at is not None:
        raise LabMarkerError(f"{where}: BEGIN SOLUTION at line {open_at} is never closed")
    return "\n".join(out)


def check_name(cell) -> str | None:
    """The name of a graded check cell, or None for any other cell."""
    if cell.cell_type != "code" or "check" not in cell.metadata.get("tags", []):
        return None
    first = cell.source.splitlines()[0] if cell.source else ""
    m = CHECK_NAME.match(first)
    if not m:
        raise LabMarkerError(f"a check cell must start with '# CHECK: <name>', found {first!r}")
    return m["name"]


def make_lab(solution: nbformat.NotebookNode, where: str = "solution") -> nbformat.NotebookNode:
    """The lab notebook for one solution notebook."""
    lab = copy.deepcopy(solution)
    lab.metadata.pop("widgets", None)
    lab.metadata.pop("labkit", None)  # the solution's execution record is not the lab's
    cells = []
    for i, cell in enumerate(lab.cells):
        if "solution-only" in cell.metadata.get("tags", []):
            continue
        if cell.cell_type == "code":
            check_name(cell)  # validates check cells
            cell.source = stub_source(cell.source, f"{where}, cell {i}")
            cell.outputs, cell.execution_count = [], None
            cell.metadata.pop("execution", None)
        elif "### BEGIN SOLUTION" in cell.source:
            raise LabMarkerError(f"{where}, cell {i}: solution markers belong in code cells")
        cells.append(cell)
    lab.cells = cells
    return lab


def render(nb: nbformat.NotebookNode) -> str:
    return nbformat.writes(nb) + "\n"


def expected_labs(m: manifest_mod.Manifest | None = None) -> dict[Path, str]:
    """Every lab path with the text the generator makes for it."""
    m = m or manifest_mod.load()
    out = {}
    for solution, lab in m.lab_pairs():
        if not (m.root / solution).is_file():
            continue  # a missing solution is reported by the manifest check (tests/test_manifest.py)
        nb = nbgrader_cells.stamp(nbformat.read(m.root / solution, as_version=4), where=solution)
        out[m.root / lab] = render(make_lab(nb, where=solution))
    return out


def stamp_solutions(m: manifest_mod.Manifest | None = None, only: list[str] | None = None) -> list[Path]:
    """Write nbgrader's cell metadata into the solution notebooks that lack it (`only`: just these paths);
    returns the files that changed. Nothing but cell metadata changes."""
    m = m or manifest_mod.load()
    wanted = None if only is None else {(Path.cwd() / p).resolve() for p in only}
    changed = []
    for solution, _ in m.lab_pairs():
        path = m.root / solution
        if not path.is_file() or (wanted is not None and path.resolve() not in wanted):
            continue
        nb = nbformat.read(path, as_version=4)
        stamped = nbgrader_cells.stamp(nb, where=solution)
        if stamped != nb:
            nbformat.write(stamped, path)
            changed.append(path)
    return changed


def write_labs(m: manifest_mod.Manifest | None = None, stamp: list[str] | None = None) -> list[Path]:
    """Stamp the solutions (`stamp`: only these paths; all by default), then regenerate labs/; returns the
    files that changed."""
    changed = stamp_solutions(m, stamp)
    for path, text in expected_labs(m).items():
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            changed.append(path)
    return changed


def check_outcomes(executed: nbformat.NotebookNode) -> dict[str, str | None]:
    """After executing a lab (with errors allowed): check name -> None if it passed, else the error name."""
    outcomes: dict[str, str | None] = {}
    for cell in executed.cells:
        name = check_name(cell)
        if name is None:
            continue
        errors = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
        outcomes[name] = f"{errors[0]['ename']}: {errors[0]['evalue']}" if errors else None
    return outcomes
